//! The process's life as the outside sees it: ready or not (`/readyz`), draining, alive (the
//! systemd watchdog), and what systemd is told (`READY=1`, `STATUS=`, `STOPPING=1`,
//! `WATCHDOG=1`).
//!
//! Invariants:
//! - Ready only after the log's history is applied and every shard listens; never again once a
//!   drain has started (a drain is one-way: the process exits at its end).
//! - Alive means every shard's tick loop and the applier's loop have each run within
//!   `STALL_LIMIT`; `WATCHDOG=1` is sent only then, so a stuck or dead thread becomes a restart.
//! - A drain closes clients only after the grace period (the balancer's health check sees 503
//!   first) and spreads the closes evenly over the spread window, so the nodes taking over see at
//!   most clients/spread new connections per second.
//!
//! It does not close connections itself: each shard reads the drain schedule on its own tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use crate::bounds::{STALL_LIMIT_MS, SUPERVISE_EVERY};

/// Where a drain stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Serving normally.
    Serving,
    /// `/readyz` is 503; clients stay until the grace ends.
    Grace,
    /// Clients are being closed: `elapsed_ms` into a window of `spread_ms`.
    Closing { elapsed_ms: u64, spread_ms: u64 },
}

/// Why the node is not ready, as `/readyz` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    Draining,
    LogUnavailable(String),
    ShardDown(usize),
    ApplierDown,
}

impl NotReady {
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::Draining => "draining",
            NotReady::LogUnavailable(_) => "log_unavailable",
            NotReady::ShardDown(_) => "shard_down",
            NotReady::ApplierDown => "applier_down",
        }
    }

    pub fn message(&self) -> String {
        match self {
            NotReady::Starting => "replaying the log or starting shards".into(),
            NotReady::Draining => "draining: this node is going away; connect to another".into(),
            NotReady::LogUnavailable(why) => format!("the edit log cannot take edits: {why}"),
            NotReady::ShardDown(i) => format!("shard {i} has not run for over {STALL_LIMIT_MS} ms"),
            NotReady::ApplierDown => format!("the applier has not run for over {STALL_LIMIT_MS} ms"),
        }
    }
}

pub struct Lifecycle {
    ready: AtomicBool,
    /// Wall-clock ms when the drain started; 0 while serving.
    drain_started_ms: AtomicU64,
    grace_ms: u64,
    spread_ms: u64,
    /// Last wall-clock ms each shard's tick loop ran.
    shard_beats: Box<[AtomicU64]>,
}

impl Lifecycle {
    pub fn new(shards: usize, grace_ms: u64, spread_ms: u64) -> Self {
        Lifecycle {
            ready: AtomicBool::new(false),
            drain_started_ms: AtomicU64::new(0),
            grace_ms,
            spread_ms,
            shard_beats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    pub fn spread_ms(&self) -> u64 {
        self.spread_ms
    }

    /// Every shard is listening: ready. A shard that has not ticked yet counts as having just
    /// ticked (it is starting, not stuck), so readiness does not flap at start.
    pub fn set_ready(&self, now_ms: u64) {
        for b in self.shard_beats.iter() {
            let _ = b.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Called by shard `i` on every tick.
    pub fn beat(&self, i: usize, now_ms: u64) {
        self.shard_beats[i].store(now_ms, Ordering::Relaxed);
    }

    /// Starts the drain; false if one had already started.
    pub fn start_drain(&self, now_ms: u64) -> bool {
        self.drain_started_ms.compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    pub fn draining(&self) -> bool {
        self.drain_started_ms.load(Ordering::Acquire) != 0
    }

    pub fn phase(&self, now_ms: u64) -> DrainPhase {
        let started = self.drain_started_ms.load(Ordering::Acquire);
        if started == 0 {
            return DrainPhase::Serving;
        }
        let since = now_ms.saturating_sub(started);
        if since < self.grace_ms {
            return DrainPhase::Grace;
        }
        DrainPhase::Closing { elapsed_ms: since - self.grace_ms, spread_ms: self.spread_ms }
    }

    /// The wall-clock ms by which a drain must be over however many clients are left.
    pub fn drain_deadline_ms(&self) -> Option<u64> {
        let started = self.drain_started_ms.load(Ordering::Acquire);
        (started != 0).then(|| started + self.grace_ms + self.spread_ms + 5_000)
    }

    /// The first shard whose loop is stuck, if any.
    pub fn stuck_shard(&self, now_ms: u64) -> Option<usize> {
        self.shard_beats.iter().position(|b| now_ms.saturating_sub(b.load(Ordering::Relaxed)) > STALL_LIMIT_MS)
    }

    /// Why the node should not get traffic, or None when it should. `applier_beat_ms` and
    /// `log` come from the applier's stats and the edit log.
    pub fn not_ready(&self, now_ms: u64, applier_beat_ms: u64, log: Result<(), String>) -> Option<NotReady> {
        if self.draining() {
            return Some(NotReady::Draining);
        }
        if !self.ready.load(Ordering::Acquire) {
            return Some(NotReady::Starting);
        }
        if let Some(stuck) = self.stuck(now_ms, applier_beat_ms) {
            return Some(stuck);
        }
        log.err().map(NotReady::LogUnavailable)
    }

    /// The first thread whose loop has not run within `STALL_LIMIT_MS` (`ShardDown` or
    /// `ApplierDown`): what stops `/readyz` and the watchdog alike.
    pub fn stuck(&self, now_ms: u64, applier_beat_ms: u64) -> Option<NotReady> {
        if let Some(i) = self.stuck_shard(now_ms) {
            return Some(NotReady::ShardDown(i));
        }
        (now_ms.saturating_sub(applier_beat_ms) > STALL_LIMIT_MS).then_some(NotReady::ApplierDown)
    }
}

/// How many of `total` clients should have been closed `elapsed_ms` into a `spread_ms` window:
/// an even spread, everyone by the end.
pub fn closes_due(total: usize, elapsed_ms: u64, spread_ms: u64) -> usize {
    if spread_ms == 0 || elapsed_ms >= spread_ms {
        return total;
    }
    ((total as u128 * elapsed_ms as u128).div_ceil(spread_ms as u128)) as usize
}

/// systemd's notification socket, through `sd-notify` (a no-op when not run by systemd).
pub mod notify {
    use sd_notify::NotifyState;

    pub fn ready() {
        send(&[NotifyState::Ready]);
    }

    pub fn stopping() {
        send(&[NotifyState::Stopping]);
    }

    pub fn watchdog() {
        send(&[NotifyState::Watchdog]);
    }

    pub fn status(text: &str) {
        send(&[NotifyState::Status(text)]);
    }

    fn send(states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// How often to send `WATCHDOG=1`: a third of `WatchdogSec=`, so one late beat is not a kill.
    pub fn watchdog_every() -> Option<std::time::Duration> {
        sd_notify::watchdog_enabled().map(|d| d / 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_is_one_way_and_phased() {
        let l = Lifecycle::new(2, 1000, 10_000);
        assert_eq!(l.phase(5), DrainPhase::Serving);
        assert!(l.start_drain(100));
        assert!(!l.start_drain(200), "a second drain does not restart the schedule");
        assert_eq!(l.phase(600), DrainPhase::Grace);
        assert_eq!(l.phase(1100), DrainPhase::Closing { elapsed_ms: 0, spread_ms: 10_000 });
        assert_eq!(l.phase(6100), DrainPhase::Closing { elapsed_ms: 5000, spread_ms: 10_000 });
        assert_eq!(l.drain_deadline_ms(), Some(100 + 1000 + 10_000 + 5000));
    }

    #[test]
    fn readiness_reasons_in_order() {
        let l = Lifecycle::new(2, 0, 0);
        assert_eq!(l.not_ready(10_000, 10_000, Ok(())), Some(NotReady::Starting));
        l.set_ready(4_000);
        l.beat(0, 10_000);
        assert_eq!(l.not_ready(10_000, 10_000, Ok(())), Some(NotReady::ShardDown(1)), "shard 1 silent since 4 s");
        l.beat(1, 10_000);
        assert_eq!(l.not_ready(10_000, 10_000, Ok(())), None);
        assert_eq!(l.not_ready(10_000, 1_000, Ok(())), Some(NotReady::ApplierDown));
        assert_eq!(l.not_ready(10_000, 10_000, Err("disk".into())).unwrap().code(), "log_unavailable");
        l.start_drain(10_000);
        assert_eq!(l.not_ready(10_000, 10_000, Ok(())), Some(NotReady::Draining));
    }

    #[test]
    fn closes_are_spread_evenly() {
        assert_eq!(closes_due(1000, 0, 10_000), 0);
        assert_eq!(closes_due(1000, 1, 10_000), 1);
        assert_eq!(closes_due(1000, 5_000, 10_000), 500);
        assert_eq!(closes_due(1000, 10_000, 10_000), 1000);
        assert_eq!(closes_due(7, 99_999, 10), 7);
        assert_eq!(closes_due(7, 0, 0), 7);
    }
}
