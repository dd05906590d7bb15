//! The history's HTTP routes (PROTOCOL.md, "History"): `GET /api/v1/pixel`, `GET
//! /api/v1/history/info`, the canvas at a version or time (`GET /api/v1/canvas?at=V|t=MS`, and
//! `canvas.png`), and whole chunks of past edits (`GET /api/v1/edits?from=V`).
//!
//! Every read of the history's files runs on a blocking thread (a page-cache miss must never
//! stall a shard). Building a canvas or a chunk from disk is bounded per process
//! (`HISTORY_BUILDS`, beyond: 503 `history_busy`) and per client address (the catch-up rate,
//! `--catchups-per-addr-per-min`: the same kind of work); built answers are cached
//! (`HISTORY_CACHE`) and immutable, so a CDN in front serves the repeats.

use super::{Built, HistoryError, HistoryReader, Lookup, Rec};
use crate::bounds::{CHUNK, HISTORY_BUILDS, MAX_PIXEL_HISTORY};
use crate::client_addr::AddrKey;
use crate::http::{query_param, Req, Response};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use bytes::Bytes;
use sha2::Digest;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A year: what "immutable" means to caches.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn history_error(e: &HistoryError) -> Response {
    let (status, code) = match e {
        HistoryError::NotYet { .. } => (404, "version_not_yet"),
        HistoryError::Unavailable { .. } => (404, "history_unavailable"),
        HistoryError::Io(_) | HistoryError::Damaged(_) => (500, "history_error"),
    };
    if status == 500 {
        tracing::error!(error = %e, "reading the history failed");
    }
    Response::error(status, code, &e.to_string())
}

fn number(req: &Req, name: &str) -> Result<Option<u64>, Response> {
    match query_param(&req.query, name) {
        None => Ok(None),
        Some(v) => crate::token::canonical_u64(&v)
            .map(Some)
            .ok_or_else(|| Response::error(400, "bad_request", &format!("{name} must be a plain decimal number"))),
    }
}

/// Holds one of the `HISTORY_BUILDS` slots while it lives.
struct BuildSlot<'a>(&'a HistoryReader);

impl<'a> BuildSlot<'a> {
    fn take(h: &'a HistoryReader) -> Option<Self> {
        let n = h.builds.fetch_add(1, Ordering::AcqRel);
        if n >= HISTORY_BUILDS {
            h.builds.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(BuildSlot(h))
    }
}

impl Drop for BuildSlot<'_> {
    fn drop(&mut self) {
        self.0.builds.fetch_sub(1, Ordering::AcqRel);
    }
}

fn busy() -> Response {
    Response::error(503, "history_busy", "too many history requests are being built; retry shortly")
        .header("Retry-After", "1")
}

fn user_json(h: &HistoryReader, shared: &Shared, user: u64) -> serde_json::Value {
    match h.lookup {
        Lookup::Names => shared.names.get(user).map_or(serde_json::Value::Null, |n| n.as_ref().into()),
        Lookup::Hashed => h.hashed_user(user).into(),
        Lookup::Off => serde_json::Value::Null,
    }
}

fn edit_json(h: &HistoryReader, shared: &Shared, r: &Rec) -> serde_json::Value {
    serde_json::json!({"version": r.version, "user": user_json(h, shared, r.user), "ts_ms": r.ts_ms, "color": r.color})
}

/// `GET /api/v1/pixel?x=&y=[&history=N]`: the last edit of a pixel, and its last N.
pub async fn pixel(req: &Req, shared: &Arc<Shared>) -> Response {
    let h = shared.history.clone();
    if h.lookup == Lookup::Off {
        return Response::error(403, "pixel_lookup_off", "pixel lookups are turned off on this server");
    }
    let (x, y, n) = match (number(req, "x"), number(req, "y"), number(req, "history")) {
        (Ok(Some(x)), Ok(Some(y)), Ok(n)) => (x, y, n),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
        _ => return Response::error(400, "bad_coordinates", "x and y are required"),
    };
    let (w, hh) = shared.geometry.size();
    if x >= w as u64 || y >= hh as u64 {
        return Response::error(400, "bad_coordinates", &format!("x and y must be inside {w}x{hh}"));
    }
    if n == Some(0) || n.is_some_and(|n| n as usize > MAX_PIXEL_HISTORY) {
        return Response::error(400, "bad_request", &format!("history must be 1..={MAX_PIXEL_HISTORY}"));
    }
    let want = n.unwrap_or(1) as usize;
    // Everything acknowledged so far, so a client sees the pixel it was just told it placed.
    crate::read_your_writes::history_through(shared, u64::MAX).await;
    let reader = h.clone();
    let found = glommio::executor()
        // Outside the history's size: the canvas has just grown and the history not yet applied
        // the resize, so the pixel has no edits yet.
        .spawn_blocking(move || reader.pixel(x as u32, y as u32, want).unwrap_or_else(|| Ok(Vec::new())))
        .await;
    let edits = match found {
        Ok(e) => e,
        Err(e) => return history_error(&e),
    };
    let mut body = serde_json::json!({
        "x": x, "y": y,
        "last": edits.first().map_or(serde_json::Value::Null, |r| edit_json(&h, shared, r)),
    });
    if n.is_some() {
        body["history"] = edits.iter().map(|r| edit_json(&h, shared, r)).collect();
    }
    Response::json(200, body.to_string())
        .header("Cache-Control", "public, max-age=1")
        .header("Access-Control-Allow-Origin", "*")
}

/// `GET /api/v1/history/info`: the range of versions and times this node can show.
pub fn info(shared: &Shared) -> Response {
    let h = &shared.history;
    let body = serde_json::json!({
        "first_version": h.base(),
        "version": h.version(),
        "first_ts_ms": h.first_ts_ms(),
        "last_ts_ms": h.last_ts_ms(),
        "chunk": CHUNK,
        "pixel_lookup": h.lookup,
    });
    Response::json(200, body.to_string())
        .header("Cache-Control", "public, max-age=1")
        .header("Access-Control-Allow-Origin", "*")
}

/// Whether a canvas request asks for the past (`at=` or `t=`).
pub fn asks_for_past(req: &Req) -> bool {
    query_param(&req.query, "at").is_some() || query_param(&req.query, "t").is_some()
}

fn admit(shared: &Shared, addr: AddrKey) -> Result<(), Response> {
    shared.admission.catch_up(addr, crate::now_ms()).map_err(|e| {
        Response::error(e.status(), e.code(), "too many history requests from this address")
            .header("Retry-After", e.retry_after_ms().div_ceil(1000).max(1).to_string())
    })
}

/// `GET /api/v1/canvas?at=V` or `?t=MS` (binary, or PNG for `canvas.png`).
pub async fn canvas_at(req: &Req, shared: &Arc<Shared>, addr: AddrKey, png: bool) -> Response {
    let h = shared.history.clone();
    let version = match (number(req, "at"), number(req, "t")) {
        (Err(r), _) | (_, Err(r)) => return r,
        (Ok(Some(_)), Ok(Some(_))) => return Response::error(400, "bad_request", "give at= or t=, not both"),
        (Ok(Some(v)), _) => v,
        (_, Ok(Some(t))) => {
            // A time is final only once it has passed everywhere: edits may still arrive with a
            // timestamp up to the present (and a cluster's clocks differ by a little).
            let now = crate::now_ms();
            if t.saturating_add(crate::bounds::CLOCK_SLACK_MS) > now {
                return Response::error(404, "version_not_yet", "that time has not passed yet");
            }
            let reader = h.clone();
            match glommio::executor().spawn_blocking(move || reader.version_at(t)).await {
                Ok(v) => v,
                Err(e) => return history_error(&e),
            }
        }
        _ => unreachable!("asks_for_past checked"),
    };
    // A version acknowledged but not yet in the history is waited for, not `version_not_yet`.
    crate::read_your_writes::history_through(shared, version).await;
    let answer = |body: Bytes, ts: Option<u64>| {
        let mut r = Response {
            status: 200,
            content_type: if png { "image/png" } else { "application/octet-stream" },
            headers: Vec::new(),
            body,
        }
        .header("X-Canvas-Version", version.to_string())
        .header("ETag", format!("\"v{version}-{}\"", if png { "png" } else { "bin" }))
        .header("Cache-Control", IMMUTABLE)
        .header("Access-Control-Allow-Origin", "*")
        .header("Access-Control-Expose-Headers", "X-Canvas-Version, X-Canvas-Time-Ms, ETag");
        if let Some(ts) = ts {
            r = r.header("X-Canvas-Time-Ms", ts.to_string());
        }
        r
    };
    match build(shared, version, png, addr).await {
        Ok((body, ts)) => answer(body, ts),
        Err(r) => r,
    }
}

/// The canvas at `version` as a binary snapshot or PNG, and the time of that version: from the
/// cache, or built (counted against the address's catch-up rate, at most `HISTORY_BUILDS` at once).
async fn build(shared: &Arc<Shared>, version: u64, png: bool, addr: AddrKey) -> Result<(Bytes, Option<u64>), Response> {
    let h = shared.history.clone();
    let key = if png { Built::Png(version) } else { Built::Canvas(version) };
    let time_of = |v: u64| (v > h.base() && v <= h.version()).then(|| h.record(v).ok().map(|r| r.ts_ms)).flatten();
    if let Some(b) = h.cached(key) {
        return Ok((b, time_of(version)));
    }
    admit(shared, addr)?;
    let Some(_slot) = BuildSlot::take(&h) else { return Err(busy()) };
    let reader = h.clone();
    let built = glommio::executor()
        .spawn_blocking(move || -> Result<(Bytes, Option<u64>), HistoryError> {
            let canvas = reader.canvas_at(version)?;
            let snap = Snapshot::build(&canvas, version);
            let body = if png { snap.png() } else { snap.binary.clone() };
            let ts = (version > reader.base()).then(|| reader.record(version).ok().map(|r| r.ts_ms)).flatten();
            Ok((body, ts))
        })
        .await;
    match built {
        Ok((body, ts)) => {
            h.remember(key, body.clone());
            Ok((body, ts))
        }
        Err(e) => Err(history_error(&e)),
    }
}

/// `GET /api/v1/canvas/final`: once the event's end has passed (and `CLOCK_SLACK_MS` for the
/// edits placed just before it), the final version and the SHA-256 of the binary snapshot at it.
/// Every node computes both from the log alone, so "who held this pixel at the end" has one
/// provable answer. The final version is the last version whose edit changed a pixel; after the
/// end no edit can, unless an operator moves the end (then the answer moves with it).
pub async fn final_canvas(shared: &Arc<Shared>, addr: AddrKey) -> Response {
    let Some(end) = shared.switches.end_at_ms() else {
        return Response::error(404, "not_ended", "the event has no end set (POST /api/v1/admin/end)");
    };
    let now = crate::now_ms();
    if end.saturating_add(crate::bounds::CLOCK_SLACK_MS) > now {
        let msg =
            format!("the event ends at {end} ms; its final canvas is known {} ms after", crate::bounds::CLOCK_SLACK_MS);
        return Response::error(404, "not_ended", &msg);
    }
    let version = shared.applier.last_change.load(std::sync::atomic::Ordering::Acquire);
    let (body, ts) = match build(shared, version, false, addr).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sha: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let json = serde_json::json!({
        "version": version,
        "end_at_ms": end,
        "last_edit_ms": ts,
        "sha256": sha,
        "canvas": format!("/api/v1/canvas?at={version}"),
        "png": format!("/api/v1/canvas.png?at={version}"),
    });
    Response::json(200, json.to_string())
        .header("Cache-Control", "public, max-age=60")
        .header("Access-Control-Allow-Origin", "*")
}

/// `GET /api/v1/edits?from=V`: versions `(V, V + CHUNK]` as one batch payload, or several
/// messages one after another when the canvas grew inside the chunk (PROTOCOL.md);
/// V must be a multiple of `CHUNK`. A whole chunk never changes (immutable); the newest,
/// partial one is cached for a second, like the live snapshot.
pub async fn edits(req: &Req, shared: &Arc<Shared>, addr: AddrKey) -> Response {
    let h = shared.history.clone();
    let from = match number(req, "from") {
        Ok(Some(v)) => v,
        Ok(None) => return Response::error(400, "bad_request", "from is required"),
        Err(r) => return r,
    };
    if !from.is_multiple_of(CHUNK) {
        return Response::error(
            400,
            "bad_request",
            &format!("from must be a multiple of {CHUNK} (the chunk before it starts at {})", from / CHUNK * CHUNK),
        );
    }
    // Only the newest chunk can hold edits not yet in the history; older ones are answered at
    // once (the wait returns when the history already holds `from + CHUNK`).
    crate::read_your_writes::history_through(shared, from.saturating_add(CHUNK)).await;
    let head = h.version();
    if from > head {
        return history_error(&HistoryError::NotYet { asked: from, head });
    }
    if from < h.base() {
        return history_error(&HistoryError::Unavailable { base: h.base() });
    }
    let to = (from + CHUNK).min(head);
    let whole = to == from + CHUNK;
    let key = Built::Edits(from, to);
    let respond = |body: Bytes| {
        Response { status: 200, content_type: "application/octet-stream", headers: Vec::new(), body }
            .header("Cache-Control", if whole { IMMUTABLE } else { "public, max-age=1" })
            .header("X-Edits-From", from.to_string())
            .header("X-Edits-To", to.to_string())
            .header("Access-Control-Allow-Origin", "*")
            .header("Access-Control-Expose-Headers", "X-Edits-From, X-Edits-To")
    };
    if let Some(b) = h.cached(key) {
        return respond(b);
    }
    if let Err(r) = admit(shared, addr) {
        return r;
    }
    let Some(_slot) = BuildSlot::take(&h) else { return busy() };
    let stride = shared.config.args.edit_stride;
    let reader = h.clone();
    let built = glommio::executor().spawn_blocking(move || reader.stream(from, to, stride).map(Bytes::from)).await;
    match built {
        Ok(body) => {
            if whole {
                h.remember(key, body.clone());
            }
            respond(body)
        }
        Err(e) => history_error(&e),
    }
}
