//! The admin API (`Authorization: Bearer <admin token>`) for what changes only this node: the
//! admission limits and session policy, and the drain. Every change is live and logged. What
//! every node must agree on (the cooldown, pause, the end, bans) is a control entry in the log:
//! `control_routes.rs`.
//!
//! Invariant: every route checks the token in constant time before reading the body; values are
//! validated before any is applied, so a request changes all it names or nothing.

use crate::admission::LimitValues;
use crate::http::{bearer, Req, Response};
use crate::pow::{SessionMode, MAX_DIFFICULTY, MIN_DIFFICULTY};
use crate::shared::Shared;

/// Constant-time comparison, so the admin token cannot be guessed byte by byte from timing.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Err(answer)` unless the request carries the admin token.
pub(crate) fn authorize(req: &Req, shared: &Shared) -> Result<(), Response> {
    let Some(admin) = shared.config.args.admin_token.as_deref() else {
        return Err(Response::error(
            403,
            "admin_disabled",
            "the admin API is off: start the server with --admin-token",
        ));
    };
    if !bearer(req).is_some_and(|t| same_secret(t.as_bytes(), admin.as_bytes())) {
        return Err(Response::error(401, "bad_token", "the admin API needs Authorization: Bearer <admin token>"));
    }
    Ok(())
}

fn limits_json(shared: &Shared) -> serde_json::Value {
    let v = shared.admission.values();
    serde_json::json!({
        "max_conns_per_addr": v.max_conns_per_addr,
        "sessions_per_min": v.sessions_per_min,
        "placements_per_addr_per_min": v.placements_per_addr_per_min,
        "catchups_per_addr_per_min": v.catchups_per_addr_per_min,
        "anonymous_sessions": shared.sessions.mode(),
        "pow_difficulty": shared.sessions.difficulty(),
    })
}

/// `GET /api/v1/admin/limits`.
pub fn get_limits(req: &Req, shared: &Shared) -> Response {
    if let Err(r) = authorize(req, shared) {
        return r;
    }
    Response::json(200, limits_json(shared).to_string())
}

/// `POST /api/v1/admin/limits`: any subset of the keys `GET` shows.
pub fn set_limits(req: &Req, body: &[u8], shared: &Shared) -> Response {
    if let Err(r) = authorize(req, shared) {
        return r;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        max_conns_per_addr: Option<u32>,
        sessions_per_min: Option<u32>,
        placements_per_addr_per_min: Option<u32>,
        catchups_per_addr_per_min: Option<u32>,
        anonymous_sessions: Option<SessionMode>,
        pow_difficulty: Option<u8>,
    }
    let b: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, "bad_json", &format!("expected an object of limits: {e}")),
    };
    let difficulty = b.pow_difficulty.unwrap_or_else(|| shared.sessions.difficulty());
    if !(MIN_DIFFICULTY..=MAX_DIFFICULTY).contains(&difficulty) {
        return Response::error(
            400,
            "bad_body",
            &format!("pow_difficulty must be between {MIN_DIFFICULTY} and {MAX_DIFFICULTY}"),
        );
    }
    let old = shared.admission.values();
    shared.admission.set(LimitValues {
        max_conns_per_addr: b.max_conns_per_addr.unwrap_or(old.max_conns_per_addr),
        sessions_per_min: b.sessions_per_min.unwrap_or(old.sessions_per_min),
        placements_per_addr_per_min: b.placements_per_addr_per_min.unwrap_or(old.placements_per_addr_per_min),
        catchups_per_addr_per_min: b.catchups_per_addr_per_min.unwrap_or(old.catchups_per_addr_per_min),
    });
    shared.sessions.set(b.anonymous_sessions.unwrap_or_else(|| shared.sessions.mode()), difficulty);
    let now = limits_json(shared);
    tracing::info!(limits = %now, "admission limits changed");
    Response::json(200, now.to_string())
}

/// `POST /api/v1/admin/drain`: as SIGTERM.
pub fn drain(req: &Req, shared: &Shared) -> Response {
    if let Err(r) = authorize(req, shared) {
        return r;
    }
    shared.start_drain("POST /api/v1/admin/drain");
    let l = &shared.lifecycle;
    Response::json(
        202,
        serde_json::json!({"draining": true, "grace_ms": l.grace_ms(), "spread_ms": l.spread_ms()}).to_string(),
    )
}
