//! The admin API (`Authorization: Bearer <operator token>`, `roles.rs`) for what changes only
//! this node: the admission limits and session policy, and the drain. Every change is live and logged. What
//! every node must agree on (the cooldown, pause, the end, bans) is a control entry in the log:
//! `control_routes.rs`.
//!
//! Invariant: every route checks the token (hashed, then compared in constant time) and its role
//! before reading the body; values are
//! validated before any is applied, so a request changes all it names or nothing.

use crate::admission::LimitValues;
use crate::http::{bearer, Req, Response};
use crate::pow::{SessionMode, MAX_DIFFICULTY, MIN_DIFFICULTY};
use crate::roles::{Holder, Role};
use crate::shared::Shared;

/// Constant-time comparison, so the admin token cannot be guessed byte by byte from timing.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The holder of the request's token if their role allows `needed` (`roles.rs`), else the
/// answer: 403 `admin_disabled` (no token configured), 401 `bad_token`, 403 `forbidden_role`.
pub(crate) fn authorize_role(req: &Req, shared: &Shared, needed: Role) -> Result<Holder, Response> {
    if !shared.roles.enabled() {
        return Err(Response::error(
            403,
            "admin_disabled",
            "the admin API is off: start the server with --admin-token or --roles",
        ));
    }
    let Some(holder) = bearer(req).and_then(|t| shared.roles.holder(t)) else {
        return Err(Response::error(
            401,
            "bad_token",
            "the admin API needs Authorization: Bearer <an operator's or moderator's token>",
        ));
    };
    if !holder.role.allows(needed) {
        return Err(Response::error(
            403,
            "forbidden_role",
            &format!("this needs the {} role; {} is a {}", needed.name(), holder.name, holder.role.name()),
        ));
    }
    Ok(holder)
}

/// The node-local routes: operators only.
fn authorize(req: &Req, shared: &Shared) -> Result<(), Response> {
    authorize_role(req, shared, Role::Operator).map(|_| ())
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
