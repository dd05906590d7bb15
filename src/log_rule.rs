//! The log-order cooldown rule of a shared (Kafka) log: an edit is valid iff its user's last
//! VALID edit in the log is at least `cooldown` ms earlier by the edits' own timestamps. It reads
//! only the log, so every node, and every tool that reads the topic (`export`, `timelapse`),
//! decides every edit the same way; the applier turns rejected edits into no-op versions.
//!
//! Invariant: the state after version V depends only on versions `..=V` and the cooldown; users
//! are forgotten only at versions that are multiples of `PRUNE_EVERY`, so pruning is part of the
//! rule, identical everywhere.

use crate::edit_log::Edit;
use rustc_hash::FxHashMap;

/// A user whose last valid edit is this much older than the newest timestamp in the log beyond
/// the cooldown is forgotten (they cannot be cooling down any more).
const PRUNE_SLACK_MS: u64 = 60_000;
const PRUNE_EVERY: u64 = 65_536;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogRule {
    pub cooldown_ms: u64,
    /// Each user's last valid edit time.
    pub last_valid: FxHashMap<u64, u64>,
    /// The newest edit timestamp in the log so far.
    pub log_clock: u64,
}

impl LogRule {
    pub fn new(cooldown_ms: u64) -> Self {
        LogRule { cooldown_ms, ..Default::default() }
    }

    /// After every version, judged or not (an edit outside the canvas is not judged).
    pub fn after(&mut self, version: u64) {
        if version.is_multiple_of(PRUNE_EVERY) {
            self.prune();
        }
    }

    /// Judges an edit inside the canvas: `Err(next_at_ms)` when its user was cooling down.
    pub fn judge(&mut self, e: &Edit) -> Result<(), u64> {
        self.log_clock = self.log_clock.max(e.ts_ms);
        if self.cooldown_ms == 0 {
            return Ok(());
        }
        if let Some(&last) = self.last_valid.get(&e.user) {
            let next = last.saturating_add(self.cooldown_ms);
            if e.ts_ms < next {
                return Err(next);
            }
        }
        self.last_valid.insert(e.user, e.ts_ms);
        Ok(())
    }

    fn prune(&mut self) {
        let keep_after = self.log_clock.saturating_sub(self.cooldown_ms.saturating_add(PRUNE_SLACK_MS));
        self.last_valid.retain(|_, last| *last > keep_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(user: u64, ts_ms: u64) -> Edit {
        Edit { x: 0, y: 0, color: 1, user, ts_ms }
    }

    #[test]
    fn cooldown_by_the_edits_own_time() {
        let mut r = LogRule::new(1_000);
        assert_eq!(r.judge(&by(1, 10_000)), Ok(()));
        assert_eq!(r.judge(&by(1, 10_500)), Err(11_000));
        assert_eq!(r.judge(&by(2, 10_500)), Ok(()));
        assert_eq!(r.judge(&by(1, 11_000)), Ok(()));
        assert_eq!(r.log_clock, 11_000);
    }
}
