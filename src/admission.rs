//! Admission control per client address (`client_addr::AddrKey`): concurrent connections, the
//! rate of anonymous session creations, the rate of placements summed over every user from
//! that address, and the rate of catch-ups (`/ws?since=`: each costs the applier a frame build). Sharded mutexes keyed by address, like the cooldown limiter.
//!
//! Rates are GCRA (the "virtual scheduling" form of a token bucket): per address and kind one
//! theoretical arrival time (TAT); with `n` per minute the emission interval is `T = 60000/n` ms
//! and a burst of `n` is allowed; a request at `now` passes when `TAT - now <= (n - 1) * T`, and
//! then `TAT = max(TAT, now) + T`. One u64 per kind, exact, no timers.
//!
//! Bounds: at most `MAX_ADDRESSES` entries (~48 B each with the map's overhead: 50 MB at the
//! cap). An entry with no open connection whose rates have fully recovered is equivalent to no
//! entry and is reclaimed by `sweep`. When the table is full, a NEW address is refused
//! (`TableFull`, answered 503) rather than admitted untracked: failing open would let an
//! attacker with many addresses bypass every limit. Limits change live (admin API); 0 means
//! "no limit" for each.
//! Not here: the per-user cooldown (`limiter.rs`), the server-wide connection caps (`hub/`,
//! `shard.rs`).

use crate::client_addr::AddrKey;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use thiserror::Error;

const SHARDS: usize = 64;
pub use crate::bounds::MAX_ADDRESSES;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("too many connections from your address (at most {max}); close some and try again")]
    TooManyConnections { max: u32 },
    #[error("too many new sessions from your address; try again in {} s", retry_after_ms.div_ceil(1000))]
    SessionRate { retry_after_ms: u64 },
    #[error("too many placements from your address; try again in {} s", retry_after_ms.div_ceil(1000))]
    PlacementRate { retry_after_ms: u64 },
    #[error("too many catch-ups from your address; try again in {} s", retry_after_ms.div_ceil(1000))]
    CatchUpRate { retry_after_ms: u64 },
    #[error("the server is tracking too many client addresses; try again shortly")]
    TableFull,
}

impl AdmissionError {
    pub fn status(&self) -> u16 {
        match self {
            AdmissionError::TableFull => 503,
            _ => 429,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AdmissionError::TooManyConnections { .. } => "too_many_connections_from_address",
            AdmissionError::SessionRate { .. } => "session_rate_limited",
            AdmissionError::PlacementRate { .. } => "address_rate_limited",
            AdmissionError::CatchUpRate { .. } => "catch_up_rate_limited",
            AdmissionError::TableFull => "server_busy",
        }
    }

    pub fn retry_after_ms(&self) -> u64 {
        match self {
            AdmissionError::SessionRate { retry_after_ms }
            | AdmissionError::PlacementRate { retry_after_ms }
            | AdmissionError::CatchUpRate { retry_after_ms } => *retry_after_ms,
            AdmissionError::TooManyConnections { .. } => 5000,
            AdmissionError::TableFull => 1000,
        }
    }
}

/// The live-changeable limits; 0 disables each.
#[derive(Debug, Default)]
pub struct Limits {
    pub max_conns_per_addr: AtomicU32,
    pub sessions_per_min: AtomicU32,
    pub placements_per_addr_per_min: AtomicU32,
    pub catchups_per_addr_per_min: AtomicU32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitValues {
    pub max_conns_per_addr: u32,
    pub sessions_per_min: u32,
    pub placements_per_addr_per_min: u32,
    pub catchups_per_addr_per_min: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    conns: u32,
    session_tat: u64,
    place_tat: u64,
    catch_up_tat: u64,
}

impl Entry {
    fn idle(&self, now_ms: u64) -> bool {
        self.conns == 0 && self.session_tat <= now_ms && self.place_tat <= now_ms && self.catch_up_tat <= now_ms
    }
}

pub struct Admission {
    shards: Box<[Mutex<FxHashMap<AddrKey, Entry>>]>,
    entries: AtomicUsize,
    max_entries: usize,
    pub limits: Limits,
}

/// One GCRA step: `Ok(new_tat)` or `Err(retry_after_ms)`.
fn gcra(tat: u64, now: u64, per_min: u32) -> Result<u64, u64> {
    let t = 60_000u64.div_ceil(per_min as u64).max(1);
    let tolerance = t * (per_min as u64 - 1);
    let allowed_at = tat.saturating_sub(tolerance);
    if allowed_at > now {
        return Err(allowed_at - now);
    }
    Ok(tat.max(now) + t)
}

impl Admission {
    pub fn new(values: LimitValues) -> Self {
        Self::with_capacity(values, MAX_ADDRESSES)
    }

    pub fn with_capacity(values: LimitValues, max_entries: usize) -> Self {
        let a = Admission {
            shards: (0..SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(),
            entries: AtomicUsize::new(0),
            max_entries,
            limits: Limits::default(),
        };
        a.set(values);
        a
    }

    pub fn values(&self) -> LimitValues {
        let l = &self.limits;
        LimitValues {
            max_conns_per_addr: l.max_conns_per_addr.load(Ordering::Relaxed),
            sessions_per_min: l.sessions_per_min.load(Ordering::Relaxed),
            placements_per_addr_per_min: l.placements_per_addr_per_min.load(Ordering::Relaxed),
            catchups_per_addr_per_min: l.catchups_per_addr_per_min.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, v: LimitValues) {
        let l = &self.limits;
        l.max_conns_per_addr.store(v.max_conns_per_addr, Ordering::Relaxed);
        l.sessions_per_min.store(v.sessions_per_min, Ordering::Relaxed);
        l.placements_per_addr_per_min.store(v.placements_per_addr_per_min, Ordering::Relaxed);
        l.catchups_per_addr_per_min.store(v.catchups_per_addr_per_min, Ordering::Relaxed);
    }

    /// Addresses tracked now (for /metrics).
    pub fn tracked(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    fn shard(&self, key: AddrKey) -> &Mutex<FxHashMap<AddrKey, Entry>> {
        // The key is already a keyed hash: its low bits spread evenly.
        &self.shards[key.0 as usize % SHARDS]
    }

    /// Runs `f` on the entry of `key`, creating it if there is room. A poisoned shard is still
    /// consistent (every update is a few plain stores), so its guard is taken over.
    fn with_entry<T>(&self, key: AddrKey, f: impl FnOnce(&mut Entry) -> T) -> Result<T, AdmissionError> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(&key) {
            return Ok(f(e));
        }
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return Err(AdmissionError::TableFull);
        }
        Ok(f(map.entry(key).or_default()))
    }

    /// Counts a new connection from `key`; the caller must `disconnect` it exactly once.
    pub fn connect(&self, key: AddrKey) -> Result<(), AdmissionError> {
        let max = self.limits.max_conns_per_addr.load(Ordering::Relaxed);
        self.with_entry(key, |e| {
            if max != 0 && e.conns >= max {
                return Err(AdmissionError::TooManyConnections { max });
            }
            e.conns += 1;
            Ok(())
        })?
    }

    pub fn disconnect(&self, key: AddrKey) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get_mut(&key) else {
            debug_assert!(false, "disconnect without connect");
            return;
        };
        debug_assert!(e.conns > 0, "more disconnects than connects");
        e.conns = e.conns.saturating_sub(1);
    }

    /// One rate-limited event of `kind` from `key` at `now_ms` at `n` per minute (0: no limit).
    fn rate(
        &self,
        key: AddrKey,
        now_ms: u64,
        n: u32,
        tat: fn(&mut Entry) -> &mut u64,
        refuse: fn(u64) -> AdmissionError,
    ) -> Result<(), AdmissionError> {
        if n == 0 {
            return Ok(());
        }
        self.with_entry(key, |e| {
            let t = tat(e);
            gcra(*t, now_ms, n).map(|next| *t = next).map_err(refuse)
        })?
    }

    /// One anonymous session creation from `key` at `now_ms`.
    pub fn session(&self, key: AddrKey, now_ms: u64) -> Result<(), AdmissionError> {
        let n = self.limits.sessions_per_min.load(Ordering::Relaxed);
        self.rate(
            key,
            now_ms,
            n,
            |e| &mut e.session_tat,
            |retry_after_ms| AdmissionError::SessionRate { retry_after_ms },
        )
    }

    /// One accepted placement from `key` at `now_ms` (any user).
    pub fn placement(&self, key: AddrKey, now_ms: u64) -> Result<(), AdmissionError> {
        let n = self.limits.placements_per_addr_per_min.load(Ordering::Relaxed);
        self.rate(
            key,
            now_ms,
            n,
            |e| &mut e.place_tat,
            |retry_after_ms| AdmissionError::PlacementRate { retry_after_ms },
        )
    }

    /// One catch-up (`/ws?since=`) from `key` at `now_ms`.
    pub fn catch_up(&self, key: AddrKey, now_ms: u64) -> Result<(), AdmissionError> {
        let n = self.limits.catchups_per_addr_per_min.load(Ordering::Relaxed);
        self.rate(
            key,
            now_ms,
            n,
            |e| &mut e.catch_up_tat,
            |retry_after_ms| AdmissionError::CatchUpRate { retry_after_ms },
        )
    }

    /// Drops entries equivalent to no entry; returns how many remain.
    pub fn sweep(&self, now_ms: u64) -> usize {
        for s in self.shards.iter() {
            let mut map = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, e| !e.idle(now_ms));
            self.entries.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
        self.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(c: u32, s: u32, p: u32) -> LimitValues {
        LimitValues {
            max_conns_per_addr: c,
            sessions_per_min: s,
            placements_per_addr_per_min: p,
            catchups_per_addr_per_min: 2,
        }
    }

    #[test]
    fn connection_cap_counts_and_releases() {
        let a = Admission::new(limits(2, 0, 0));
        let (k, other) = (AddrKey(7), AddrKey(8));
        a.connect(k).unwrap();
        a.connect(k).unwrap();
        assert_eq!(a.connect(k), Err(AdmissionError::TooManyConnections { max: 2 }));
        a.connect(other).unwrap();
        a.disconnect(k);
        a.connect(k).unwrap();
        a.set(limits(0, 0, 0));
        for _ in 0..100 {
            a.connect(k).unwrap();
        }
    }

    #[test]
    fn rates_allow_a_burst_then_exactly_the_rate() {
        let a = Admission::new(limits(0, 6, 60));
        let k = AddrKey(1);
        let t0 = 1_000_000;
        for _ in 0..6 {
            a.session(k, t0).unwrap();
        }
        let Err(AdmissionError::SessionRate { retry_after_ms }) = a.session(k, t0) else { panic!() };
        assert_eq!(retry_after_ms, 10_000);
        assert!(a.session(k, t0 + 9_999).is_err());
        a.session(k, t0 + 10_000).unwrap();
        assert!(a.session(k, t0 + 10_000).is_err());
        // Over a long run the address gets exactly the rate: 60 per minute for 10 minutes, plus
        // the initial burst of 60.
        let mut ok = 0;
        for ms in (0..600_000).step_by(100) {
            ok += a.placement(k, t0 + ms).is_ok() as u32;
        }
        assert_eq!(ok, 60 + 599);
        // Kinds are independent of each other and addresses of each other.
        a.placement(AddrKey(2), t0).unwrap();
        a.catch_up(k, t0).unwrap();
        a.catch_up(k, t0).unwrap();
        assert!(matches!(a.catch_up(k, t0), Err(AdmissionError::CatchUpRate { retry_after_ms: 30_000 })));
    }

    #[test]
    fn sweep_reclaims_recovered_entries_and_the_table_is_bounded() {
        let a = Admission::with_capacity(limits(5, 60, 60), 3);
        let now = 10_000;
        a.connect(AddrKey(1)).unwrap();
        a.session(AddrKey(2), now).unwrap();
        a.placement(AddrKey(3), now).unwrap();
        assert_eq!(a.connect(AddrKey(4)), Err(AdmissionError::TableFull));
        assert_eq!(a.sweep(now), 3);
        assert_eq!(a.sweep(now + 1_000), 1, "rates recovered after one interval; the connection stays");
        a.connect(AddrKey(4)).unwrap();
        a.disconnect(AddrKey(1));
        assert_eq!(a.sweep(now + 1_000), 1);
    }

    #[test]
    fn exact_across_threads() {
        let a = std::sync::Arc::new(Admission::new(limits(100, 0, 0)));
        let k = AddrKey(9);
        let ok: usize = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..100).filter(|_| a.connect(k).is_ok()).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(ok, 100);
    }
}
