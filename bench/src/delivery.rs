//! What a client does with a delivered batch, shared by the two client engines
//! ([`engine`](crate::engine), [`day`](crate::day)): applying it to the client's version as the
//! web client does, counting gaps and duplicates ([`apply`]), and timing its new versions
//! against the process's [`SendTable`] ([`Timing`]).
//!
//! Invariants: a version is either [`NO_VERSION`] or the `to` of the last batch that moved it,
//! and never goes back; receptions whose send instant is not in the table yet (the broadcast
//! can beat the placement's answer to the placer) wait in a bounded list — past its bound, or
//! after [`DEFER_NS`], or at the end of the run they count as untimed — so every reception is
//! either timed once or counted untimed once.

use crate::batch::BatchHeader;
use crate::engine::Counts;
use crate::hist::LatencyHist;
use crate::sendtable::SendTable;
use crate::sys::now_ns;

/// A client's version before its first batch (or snapshot).
pub const NO_VERSION: u64 = u64::MAX;
/// How long a reception waits for its send instant before it counts as untimed.
pub const DEFER_NS: u64 = 10_000_000_000;

/// What a batch did to a client's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The client's versions after this one are new (`new_from + 1 ..= b.to`; none if
    /// `new_from >= b.to`).
    pub new_from: u64,
    /// The batch started past the client's version: versions were missed.
    pub gap: bool,
    /// The client's version is now the batch's `to` because of it.
    pub applied: bool,
}

/// Counts a delivered batch (`frames`, `edits`, `payload_bytes`) and applies it to `version`:
/// in order (or the first) it moves the version; past it, a gap; before it, a duplicate that
/// moves the version only if it reaches beyond.
pub fn apply(version: &mut u64, b: &BatchHeader, payload_len: usize, counts: &mut Counts) -> Applied {
    counts.frames += 1;
    counts.edits += b.count as u64;
    counts.payload_bytes += payload_len as u64;
    let v = *version;
    if v == NO_VERSION || b.from == v {
        *version = b.to;
        Applied { new_from: b.from, gap: false, applied: true }
    } else if b.from > v {
        counts.gaps += 1;
        counts.gap_versions += b.from - v;
        *version = b.to;
        Applied { new_from: b.from, gap: true, applied: true }
    } else {
        counts.duplicates += 1;
        counts.duplicate_versions += b.to.min(v) - b.from;
        let applied = b.to > v;
        if applied {
            *version = b.to;
        }
        Applied { new_from: v.min(b.to), gap: false, applied }
    }
}

/// A thread's delivery latencies, and the receptions still waiting for their send instant.
pub struct Timing {
    /// One sample per timed frame: the age of its oldest new edit.
    pub frame: LatencyHist,
    /// One sample per new edit of a sampled client.
    pub edit: LatencyHist,
    /// (version, receive instant, per-frame sample).
    deferred: Vec<(u64, u64, bool)>,
    max_deferred: usize,
}

impl Timing {
    /// At most `max_deferred` receptions wait for their send instant.
    pub fn new(max_deferred: usize) -> Self {
        Timing { frame: LatencyHist::new(), edit: LatencyHist::new(), deferred: Vec::new(), max_deferred }
    }

    /// Times the versions `first + 1 ..= to` of a frame received at `now` (ns): the frame by
    /// the oldest, each of them if `sampled`. Without a table nothing is timed.
    pub fn record(
        &mut self,
        table: Option<&SendTable>,
        first: u64,
        to: u64,
        now: u64,
        sampled: bool,
        counts: &mut Counts,
    ) {
        let Some(table) = table else { return };
        if first >= to {
            return;
        }
        match table.lookup(first + 1) {
            Some(t) => self.frame.record_ns(now.saturating_sub(t)),
            None => self.defer(counts, first + 1, now, true),
        }
        if sampled {
            for v in first + 1..=to {
                match table.lookup(v) {
                    Some(t) => self.edit.record_ns(now.saturating_sub(t)),
                    None => self.defer(counts, v, now, false),
                }
            }
        }
    }

    /// Keeps a reception whose send instant is not known yet (past the bound it is untimed).
    fn defer(&mut self, counts: &mut Counts, version: u64, now: u64, frame: bool) {
        if self.deferred.len() < self.max_deferred {
            self.deferred.push((version, now, frame));
        } else if frame {
            counts.untimed_frames += 1;
        } else {
            counts.untimed_versions += 1;
        }
    }

    /// Matches deferred receptions with send instants recorded since; gives up on those older
    /// than [`DEFER_NS`] (or on all that remain when `last`). Receptions of versions placed by
    /// other processes never match and end up untimed.
    pub fn resolve(&mut self, table: Option<&SendTable>, last: bool, counts: &mut Counts) {
        if self.deferred.is_empty() {
            return;
        }
        let Some(table) = table else { return };
        let now = now_ns();
        let (frame_h, edit_h) = (&mut self.frame, &mut self.edit);
        self.deferred.retain(|&(v, at, frame)| {
            if let Some(t) = table.lookup(v) {
                let h = if frame { &mut *frame_h } else { &mut *edit_h };
                h.record_ns(at.saturating_sub(t));
                return false;
            }
            if last || now.saturating_sub(at) > DEFER_NS {
                if frame {
                    counts.untimed_frames += 1;
                } else {
                    counts.untimed_versions += 1;
                }
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(from: u64, to: u64) -> BatchHeader {
        BatchHeader { stride: 4, from, to, count: (to - from) as u32 }
    }

    #[test]
    fn gaps_and_duplicates_are_counted() {
        let mut c = Counts::default();
        let mut v = NO_VERSION;
        assert_eq!(apply(&mut v, &b(3, 5), 10, &mut c), Applied { new_from: 3, gap: false, applied: true });
        assert_eq!(apply(&mut v, &b(7, 9), 10, &mut c), Applied { new_from: 7, gap: true, applied: true });
        assert_eq!(apply(&mut v, &b(8, 10), 10, &mut c), Applied { new_from: 9, gap: false, applied: true });
        assert_eq!(apply(&mut v, &b(4, 6), 10, &mut c), Applied { new_from: 6, gap: false, applied: false });
        assert_eq!(v, 10);
        assert_eq!((c.frames, c.payload_bytes, c.gaps, c.gap_versions), (4, 40, 1, 2));
        assert_eq!((c.duplicates, c.duplicate_versions), (2, 1 + 2));
    }
}
