//! The admin routes that write control entries (`control.rs`) to the ordered log:
//! `POST /api/v1/admin/{cooldown,pause,resume,end,ban,unban,protect,unprotect,fill,restore,resize}`, and
//! `GET /api/v1/admin/audit`,
//! the control entries applied, read back. Each POST answers with the version of its entry once
//! it is durable; every node applies it at that version.
//!
//! Invariant: a request is checked whole (token, body, the user it names) before anything is
//! appended, so a bad request writes nothing to the log. Not here: the routes that change only
//! this node (`admin.rs`: limits, drain).

use crate::bounds::MAX_GROWN_PIXELS;
use crate::control::{Control, Rect, AUDIT_KEEP, MAX_BANS, MAX_COOLDOWN_MS, MAX_PROTECTED, MAX_REGION_PIXELS};
use crate::edit_log::Edit;
use crate::http::{Req, Response};
use crate::region;
use crate::roles::{Holder, Role};
use crate::shared::Shared;
use serde::Deserialize;
use std::sync::atomic::Ordering;

/// Audit entries one request returns unless it asks for fewer.
const AUDIT_DEFAULT: usize = 100;
use crate::bounds::APPLY_WAIT;
const APPLY_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// `POST /api/v1/admin/<action>`.
pub async fn post(req: &Req, body: &[u8], shared: &Shared, action: &str) -> Response {
    let holder = match crate::admin::authorize_role(req, shared, needed_role(action)) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let control = match parse(action, body, shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !changes_pixels(&control) {
        return append(shared, vec![control.to_edit(crate::now_ms())], &holder, control).await;
    }
    // One region change at a time per node: each reads two canvases and may log a million edits.
    let Some(_busy) = RegionSlot::take(shared) else {
        return Response::error(
            409,
            "region_busy",
            "another fill, restore or revert is being logged; try again shortly",
        );
    };
    region(shared, control, &holder).await
}

/// The node's one region slot, given back when dropped (also when the request is abandoned).
struct RegionSlot<'a>(&'a Shared);

impl<'a> RegionSlot<'a> {
    fn take(shared: &'a Shared) -> Option<Self> {
        (!shared.region_busy.swap(true, Ordering::AcqRel)).then_some(RegionSlot(shared))
    }
}

impl Drop for RegionSlot<'_> {
    fn drop(&mut self) {
        self.0.region_busy.store(false, Ordering::Release);
    }
}

/// Fill, restore and a ban with a revert log pixel edits after their entry.
fn changes_pixels(c: &Control) -> bool {
    matches!(c, Control::Fill { .. } | Control::Restore { .. } | Control::Ban { revert_since_s: 1.., .. })
}

/// Computes the region's edits from the history (on a blocking thread) and logs the entry and
/// them together.
async fn region(shared: &Shared, control: Control, by: &Holder) -> Response {
    let h = shared.history.clone();
    let who = crate::region::By { user: crate::token::user_key(&by.name), ts_ms: crate::now_ms() };
    let computed = glommio::executor()
        .spawn_blocking(move || -> Result<Vec<Edit>, String> {
            match control {
                Control::Fill { rect, color } => region::fill(&h, &rect, color, who).map_err(|e| e.to_string()),
                Control::Restore { rect, version } => {
                    region::restore(&h, &rect, version, who).map_err(|e| e.to_string())
                }
                Control::Ban { user, revert_since_s } => {
                    region::revert(&h, user, revert_since_s * 1000, who).map_err(|e| e.to_string())
                }
                _ => unreachable!("changes_pixels"),
            }
        })
        .await;
    let pixels = match computed {
        Ok(p) => p,
        Err(e) => return Response::error(422, "region_failed", &e),
    };
    let mut edits = Vec::with_capacity(pixels.len() + 1);
    edits.push(control.to_edit(who.ts_ms));
    edits.extend(pixels);
    append(shared, edits, by, control).await
}

/// Operators change the switches; moderators act on users and areas (operators may too).
fn needed_role(action: &str) -> Role {
    match action {
        "ban" | "unban" | "protect" | "unprotect" | "fill" | "restore" => Role::Moderator,
        _ => Role::Operator,
    }
}

fn bad_json(what: &str, e: serde_json::Error) -> Response {
    Response::error(400, "bad_json", &format!("expected {what}: {e}"))
}

fn parse(action: &str, body: &[u8], shared: &Shared) -> Result<Control, Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cooldown {
        seconds: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct End {
        at_ms: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct User {
        user: Option<String>,
        user_key: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ban {
        user: Option<String>,
        user_key: Option<String>,
        revert_since_ms: Option<u64>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fill {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        color: u32,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Restore {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        version: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Resize {
        width: u32,
        height: u32,
    }
    match action {
        "pause" => empty(body).map(|()| Control::Pause),
        "resume" => empty(body).map(|()| Control::Resume),
        "cooldown" => {
            let b: Cooldown = serde_json::from_slice(body).map_err(|e| bad_json("{\"seconds\": N}", e))?;
            match b.seconds.checked_mul(1000) {
                Some(ms) if ms <= MAX_COOLDOWN_MS => Ok(Control::Cooldown { ms }),
                _ => Err(Response::error(400, "bad_body", "seconds must be at most one year")),
            }
        }
        "end" => {
            let b: End = serde_json::from_slice(body).map_err(|e| bad_json("{\"at_ms\": UNIX_MS}", e))?;
            Ok(Control::End { at_ms: b.at_ms })
        }
        "unban" => {
            let b: User =
                serde_json::from_slice(body).map_err(|e| bad_json("{\"user\": NAME} or {\"user_key\": HEX16}", e))?;
            Ok(Control::Unban { user: known_user(shared, b.user.as_deref(), b.user_key.as_deref())? })
        }
        "fill" => {
            let b: Fill =
                serde_json::from_slice(body).map_err(|e| bad_json("{\"x\",\"y\",\"w\",\"h\",\"color\"}", e))?;
            let rect = region_rect(shared, b.x, b.y, b.w, b.h)?;
            if !shared.geometry.valid_color(b.color as i64) {
                let msg =
                    format!("color {} is not in the palette (0 to {})", b.color, shared.geometry.palette().len() - 1);
                return Err(Response::error(400, "bad_color", &msg));
            }
            Ok(Control::Fill { rect, color: b.color as u8 })
        }
        "restore" => {
            let b: Restore =
                serde_json::from_slice(body).map_err(|e| bad_json("{\"x\",\"y\",\"w\",\"h\",\"version\"}", e))?;
            let rect = region_rect(shared, b.x, b.y, b.w, b.h)?;
            let (base, head) = (shared.history.base(), shared.history.version());
            if b.version > head {
                let msg = format!("version {} is in the future: the canvas is at {head}", b.version);
                return Err(Response::error(404, "version_not_yet", &msg));
            }
            if b.version < base {
                let msg = format!("this node's history starts at version {base}; {} is before it", b.version);
                return Err(Response::error(410, "version_gone", &msg));
            }
            Ok(Control::Restore { rect, version: b.version })
        }
        "ban" => {
            let b: Ban = serde_json::from_slice(body)
                .map_err(|e| bad_json("{\"user\": NAME} or {\"user_key\": HEX16}, and \"revert_since_ms\"", e))?;
            let user = known_user(shared, b.user.as_deref(), b.user_key.as_deref())?;
            let revert_since_s = match b.revert_since_ms {
                None => 0,
                // Whole seconds (the entry's 40 bits): a revert starts up to a second earlier.
                Some(ms) if (1000..=crate::now_ms()).contains(&ms) => ms / 1000,
                Some(_) => {
                    return Err(Response::error(400, "bad_body", "revert_since_ms must be a past Unix time in ms"));
                }
            };
            if !shared.switches.is_banned(user) && shared.switches.banned_count() >= MAX_BANS {
                return Err(Response::error(
                    409,
                    "too_many_bans",
                    &format!("at most {MAX_BANS} users can be banned at once"),
                ));
            }
            Ok(Control::Ban { user, revert_since_s })
        }
        "resize" => {
            let b: Resize = serde_json::from_slice(body).map_err(|e| bad_json("{\"width\": N, \"height\": N}", e))?;
            resize(shared, b.width, b.height)
        }
        "protect" | "unprotect" => {
            let rect = parse_rect(body, shared)?;
            if action == "unprotect" {
                return Ok(Control::Unprotect { rect });
            }
            if shared.switches.protected().len() >= MAX_PROTECTED {
                let msg = format!("at most {MAX_PROTECTED} rectangles can be protected at once; unprotect some first");
                return Err(Response::error(409, "too_many_protected", &msg));
            }
            Ok(Control::Protect { rect })
        }
        _ => Err(Response::error(404, "not_found", &format!("no such admin action: {action}"))),
    }
}

/// A resize the canvas can take now: each side at least its size, one larger, within the bound.
/// (Two resizes racing on a cluster still compose: the log-order rule takes the larger side.)
fn resize(shared: &Shared, width: u32, height: u32) -> Result<Control, Response> {
    let (w, h) = shared.geometry.size();
    if width < w || height < h {
        let msg = format!("the canvas is {w}x{h} and only grows: {width}x{height} would cut it");
        return Err(Response::error(400, "cannot_shrink", &msg));
    }
    if (width, height) == (w, h) {
        return Err(Response::error(400, "no_change", &format!("the canvas is already {w}x{h}")));
    }
    let pixels = width as u64 * height as u64;
    if width > 65_535 || height > 65_535 || pixels > MAX_GROWN_PIXELS {
        let msg = format!(
            "{width}x{height} is {pixels} pixels; a canvas grows to at most {MAX_GROWN_PIXELS} pixels and 65535 per side"
        );
        return Err(Response::error(413, "canvas_too_large", &msg));
    }
    Ok(Control::Resize { width, height })
}

/// `{"x","y","w","h"}`: a non-empty rectangle inside the canvas.
fn parse_rect(body: &[u8], shared: &Shared) -> Result<Rect, Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct R {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
    }
    let r: R = serde_json::from_slice(body).map_err(|e| bad_json("{\"x\",\"y\",\"w\",\"h\"}", e))?;
    check_rect(shared, r.x, r.y, r.w, r.h)
}

fn check_rect(shared: &Shared, x: u32, y: u32, w: u32, h: u32) -> Result<Rect, Response> {
    let (width, height) = shared.geometry.size();
    let inside = w >= 1 && h >= 1 && x.saturating_add(w) <= width && y.saturating_add(h) <= height;
    if !inside {
        let msg = format!("the rectangle must be non-empty and inside the {width}x{height} canvas");
        return Err(Response::error(400, "bad_rect", &msg));
    }
    // Inside a canvas of sides at most 65535: every field fits 16 bits.
    Ok(Rect { x: x as u16, y: y as u16, w: w as u16, h: h as u16 })
}

/// A rectangle a region change may cover: inside the canvas and at most `MAX_REGION_PIXELS`.
fn region_rect(shared: &Shared, x: u32, y: u32, w: u32, h: u32) -> Result<Rect, Response> {
    let rect = check_rect(shared, x, y, w, h)?;
    if w as usize * h as usize > MAX_REGION_PIXELS {
        let msg = format!("{w}x{h} is {} pixels; one change covers at most {MAX_REGION_PIXELS}", w as u64 * h as u64);
        return Err(Response::error(413, "region_too_large", &msg));
    }
    Ok(rect)
}

/// Pause and resume take no arguments: an empty body or `{}`.
fn empty(body: &[u8]) -> Result<(), Response> {
    let text = std::str::from_utf8(body).unwrap_or("?").trim();
    match text {
        "" | "{}" => Ok(()),
        _ => Err(Response::error(400, "bad_body", "this action takes no arguments: send an empty body or {}")),
    }
}

/// The user key of a user this canvas has seen (in the user directory: somebody who placed at
/// least once), by display name or by the 16 hex digits lookups and exports show.
fn known_user(shared: &Shared, name: Option<&str>, key: Option<&str>) -> Result<u64, Response> {
    let key = match (name, key) {
        (Some(n), None) => crate::token::user_key(n),
        (None, Some(k)) if k.len() == 16 => u64::from_str_radix(k, 16)
            .map_err(|_| Response::error(400, "bad_body", "user_key must be 16 hex digits"))?,
        (None, Some(_)) => return Err(Response::error(400, "bad_body", "user_key must be 16 hex digits")),
        _ => return Err(Response::error(400, "bad_body", "name the user by exactly one of user or user_key")),
    };
    match shared.names.get(key) {
        Some(_) => Ok(key),
        None => Err(Response::error(
            404,
            "unknown_user",
            "no such user on this canvas (a user is known once they have placed a pixel)",
        )),
    }
}

/// Logs `edits` (the control entry first, then any region edits) and answers once they are
/// durable and applied here.
async fn append(shared: &Shared, mut edits: Vec<Edit>, by: &Holder, control: Control) -> Response {
    edits[0].aux = by.actor;
    let pixels = edits.len() - 1;
    let ack = if pixels == 0 {
        shared.log.append(edits[0])
    } else {
        // A shared log's `append_many` waits for the broker: not on the shard's thread.
        let log = shared.log.clone();
        let name: Option<Box<str>> = Some(by.name.clone().into());
        glommio::executor().spawn_blocking(move || log.append_many(edits, name)).await
    };
    let ack = match ack {
        Ok(ack) => ack,
        Err(e) => return Response::error(503, "log_unavailable", &e.to_string()),
    };
    match ack.await {
        Ok(Ok(version)) => {
            tracing::info!(version, action = control.action(), entry = ?control, by = %by.name, pixels, "control entry logged");
            let applied = applied_here(shared, version).await;
            let body = serde_json::json!({"action": control.action(), "version": version, "applied": applied, "pixels": pixels});
            // 202: durable and in force on every node once it applies `version`, but this node
            // had not yet applied it when the wait ran out.
            Response::json(if applied { 200 } else { 202 }, body.to_string())
        }
        Ok(Err(e)) => Response::error(503, "log_unavailable", &e.to_string()),
        Err(_) => Response::error(503, "log_unavailable", "the edit log is shut down"),
    }
}

/// Waits (bounded by `APPLY_WAIT`) until this node's applier has applied `version`, so that
/// when the answer arrives the change is in force here: a placement sent next sees it.
async fn applied_here(shared: &Shared, version: u64) -> bool {
    let until = std::time::Instant::now() + APPLY_WAIT;
    loop {
        if shared.applier.version.load(std::sync::atomic::Ordering::Acquire) >= version {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        glommio::timer::sleep(APPLY_POLL).await;
    }
}

/// `GET /api/v1/admin/audit?limit=N`: the control entries applied, newest first.
pub fn audit(req: &Req, shared: &Shared) -> Response {
    if let Err(r) = crate::admin::authorize_role(req, shared, Role::Moderator) {
        return r;
    }
    let limit = match crate::http::query_param(&req.query, "limit") {
        None => AUDIT_DEFAULT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=AUDIT_KEEP).contains(&n) => n,
            _ => return Response::error(400, "bad_query", &format!("limit must be between 1 and {AUDIT_KEEP}")),
        },
    };
    let entries: Vec<serde_json::Value> =
        shared.audit.newest(limit).iter().map(|e| e.json(&shared.names, &shared.roles)).collect();
    let s = &shared.switches;
    let body = serde_json::json!({
        "switches": {
            "paused": s.paused(),
            "end_at_ms": s.end_at_ms(),
            "banned": s.banned_count(),
            "protected": s.protected(),
            "cooldown_ms": shared.limiter.cooldown_ms(),
        },
        "entries": entries,
    });
    Response::json(200, body.to_string())
}
