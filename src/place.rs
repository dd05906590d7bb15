//! A placement, from request to acknowledgement, shared by `POST /api/v1/place` and the
//! WebSocket `place` message: validate, take the user's cooldown from the limiter, append to the
//! edit log, and answer only once the edit is durable.
//!
//! Invariants: nothing is appended for an invalid request or a user cooling down; an edit the log
//! refuses gives the cooldown back (503, nothing placed); a success carries the edit's version.
//! On a shared log (Kafka) the local limiter check is only an optimisation: the answer waits for
//! the applier's log-order verdict on the edit's version, so a user placing through two nodes at
//! the same instant gets one success and one 429, and every node agrees which.

use crate::admission::AdmissionError;
use crate::client_addr::AddrKey;
use crate::control::Refusal;
use crate::edit_log::{AppendAck, Edit, LogError};
use crate::limiter::Permit;
use crate::log_rule::Rejection;
use crate::shared::Shared;
use crate::token::TokenError;
use futures_channel::oneshot;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// How long clients are told to wait when the log cannot take edits.
pub const LOG_RETRY_MS: u64 = 1000;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlaceError {
    #[error("the body is not valid JSON: {0}")]
    BadJson(String),
    #[error("the body must be an object with integer fields x, y and color: {0}")]
    BadBody(String),
    #[error("({x}, {y}) is outside the {width}x{height} canvas")]
    BadCoordinates { x: i64, y: i64, width: u32, height: u32 },
    #[error("color {color} is not in the palette (0 to {max})")]
    BadColor { color: i64, max: usize },
    #[error("placing needs a token: send Authorization: Bearer <token> (get one from POST /api/v1/session)")]
    MissingToken,
    #[error("{0}")]
    Token(TokenError),
    #[error("you are cooling down; you can place again in {} s", retry_after_ms.div_ceil(1000))]
    Cooldown { retry_after_ms: u64 },
    #[error("the canvas cannot take edits right now ({0}); nothing was placed, try again shortly")]
    LogUnavailable(LogError),
    #[error("too many placements from this connection are still in flight")]
    TooManyInFlight,
    #[error("{0}")]
    Admission(AdmissionError),
    #[error("your edit may be in the log, but its version is unknown ({0}); it appears on the canvas if it was valid (do not place it again)")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Refused(crate::control::Refusal),
    #[error("your edit is in the log at version {version}, but this node has not applied it within {waited_ms} ms; it appears on the canvas if it was valid (do not place it again)")]
    VerdictPending { version: u64, waited_ms: u64 },
}

impl PlaceError {
    pub fn status(&self) -> u16 {
        match self {
            PlaceError::BadJson(_)
            | PlaceError::BadBody(_)
            | PlaceError::BadCoordinates { .. }
            | PlaceError::BadColor { .. } => 400,
            PlaceError::MissingToken | PlaceError::Token(_) => 401,
            PlaceError::Cooldown { .. } | PlaceError::TooManyInFlight => 429,
            PlaceError::LogUnavailable(_) => 503,
            PlaceError::VerdictPending { .. } | PlaceError::OutcomeUnknown(_) => 504,
            PlaceError::Admission(a) => a.status(),
            PlaceError::Refused(r) => match r {
                Refusal::Banned | Refusal::Protected => 403,
                // 423 Locked: it opens again (resume); 410 Gone: it never does.
                Refusal::Paused => 423,
                Refusal::Ended => 410,
            },
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PlaceError::BadJson(_) => "bad_json",
            PlaceError::BadBody(_) => "bad_body",
            PlaceError::BadCoordinates { .. } => "bad_coordinates",
            PlaceError::BadColor { .. } => "bad_color",
            PlaceError::MissingToken => "missing_token",
            PlaceError::Token(t) => t.code(),
            PlaceError::Cooldown { .. } => "cooldown",
            PlaceError::LogUnavailable(_) => "log_unavailable",
            PlaceError::TooManyInFlight => "too_many_in_flight",
            PlaceError::VerdictPending { .. } => "verdict_pending",
            PlaceError::OutcomeUnknown(_) => "outcome_unknown",
            PlaceError::Admission(a) => a.code(),
            PlaceError::Refused(r) => r.code(),
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            PlaceError::Cooldown { retry_after_ms } => Some(*retry_after_ms),
            PlaceError::LogUnavailable(_) | PlaceError::TooManyInFlight => Some(LOG_RETRY_MS),
            PlaceError::Admission(a) => Some(a.retry_after_ms()),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct PlaceBody {
    pub x: i64,
    pub y: i64,
    pub color: i64,
}

/// Parses a placement body, telling broken JSON apart from the wrong shape.
pub fn parse_body(body: &[u8]) -> Result<PlaceBody, PlaceError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => PlaceError::BadBody(e.to_string()),
        _ => PlaceError::BadJson(e.to_string()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub version: u64,
    pub next_at_ms: u64,
    pub cooldown_ms: u64,
}

/// A placement accepted by the limiter and queued in the log.
pub struct Pending {
    ack: AppendAck,
    permit: Permit,
    cooldown_ms: u64,
    shared: Arc<Shared>,
    /// The shard whose client placed it: its `placement_ack` histogram times the answer.
    shard: usize,
    admitted: Instant,
}

/// Validates and queues a placement by `user` (its limiter key) from address `addr`, for a
/// client of `shard`. Synchronous: no awaiting here.
pub fn begin(
    shared: &Arc<Shared>,
    shard: usize,
    user: Option<u64>,
    addr: AddrKey,
    body: &PlaceBody,
) -> Result<Pending, PlaceError> {
    match begin_inner(shared, user, addr, body) {
        Ok((ack, permit, cooldown_ms)) => {
            Ok(Pending { ack, permit, cooldown_ms, shared: shared.clone(), shard, admitted: Instant::now() })
        }
        Err(e) => {
            shared.metrics.place_rejected(&e);
            Err(e)
        }
    }
}

/// What an admitted placement holds until its answer: the log's acknowledgement to come, the
/// cooldown permit, and the cooldown it was given.
type Admitted = (AppendAck, Permit, u64);

fn begin_inner(
    shared: &Arc<Shared>,
    user: Option<u64>,
    addr: AddrKey,
    body: &PlaceBody,
) -> Result<Admitted, PlaceError> {
    let g = &shared.geometry;
    let user = user.ok_or(PlaceError::MissingToken)?;
    if g.index(body.x, body.y).is_none() {
        let (width, height) = g.size();
        return Err(PlaceError::BadCoordinates { x: body.x, y: body.y, width, height });
    }
    if !g.valid_color(body.color) {
        return Err(PlaceError::BadColor { color: body.color, max: g.palette().len() - 1 });
    }
    let now = crate::now_ms();
    // A holder of the roles file may place in protected areas; the flag travels in the log so
    // every node judges the edit alike.
    let holder = if shared.roles.is_holder_user(user) { crate::control::EDIT_BY_MODERATOR } else { 0 };
    // The user's claim class sets their cooldown, and travels in the edit for the log-order rule.
    let class = if shared.claim_cooldowns.is_empty() { 0 } else { shared.claim_table.class(user) };
    let cooldown_ms = shared.claim_cooldowns.cooldown_ms(class, shared.limiter.cooldown_ms());
    let aux = holder | crate::claims::edit_flags(class);
    let edit = Edit { x: body.x as u16, y: body.y as u16, color: body.color as u8, user, ts_ms: now, ext: 0, aux };
    // The switches as this node last applied them: an early refusal. The log has the last word
    // (the embedded writer, or the log-order rule on a shared log).
    if let Some(r) = shared.switches.refuse(&edit) {
        return Err(PlaceError::Refused(r));
    }
    let permit = shared
        .limiter
        .try_acquire_for(user, now, cooldown_ms)
        .map_err(|c| PlaceError::Cooldown { retry_after_ms: c.retry_after_ms })?;
    // The address pays only for placements its user may make: a user cooling down does not use
    // up the budget of everyone else behind the same address.
    if let Err(e) = shared.admission.placement(addr, now) {
        shared.limiter.release(permit);
        shared.metrics.admission_refused(&e);
        return Err(PlaceError::Admission(e));
    }
    match shared.log.append_named(edit, shared.names.for_append(user)) {
        Ok(ack) => Ok((ack, permit, cooldown_ms)),
        Err(e) => {
            shared.limiter.release(permit);
            Err(PlaceError::LogUnavailable(e))
        }
    }
}

/// Waits for the applier's verdict on `version`, bounded: if this node's tail stalls after the
/// broker took the edit, the placement answers `verdict_pending` instead of hanging.
async fn verdict(
    shared: &Shared,
    verdicts: &crate::verdict::Verdicts,
    version: u64,
) -> Result<Result<crate::verdict::Verdict, oneshot::Canceled>, PlaceError> {
    let wait = verdicts.wait(version);
    let limit = std::time::Duration::from_millis(2 * shared.config.args.kafka_timeout_ms);
    glommio::timer::timeout(limit, async { Ok(wait.await) })
        .await
        .map_err(|_| PlaceError::VerdictPending { version, waited_ms: limit.as_millis() as u64 })
}

impl Pending {
    /// Waits until the edit is durable (or refused).
    pub async fn finish(self) -> Result<Placed, PlaceError> {
        let result = match self.ack.await {
            Ok(Ok(version)) => {
                Ok(Placed { version, next_at_ms: self.permit.at_ms + self.cooldown_ms, cooldown_ms: self.cooldown_ms })
            }
            Ok(Err(LogError::OutcomeUnknown(why))) => {
                // The edit may count in log order: the user is cooling down either way.
                let e = PlaceError::OutcomeUnknown(why);
                self.shared.metrics.place_rejected(&e);
                return Err(e);
            }
            Ok(Err(LogError::Refused(r))) => Err(PlaceError::Refused(r)),
            Ok(Err(e)) => Err(PlaceError::LogUnavailable(e)),
            Err(_) => Err(PlaceError::LogUnavailable(LogError::Closed)),
        };
        // On a shared log the edit is valid only if the log-order rule says so (see `verdict`).
        let result = match (result, &self.shared.verdicts) {
            (Ok(p), Some(verdicts)) => match verdict(&self.shared, verdicts, p.version).await {
                Err(e) => Err(e),
                Ok(Ok(Ok(()))) => Ok(p),
                Ok(Ok(Err(Rejection::Switch(r)))) => Err(PlaceError::Refused(r)),
                Ok(Ok(Err(Rejection::Cooldown { next_at_ms }))) => {
                    // The user's valid edit is already in the limiter (learned from the log), so
                    // the permit is kept: the user is cooling down either way.
                    let retry_after_ms = next_at_ms.saturating_sub(crate::now_ms()).max(1);
                    self.shared.metrics.place_rejected(&PlaceError::Cooldown { retry_after_ms });
                    return Err(PlaceError::Cooldown { retry_after_ms });
                }
                Ok(Err(_)) => Err(PlaceError::LogUnavailable(LogError::Closed)),
            },
            (r, _) => r,
        };
        match &result {
            Ok(_) => {
                self.shared.metrics.placements_ok.fetch_add(1, Ordering::Relaxed);
                if let Some(stats) = self.shared.shard_stats.get(self.shard) {
                    stats.placement_ack.record(self.admitted.elapsed());
                }
            }
            Err(e) => {
                self.shared.limiter.release(self.permit);
                self.shared.metrics.place_rejected(e);
            }
        }
        result
    }
}

/// The JSON error body of PROTOCOL.md.
pub fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}
