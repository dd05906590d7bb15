//! HTTP/1.1 on a shard: reading requests with a deadline (httparse), routing the API, answering
//! with JSON errors, and handing a finished WebSocket handshake to the shard's `hub`.
//!
//! Before the first request: who the client is (a PROXY header from a trusted balancer, else the
//! socket's peer), the descriptor budget, and the client address's connection cap.
//!
//! Invariants: a request head larger than 16 KiB, a body larger than 4 KiB, or a client that has
//! not sent a complete request within the handshake timeout gets a clear error and a close; a
//! keep-alive connection idle for `--idle-timeout-ms` is closed; an answer not written within
//! `--write-timeout-ms` is abandoned with the connection; an HTTP connection holds its buffer
//! only while it lives (WebSocket connections keep none). Past the descriptor budget only the
//! operator's routes (health, readiness, metrics, admin) are served, from the `--fd-reserve`
//! descriptors kept for them.

use crate::admission::AdmissionError;
use crate::client_addr::{AddrKey, ClientAddr};
use crate::history::routes as history;
use crate::hub::Hub;
use crate::lifecycle::DrainPhase;
use crate::place::{self, error_json, PlaceError};
use crate::proxy_header::{Inspected, ProxyError};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::token::User;
use crate::ws::accept_key;
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounds::{MAX_BODY, MAX_HEAD, MAX_HEADERS, MAX_PROXY_HEADER};

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
const ADMIN_HTML: &str = include_str!("../web/admin.html");
const ADMIN_JS: &str = include_str!("../web/admin.js");

/// The parts of a request the routes need, copied out of the read buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub keep_alive: bool,
    pub content_length: usize,
    pub chunked: bool,
    pub authorization: Option<String>,
    pub if_none_match: Option<String>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub origin: Option<String>,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn json(status: u16, body: String) -> Self {
        Response { status, content_type: "application/json", headers: Vec::new(), body: Bytes::from(body) }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, error_json(code, message))
    }

    fn static_file(content_type: &'static str, body: &'static str) -> Self {
        let mut r =
            Response { status: 200, content_type, headers: Vec::new(), body: Bytes::from_static(body.as_bytes()) };
        r.headers.push(("Cache-Control", "no-cache".into()));
        r
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        501 => "Not Implemented",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head of this many bytes.
    Head(Req, usize),
    Partial,
    Bad(u16, &'static str, String),
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parsed::Bad(431, "headers_too_large", format!("the request head is over {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(431, "headers_too_large", format!("more than {MAX_HEADERS} headers"))
        }
        Err(e) => return Parsed::Bad(400, "bad_request", format!("malformed HTTP request: {e}")),
    };
    let target = r.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Req {
        method: r.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        keep_alive: r.version == Some(1),
        ..Default::default()
    };
    let (mut seen_length, mut seen_encoding) = (false, false);
    for h in r.headers.iter() {
        let v = String::from_utf8_lossy(h.value).trim().to_string();
        let lower = v.to_ascii_lowercase();
        match h.name.to_ascii_lowercase().as_str() {
            // Two lengths, or a length and an encoding, are how requests are smuggled past a
            // proxy that reads them differently: refuse, never pick one.
            "content-length" if seen_length => {
                return Parsed::Bad(400, "bad_request", "more than one Content-Length header".into())
            }
            "content-length" => match crate::token::canonical_u64(&v) {
                Some(n) => {
                    seen_length = true;
                    req.content_length = usize::try_from(n).unwrap_or(usize::MAX);
                }
                None => return Parsed::Bad(400, "bad_request", "Content-Length must be plain decimal digits".into()),
            },
            "transfer-encoding" if seen_encoding || lower != "chunked" => {
                return Parsed::Bad(
                    501,
                    "transfer_encoding_unsupported",
                    format!("Transfer-Encoding {v:?} is not supported: send Content-Length"),
                )
            }
            "transfer-encoding" => {
                seen_encoding = true;
                req.chunked = true;
            }
            "origin" => req.origin = Some(v),
            "connection" => {
                if lower.contains("close") {
                    req.keep_alive = false;
                }
                if lower.contains("keep-alive") {
                    req.keep_alive = true;
                }
                req.connection_upgrade = lower.split(',').any(|t| t.trim() == "upgrade");
            }
            "authorization" => req.authorization = Some(v),
            "if-none-match" => req.if_none_match = Some(v),
            "upgrade" => req.upgrade_websocket = lower == "websocket",
            "sec-websocket-key" => req.ws_key = Some(v),
            "sec-websocket-version" => req.ws_version = Some(v),
            _ => {}
        }
    }
    if seen_length && seen_encoding {
        return Parsed::Bad(400, "bad_request", "both Content-Length and Transfer-Encoding".into());
    }
    Parsed::Head(req, len)
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn bearer(req: &Req) -> Option<&str> {
    let v = req.authorization.as_deref()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn authenticate(shared: &Shared, token: Option<&str>) -> Result<Option<User>, PlaceError> {
    let Some(t) = token else { return Ok(None) };
    shared.verify_user(t).map(Some).map_err(PlaceError::Token)
}

fn place_error_response(e: &PlaceError) -> Response {
    let mut body = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
    let mut r = Response::json(e.status(), String::new());
    if let Some(ms) = e.retry_after_ms() {
        body["retry_after_ms"] = ms.into();
        r.headers.push(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
    }
    r.body = Bytes::from(body.to_string());
    r
}

/// A refusal by admission control: 429 (or 503) with `Retry-After`.
pub fn admission_response(e: &AdmissionError) -> Response {
    let ms = e.retry_after_ms();
    let body = serde_json::json!({"error": {"code": e.code(), "message": e.to_string(), "retry_after_ms": ms}});
    Response::json(e.status(), body.to_string()).header("Retry-After", ms.div_ceil(1000).max(1).to_string())
}

/// What a request turns into.
pub enum Outcome {
    Respond(Response),
    Upgrade { key: String, user: Option<User>, since: Option<u64> },
}

/// The routes served from the descriptor reserve when the budget is spent: the operator's.
fn operator_route(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/api/v1/admin/")
}

/// The connection a request came on, as the routes need it.
pub struct ConnCtx {
    pub client: ClientAddr,
    /// Past the descriptor budget: only `operator_route`s are served.
    pub reserve_only: bool,
}

pub async fn route(req: &Req, body: &[u8], shared: &Arc<Shared>, hub: &Rc<RefCell<Hub>>, ctx: &ConnCtx) -> Outcome {
    let m = req.method.as_str();
    if ctx.reserve_only && !operator_route(&req.path) {
        return Outcome::Respond(
            Response::error(503, "server_busy", "this server is out of connections; try again shortly")
                .header("Retry-After", "5"),
        );
    }
    let r = match (m, req.path.as_str()) {
        ("GET" | "HEAD", "/") | ("GET" | "HEAD", "/index.html") => {
            Response::static_file("text/html; charset=utf-8", INDEX_HTML)
        }
        ("GET" | "HEAD", "/app.js") => Response::static_file("text/javascript; charset=utf-8", APP_JS),
        ("GET" | "HEAD", "/style.css") => Response::static_file("text/css; charset=utf-8", STYLE_CSS),
        // The moderators' page: static like the client; every action it takes is an admin API
        // call with the token the moderator types in.
        ("GET" | "HEAD", "/admin") => Response::static_file("text/html; charset=utf-8", ADMIN_HTML),
        ("GET" | "HEAD", "/admin.js") => Response::static_file("text/javascript; charset=utf-8", ADMIN_JS),
        ("GET" | "HEAD", "/healthz") => health(shared),
        ("GET" | "HEAD", "/readyz") => ready(shared),
        ("GET" | "HEAD", "/metrics") => metrics(shared),
        ("GET" | "HEAD", "/api/v1/canvas/info") => info(shared),
        ("GET" | "HEAD", "/api/v1/canvas/final") => history::final_canvas(shared, ctx.client.key).await,
        ("GET" | "HEAD", "/api/v1/canvas" | "/api/v1/canvas.png") if history::asks_for_past(req) => {
            history::canvas_at(req, shared, ctx.client.key, req.path.ends_with(".png")).await
        }
        ("GET" | "HEAD", "/api/v1/canvas") => canvas(req, shared, false).await,
        ("GET" | "HEAD", "/api/v1/canvas.png") => canvas(req, shared, true).await,
        ("GET" | "HEAD", "/api/v1/pixel") => history::pixel(req, shared).await,
        ("GET" | "HEAD", "/api/v1/history/info") => history::info(shared),
        ("GET" | "HEAD", "/api/v1/edits") => history::edits(req, shared, ctx.client.key).await,
        ("POST", "/api/v1/session") => crate::session::create(shared, &ctx.client, body),
        ("GET", "/api/v1/session/challenge") => crate::session::challenge(shared),
        ("POST", "/api/v1/place") => {
            let shard = hub.borrow().shard();
            place_http(req, body, shared, shard, ctx.client.key).await
        }
        ("POST", "/api/v1/admin/cooldown") => crate::control_routes::post(req, body, shared, "cooldown").await,
        ("POST", "/api/v1/admin/pause") => crate::control_routes::post(req, body, shared, "pause").await,
        ("POST", "/api/v1/admin/resume") => crate::control_routes::post(req, body, shared, "resume").await,
        ("POST", "/api/v1/admin/end") => crate::control_routes::post(req, body, shared, "end").await,
        ("POST", "/api/v1/admin/ban") => crate::control_routes::post(req, body, shared, "ban").await,
        ("POST", "/api/v1/admin/unban") => crate::control_routes::post(req, body, shared, "unban").await,
        ("POST", "/api/v1/admin/fill") => crate::control_routes::post(req, body, shared, "fill").await,
        ("POST", "/api/v1/admin/restore") => crate::control_routes::post(req, body, shared, "restore").await,
        ("POST", "/api/v1/admin/resize") => crate::control_routes::post(req, body, shared, "resize").await,
        ("POST", "/api/v1/admin/protect") => crate::control_routes::post(req, body, shared, "protect").await,
        ("POST", "/api/v1/admin/unprotect") => crate::control_routes::post(req, body, shared, "unprotect").await,
        ("GET", "/api/v1/admin/audit") => crate::control_routes::audit(req, shared),
        ("GET", "/api/v1/admin/limits") => crate::admin::get_limits(req, shared),
        ("POST", "/api/v1/admin/limits") => crate::admin::set_limits(req, body, shared),
        ("POST", "/api/v1/admin/drain") => crate::admin::drain(req, shared),
        ("GET", "/ws") => return upgrade(req, shared, hub, &ctx.client),
        (
            _,
            "/"
            | "/index.html"
            | "/app.js"
            | "/style.css"
            | "/admin"
            | "/admin.js"
            | "/healthz"
            | "/readyz"
            | "/metrics"
            | "/api/v1/canvas/info"
            | "/api/v1/canvas/final"
            | "/api/v1/canvas"
            | "/api/v1/canvas.png"
            | "/api/v1/pixel"
            | "/api/v1/history/info"
            | "/api/v1/edits"
            | "/api/v1/session"
            | "/api/v1/session/challenge"
            | "/api/v1/place"
            | "/api/v1/admin/cooldown"
            | "/api/v1/admin/pause"
            | "/api/v1/admin/resume"
            | "/api/v1/admin/end"
            | "/api/v1/admin/ban"
            | "/api/v1/admin/unban"
            | "/api/v1/admin/fill"
            | "/api/v1/admin/restore"
            | "/api/v1/admin/protect"
            | "/api/v1/admin/unprotect"
            | "/api/v1/admin/audit"
            | "/api/v1/admin/limits"
            | "/api/v1/admin/drain"
            | "/ws",
        ) => Response::error(405, "method_not_allowed", &format!("{m} is not allowed on {}", req.path)),
        _ => Response::error(404, "not_found", &format!("no such resource: {}", req.path)),
    };
    Outcome::Respond(r)
}

fn health(shared: &Shared) -> Response {
    let v = shared.applier.version.load(Ordering::Acquire);
    Response::json(200, serde_json::json!({"status": "ok", "version": v, "log": shared.log.describe()}).to_string())
}

/// `/readyz`: whether a balancer should send this node traffic (see `lifecycle`).
fn ready(shared: &Shared) -> Response {
    let now = crate::now_ms();
    let applier_beat = shared.applier.heartbeat_ms.load(Ordering::Relaxed);
    match shared.lifecycle.not_ready(now, applier_beat, shared.log.writable()) {
        None => {
            let v = shared.applier.version.load(Ordering::Acquire);
            Response::json(200, serde_json::json!({"status": "ready", "version": v}).to_string())
                .header("Cache-Control", "no-store")
        }
        Some(why) => Response::error(503, why.code(), &why.message()).header("Cache-Control", "no-store"),
    }
}

fn metrics(shared: &Shared) -> Response {
    let a = &shared.applier;
    let gauges = [
        ("placecast_version", "Last applied edit version.", a.version.load(Ordering::Relaxed)),
        ("placecast_batches_cut", "Batches cut by the applier.", a.batches.load(Ordering::Relaxed)),
        ("placecast_catchups", "Catch-up requests served.", a.catchups.load(Ordering::Relaxed)),
        ("placecast_snapshots_built", "Snapshots built.", a.snapshots.load(Ordering::Relaxed)),
        (
            "placecast_cuts_deferred",
            "Batch cuts delayed because a shard was still writing.",
            a.cuts_deferred.load(Ordering::Relaxed),
        ),
        (
            "placecast_applier_edit_takes",
            "Times the applier took committed edits off its queue.",
            a.edit_takes.load(Ordering::Relaxed),
        ),
        ("placecast_cooldown_ms", "Current cooldown.", shared.limiter.cooldown_ms()),
        ("placecast_log_head", "Last durable version in the log.", shared.log.head()),
        (
            "placecast_rejected_in_log_order",
            "Edits the log-order cooldown rule turned into no-ops (shared log).",
            a.rejected.load(Ordering::Relaxed),
        ),
        ("placecast_checkpoints_written", "Checkpoints written (shared log).", a.checkpoints.load(Ordering::Relaxed)),
        (
            "placecast_log_to_batch_p50_ms",
            "Median ms from an edit's placement time to the batch carrying it, since start.",
            a.log_to_batch_p50_ms.load(Ordering::Relaxed),
        ),
        (
            "placecast_log_to_batch_p99_ms",
            "99th percentile ms from an edit's placement time to the batch carrying it, since start.",
            a.log_to_batch_p99_ms.load(Ordering::Relaxed),
        ),
        (
            "placecast_log_to_batch_max_ms",
            "Most ms from an edit's placement time to the batch carrying it, since start.",
            a.log_to_batch_max_ms.load(Ordering::Relaxed),
        ),
    ];
    let text = crate::metrics::render(&shared.metrics, &shared.shard_stats, &gauges);
    Response { status: 200, content_type: "text/plain; version=0.0.4", headers: Vec::new(), body: Bytes::from(text) }
}

fn info(shared: &Shared) -> Response {
    let g = &shared.geometry;
    let (width, height) = g.size();
    let body = serde_json::json!({
        "width": width,
        "height": height,
        "palette": g.palette_hex(),
        "cooldown_ms": shared.limiter.cooldown_ms(),
        "paused": shared.switches.paused(),
        "end_at_ms": shared.switches.end_at_ms(),
        "protected": shared.switches.protected(),
        "version": shared.applier.cut_version.load(Ordering::Acquire),
        "edit_stride": shared.config.args.edit_stride,
    });
    Response::json(200, body.to_string())
        .header("Cache-Control", "public, max-age=1")
        .header("Access-Control-Allow-Origin", "*")
}

/// The newest snapshot at least as new as the last batch when the request came in, waiting for
/// the applier's next cut if needed (bounded).
async fn fresh_snapshot(shared: &Shared) -> Option<Arc<Snapshot>> {
    let want = shared.applier.cut_version.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_millis(3 * shared.config.args.batch_ms + 1000);
    loop {
        let latest = shared.snapshots.latest();
        if latest.as_ref().is_some_and(|s| s.version >= want) {
            return latest;
        }
        shared.snapshots.want();
        if Instant::now() >= deadline {
            return latest;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

async fn canvas(req: &Req, shared: &Arc<Shared>, png: bool) -> Response {
    let Some(snap) = fresh_snapshot(shared).await else {
        return Response::error(503, "snapshot_unavailable", "the snapshot is not ready yet; try again")
            .header("Retry-After", "1");
    };
    let etag = if png { snap.png_etag() } else { snap.etag.clone() };
    let matches = req
        .if_none_match
        .as_deref()
        .is_some_and(|v| v.trim() == "*" || v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag));
    let base = |status, content_type, body| {
        Response { status, content_type, headers: Vec::new(), body }
            .header("ETag", etag.clone())
            .header("X-Canvas-Version", snap.version.to_string())
            .header("Cache-Control", "public, max-age=1")
            .header("Access-Control-Allow-Origin", "*")
            .header("Access-Control-Expose-Headers", "X-Canvas-Version, ETag")
    };
    if matches {
        return base(304, "application/octet-stream", Bytes::new());
    }
    if !png {
        return base(200, "application/octet-stream", snap.binary.clone());
    }
    let s = snap.clone();
    // PNG encoding takes milliseconds: keep it off the shard's thread.
    let bytes = glommio::executor().spawn_blocking(move || s.png()).await;
    base(200, "image/png", bytes)
}

async fn place_http(req: &Req, body: &[u8], shared: &Arc<Shared>, shard: usize, addr: AddrKey) -> Response {
    let token = bearer(req);
    if req.authorization.is_some() && token.is_none() {
        return place_error_response(&PlaceError::Token(crate::token::TokenError::Malformed));
    }
    let user = match authenticate(shared, token) {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.place_rejected(&e);
            return place_error_response(&e);
        }
    };
    let parsed = match place::parse_body(body) {
        Ok(p) => p,
        Err(e) => {
            shared.metrics.place_rejected(&e);
            return place_error_response(&e);
        }
    };
    let pending = match place::begin(shared, shard, user.map(|u| u.id), addr, &parsed) {
        Ok(p) => p,
        Err(e) => return place_error_response(&e),
    };
    match pending.finish().await {
        Ok(p) => Response::json(
            200,
            serde_json::json!({"version": p.version, "next_at_ms": p.next_at_ms, "cooldown_ms": p.cooldown_ms})
                .to_string(),
        ),
        Err(e) => place_error_response(&e),
    }
}

fn upgrade(req: &Req, shared: &Shared, hub: &Rc<RefCell<Hub>>, client: &ClientAddr) -> Outcome {
    let fail = |status, code, msg: &str| Outcome::Respond(Response::error(status, code, msg));
    if !req.upgrade_websocket || !req.connection_upgrade {
        return fail(
            426,
            "upgrade_required",
            "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade",
        )
        .map_header("Upgrade", "websocket");
    }
    if req.ws_version.as_deref() != Some("13") {
        return fail(426, "bad_websocket_version", "only Sec-WebSocket-Version: 13 is supported")
            .map_header("Sec-WebSocket-Version", "13");
    }
    let allowed = &shared.config.args.allowed_origins;
    if !allowed.is_empty() && !req.origin.as_deref().is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
    {
        return fail(403, "origin_not_allowed", "this page's origin may not open the WebSocket (--allowed-origins)");
    }
    let Some(key) = req.ws_key.clone().filter(|k| k.len() >= 16) else {
        return fail(400, "bad_websocket_key", "missing or malformed Sec-WebSocket-Key");
    };
    let since = match query_param(&req.query, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match crate::token::canonical_u64(&s) {
            Some(v) => Some(v),
            None => {
                return fail(400, "bad_since", &format!("since must be a version number in plain digits, got {s:?}"))
            }
        },
    };
    let user = match authenticate(shared, query_param(&req.query, "token").filter(|t| !t.is_empty()).as_deref()) {
        Ok(u) => u,
        Err(e) => return Outcome::Respond(place_error_response(&e)),
    };
    if matches!(shared.lifecycle.phase(crate::now_ms()), DrainPhase::Closing { .. }) {
        return Outcome::Respond(
            Response::error(503, "draining", "this node is draining; connect to another").header("Retry-After", "1"),
        );
    }
    // Before the 101: a catch-up storm from one address is refused for the price of an HTTP
    // answer, with no socket handed to the hub and no work for the applier.
    if since.is_some() {
        if let Err(e) = shared.admission.catch_up(client.key, crate::now_ms()) {
            shared.metrics.admission_refused(&e);
            return Outcome::Respond(admission_response(&e));
        }
    }
    if !hub.borrow().has_room() {
        return Outcome::Respond(
            Response::error(503, "too_many_connections", "this server is full; try again shortly")
                .header("Retry-After", "5"),
        );
    }
    Outcome::Upgrade { key, user, since }
}

trait MapHeader {
    fn map_header(self, name: &'static str, value: &str) -> Self;
}

impl MapHeader for Outcome {
    fn map_header(self, name: &'static str, value: &str) -> Self {
        match self {
            Outcome::Respond(r) => Outcome::Respond(r.header(name, value)),
            o => o,
        }
    }
}

fn render_head(r: &Response, keep_alive: bool) -> String {
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    h
}

async fn send(stream: &mut TcpStream, r: &Response, keep_alive: bool, head_only: bool) -> std::io::Result<()> {
    let head = render_head(r, keep_alive);
    let body: &[u8] = if head_only { &[] } else { &r.body };
    if body.len() <= 16 * 1024 {
        // One write for small answers: a separate small body segment would wait for the ACK of
        // the head (Nagle against delayed ACK: 40 ms on every placement).
        let mut all = Vec::with_capacity(head.len() + body.len());
        all.extend_from_slice(head.as_bytes());
        all.extend_from_slice(body);
        stream.write_all(&all).await?;
    } else {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
    }
    stream.flush().await
}

/// Answers with an error and closes without a reset: the client may still be sending (an
/// oversized head, a body we refused), and closing with unread data would make the kernel send
/// RST and discard our answer. So: answer, half-close, drain briefly, then close.
async fn refuse(stream: &mut TcpStream, r: &Response, shared: &Shared) {
    let write_limit = Duration::from_millis(shared.config.args.write_timeout_ms);
    if !send_timed(stream, r, false, false, write_limit, shared).await {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut sink = vec![0u8; 4096];
    let mut left = 1 << 20;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(Duration::from_secs(1), drain).await;
}

enum Read {
    Head(Req, usize),
    Eof,
    Bad(u16, &'static str, String),
}

/// Reads until `buf` holds a complete request head.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> glommio::Result<Read, ()> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Parsed::Head(req, n) => return Ok(Read::Head(req, n)),
                Parsed::Bad(s, c, m) => return Ok(Read::Bad(s, c, m)),
                Parsed::Partial => {}
            }
        }
        if read_more(stream, buf).await? == 0 {
            return Ok(Read::Eof);
        }
    }
}

/// Reads into the tail of `buf`. Reading in place (not into a stack chunk) keeps the connection
/// task's future small: thousands of handshakes can be in flight during a reconnect storm.
/// Cancel-safe: a timeout that drops the read mid-way leaves `buf` as it was (its spare bytes
/// cut again by the guard), so a timed-out idle connection is not mistaken for a partial request.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    const STEP: usize = 1024;
    /// Cuts `buf` back to `keep` bytes when dropped, however the read ended.
    struct Keep<'a> {
        buf: &'a mut Vec<u8>,
        keep: usize,
    }
    impl Drop for Keep<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.keep);
        }
    }
    let len = buf.len();
    buf.resize(len + STEP, 0);
    let mut g = Keep { buf, keep: len };
    let n = stream.read(&mut g.buf[len..]).await;
    g.keep = len + *n.as_ref().unwrap_or(&0);
    n
}

async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, need: usize) -> glommio::Result<bool, ()> {
    while buf.len() < need {
        if read_more(stream, buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a connection holds of the process's shared budgets: one descriptor of the connection
/// budget and, once admitted, one connection of its address's cap. Given back on drop, or handed
/// to the hub with the socket on upgrade (the hub gives them back when it closes the socket).
struct Holds {
    shared: Arc<Shared>,
    addr: Option<AddrKey>,
    handed: bool,
}

impl Drop for Holds {
    fn drop(&mut self) {
        if self.handed {
            return;
        }
        self.shared.release_connection(self.addr);
    }
}

/// Reads the PROXY header, if the policy wants one from this peer; the header's bytes leave
/// `buf`, the rest (the start of the HTTP request) stays. `None`: the peer closed first.
async fn read_client(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    shared: &Shared,
    peer: std::net::IpAddr,
) -> glommio::Result<Option<Result<ClientAddr, ProxyError>>, ()> {
    loop {
        match shared.proxy.inspect(peer, buf) {
            Ok(Inspected::Client { client, consumed }) => {
                buf.drain(..consumed);
                return Ok(Some(Ok(ClientAddr::new(client))));
            }
            Err(e) => return Ok(Some(Err(e))),
            Ok(Inspected::NeedMore) if buf.len() >= MAX_PROXY_HEADER => return Ok(Some(Err(ProxyError::TooLong))),
            Ok(Inspected::NeedMore) => {}
        }
        if read_more(stream, buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes an answer within `--write-timeout-ms`; false when the connection should be dropped.
async fn send_timed(
    stream: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
    head_only: bool,
    limit: Duration,
    shared: &Shared,
) -> bool {
    let write = async { send(stream, r, keep_alive, head_only).await.map_err(glommio::GlommioError::from) };
    match glommio::timer::timeout(limit, write).await {
        Ok(()) => true,
        Err(glommio::GlommioError::TimedOut(_)) => {
            shared.metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    }
}

/// Serves one accepted TCP connection until it closes or becomes a WebSocket.
pub async fn serve_conn(mut stream: TcpStream, hub: Rc<RefCell<Hub>>, shared: Arc<Shared>) {
    let shard = hub.borrow().shard();
    let open = shared.open_conns.fetch_add(1, Ordering::AcqRel) + 1;
    let mut holds = Holds { shared: shared.clone(), addr: None, handed: false };
    if open > shared.budget.hard {
        // Not even the reserve is left: close at once, before reading, to give the descriptor back.
        shared.metrics.refused_fd_budget.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let reserve_only = open > shared.budget.soft;
    let _ = stream.set_nodelay(true);
    let args = &shared.config.args;
    let handshake = Duration::from_millis(args.handshake_timeout_ms);
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let write_limit = Duration::from_millis(args.write_timeout_ms);
    let mut buf: Vec<u8> = Vec::new();
    let peer = stream.peer_addr().map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let client = match glommio::timer::timeout(handshake, read_client(&mut stream, &mut buf, &shared, peer)).await {
        Ok(Some(Ok(c))) => c,
        Ok(Some(Err(e))) => {
            shared.metrics.refused_proxy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "refused a connection's PROXY header");
            refuse(&mut stream, &Response::error(400, e.code(), &e.to_string()), &shared).await;
            return;
        }
        _ => return,
    };
    if let Err(e) = shared.admission.connect(client.key) {
        shared.metrics.admission_refused(&e);
        tracing::debug!(%client, error = %e, "refused a connection");
        refuse(&mut stream, &admission_response(&e), &shared).await;
        return;
    }
    holds.addr = Some(client.key);
    let ctx = ConnCtx { client, reserve_only };
    let mut first = true;
    loop {
        // The first request gets the handshake timeout; a kept-alive connection waits for its
        // next one at most the idle timeout.
        let limit = if first { handshake } else { idle };
        first = false;
        let (req, head_len) = match glommio::timer::timeout(limit, read_head(&mut stream, &mut buf)).await {
            Ok(Read::Head(req, n)) => (req, n),
            Ok(Read::Eof) => return,
            Ok(Read::Bad(status, code, msg)) => {
                shared.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                refuse(&mut stream, &Response::error(status, code, &msg), &shared).await;
                return;
            }
            Err(glommio::GlommioError::TimedOut(_)) => {
                if !buf.is_empty() {
                    let r = Response::error(408, "timeout", "the request did not arrive in time");
                    refuse(&mut stream, &r, &shared).await;
                }
                return;
            }
            Err(_) => return,
        };
        shared.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
        if req.chunked {
            let r = Response::error(411, "length_required", "chunked bodies are not supported: send Content-Length");
            refuse(&mut stream, &r, &shared).await;
            return;
        }
        if req.content_length > MAX_BODY {
            let r = Response::error(413, "body_too_large", &format!("bodies are limited to {MAX_BODY} bytes"));
            refuse(&mut stream, &r, &shared).await;
            return;
        }
        let total = head_len + req.content_length;
        match glommio::timer::timeout(handshake, read_body(&mut stream, &mut buf, total)).await {
            Ok(true) => {}
            _ => return,
        }
        let outcome = route(&req, &buf[head_len..total], &shared, &hub, &ctx).await;
        match outcome {
            Outcome::Respond(r) => {
                let r = r.header("X-Placecast-Shard", shard.to_string());
                if r.status >= 400 {
                    shared.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                }
                // A draining node asks clients to reconnect (to another node) after this answer.
                let keep_alive = req.keep_alive && !shared.lifecycle.draining();
                if !send_timed(&mut stream, &r, keep_alive, req.method == "HEAD", write_limit, &shared).await
                    || !keep_alive
                {
                    return;
                }
                buf.drain(..total);
            }
            Outcome::Upgrade { key, user, since } => {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                let write = async { stream.write_all(head.as_bytes()).await.map_err(glommio::GlommioError::from) };
                if glommio::timer::timeout(write_limit, write).await.is_err() {
                    return;
                }
                // The hub owns the socket from here; glommio's stream only closes its own fd.
                let fd = crate::sys::dup(stream.as_raw_fd());
                drop(stream);
                let fd = match fd {
                    Ok(fd) => fd,
                    Err(e) => {
                        tracing::warn!(error = %e, "dup failed; dropping the WebSocket");
                        return;
                    }
                };
                holds.handed = true;
                hub.borrow_mut().adopt(fd, user, since, &buf[total..], client.key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_upgrade() {
        let raw = b"GET /ws?since=12&token=a.0.b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nrest";
        let Parsed::Head(req, n) = parse_head(raw) else { panic!() };
        assert_eq!(&raw[n..], b"rest");
        assert!(req.upgrade_websocket && req.connection_upgrade);
        assert_eq!(req.path, "/ws");
        assert_eq!(query_param(&req.query, "since").as_deref(), Some("12"));
        assert_eq!(query_param(&req.query, "token").as_deref(), Some("a.0.b"));
        assert_eq!(query_param(&req.query, "nope"), None);
    }

    #[test]
    fn partial_bad_and_oversized_heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial);
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), Parsed::Bad(400, ..)));
        assert!(matches!(parse_head(b"\x00\x01\x02 garbage\r\n\r\n"), Parsed::Bad(400, ..)));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(parse_head(&big), Parsed::Bad(431, ..)));
        assert!(matches!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Parsed::Bad(400, ..)));
    }

    #[test]
    fn lengths_and_encodings_have_one_reading() {
        let bad = |raw: &[u8]| match parse_head(raw) {
            Parsed::Bad(status, ..) => status,
            other => panic!("accepted {:?}: {other:?}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(bad(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), 400);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), 400);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), 400);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nContent-Length: 05\r\n\r\n"), 400);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), 400);
        let Parsed::Head(r, _) = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n") else { panic!() };
        assert_eq!(r.content_length, 0);
        let Parsed::Head(r, _) = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n") else { panic!() };
        assert!(r.chunked);
    }

    #[test]
    fn keep_alive_rules() {
        let Parsed::Head(r, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else { panic!() };
        assert!(!r.keep_alive);
        let Parsed::Head(r, _) = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n") else { panic!() };
        assert!(!r.keep_alive);
        let Parsed::Head(r, _) = parse_head(b"GET / HTTP/1.1\r\n\r\n") else { panic!() };
        assert!(r.keep_alive);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Eb%zz+c%"), "a.b%zz c%");
    }
}
