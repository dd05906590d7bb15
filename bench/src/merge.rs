//! Merging the results of threads, processes and agents: counts by key, per-bucket vectors and
//! exported histograms. Every merge is exact and commutative, so results can be summed in any
//! order (thread results in a process, process results in a fleet, agents' at the coordinator).

use crate::hist::{HistExport, LatencyHist};
use std::collections::BTreeMap;

/// Adds `b`'s counts to `a`'s, key by key.
pub fn merge_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Adds `b`'s samples to `a`.
pub fn merge_hist(a: &mut HistExport, b: &HistExport) {
    let mut h = LatencyHist::import(a);
    h.add(&LatencyHist::import(b));
    *a = h.export();
}

/// Adds `b` to `a` element by element (`a` grows to `b`'s length).
pub fn merge_vec(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}
