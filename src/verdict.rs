//! Verdicts: how a placement learns whether its edit was valid in log order (clustered logs).
//!
//! With a shared log the node that produced an edit does not decide its validity; the applier
//! does, in log order, by the same rule on every node. A placement whose edit the log
//! acknowledged at version V waits here until the applier has applied V.
//!
//! Invariants: `applied` only grows. Rejections of versions up to `applied` are in their shard
//! before `applied` is raised, and `settle` raises `applied` before it looks for waiters in each
//! shard, while `wait` reads `applied` holding its shard's lock: so a waiter registered for a
//! version not yet applied is always answered by the settle that applies it, and a waiter for an
//! applied version is answered at once from `rejected`, which remembers the last `KEEP`
//! versions' rejections. No lock is shared by every placement: versions are spread over
//! `SHARDS` mutexes (a placement takes one, once).

use crate::log_rule::Rejection;
use futures_channel::oneshot;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `Ok(())` if the edit was applied, else why the log-order rule refused it.
pub type Verdict = Result<(), Rejection>;

/// How many versions back a rejection is still remembered for late waiters.
const KEEP: u64 = 1 << 20;
/// Mutexes the versions are spread over (version % SHARDS): consecutive placements, which are
/// consecutive versions, never share one.
const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    waiters: FxHashMap<u64, oneshot::Sender<Verdict>>,
    rejected: FxHashMap<u64, Rejection>,
    order: VecDeque<u64>,
}

pub struct Verdicts {
    applied: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts::new(0)
    }
}

impl Verdicts {
    /// Starts with every version up to `applied` decided (history replayed before serving).
    pub fn new(applied: u64) -> Self {
        Verdicts { applied: AtomicU64::new(applied), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }

    fn shard(&self, version: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(version % SHARDS as u64) as usize].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict on `version`, now or once the applier reaches it.
    pub fn wait(&self, version: u64) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.shard(version);
        if version <= self.applied.load(Ordering::Acquire) {
            let _ = tx.send(s.rejected.get(&version).map_or(Ok(()), |&n| Err(n)));
        } else {
            s.waiters.insert(version, tx);
        }
        rx
    }

    /// Called by the applier after applying up to `applied`, with the rejections among the
    /// versions applied since the previous call.
    pub fn settle(&self, applied: u64, rejected: &mut Vec<(u64, Rejection)>) {
        for (v, why) in rejected.drain(..) {
            let mut s = self.shard(v);
            s.rejected.insert(v, why);
            s.order.push_back(v);
        }
        self.applied.fetch_max(applied, Ordering::AcqRel);
        let applied = self.applied.load(Ordering::Acquire);
        // Each shard is woken once for all its answers, after the locks are let go (glommio's
        // hunk 7, as the embedded log's writer does).
        let _one_wake_per_shard = glommio::batch_foreign_wakes();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            while s.order.front().is_some_and(|&v| v + KEEP < applied) {
                let v = s.order.pop_front().expect("not empty");
                s.rejected.remove(&v);
            }
            if s.waiters.is_empty() {
                continue;
            }
            let done: Vec<u64> = s.waiters.keys().copied().filter(|&v| v <= applied).collect();
            for v in done {
                let verdict = s.rejected.get(&v).map_or(Ok(()), |&n| Err(n));
                if let Some(tx) = s.waiters.remove(&v) {
                    let _ = tx.send(verdict);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
        rx.try_recv().ok().flatten()
    }

    /// Waiters on four threads race the settles of 20,000 versions: every one is answered, with
    /// its own verdict (every 7th version rejected).
    #[test]
    fn every_waiter_is_answered_while_settles_race() {
        let v = std::sync::Arc::new(Verdicts::new(0));
        let why = Rejection::Cooldown { next_at_ms: 1 };
        let waiters: Vec<_> = (0..4u64)
            .map(|t| {
                let v = v.clone();
                std::thread::spawn(move || {
                    let rx: Vec<_> = (1..=20_000u64).filter(|n| n % 4 == t).map(|n| (n, v.wait(n))).collect();
                    rx.into_iter().map(|(n, r)| (n, futures_lite::future::block_on(r).unwrap())).collect::<Vec<_>>()
                })
            })
            .collect();
        for at in (100..=20_000u64).step_by(100) {
            let mut rejected: Vec<_> = (at - 99..=at).filter(|n| n % 7 == 0).map(|n| (n, why)).collect();
            v.settle(at, &mut rejected);
        }
        for w in waiters {
            for (n, got) in w.join().unwrap() {
                assert_eq!(got, if n % 7 == 0 { Err(why) } else { Ok(()) }, "version {n}");
            }
        }
    }

    #[test]
    fn waiters_before_and_after_apply_agree() {
        let v = Verdicts::new(0);
        let early_ok = v.wait(1);
        let early_bad = v.wait(2);
        let late = Rejection::Cooldown { next_at_ms: 5_000 };
        v.settle(2, &mut vec![(2, late)]);
        assert_eq!(now(early_ok), Some(Ok(())));
        assert_eq!(now(early_bad), Some(Err(late)));
        assert_eq!(now(v.wait(2)), Some(Err(late)));
        assert_eq!(now(v.wait(1)), Some(Ok(())));
        let pending = v.wait(3);
        v.settle(2, &mut vec![]);
        let mut pending = pending;
        assert_eq!(pending.try_recv(), Ok(None));
    }
}
