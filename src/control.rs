//! Control entries: the event's switches (cooldown, pause and resume, the end of the event),
//! bans, protected rectangles and region changes (fill, restore), as records of the ordered log,
//! and `Switches`, the state they build.
//!
//! A control entry is a log record like an edit, so every node applies it at the same version, a
//! restart or a late node replays it, and the log is the audit trail. It is encoded in the
//! 32-byte edit record (log format 2) as an edit at `x = CONTROL_X` (65535: no canvas has that
//! column, sides being at most 65535) with `color` = its kind, `user` = its main argument `b`
//! (the cooldown in ms, the end time, a user key, a rectangle), `y` and `ext` = a 40-bit second
//! argument `a` (a version, a color, a time in seconds), `ts_ms` = when it was made, and `aux` =
//! its actor (`roles::actor_id`; 0 = the `--admin-token` operator). Format 1 logs (every log
//! written before control entries) hold no record with `x = 65535`, so they read unchanged; a
//! binary that predates format 2 applies a control record as an edit outside its canvas, a no-op,
//! rather than misreading it. For a pixel edit `aux` holds its flags (`EDIT_BY_MODERATOR`,
//! `EDIT_REGION`).
//!
//! A region change (fill, restore, a ban's revert) is its control entry followed by the pixel
//! edits it makes, flagged `EDIT_REGION`, appended together (`EditLog::append_many`): the pixels
//! are in the log, so every reader (nodes, late nodes, export, timelapse) applies them exactly,
//! without the history the route computed them from.
//!
//! What reads edits without knowing this module (the history index, export, the timelapse) sees
//! a control entry as a version that changed no pixel; the one entry every reader must know is
//! `Resize`, which changes what later pixel indexes mean (`resize_of`).
//!
//! Invariants: `Switches` after version V depends only on the entries at versions `..=V`, in
//! order; an unknown kind (a newer binary's) changes nothing and is reported once per version;
//! the banned set is bounded by `MAX_BANS` (a ban beyond it is refused before it is logged).

pub use crate::bounds::{AUDIT_KEEP, MAX_BANS, MAX_PROTECTED, MAX_REGION_PIXELS};
use crate::edit_log::Edit;
use rustc_hash::FxHashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use thiserror::Error;

/// The column that marks a record as a control entry.
pub const CONTROL_X: u16 = u16::MAX;
/// The log's record format: 1 = edits only; 2 = edits and control entries.
pub const LOG_FORMAT: u32 = 2;
/// The longest cooldown an operator can set (as the admin route always allowed).
pub const MAX_COOLDOWN_MS: u64 = 365 * 24 * 3600 * 1000;

const KIND_COOLDOWN: u8 = 1;
const KIND_PAUSE: u8 = 2;
const KIND_RESUME: u8 = 3;
const KIND_END: u8 = 4;
const KIND_BAN: u8 = 5;
const KIND_UNBAN: u8 = 6;
const KIND_PROTECT: u8 = 7;
const KIND_UNPROTECT: u8 = 8;
const KIND_FILL: u8 = 9;
const KIND_RESTORE: u8 = 10;
const KIND_RESIZE: u8 = 11;
/// Kind 0 is no entry at all: a record a shared log could not decode, kept as a no-op version.
pub const KIND_VOID: u8 = 0;
/// The second argument's width: versions and times in seconds up to 2^40 (a trillion).
pub const ARG_A_MAX: u64 = (1 << 40) - 1;
/// `Edit::aux` of a pixel edit made by a region change: exempt from the switches and the
/// cooldown (a moderator's restore goes through a pause or a protection it made).
pub const EDIT_REGION: u32 = 2;
/// `Edit::aux` of a pixel edit: placed by a holder of the roles file (they may place in
/// protected rectangles). Set by the admitting node, so every node judges the edit alike.
pub const EDIT_BY_MODERATOR: u32 = 1;

/// A rectangle of the canvas, as a control entry carries it (packed into `Edit::user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
}

impl Rect {
    pub fn contains(&self, x: u16, y: u16) -> bool {
        (x as u32).wrapping_sub(self.x as u32) < self.w as u32 && (y as u32).wrapping_sub(self.y as u32) < self.h as u32
    }

    /// Whether `other` lies wholly inside this rectangle.
    pub fn covers(&self, o: &Rect) -> bool {
        o.x >= self.x
            && o.y >= self.y
            && o.x as u32 + o.w as u32 <= self.x as u32 + self.w as u32
            && o.y as u32 + o.h as u32 <= self.y as u32 + self.h as u32
    }

    fn pack(&self) -> u64 {
        self.x as u64 | (self.y as u64) << 16 | (self.w as u64) << 32 | (self.h as u64) << 48
    }

    fn unpack(v: u64) -> Rect {
        Rect { x: v as u16, y: (v >> 16) as u16, w: (v >> 32) as u16, h: (v >> 48) as u16 }
    }
}

/// One control entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The cooldown for every user from this version on.
    Cooldown {
        ms: u64,
    },
    /// Placements are refused (`paused`) until a `Resume`.
    Pause,
    Resume,
    /// Placements made at or after `at_ms` are refused (`ended`); a later `End` replaces it.
    End {
        at_ms: u64,
    },
    /// `revert_since_s` (Unix seconds, 0 = none): the route also reverts the pixels the user
    /// placed since then (as the region edits that follow).
    Ban {
        user: u64,
        revert_since_s: u64,
    },
    Unban {
        user: u64,
    },
    /// Only holders of the roles file may place inside it.
    Protect {
        rect: Rect,
    },
    /// Lifts every protection lying wholly inside the rectangle.
    Unprotect {
        rect: Rect,
    },
    /// The rectangle set to one color (the region edits that follow).
    Fill {
        rect: Rect,
        color: u8,
    },
    /// The rectangle set back to the canvas at `version` (the region edits that follow).
    Restore {
        rect: Rect,
        version: u64,
    },
    /// The canvas grows to `width`x`height` at this version (`Geometry::grown`: never shrinks;
    /// new pixels are color 0). Pixel indexes (`y * width + x`) of later versions use the new
    /// width; clients get the resize in the stream (PROTOCOL.md).
    Resize {
        width: u32,
        height: u32,
    },
}

impl Control {
    /// The entry as a log record made at `ts_ms`.
    pub fn to_edit(self, ts_ms: u64) -> Edit {
        let (kind, b, a) = match self {
            Control::Cooldown { ms } => (KIND_COOLDOWN, ms, 0),
            Control::Pause => (KIND_PAUSE, 0, 0),
            Control::Resume => (KIND_RESUME, 0, 0),
            Control::End { at_ms } => (KIND_END, at_ms, 0),
            Control::Ban { user, revert_since_s } => (KIND_BAN, user, revert_since_s),
            Control::Unban { user } => (KIND_UNBAN, user, 0),
            Control::Protect { rect } => (KIND_PROTECT, rect.pack(), 0),
            Control::Unprotect { rect } => (KIND_UNPROTECT, rect.pack(), 0),
            Control::Fill { rect, color } => (KIND_FILL, rect.pack(), color as u64),
            Control::Restore { rect, version } => (KIND_RESTORE, rect.pack(), version),
            Control::Resize { width, height } => (KIND_RESIZE, (width as u64) << 32 | height as u64, 0),
        };
        assert!(a <= ARG_A_MAX, "the routes keep the second argument within 40 bits");
        Edit { x: CONTROL_X, y: a as u16, ext: (a >> 16) as u32, color: kind, user: b, ts_ms, aux: 0 }
    }

    /// The action's name in the audit list and the admin API.
    pub fn action(&self) -> &'static str {
        match self {
            Control::Cooldown { .. } => "cooldown",
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::End { .. } => "end",
            Control::Ban { .. } => "ban",
            Control::Unban { .. } => "unban",
            Control::Protect { .. } => "protect",
            Control::Unprotect { .. } => "unprotect",
            Control::Fill { .. } => "fill",
            Control::Restore { .. } => "restore",
            Control::Resize { .. } => "resize",
        }
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Pixel,
    Control(Control),
    /// A control entry of a kind this binary does not know (written by a newer one).
    Unknown(u8),
    /// No entry: a version a shared log could not decode (`KIND_VOID`).
    Void,
}

pub fn classify(e: &Edit) -> Entry {
    if e.x != CONTROL_X {
        return Entry::Pixel;
    }
    let (a, b) = (e.y as u64 | (e.ext as u64) << 16, e.user);
    Entry::Control(match e.color {
        KIND_COOLDOWN => Control::Cooldown { ms: b },
        KIND_PAUSE => Control::Pause,
        KIND_RESUME => Control::Resume,
        KIND_END => Control::End { at_ms: b },
        KIND_BAN => Control::Ban { user: b, revert_since_s: a },
        KIND_UNBAN => Control::Unban { user: b },
        KIND_PROTECT => Control::Protect { rect: Rect::unpack(b) },
        KIND_UNPROTECT => Control::Unprotect { rect: Rect::unpack(b) },
        KIND_FILL => Control::Fill { rect: Rect::unpack(b), color: a as u8 },
        KIND_RESTORE => Control::Restore { rect: Rect::unpack(b), version: a },
        KIND_RESIZE => Control::Resize { width: (b >> 32) as u32, height: b as u32 },
        KIND_VOID => return Entry::Void,
        other => return Entry::Unknown(other),
    })
}

/// The size a record asks the canvas to grow to, if it is a resize entry (the history and the
/// tools read this without the rest of the control entries).
pub fn resize_of(e: &Edit) -> Option<(u32, u32)> {
    match classify(e) {
        Entry::Control(Control::Resize { width, height }) => Some((width, height)),
        _ => None,
    }
}

/// Why the switches refuse a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("you are banned from placing on this canvas")]
    Banned,
    #[error("placing is paused by the operators; try again later")]
    Paused,
    #[error("the event has ended; the canvas is final")]
    Ended,
    #[error("this area is protected by the moderators")]
    Protected,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::Paused => "paused",
            Refusal::Ended => "ended",
            Refusal::Protected => "protected",
        }
    }
}

/// The switches as of a version: built by applying control entries in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// The cooldown set in the log, if any (else the configured one holds).
    pub cooldown_ms: Option<u64>,
    pub paused: bool,
    pub end_at_ms: Option<u64>,
    pub banned: FxHashSet<u64>,
    /// In the order they were protected; at most `MAX_PROTECTED`.
    pub protected: Vec<Rect>,
}

impl Switches {
    pub fn apply(&mut self, c: &Control) {
        match *c {
            Control::Cooldown { ms } => self.cooldown_ms = Some(ms),
            Control::Pause => self.paused = true,
            Control::Resume => self.paused = false,
            Control::End { at_ms } => self.end_at_ms = Some(at_ms),
            Control::Ban { user, .. } => {
                // The admin route refuses a ban beyond the bound; a log written elsewhere with
                // more is applied up to it, the same way on every node.
                if self.banned.len() < MAX_BANS {
                    self.banned.insert(user);
                }
            }
            Control::Unban { user } => {
                self.banned.remove(&user);
            }
            Control::Protect { rect } => {
                if self.protected.len() < MAX_PROTECTED && !self.protected.contains(&rect) {
                    self.protected.push(rect);
                }
            }
            Control::Unprotect { rect } => self.protected.retain(|p| !rect.covers(p)),
            // Their pixels are the region edits that follow.
            Control::Fill { .. } | Control::Restore { .. } => {}
            // The canvas's geometry is the applier's (and the history's), not a switch.
            Control::Resize { .. } => {}
        }
    }

    /// Whether any switch can refuse a placement.
    pub fn can_refuse(&self) -> bool {
        self.paused || self.end_at_ms.is_some() || !self.banned.is_empty() || !self.protected.is_empty()
    }

    /// Whether a pixel edit by `e.user` at `e.ts_ms` is refused, by the switches alone. A region
    /// edit never is.
    pub fn refuse(&self, e: &Edit) -> Option<Refusal> {
        if e.aux & EDIT_REGION != 0 {
            return None;
        }
        if self.banned.contains(&e.user) {
            return Some(Refusal::Banned);
        }
        if self.paused {
            return Some(Refusal::Paused);
        }
        if matches!(self.end_at_ms, Some(end) if e.ts_ms >= end) {
            return Some(Refusal::Ended);
        }
        let by_holder = e.aux & EDIT_BY_MODERATOR != 0;
        (!by_holder && self.protected.iter().any(|r| r.contains(e.x, e.y))).then_some(Refusal::Protected)
    }
}

/// The switches as the shards read them at admission (a fast early refusal; the log writer or
/// the log-order rule has the last word, with the same `Switches::refuse`). Written by the
/// applier only. While no switch can refuse anything (the usual state) a placement reads one
/// atomic and takes no lock; otherwise it takes the read lock, once per placement, next to the
/// limiter's own lock.
#[derive(Default)]
pub struct LiveSwitches {
    active: AtomicBool,
    current: RwLock<Switches>,
}

impl LiveSwitches {
    pub fn publish(&self, s: &Switches) {
        let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *c != *s {
            c.clone_from(s);
        }
        self.active.store(s.can_refuse(), Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Switches> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `e` as the admitting node would log it (`ts_ms` now, `aux` its flags).
    pub fn refuse(&self, e: &Edit) -> Option<Refusal> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.read().refuse(e)
    }

    pub fn paused(&self) -> bool {
        self.read().paused
    }

    pub fn end_at_ms(&self) -> Option<u64> {
        self.read().end_at_ms
    }

    pub fn banned_count(&self) -> usize {
        self.read().banned.len()
    }

    pub fn is_banned(&self, user: u64) -> bool {
        self.read().banned.contains(&user)
    }

    pub fn protected(&self) -> Vec<Rect> {
        self.read().protected.clone()
    }
}

/// One applied control entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditEntry {
    pub version: u64,
    pub ts_ms: u64,
    pub control: Control,
    /// Who made it (`roles::actor_id`; 0 = the `--admin-token` operator).
    pub actor: u32,
}

impl AuditEntry {
    pub fn json(&self, names: &crate::names::Names, roles: &crate::roles::Roles) -> serde_json::Value {
        let mut v = serde_json::json!({
            "version": self.version,
            "ts_ms": self.ts_ms,
            "action": self.control.action(),
            "by": roles.actor_name(self.actor),
        });
        match self.control {
            Control::Cooldown { ms } => v["seconds"] = (ms / 1000).into(),
            Control::End { at_ms } => v["at_ms"] = at_ms.into(),
            Control::Ban { user, revert_since_s } => {
                v["user_key"] = format!("{user:016x}").into();
                v["user"] = names.get(user).map(|n| n.to_string()).into();
                if revert_since_s > 0 {
                    v["revert_since_ms"] = (revert_since_s * 1000).into();
                }
            }
            Control::Unban { user } => {
                v["user_key"] = format!("{user:016x}").into();
                v["user"] = names.get(user).map(|n| n.to_string()).into();
            }
            Control::Fill { rect, color } => {
                v["rect"] = serde_json::json!({"x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h});
                v["color"] = color.into();
            }
            Control::Restore { rect, version } => {
                v["rect"] = serde_json::json!({"x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h});
                v["to_version"] = version.into();
            }
            Control::Protect { rect } | Control::Unprotect { rect } => {
                v["rect"] = serde_json::json!({"x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h});
            }
            Control::Resize { width, height } => {
                v["width"] = width.into();
                v["height"] = height.into();
            }
            Control::Pause | Control::Resume => {}
        }
        v
    }
}

/// The last `AUDIT_KEEP` control entries applied (the applier writes, the admin route reads).
#[derive(Default)]
pub struct Audit {
    entries: std::sync::Mutex<std::collections::VecDeque<AuditEntry>>,
}

impl Audit {
    pub fn push(&self, e: AuditEntry) {
        let mut q = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == AUDIT_KEEP {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Newest first, at most `n`.
    pub fn newest(&self, n: usize) -> Vec<AuditEntry> {
        let q = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().take(n).copied().collect()
    }

    /// Every kept entry, oldest first (for the checkpoint).
    pub fn all(&self) -> Vec<AuditEntry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_round_trips_through_a_record() {
        let all = [
            Control::Cooldown { ms: 300_000 },
            Control::Pause,
            Control::Resume,
            Control::End { at_ms: 1_491_238_800_000 },
            Control::Ban { user: 0xdead_beef, revert_since_s: ARG_A_MAX },
            Control::Unban { user: u64::MAX },
            Control::Protect { rect: Rect { x: 1, y: 2, w: 65_535, h: 4 } },
            Control::Unprotect { rect: Rect { x: 0, y: 0, w: 1, h: 1 } },
            Control::Fill { rect: Rect { x: 3, y: 4, w: 5, h: 6 }, color: 31 },
            Control::Restore { rect: Rect { x: 0, y: 0, w: 1000, h: 1000 }, version: 16_000_000 },
            Control::Resize { width: 65_535, height: 2_000 },
        ];
        for c in all {
            let e = c.to_edit(42);
            let mut rec = [0u8; crate::edit_log::file::RECORD];
            crate::edit_log::file::encode(7, &e, &mut rec);
            let back = crate::edit_log::file::decode(7, &rec).unwrap();
            assert_eq!(classify(&back), Entry::Control(c));
            assert_eq!(back.ts_ms, 42);
            // Bytes 24..28 (the actor) are zero: the --admin-token operator.
            assert_eq!(rec[24..28], [0; 4]);
        }
        let pixel = Edit { x: 65_534, y: 3, color: 1, user: 9, ts_ms: 1, ext: 0, aux: 0 };
        assert_eq!(classify(&pixel), Entry::Pixel);
        let unknown = Edit { x: CONTROL_X, y: 0, color: 200, user: 0, ts_ms: 0, ext: 0, aux: 0 };
        assert_eq!(classify(&unknown), Entry::Unknown(200));
        assert_eq!(classify(&Edit { color: KIND_VOID, ..unknown }), Entry::Void);
    }

    #[test]
    fn switches_refuse_in_order_of_precedence() {
        let mut s = Switches::default();
        let by = |user, ts_ms| Edit { x: 1, y: 1, color: 1, user, ts_ms, ext: 0, aux: 0 };
        assert_eq!(s.refuse(&by(1, 10)), None);
        s.apply(&Control::End { at_ms: 100 });
        assert_eq!(s.refuse(&by(1, 99)), None);
        assert_eq!(s.refuse(&by(1, 100)), Some(Refusal::Ended));
        s.apply(&Control::Pause);
        assert_eq!(s.refuse(&by(1, 10)), Some(Refusal::Paused));
        s.apply(&Control::Ban { user: 1, revert_since_s: 0 });
        assert_eq!(s.refuse(&by(1, 10)), Some(Refusal::Banned));
        s.apply(&Control::Resume);
        s.apply(&Control::Unban { user: 1 });
        s.apply(&Control::End { at_ms: 1_000 });
        assert_eq!(s.refuse(&by(1, 500)), None);
        s.apply(&Control::Cooldown { ms: 5 });
        assert_eq!(s.cooldown_ms, Some(5));

        let live = LiveSwitches::default();
        live.publish(&s);
        assert_eq!(live.refuse(&by(1, 500)), None);
        assert_eq!(live.refuse(&by(1, 1_000)), Some(Refusal::Ended));
        s.apply(&Control::Ban { user: 2, revert_since_s: 0 });
        live.publish(&s);
        assert_eq!((live.refuse(&by(2, 0)), live.refuse(&by(3, 0))), (Some(Refusal::Banned), None));

        // Protected areas refuse users, not holders; unprotect lifts what it covers.
        s.apply(&Control::End { at_ms: u64::MAX });
        let area = Rect { x: 1, y: 1, w: 2, h: 1 };
        s.apply(&Control::Protect { rect: area });
        s.apply(&Control::Protect { rect: Rect { x: 10, y: 10, w: 1, h: 1 } });
        let at = |x, y, aux| Edit { x, y, color: 1, user: 3, ts_ms: 0, ext: 0, aux };
        assert_eq!(s.refuse(&at(2, 1, 0)), Some(Refusal::Protected));
        assert_eq!(s.refuse(&at(3, 1, 0)), None);
        assert_eq!(s.refuse(&at(2, 1, EDIT_BY_MODERATOR)), None);
        live.publish(&s);
        assert_eq!(live.refuse(&at(1, 1, 0)), Some(Refusal::Protected));
        s.apply(&Control::Unprotect { rect: Rect { x: 0, y: 0, w: 4, h: 4 } });
        assert_eq!(s.protected, vec![Rect { x: 10, y: 10, w: 1, h: 1 }]);
        assert_eq!(s.refuse(&at(2, 1, 0)), None);
    }
}
