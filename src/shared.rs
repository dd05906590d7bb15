//! The state every shard and thread shares (`Shared`), and the descriptor budget. Its own
//! module so that the connection path (shard, http, hub, place, session, admin) depends on it,
//! not on the wiring in `server.rs`.
//!
//! Invariant: everything here is either immutable after start, an atomic, or a sharded table
//! whose lock is taken once per request (limiter, admission, proofs), never per batch.
//!
//! Descriptor budget (`Budget`): the process may hold `hard` client connections, HTTP and
//! WebSocket together (the open-file limit less 64 + 16 per shard for the log, rings, epoll and
//! Kafka sockets); past `soft` (= hard - `--fd-reserve`) only the operator's routes are served,
//! so health checks, metrics and the admin API answer when every WebSocket slot is taken. At the
//! default 20,000-descriptor cap with 2 shards: hard 19,904, soft 19,648.

use crate::admission::Admission;
use crate::applier::{ApplierStats, Control};
use crate::canvas::LiveGeometry;
use crate::config::Config;
use crate::edit_log::EditLog;
use crate::lifecycle::{notify, Lifecycle};
use crate::limiter::Limiter;
use crate::messages::CatchUpReq;
use crate::metrics::{Metrics, ShardStats};
use crate::pow::{Proofs, SessionPolicy};
use crate::proxy_header::ProxyPolicy;
use crate::snapshot::SnapshotStore;
use crate::token::Signer;
use crate::verdict::Verdicts;
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// State every shard and thread shares. Hot-path fields are read-mostly atomics.
pub struct Shared {
    pub config: Config,
    /// The canvas's palette and its size now (the applier grows it at resize entries).
    pub geometry: Arc<LiveGeometry>,
    pub limiter: Arc<Limiter>,
    pub log: Arc<dyn EditLog>,
    /// Set on a shared (Kafka) log: placements wait for the applier's log-order verdict.
    pub verdicts: Option<Arc<Verdicts>>,
    pub signer: Signer,
    pub snapshots: Arc<SnapshotStore>,
    pub applier: Arc<ApplierStats>,
    pub catchup_tx: Sender<CatchUpReq>,
    pub metrics: Metrics,
    pub shard_stats: Box<[ShardStats]>,
    /// Set by `finish` just before the exit: shards stop accepting and close what is left.
    pub shutting_down: AtomicBool,
    pub max_conns_per_shard: usize,
    pub admission: Admission,
    pub proofs: Proofs,
    pub sessions: SessionPolicy,
    pub proxy: ProxyPolicy,
    pub lifecycle: Lifecycle,
    /// Client connections open now, HTTP and WebSocket (see `Budget`).
    pub open_conns: AtomicUsize,
    pub budget: Budget,
    /// The applier's control channel on a shared log (checkpoint before exit).
    pub control: Option<Sender<Control>>,
    /// The user directory (key → display name).
    pub names: Arc<crate::names::Names>,
    /// What the applier's history index serves (pixel lookups, the canvas at V, edit chunks).
    pub history: Arc<crate::history::HistoryReader>,
    /// The switches as the applier last applied them (admission's early refusal).
    pub switches: Arc<crate::control::LiveSwitches>,
    /// The control entries applied (`GET /api/v1/admin/audit`).
    pub audit: Arc<crate::control::Audit>,
    /// Who may use the admin API (`--admin-token`, `--roles`).
    pub roles: crate::roles::Roles,
    /// A region change (fill, restore, revert) is being computed or logged (one at a time).
    pub region_busy: AtomicBool,
    /// `--claim-cooldown`, and each user's class from their last verified token (`claims.rs`).
    pub claim_cooldowns: crate::claims::ClaimCooldowns,
    pub claim_table: crate::claims::ClaimTable,
}

/// How many client connections the descriptors allow (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub soft: usize,
    pub hard: usize,
}

impl Budget {
    pub fn new(fd_limit: u64, shards: usize, reserve: usize) -> Self {
        let hard = (fd_limit.saturating_sub(64 + 16 * shards as u64) as usize).max(32);
        Budget { soft: hard.saturating_sub(reserve).max(16), hard }
    }
}

impl Shared {
    /// Verifies a user token and notes the user's display name for the directory (`names.rs`).
    pub fn verify_user(&self, token: &str) -> Result<crate::token::User, crate::token::TokenError> {
        let now = crate::now_ms();
        let user = self.signer.verify(token, now / 1000)?;
        self.names.note(user.id, &user.name, now);
        if !self.claim_cooldowns.is_empty() {
            self.claim_table.note(user.id, self.claim_cooldowns.class_of(&user.claims), now);
        }
        Ok(user)
    }

    /// Gives back what a client connection held, whoever closes it (the HTTP task, or the hub
    /// after an upgrade): its descriptor of the budget and, once admitted, its address's slot.
    pub fn release_connection(&self, addr: Option<crate::client_addr::AddrKey>) {
        self.open_conns.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(k) = addr {
            self.admission.disconnect(k);
        }
    }

    /// Starts a drain (SIGTERM, `POST /api/v1/admin/drain`): `/readyz` turns 503 now; the shards
    /// close their clients after the grace, spread over the window; the supervisor ends the process
    /// when the last is gone.
    pub fn start_drain(&self, why: &str) {
        if !self.lifecycle.start_drain(crate::now_ms()) {
            return;
        }
        notify::stopping();
        tracing::info!(
            why,
            grace_ms = self.lifecycle.grace_ms(),
            spread_ms = self.lifecycle.spread_ms(),
            "draining: /readyz is 503; clients will be closed with 1012"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve() {
        let b = Budget::new(20_000, 2, 256);
        assert_eq!((b.hard, b.soft), (19_904, 19_648));
        let tiny = Budget::new(100, 2, 256);
        assert!(tiny.soft >= 16 && tiny.hard >= tiny.soft);
    }
}
