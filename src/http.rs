//! HTTP/1.1 on a shard: reading requests with a deadline (httparse), routing the API, answering
//! with JSON errors, and handing a finished WebSocket handshake to the shard's `hub`.
//!
//! Invariants: a request head larger than 16 KiB, a body larger than 4 KiB, or a client that has
//! not sent a complete request within the handshake timeout gets a clear error and a close; an
//! HTTP connection holds its buffer only while it lives (WebSocket connections keep none).

use crate::hub::Hub;
use crate::place::{self, error_json, PlaceError};
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::token::{anonymous_user, User};
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

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 4 * 1024;
const MAX_HEADERS: usize = 48;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

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

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
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
    for h in r.headers.iter() {
        let v = String::from_utf8_lossy(h.value).trim().to_string();
        let lower = v.to_ascii_lowercase();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => match v.parse() {
                Ok(n) => req.content_length = n,
                Err(_) => return Parsed::Bad(400, "bad_request", "Content-Length is not a number".into()),
            },
            "transfer-encoding" => req.chunked = lower.contains("chunked"),
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

fn bearer(req: &Req) -> Option<&str> {
    let v = req.authorization.as_deref()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn authenticate(shared: &Shared, token: Option<&str>) -> Result<Option<User>, PlaceError> {
    let Some(t) = token else { return Ok(None) };
    shared.signer.verify(t, crate::now_ms() / 1000).map(Some).map_err(PlaceError::Token)
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

/// What a request turns into.
pub enum Outcome {
    Respond(Response),
    Upgrade { key: String, user: Option<User>, since: Option<u64> },
}

pub async fn route(req: &Req, body: &[u8], shared: &Arc<Shared>, hub: &Rc<RefCell<Hub>>) -> Outcome {
    let m = req.method.as_str();
    let r = match (m, req.path.as_str()) {
        ("GET" | "HEAD", "/") | ("GET" | "HEAD", "/index.html") => {
            Response::static_file("text/html; charset=utf-8", INDEX_HTML)
        }
        ("GET" | "HEAD", "/app.js") => Response::static_file("text/javascript; charset=utf-8", APP_JS),
        ("GET" | "HEAD", "/style.css") => Response::static_file("text/css; charset=utf-8", STYLE_CSS),
        ("GET" | "HEAD", "/healthz") => health(shared),
        ("GET" | "HEAD", "/metrics") => metrics(shared),
        ("GET" | "HEAD", "/api/v1/canvas/info") => info(shared),
        ("GET" | "HEAD", "/api/v1/canvas") => canvas(req, shared, false).await,
        ("GET" | "HEAD", "/api/v1/canvas.png") => canvas(req, shared, true).await,
        ("POST", "/api/v1/session") => session(shared),
        ("POST", "/api/v1/place") => place_http(req, body, shared).await,
        ("POST", "/api/v1/admin/cooldown") => admin_cooldown(req, body, shared),
        ("GET", "/ws") => return upgrade(req, shared, hub),
        (
            _,
            "/"
            | "/index.html"
            | "/app.js"
            | "/style.css"
            | "/healthz"
            | "/metrics"
            | "/api/v1/canvas/info"
            | "/api/v1/canvas"
            | "/api/v1/canvas.png"
            | "/api/v1/session"
            | "/api/v1/place"
            | "/api/v1/admin/cooldown"
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
    let body = serde_json::json!({
        "width": g.width,
        "height": g.height,
        "palette": g.palette_hex(),
        "cooldown_ms": shared.limiter.cooldown_ms(),
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

fn session(shared: &Shared) -> Response {
    let user = anonymous_user();
    let ttl = shared.config.args.session_ttl;
    let expires = if ttl == 0 { 0 } else { crate::now_ms() / 1000 + ttl };
    match shared.signer.mint(&user, expires) {
        Ok(token) => {
            Response::json(200, serde_json::json!({"token": token, "user": user, "expires_at": expires}).to_string())
        }
        Err(e) => Response::error(500, "internal", &e.to_string()),
    }
}

async fn place_http(req: &Req, body: &[u8], shared: &Arc<Shared>) -> Response {
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
    let pending = match place::begin(shared, user.map(|u| u.id), &parsed) {
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

/// Constant-time comparison, so the admin token cannot be guessed byte by byte from timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn admin_cooldown(req: &Req, body: &[u8], shared: &Shared) -> Response {
    let Some(admin) = shared.config.args.admin_token.as_deref() else {
        return Response::error(403, "admin_disabled", "the admin API is off: start the server with --admin-token");
    };
    if !bearer(req).is_some_and(|t| same_secret(t.as_bytes(), admin.as_bytes())) {
        return Response::error(401, "bad_token", "the admin API needs Authorization: Bearer <admin token>");
    }
    #[derive(serde::Deserialize)]
    struct Body {
        seconds: u64,
    }
    if shared.verdicts.is_some() {
        return Response::error(
            409,
            "cooldown_fixed",
            "on a shared Kafka log the cooldown is part of the rule every node applies in log order: set the same --cooldown on every node and restart them",
        );
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) if b.seconds <= 365 * 24 * 3600 => {
            shared.limiter.set_cooldown_ms(b.seconds * 1000);
            tracing::info!(seconds = b.seconds, "cooldown changed");
            Response::json(200, serde_json::json!({"cooldown_ms": b.seconds * 1000}).to_string())
        }
        Ok(_) => Response::error(400, "bad_body", "seconds must be at most one year"),
        Err(e) => Response::error(400, "bad_json", &format!("expected {{\"seconds\": N}}: {e}")),
    }
}

fn upgrade(req: &Req, shared: &Shared, hub: &Rc<RefCell<Hub>>) -> Outcome {
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
    let Some(key) = req.ws_key.clone().filter(|k| k.len() >= 16) else {
        return fail(400, "bad_websocket_key", "missing or malformed Sec-WebSocket-Key");
    };
    let since = match query_param(&req.query, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => return fail(400, "bad_since", &format!("since must be a version number, got {s:?}")),
        },
    };
    let user = match authenticate(shared, query_param(&req.query, "token").filter(|t| !t.is_empty()).as_deref()) {
        Ok(u) => u,
        Err(e) => return Outcome::Respond(place_error_response(&e)),
    };
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
async fn refuse(stream: &mut TcpStream, r: &Response) {
    if send(stream, r, false, false).await.is_err() {
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
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    const STEP: usize = 1024;
    let len = buf.len();
    buf.resize(len + STEP, 0);
    let n = stream.read(&mut buf[len..]).await;
    buf.truncate(len + *n.as_ref().unwrap_or(&0));
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

/// Serves one accepted TCP connection until it closes or becomes a WebSocket.
pub async fn serve_conn(mut stream: TcpStream, hub: Rc<RefCell<Hub>>, shared: Arc<Shared>) {
    let shard = hub.borrow().shard();
    let _ = stream.set_nodelay(true);
    let timeout = Duration::from_millis(shared.config.args.handshake_timeout_ms);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (req, head_len) = match glommio::timer::timeout(timeout, read_head(&mut stream, &mut buf)).await {
            Ok(Read::Head(req, n)) => (req, n),
            Ok(Read::Eof) => return,
            Ok(Read::Bad(status, code, msg)) => {
                shared.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                refuse(&mut stream, &Response::error(status, code, &msg)).await;
                return;
            }
            Err(glommio::GlommioError::TimedOut(_)) => {
                if !buf.is_empty() {
                    let r = Response::error(408, "timeout", "the request did not arrive in time");
                    refuse(&mut stream, &r).await;
                }
                return;
            }
            Err(_) => return,
        };
        shared.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
        if req.chunked {
            let r = Response::error(411, "length_required", "chunked bodies are not supported: send Content-Length");
            refuse(&mut stream, &r).await;
            return;
        }
        if req.content_length > MAX_BODY {
            let r = Response::error(413, "body_too_large", &format!("bodies are limited to {MAX_BODY} bytes"));
            refuse(&mut stream, &r).await;
            return;
        }
        let total = head_len + req.content_length;
        match glommio::timer::timeout(timeout, read_body(&mut stream, &mut buf, total)).await {
            Ok(true) => {}
            _ => return,
        }
        let outcome = route(&req, &buf[head_len..total], &shared, &hub).await;
        match outcome {
            Outcome::Respond(r) => {
                let r = r.header("X-Placecast-Shard", shard.to_string());
                if r.status >= 400 {
                    shared.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                }
                if send(&mut stream, &r, req.keep_alive, req.method == "HEAD").await.is_err() || !req.keep_alive {
                    return;
                }
                buf.drain(..total);
            }
            Outcome::Upgrade { key, user, since } => {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // The hub owns the socket from here; glommio's stream only closes its own fd.
                let fd = unsafe { libc::dup(stream.as_raw_fd()) };
                drop(stream);
                if fd < 0 {
                    tracing::warn!(error = %std::io::Error::last_os_error(), "dup failed; dropping the WebSocket");
                    return;
                }
                hub.borrow_mut().adopt(fd, user, since, &buf[total..]);
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
