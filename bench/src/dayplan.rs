//! The session scenario's plan: who places what when during one compressed day, and when each
//! user arrives and leaves around those placements.
//!
//! The user and time model is the trace generator's ([`crate::trace::replay`], the same model as
//! `placecast-load trace`): `users` users with a heavy-tailed number of placements each (mean
//! `--placements-per-user`), in sittings at the cooldown pace, spread over 24 hours by the
//! ramp-up of an event's first day, the diurnal cycle (peak 19:00 UTC) and bursts, on artworks.
//! The day starts at midnight UTC (2017-04-03, r/place 2017's first day). Its cooldown is the
//! server's, scaled by the compression (`86400 / --day-seconds`), so a user placing at the
//! trace's pace in real time is never early.
//!
//! On top of the trace, visits: a user's placements less than [`VISIT_GAP_TRACE_MS`] apart (in
//! the day's own time) are one visit. A user arrives before a visit's first placement (the page
//! loads, they look around), stays connected through it, lingers after its last placement, then
//! leaves; the next visit is a return. Arrival and departure are drawn from splitmix64 keyed by
//! (seed, user, placement), so every process of a run computes the same ones on demand and
//! stores none.
//!
//! Invariants: within a user, placement times are non-decreasing and a visit's first carries
//! [`VISIT`]; a return's arrival is at least [`MIN_LINGER_MS`] + [`MIN_AWAY_MS`] after the
//! previous visit's last placement and at least [`MIN_ARRIVE_MS`] before its first (the split
//! rule guarantees the room); every time is below the day's length (real milliseconds, < 2^31).
//! Memory: 8 bytes per placement and 4 per user (12 per placement while building).

use crate::trace::{self, TraceError};
use crate::ws::splitmix64;
use std::path::PathBuf;

/// The day in its own milliseconds.
pub const DAY_MS_TRACE: u64 = 86_400_000;
/// 2017-04-03T00:00:00Z: the day begins at midnight UTC of r/place 2017's first day.
pub const DAY_START_UNIX_MS: u64 = 1_491_177_600_000;
/// Bit 31 of a placement time: the first placement of a visit.
pub const VISIT: u32 = 1 << 31;
/// Placements further apart than this (day time) are two visits: the user left in between.
pub const VISIT_GAP_TRACE_MS: u64 = 15 * 60_000;
/// Arrival before a visit's first placement (day time): exponential, capped.
const ARRIVE_MEAN_TRACE_MS: f64 = 120_000.0;
const ARRIVE_MAX_TRACE_MS: f64 = 600_000.0;
/// Lingering after a visit's last placement (day time): exponential, capped.
const LINGER_MEAN_TRACE_MS: f64 = 300_000.0;
const LINGER_MAX_TRACE_MS: f64 = 1_800_000.0;
/// Real-time floors: time to get a session, the snapshot and the connection before the first
/// placement; to see one's own last edit come back before leaving; to be away at all.
pub const MIN_ARRIVE_MS: u32 = 300;
pub const MIN_LINGER_MS: u32 = 1000;
pub const MIN_AWAY_MS: u32 = 500;
/// Most placements per user on average.
pub const MAX_PER_USER: f64 = 1000.0;

/// What a plan is made from (the same on every process of a run).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanParams {
    /// Users of the whole run.
    pub users: u64,
    pub per_user: f64,
    /// Real length of the day.
    pub day_ms: u64,
    /// The server's cooldown (real ms); 0: none, the day uses `day_cooldown_s`.
    pub cooldown_ms: u64,
    pub day_cooldown_s: u64,
    pub width: u32,
    pub height: u32,
    pub colors: u32,
    pub seed: u64,
}

impl PlanParams {
    /// Day milliseconds per real millisecond.
    pub fn factor(&self) -> f64 {
        DAY_MS_TRACE as f64 / self.day_ms.max(1) as f64
    }

    /// The cooldown in the day's own seconds: the server's scaled up (rounded up), so the
    /// trace's pace is never faster than the server allows.
    pub fn trace_cooldown_s(&self) -> u64 {
        if self.cooldown_ms == 0 {
            return self.day_cooldown_s.clamp(1, trace::MAX_COOLDOWN_S);
        }
        ((self.cooldown_ms as f64 * self.factor() / 1000.0).ceil() as u64).clamp(1, trace::MAX_COOLDOWN_S)
    }

    /// Placements of the whole day (at least one per user).
    pub fn edits(&self) -> u64 {
        ((self.users as f64 * self.per_user).round() as u64).max(self.users)
    }

    /// Most placements one user can make in the day.
    pub fn per_user_max(&self) -> u64 {
        (DAY_MS_TRACE - 1) / (self.trace_cooldown_s() * 1000) + 1
    }

    /// The trace arguments of this day.
    pub fn trace_args(&self) -> crate::cli::TraceArgs {
        crate::cli::TraceArgs {
            edits: self.edits(),
            seed: self.seed,
            width: self.width,
            height: self.height,
            colors: self.colors,
            cooldown_s: self.trace_cooldown_s(),
            hours: 24,
            start_ms: DAY_START_UNIX_MS,
            users: Some(self.users),
            out: PathBuf::from("-"),
        }
    }

    /// Checks the day in the session scenario's own terms.
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=MAX_PER_USER).contains(&self.per_user) {
            return Err(format!("--placements-per-user must be 1 to {MAX_PER_USER}, got {}", self.per_user));
        }
        let max = self.per_user_max();
        if self.per_user > max as f64 {
            return Err(format!(
                "with a cooldown of {} ms and --day-seconds {}, the day's cooldown is {} s and one user places at \
                 most {max} times a day: lower --placements-per-user (now {}) or raise --day-seconds",
                self.cooldown_ms,
                self.day_ms / 1000,
                self.trace_cooldown_s(),
                self.per_user
            ));
        }
        trace::validate(&self.trace_args()).map_err(|e| format!("the day's trace: {e}"))
    }
}

/// One process's share of the day: users `base .. base + count` and their placements.
#[derive(Debug, Clone, Default)]
pub struct DayPlan {
    pub base: u64,
    /// User `u` (local, 0-based) has placements `start[u] .. start[u + 1]`.
    pub start: Vec<u32>,
    /// Real ms from the day's start; [`VISIT`] marks a visit's first placement.
    pub at: Vec<u32>,
    /// The packed edit (PROTOCOL.md: `index << 5 | color`, index = y * width + x).
    pub px: Vec<u32>,
    pub day_ms: u32,
    /// Day milliseconds per real millisecond.
    pub factor: f64,
    pub seed: u64,
    pub width: u32,
}

impl DayPlan {
    /// Builds the plan of users `base .. base + count` (all processes of a run build the same
    /// trace and keep their users' placements).
    pub fn build(p: &PlanParams, base: u64, count: usize) -> Result<DayPlan, TraceError> {
        let factor = p.factor();
        let end = base + count as u64;
        let mut mine: Vec<(u32, u32, u32)> = Vec::new();
        let day_ms = p.day_ms.min(i32::MAX as u64) as u32;
        trace::replay(&p.trace_args(), |e| {
            if (base..end).contains(&e.user) {
                let t = ((e.t_ms as f64 / factor) as u64).min(day_ms.saturating_sub(1) as u64) as u32;
                let i = e.y * p.width + e.x;
                mine.push(((e.user - base) as u32, t, i << 5 | e.color as u32));
            }
        })?;
        // Counting sort by user; the trace is in time order, so each user's stays sorted.
        let mut start = vec![0u32; count + 1];
        for &(u, _, _) in &mine {
            start[u as usize + 1] += 1;
        }
        for u in 0..count {
            start[u + 1] += start[u];
        }
        let mut fill = start.clone();
        let (mut at, mut px) = (vec![0u32; mine.len()], vec![0u32; mine.len()]);
        for (u, t, e) in mine {
            let k = fill[u as usize] as usize;
            fill[u as usize] += 1;
            at[k] = t;
            px[k] = e;
        }
        let gap = ((VISIT_GAP_TRACE_MS as f64 / factor) as u32).max(MIN_LINGER_MS + MIN_AWAY_MS + MIN_ARRIVE_MS);
        for u in 0..count {
            let (s, e) = (start[u] as usize, start[u + 1] as usize);
            for k in s..e {
                if k == s || at[k] - (at[k - 1] & !VISIT) > gap {
                    at[k] |= VISIT;
                }
            }
        }
        Ok(DayPlan { base, start, at, px, day_ms, factor, seed: p.seed, width: p.width })
    }

    pub fn users(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    /// Visits in the plan.
    pub fn visits(&self) -> u64 {
        self.at.iter().filter(|&&t| t & VISIT != 0).count() as u64
    }

    /// Bytes the plan holds.
    pub fn bytes(&self) -> u64 {
        (self.start.len() * 4 + self.at.len() * 8) as u64
    }
}

/// Uniform in [0, 1) from a key.
fn unit(key: u64) -> f64 {
    (splitmix64(key) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The key of global user `user`'s placement `k` (its index among the user's placements).
pub fn key(seed: u64, user: u64, k: u32, what: u64) -> u64 {
    splitmix64(seed ^ user.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((k as u64) << 40) ^ what)
}

/// When a visit whose first placement is at `first` arrives (real ms): a drawn look-around
/// before it, at least [`MIN_ARRIVE_MS`], and for a return no earlier than the previous visit's
/// last placement `prev_last` + [`MIN_LINGER_MS`] + [`MIN_AWAY_MS`].
pub fn arrival(first: u32, prev_last: Option<u32>, factor: f64, key: u64) -> u32 {
    let look = (-ARRIVE_MEAN_TRACE_MS * (1.0 - unit(key)).ln()).min(ARRIVE_MAX_TRACE_MS) / factor;
    let look = (look as u32).max(MIN_ARRIVE_MS);
    let floor = prev_last.map_or(0, |l| l + MIN_LINGER_MS + MIN_AWAY_MS);
    first.saturating_sub(look).max(floor).min(first)
}

/// When a visit whose last placement is at `last` leaves (real ms): a drawn linger, at least
/// [`MIN_LINGER_MS`], at least [`MIN_AWAY_MS`] before the next visit's arrival, within the day.
pub fn departure(last: u32, next_arrival: Option<u32>, factor: f64, day_ms: u32, key: u64) -> u32 {
    let linger = (-LINGER_MEAN_TRACE_MS * (1.0 - unit(key)).ln()).min(LINGER_MAX_TRACE_MS) / factor;
    let mut t = last.saturating_add((linger as u32).max(MIN_LINGER_MS));
    if let Some(n) = next_arrival {
        t = t.min(n.saturating_sub(MIN_AWAY_MS));
    }
    t.min(day_ms).max(last.min(day_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(users: u64, day_s: u64, cooldown_ms: u64) -> PlanParams {
        PlanParams {
            users,
            per_user: 5.0,
            day_ms: day_s * 1000,
            cooldown_ms,
            day_cooldown_s: 300,
            width: 100,
            height: 80,
            colors: 16,
            seed: 11,
        }
    }

    #[test]
    fn the_days_cooldown_is_the_servers_scaled() {
        let p = params(100, 60, 1000);
        assert_eq!(p.trace_cooldown_s(), 1440);
        assert_eq!(p.per_user_max(), 60);
        assert_eq!(params(100, 60, 0).trace_cooldown_s(), 300);
        assert!(p.validate().is_ok());
        let tight = PlanParams { per_user: 61.0, ..p };
        assert!(tight.validate().unwrap_err().contains("--placements-per-user"));
    }

    #[test]
    fn shares_partition_the_day_and_keep_the_pace() {
        let p = params(300, 20, 1000);
        let all = DayPlan::build(&p, 0, 300).unwrap();
        let a = DayPlan::build(&p, 0, 120).unwrap();
        let b = DayPlan::build(&p, 120, 180).unwrap();
        assert_eq!(all.at.len() as u64, p.edits());
        assert_eq!(a.at.len() + b.at.len(), all.at.len());
        assert_eq!(&all.at[..a.at.len()], &a.at[..], "the same plan whichever process builds it");
        let cooldown_real = (p.trace_cooldown_s() as f64 * 1000.0 / p.factor()) as u32;
        for u in 0..all.users() {
            let (s, e) = (all.start[u] as usize, all.start[u + 1] as usize);
            assert!(e > s, "every user places at least once");
            assert!(all.at[s] & VISIT != 0);
            for k in s + 1..e {
                let (t0, t1) = (all.at[k - 1] & !VISIT, all.at[k] & !VISIT);
                // Truncation to whole ms can take one off the scaled cooldown.
                assert!(t1 + 1 >= t0 + cooldown_real, "user {u}: {t0} then {t1}");
                assert!(t1 < all.day_ms);
            }
            for k in s..e {
                let (_, c) = (all.px[k] >> 5, all.px[k] & 31);
                assert!((all.px[k] >> 5) < 100 * 80 && c < 16);
            }
        }
        assert!(all.visits() > all.users() as u64, "some users come back");
    }

    #[test]
    fn arrivals_and_departures_keep_their_floors() {
        for k in 0..1000u64 {
            let f = 1440.0;
            let a = arrival(10_000, Some(7_000), f, k);
            assert!((7_000 + MIN_LINGER_MS + MIN_AWAY_MS..=10_000 - MIN_ARRIVE_MS).contains(&a), "{a}");
            assert!(arrival(100, None, f, k) <= 100);
            let d = departure(7_000, Some(a), f, 60_000, k);
            assert!(d >= 7_000 + MIN_LINGER_MS && d + MIN_AWAY_MS <= a, "{d} {a}");
            assert!(departure(59_900, None, f, 60_000, k) <= 60_000);
        }
    }
}
