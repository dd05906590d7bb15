//! The pixel edits of a region change, computed from the history index: a rectangle filled
//! with one color, a rectangle restored to the canvas at version V, a banned user's pixels
//! reverted. The admin routes (`control_routes.rs`) log them after the change's control entry
//! (`control.rs`: flagged `EDIT_REGION`, attributed to the moderator), so what every node applies
//! is in the log and needs no history to replay.
//!
//! Invariants: only pixels whose color changes get an edit (a restore of an untouched area logs
//! its control entry alone); at most `MAX_REGION_PIXELS` pixels are looked at; a revert follows
//! each pixel's chain at most `REVERT_CHAIN` edits back and scans at most `REVERT_SCAN` versions,
//! and leaves alone a pixel somebody else painted over since, or whose earlier state the history
//! no longer holds. Pure over a `HistoryReader`: run it on a blocking thread (it reads files).

pub use crate::bounds::{REVERT_CHAIN, REVERT_SCAN};
use crate::canvas::Canvas;
use crate::control::{Rect, EDIT_BY_MODERATOR, EDIT_REGION, MAX_REGION_PIXELS};
use crate::edit_log::Edit;
use crate::history::{HistoryError, HistoryReader};
use rustc_hash::FxHashSet;

/// Who the region edits are attributed to, and when they are made.
#[derive(Debug, Clone, Copy)]
pub struct By {
    pub user: u64,
    pub ts_ms: u64,
}

fn edit(by: By, x: u32, y: u32, color: u8) -> Edit {
    Edit {
        x: x as u16,
        y: y as u16,
        color,
        user: by.user,
        ts_ms: by.ts_ms,
        ext: 0,
        aux: EDIT_REGION | EDIT_BY_MODERATOR,
    }
}

fn rect_pixels(r: &Rect) -> impl Iterator<Item = (u32, u32)> + '_ {
    (r.y as u32..r.y as u32 + r.h as u32).flat_map(move |y| (r.x as u32..r.x as u32 + r.w as u32).map(move |x| (x, y)))
}

/// The color at (x, y); 0 where the canvas at that version was smaller (it grew since).
fn color_at(c: &Canvas, x: u32, y: u32) -> u8 {
    c.color_at(x, y)
}

/// `rect` set to `color`, where it is not already.
pub fn fill(h: &HistoryReader, rect: &Rect, color: u8, by: By) -> Result<Vec<Edit>, HistoryError> {
    assert!(rect.w as usize * rect.h as usize <= MAX_REGION_PIXELS, "the route bounds the rectangle");
    let now = h.canvas_at(h.version())?;
    Ok(rect_pixels(rect).filter(|&(x, y)| color_at(&now, x, y) != color).map(|(x, y)| edit(by, x, y, color)).collect())
}

/// `rect` set back to the canvas at `version`, where it differs now.
pub fn restore(h: &HistoryReader, rect: &Rect, version: u64, by: By) -> Result<Vec<Edit>, HistoryError> {
    assert!(rect.w as usize * rect.h as usize <= MAX_REGION_PIXELS, "the route bounds the rectangle");
    let (then, now) = (h.canvas_at(version)?, h.canvas_at(h.version())?);
    Ok(rect_pixels(rect)
        .filter(|&(x, y)| color_at(&then, x, y) != color_at(&now, x, y))
        .map(|(x, y)| edit(by, x, y, color_at(&then, x, y)))
        .collect())
}

/// Why a revert cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("reverting since then would scan {versions} versions of history; at most {REVERT_SCAN} can be")]
    TooFar { versions: u64 },
    #[error("the user's edits since then touch more than {MAX_REGION_PIXELS} pixels")]
    TooMany,
}

/// Every pixel whose last edit is `user`'s, made at or after `since_ms`, set back to what it was
/// before the user's edits of that period.
pub fn revert(h: &HistoryReader, user: u64, since_ms: u64, by: By) -> Result<Vec<Edit>, RevertError> {
    let (base, head) = (h.base(), h.version());
    let from = h.version_at(since_ms.saturating_sub(1)).unwrap_or(base).max(base);
    if head - from > REVERT_SCAN {
        return Err(RevertError::TooFar { versions: head - from });
    }
    let mut pixels: Vec<(u16, u16)> = Vec::new();
    let mut seen = FxHashSet::default();
    // Read in slices so memory stays bounded by the slice, not the span.
    let mut at = from;
    while at < head {
        let to = (at + 65_536).min(head);
        for r in h.records(at, to)? {
            if r.applied && r.user == user && r.ts_ms >= since_ms && seen.insert((r.x, r.y)) {
                pixels.push((r.x, r.y));
                if pixels.len() > MAX_REGION_PIXELS {
                    return Err(RevertError::TooMany);
                }
            }
        }
        at = to;
    }
    let mut out = Vec::new();
    for (x, y) in pixels {
        if let Some(color) = before_user(h, x, y, user, since_ms)? {
            out.push(edit(by, x as u32, y as u32, color));
        }
    }
    Ok(out)
}

/// The color `(x, y)` had before `user`'s edits since `since_ms`, if its last edit is theirs and
/// the history still holds what came before.
fn before_user(h: &HistoryReader, x: u16, y: u16, user: u64, since_ms: u64) -> Result<Option<u8>, HistoryError> {
    let Some(chain) = h.pixel(x as u32, y as u32, REVERT_CHAIN) else { return Ok(None) };
    let chain = chain?;
    let theirs = |r: &crate::history::Rec| r.user == user && r.ts_ms >= since_ms;
    let Some(last) = chain.first() else { return Ok(None) };
    if !theirs(last) {
        // Somebody painted over it since: their pixel stays.
        return Ok(None);
    }
    match chain.iter().find(|r| !theirs(r)) {
        Some(r) if r.color != last.color => Ok(Some(r.color)),
        Some(_) => Ok(None),
        // No edit before the user's: the pixel's first color, if the chain reaches the start.
        None if chain.len() < REVERT_CHAIN && chain.last().is_some_and(|r| r.prev == 0) && h.base() == 0 => {
            // `Canvas::new` starts every pixel at palette index 0.
            Ok((last.color != 0).then_some(0))
        }
        None => Ok(None),
    }
}
