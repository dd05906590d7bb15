//! Read-your-writes on one node: a shard answering a history read (who placed a pixel, the
//! canvas at a version, an edit chunk) first makes sure this node's history holds every edit
//! the log had acknowledged when the request came.
//!
//! Why it is needed: on the embedded log the applier takes committed edits off its queue only
//! at each cut and at most every `bounds::APPLY_EVERY` between (applier.rs, `run`), so a
//! client told "placed, version V" that asks at once who placed the pixel would be shown the
//! previous owner. Here the shard asks the applier to take its queue now (`TakeNow`) and waits
//! until the history has, bounded by `READ_YOUR_WRITES_WAIT`; past it the answer goes out with
//! what the history has (never an error: the history is derived data, and the bound is only
//! reached when the applier is stalled, which the watchdog handles).
//!
//! Not here: a shared (Kafka) log, where a placement is answered only once this node has applied
//! it, so the history already holds it; other nodes of a cluster, which converge but are not
//! waited for; what the applier publishes only at a cut (snapshots, batches, `/healthz`'s
//! version).

use crate::bounds::READ_YOUR_WRITES_WAIT;
use crate::shared::Shared;
use std::time::{Duration, Instant};

/// How often the wait looks at the history's version: the applier takes its queue within one
/// wake of being asked, so the first or second look usually finds it done.
const POLL: Duration = Duration::from_millis(1);

/// Waits until the history holds version `version`, or everything the log has acknowledged if
/// that is less. Returns at once when it already does (or on a shared log).
pub async fn history_through(shared: &Shared, version: u64) {
    if shared.verdicts.is_some() {
        return;
    }
    let target = version.min(shared.log.head());
    if shared.history.version() >= target {
        return;
    }
    let until = Instant::now() + READ_YOUR_WRITES_WAIT;
    while shared.history.version() < target && Instant::now() < until {
        // Again each look: one take is bounded (65,536 edits), and an ask costs nothing while
        // one is pending.
        shared.applier.take_now.ask();
        glommio::timer::sleep(POLL).await;
    }
}
