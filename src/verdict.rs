//! Verdicts: how a placement learns whether its edit was valid in log order (clustered logs).
//!
//! With a shared log the node that produced an edit does not decide its validity; the applier
//! does, in log order, by the same rule on every node. A placement whose edit the log
//! acknowledged at version V waits here until the applier has applied V.
//!
//! Invariants: `applied` only grows and is updated under the same lock as `waiters`, so a waiter
//! registered for a version not yet applied is always answered; a waiter for an applied version
//! is answered at once from `rejected`, which remembers the last `KEEP` versions' rejections.

use crate::log_rule::Rejection;
use futures_channel::oneshot;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Mutex;

/// `Ok(())` if the edit was applied, else why the log-order rule refused it.
pub type Verdict = Result<(), Rejection>;

/// How many versions back a rejection is still remembered for late waiters.
const KEEP: u64 = 1 << 20;

#[derive(Default)]
struct Inner {
    applied: u64,
    waiters: FxHashMap<u64, oneshot::Sender<Verdict>>,
    rejected: FxHashMap<u64, Rejection>,
    order: VecDeque<u64>,
}

#[derive(Default)]
pub struct Verdicts {
    inner: Mutex<Inner>,
}

impl Verdicts {
    /// Starts with every version up to `applied` decided (history replayed before serving).
    pub fn new(applied: u64) -> Self {
        Verdicts { inner: Mutex::new(Inner { applied, ..Default::default() }) }
    }

    /// The verdict on `version`, now or once the applier reaches it.
    pub fn wait(&self, version: u64) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if version <= i.applied {
            let _ = tx.send(i.rejected.get(&version).map_or(Ok(()), |&n| Err(n)));
        } else {
            i.waiters.insert(version, tx);
        }
        rx
    }

    /// Called by the applier after applying up to `applied`, with the rejections among the
    /// versions applied since the previous call.
    pub fn settle(&self, applied: u64, rejected: &mut Vec<(u64, Rejection)>) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for &(v, next) in rejected.iter() {
            i.rejected.insert(v, next);
            i.order.push_back(v);
        }
        rejected.clear();
        while i.order.front().is_some_and(|&v| v + KEEP < applied) {
            let v = i.order.pop_front().unwrap();
            i.rejected.remove(&v);
        }
        i.applied = i.applied.max(applied);
        if i.waiters.is_empty() {
            return;
        }
        let done: Vec<u64> = i.waiters.keys().copied().filter(|&v| v <= applied).collect();
        for v in done {
            let verdict = i.rejected.get(&v).map_or(Ok(()), |&n| Err(n));
            if let Some(tx) = i.waiters.remove(&v) {
                let _ = tx.send(verdict);
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
