//! The log-order rule: what decides, from the log alone, whether an edit changes its pixel. An
//! edit is refused if the switches at its position refuse it (`control.rs`: its user banned,
//! placing paused, the event ended by the edit's own time), or, on a shared (Kafka) log, if its
//! user's last VALID edit is less than the cooldown earlier by the edits' own timestamps. Control
//! entries change the switches (and a cooldown entry the rule's cooldown) at their version. It
//! reads only the log, so every node, and every tool that reads the topic (`export`,
//! `timelapse`), decides every edit the same way; the applier turns refused edits into no-op
//! versions.
//!
//! On the embedded log the writer refuses what the switches refuse before it is logged (the same
//! `Switches`, in the same order), and the limiter at admission is exact, so the rule there
//! judges no cooldown (`judge_cooldown` false) and never refuses a logged edit.
//!
//! Invariant: the state after version V depends only on versions `..=V` and the configured
//! cooldown; users are forgotten only at versions that are multiples of `PRUNE_EVERY`, so pruning
//! is part of the rule, identical everywhere.

use crate::control::{Control, Refusal, Switches};
use crate::edit_log::Edit;
use rustc_hash::FxHashMap;

/// A user whose last valid edit is this much older than the newest timestamp in the log beyond
/// the cooldown is forgotten (they cannot be cooling down any more).
const PRUNE_SLACK_MS: u64 = 60_000;
const PRUNE_EVERY: u64 = 65_536;

/// Why the rule refused an edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its user was cooling down until then.
    Cooldown {
        next_at_ms: u64,
    },
    Switch(Refusal),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogRule {
    /// The cooldown in force: the configured one until a cooldown entry changes it.
    pub cooldown_ms: u64,
    /// Whether the cooldown is judged here (shared logs) or at admission (the embedded log).
    pub judge_cooldown: bool,
    /// The cooldowns of the claim classes 1.. (`claims.rs`): an edit placed with a class is
    /// judged by its class's cooldown, not the default.
    pub class_cooldowns: Vec<u64>,
    /// Each user's last valid edit time.
    pub last_valid: FxHashMap<u64, u64>,
    /// The newest edit timestamp in the log so far.
    pub log_clock: u64,
    pub switches: Switches,
}

impl LogRule {
    /// The rule of a shared log, which judges the cooldown.
    pub fn new(cooldown_ms: u64) -> Self {
        LogRule { cooldown_ms, judge_cooldown: true, ..Default::default() }
    }

    pub fn with_classes(mut self, class_cooldowns: Vec<u64>) -> Self {
        self.class_cooldowns = class_cooldowns;
        self
    }

    /// The rule of the embedded log: the switches only.
    pub fn embedded(cooldown_ms: u64) -> Self {
        LogRule { cooldown_ms, judge_cooldown: false, ..Default::default() }
    }

    /// After every version, judged or not (an edit outside the canvas is not judged).
    pub fn after(&mut self, version: u64) {
        if version.is_multiple_of(PRUNE_EVERY) {
            self.prune();
        }
    }

    /// Applies a control entry at its position.
    pub fn control(&mut self, c: &Control) {
        self.switches.apply(c);
        if let Control::Cooldown { ms } = *c {
            self.cooldown_ms = ms;
        }
    }

    /// Judges a pixel edit inside the canvas.
    pub fn judge(&mut self, e: &Edit) -> Result<(), Rejection> {
        self.log_clock = self.log_clock.max(e.ts_ms);
        // A region change's edits follow its control entry, made by a moderator: no switch and
        // no cooldown applies to them (`control::EDIT_REGION`).
        if e.aux & crate::control::EDIT_REGION != 0 {
            return Ok(());
        }
        if let Some(r) = self.switches.refuse(e) {
            return Err(Rejection::Switch(r));
        }
        let class = crate::claims::class_of_edit(e.aux) as usize;
        let cooldown = match class {
            0 => self.cooldown_ms,
            c => self.class_cooldowns.get(c - 1).copied().unwrap_or(self.cooldown_ms),
        };
        if !self.judge_cooldown || cooldown == 0 {
            return Ok(());
        }
        if let Some(&last) = self.last_valid.get(&e.user) {
            let next = last.saturating_add(cooldown);
            if e.ts_ms < next {
                return Err(Rejection::Cooldown { next_at_ms: next });
            }
        }
        self.last_valid.insert(e.user, e.ts_ms);
        Ok(())
    }

    fn prune(&mut self) {
        let longest = self.class_cooldowns.iter().copied().fold(self.cooldown_ms, u64::max);
        let keep_after = self.log_clock.saturating_sub(longest.saturating_add(PRUNE_SLACK_MS));
        self.last_valid.retain(|_, last| *last > keep_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(user: u64, ts_ms: u64) -> Edit {
        Edit { x: 0, y: 0, color: 1, user, ts_ms, ext: 0, aux: 0 }
    }

    #[test]
    fn cooldown_by_the_edits_own_time() {
        let mut r = LogRule::new(1_000);
        assert_eq!(r.judge(&by(1, 10_000)), Ok(()));
        assert_eq!(r.judge(&by(1, 10_500)), Err(Rejection::Cooldown { next_at_ms: 11_000 }));
        assert_eq!(r.judge(&by(2, 10_500)), Ok(()));
        assert_eq!(r.judge(&by(1, 11_000)), Ok(()));
        assert_eq!(r.log_clock, 11_000);
    }

    #[test]
    fn control_entries_change_the_rule_at_their_position() {
        let mut r = LogRule::new(1_000);
        r.control(&Control::Cooldown { ms: 0 });
        assert_eq!(r.judge(&by(1, 10_000)), Ok(()));
        assert_eq!(r.judge(&by(1, 10_001)), Ok(()));
        r.control(&Control::Ban { user: 1, revert_since_s: 0 });
        assert_eq!(r.judge(&by(1, 20_000)), Err(Rejection::Switch(Refusal::Banned)));
        assert_eq!(r.judge(&by(2, 20_000)), Ok(()));
        r.control(&Control::Pause);
        assert_eq!(r.judge(&by(2, 30_000)), Err(Rejection::Switch(Refusal::Paused)));
        // The embedded rule judges the switches, never the cooldown.
        let mut e = LogRule::embedded(1_000);
        assert_eq!((e.judge(&by(1, 1)), e.judge(&by(1, 2))), (Ok(()), Ok(())));
        e.control(&Control::End { at_ms: 5 });
        assert_eq!(e.judge(&by(1, 5)), Err(Rejection::Switch(Refusal::Ended)));
    }
}
