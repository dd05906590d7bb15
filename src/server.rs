//! Wiring: opens the edit log, replays it into the applier, starts the applier, the housekeeping,
//! supervisor and signal threads, and one shard per core, all holding one `shared::Shared`.
//!
//! Invariants: shards start serving only after the log's history is applied, so the first
//! snapshot and every catch-up include every acknowledged edit. On a Kafka log, "history" is the
//! topic up to its end at start, applied from the local checkpoint on. `run` returns only
//! through `finish` (after a drain, or `Stop::Now`), which writes the checkpoint first; the
//! caller (the binary, or a test running the server in-process) then ends the process or goes
//! on. The applier's and the log's threads end with the process, not with `run`.

use crate::admission::{Admission, LimitValues};
use crate::applier::{Applier, ApplierSetup, ApplierStats, ClusterSetup, Control, ShardMsg};
use crate::bounds::{CATCH_UP_QUEUE, EDIT_RUNS_QUEUE, SHARD_QUEUE};
use crate::canvas::Canvas;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::edit_log::{file::FileLog, EditLog, LogError};
use crate::history::{HistorySetup, HistoryWriter};
use crate::lifecycle::{notify, Lifecycle};
use crate::limiter::Limiter;
use crate::metrics::{Metrics, ShardStats};
use crate::names::Names;
use crate::pow::{Proofs, SessionPolicy};
use crate::proxy_header::ProxyPolicy;
use crate::secrets::SecretError;
use crate::shared::{Budget, Shared};
use crate::snapshot::SnapshotStore;
use crate::token::Signer;
use crate::verdict::Verdicts;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("edit log: {0}")]
    Log(#[from] LogError),
    #[error("token secret: {0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Shard(String),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Roles(#[from] crate::roles::RolesError),
}

/// The edit log the configuration asks for (its tail fills `names`), the lowest version a tail
/// may start after, and the log's identity for derived data.
pub fn open_log(
    args: &crate::config::ServeArgs,
    names: &Arc<Names>,
) -> Result<(Arc<dyn EditLog>, u64, String), ServerError> {
    #[cfg(feature = "kafka")]
    if let Some(settings) = crate::edit_log::kafka::KafkaSettings::of(args) {
        use crate::edit_log::kafka::KafkaLog;
        let mut k = KafkaLog::connect(settings.clone())?;
        k.set_names(names.clone());
        if args.publish_checkpoint_secs > 0 {
            crate::edit_log::published::spawn_publisher(
                settings,
                checkpoint_topic(args),
                args.data_dir.clone(),
                Duration::from_secs(args.publish_checkpoint_secs),
            )
            .map_err(ServerError::Io)?;
        }
        let oldest = k.oldest_after();
        return Ok((Arc::new(k), oldest, format!("kafka topic {}", args.kafka_topic)));
    }
    let id = crate::edit_log::file::identity(&args.data_dir);
    let log = FileLog::open_with_names(&args.data_dir, !args.no_fsync, names.clone())?;
    log.set_commit_window(Duration::from_micros(args.commit_window_us))?;
    Ok((Arc::new(log), 0, id))
}

/// The secret from configuration, or one created once (atomically) and kept in the data
/// directory. A cluster node never gets here without `--secret` (`Config` refuses that).
fn load_secret(config: &Config) -> Result<Vec<u8>, ServerError> {
    if let Some(s) = &config.args.secret {
        return Ok(s.as_bytes().to_vec());
    }
    let (secret, created) = crate::secrets::load_or_create(&config.args.data_dir)?;
    if created {
        let path = crate::secrets::path_in(&config.args.data_dir);
        tracing::warn!(path = %path.display(), "no --secret given: created a token secret for this node");
    }
    Ok(secret)
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    let cpus = crate::sys::allowed_cpus();
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// Where the shards listen.
pub enum Listen {
    /// Every shard binds this address itself, with SO_REUSEPORT.
    Bind(std::net::SocketAddr),
    /// One bound, listening socket per shard (SO_REUSEPORT on one port), in shard order: a
    /// caller can bind port 0 first and know the port before the server starts.
    Given(Vec<std::net::TcpListener>),
}

/// What the caller asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Drain (as `POST /api/v1/admin/drain`), naming why; `run` returns when it is over.
    Drain(&'static str),
    /// Stop now: checkpoint, close everyone with 1001, return.
    Now,
}

/// Runs the appliance until SIGTERM/SIGINT.
pub fn run(config: Config, listen: Listen, stop: Receiver<Stop>) -> Result<(), ServerError> {
    let started = Instant::now();
    let args = config.args.clone();
    let cpus = allowed_cpus();
    let mut given = match listen {
        Listen::Bind(_) => Vec::new(),
        Listen::Given(l) if l.is_empty() => return Err(ServerError::Shard("no listeners given".into())),
        Listen::Given(l) => l,
    };
    let shards = match (given.len(), args.shards) {
        (0, 0) => cpus.len(),
        (0, n) => n,
        (g, n) if n == 0 || n == g => g,
        (g, n) => return Err(ServerError::Shard(format!("--shards {n} but {g} listeners given"))),
    };
    let fd_limit = crate::sys::raise_fd_limit();
    let budget = Budget::new(fd_limit, shards, args.fd_reserve);
    let max_conns_per_shard =
        if args.max_conns > 0 { args.max_conns.div_ceil(shards) } else { (budget.soft / shards).max(1) };
    let secret = load_secret(&config)?;
    // Checked by `Config::from_args`; loaded again here so the file is read once per start.
    let roles = crate::roles::Roles::load(args.admin_token.as_deref(), args.roles.as_deref())?;
    let names = Arc::new(Names::open(&args.data_dir)?);
    let (log, oldest_after, log_id) = open_log(&args, &names)?;
    let shared_log = args.kafka_brokers.is_some();
    let limiter = Arc::new(Limiter::new(args.cooldown * 1000));
    // Checked by `Config::from_args`.
    let claim_cooldowns = crate::claims::ClaimCooldowns::parse(&args.claim_cooldown).unwrap_or_default();
    limiter.set_longest_class_ms(claim_cooldowns.longest_ms());
    let snapshots = Arc::new(SnapshotStore::default());
    let stats = Arc::new(ApplierStats::new(shards));
    let (shard_txs, shard_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| bounded::<ShardMsg>(SHARD_QUEUE)).unzip();
    let (catchup_tx, catchup_rx) = bounded(CATCH_UP_QUEUE);
    let (edits_tx, edits_rx) = bounded(EDIT_RUNS_QUEUE);
    // Control requests (a checkpoint at the end) come one at a time from `finish`; a full
    // channel would only make `finish` wait for the applier, which it does anyway.
    let (control_tx, control_rx) = bounded::<Control>(4);
    let verdicts = shared_log.then(|| Arc::new(Verdicts::new(0)));
    let cluster = verdicts.as_ref().map(|v| ClusterSetup {
        cooldown_ms: args.cooldown * 1000,
        class_cooldowns: claim_cooldowns.table(),
        verdicts: v.clone(),
        dir: args.data_dir.clone(),
        log_id: format!("kafka topic {}", args.kafka_topic),
        checkpoint_every: Duration::from_secs(args.checkpoint_secs),
        control: control_rx,
        names: names.clone(),
    });
    let head = log.head();
    let switches = Arc::new(crate::control::LiveSwitches::default());
    let audit = Arc::new(crate::control::Audit::default());
    let history = HistoryWriter::open(HistorySetup {
        data_dir: &args.data_dir,
        geometry: config.geometry.clone(),
        log_id: &log_id,
        log_head: head,
        keyframe_every: args.keyframe_every,
        lookup: args.pixel_lookup,
        secret: &secret,
    })?;
    // A checkpoint the history does not reach would start the history again at it; when the
    // topic still holds everything, replaying it whole keeps the history whole instead.
    let (hist_base, hist_end) = history.span();
    // A node with nothing of its own (no checkpoint, no history) joins from the newest
    // checkpoint another node published, and replays only the topic after it.
    let joined = shared_log && hist_end == 0 && join_from_published(&args, head);
    let use_checkpoint = |v: u64| (hist_base..=hist_end).contains(&v) || hist_base > 0 || oldest_after > 0 || joined;

    let geometry = Arc::new(crate::canvas::LiveGeometry::new(&config.geometry));
    let mut applier = Applier::new(ApplierSetup {
        geometry: geometry.clone(),
        canvas: Canvas::new(config.geometry.clone()),
        window: args.window,
        stride: args.edit_stride,
        batch: Duration::from_millis(args.batch_ms),
        max_lag: args.max_lag_batches,
        shards: shard_txs,
        limiter: limiter.clone(),
        snapshots: snapshots.clone(),
        stats: stats.clone(),
        cluster,
        history: Some(history),
        switches: switches.clone(),
        audit: audit.clone(),
    });
    if shared_log {
        restore_checkpoint(&mut applier, &args.data_dir, head, oldest_after, use_checkpoint)?;
    }
    applier.begin_history()?;
    let history = applier.history_reader().expect("the applier was given a history");
    let from = applier.version();
    log.tail(from, edits_tx)?;
    applier.replay(&edits_rx, head);
    log.set_switches(applier.switches().clone())?;
    tracing::info!(edits = head, replayed = head - from, ms = started.elapsed().as_millis() as u64, log = %log.describe(), "history applied");
    std::thread::Builder::new().name("placecast-applier".into()).spawn(move || applier.run(edits_rx, catchup_rx))?;

    let limits = LimitValues {
        max_conns_per_addr: args.max_conns_per_addr,
        sessions_per_min: args.sessions_per_min,
        placements_per_addr_per_min: args.placements_per_addr_per_min,
        catchups_per_addr_per_min: args.catchups_per_addr_per_min,
    };
    let shared = Arc::new(Shared {
        geometry,
        admission: Admission::new(limits),
        proofs: Proofs::new(&secret),
        sessions: SessionPolicy::new(args.anonymous_sessions, args.pow_difficulty),
        proxy: ProxyPolicy { mode: args.proxy_protocol, trusted: args.trusted_proxies.clone() },
        lifecycle: Lifecycle::new(shards, args.drain_grace_ms, args.drain_spread_s * 1000),
        open_conns: AtomicUsize::new(0),
        budget,
        control: shared_log.then_some(control_tx),
        names: names.clone(),
        history,
        switches,
        audit,
        roles,
        region_busy: AtomicBool::new(false),
        claim_cooldowns: claim_cooldowns.clone(),
        claim_table: Default::default(),
        config,
        limiter: limiter.clone(),
        log,
        verdicts,
        signer: Signer::new(&secret),
        snapshots,
        applier: stats,
        catchup_tx,
        metrics: Metrics::default(),
        shard_stats: (0..shards).map(|_| ShardStats::default()).collect(),
        shutting_down: AtomicBool::new(false),
        max_conns_per_shard,
    });
    spawn_housekeeping(shared.clone());
    let (done_tx, done_rx) = bounded::<()>(1);
    spawn_stop_listener(shared.clone(), stop, done_tx.clone())?;

    // One report per shard.
    let (ready_tx, ready_rx) = bounded(shards);
    let mut handles = Vec::new();
    given.reverse();
    for (i, rx) in shard_rxs.into_iter().enumerate() {
        let cpu = (shards <= cpus.len()).then(|| cpus[i]);
        handles.push(crate::shard::spawn(i, cpu, shared.clone(), rx, given.pop(), ready_tx.clone())?);
    }
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(addr)) => tracing::debug!(%addr, "shard listening"),
            Ok(Err(e)) => return Err(ServerError::Shard(e)),
            Err(_) => return Err(ServerError::Shard("a shard did not start within 10 s".into())),
        }
    }
    shared.lifecycle.set_ready(crate::now_ms());
    spawn_supervisor(shared.clone(), done_tx)?;
    notify::ready();
    tracing::info!(
        listen = %args.listen, shards, max_conns_per_shard, fd_budget = budget.soft, fd_hard = budget.hard,
        proxy_protocol = ?args.proxy_protocol, anonymous_sessions = ?args.anonymous_sessions, batch_ms = args.batch_ms, cooldown_s = args.cooldown,
        width = shared.geometry.size().0, height = shared.geometry.size().1, conn_bytes = crate::hub::CONN_BYTES,
        startup_ms = started.elapsed().as_millis() as u64, "placecast serving"
    );
    // Until `finish` (or a shard ends by itself, which only a stop makes it do).
    let _ = done_rx.recv();
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("placecast stopped");
    Ok(())
}

/// Reclaims expired limiter, admission and proof entries every few seconds, off the shards.
fn spawn_housekeeping(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("placecast-sweep".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let now = crate::now_ms();
        shared.limiter.sweep(now);
        shared.admission.sweep(now);
        shared.proofs.sweep(now);
        shared.names.sweep(now);
        shared.claim_table.sweep(now);
    });
}

/// Every `SUPERVISE_EVERY` (or a third of `WatchdogSec=`): `WATCHDOG=1` while every shard and
/// the applier run, `STATUS=` for `systemctl status`, and the end of a drain.
fn spawn_supervisor(shared: Arc<Shared>, done: Sender<()>) -> std::io::Result<()> {
    let watchdog = notify::watchdog_every();
    let every = watchdog.map_or(crate::lifecycle::SUPERVISE_EVERY, |w| w.min(crate::lifecycle::SUPERVISE_EVERY));
    std::thread::Builder::new().name("placecast-supervisor".into()).spawn(move || {
        let mut last_status = String::new();
        let mut warned = false;
        loop {
            std::thread::sleep(every);
            if shared.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let now = crate::now_ms();
            let applier_beat = shared.applier.heartbeat_ms.load(Ordering::Relaxed);
            let stuck = shared.lifecycle.stuck(now, applier_beat);
            match (&stuck, watchdog) {
                (None, Some(_)) => notify::watchdog(),
                (Some(why), _) if !warned => {
                    tracing::error!(why = %why.message(), "a thread has stopped running; the watchdog is no longer fed");
                    warned = true;
                }
                _ => {}
            }
            let clients: u64 = shared.shard_stats.iter().map(|s| s.connections.load(Ordering::Relaxed)).sum();
            let version = shared.applier.version.load(Ordering::Relaxed);
            let state = if shared.lifecycle.draining() { "draining" } else { "serving" };
            let status = format!("{state}: version {version}, {clients} WebSocket clients");
            if status != last_status {
                notify::status(&status);
                last_status = status;
            }
            let Some(deadline) = shared.lifecycle.drain_deadline_ms() else { continue };
            let closing = matches!(shared.lifecycle.phase(now), crate::lifecycle::DrainPhase::Closing { .. });
            if (closing && clients == 0) || now >= deadline {
                tracing::info!(clients, "drain finished");
                finish(&shared, &done);
                return;
            }
        }
    })?;
    Ok(())
}

/// Ends the server: a node on a shared log writes its checkpoint first (acknowledged edits are
/// already durable); the shards close whoever is left with 1001 and return, and so does `run`.
/// Only the first call does anything.
fn finish(shared: &Shared, done: &Sender<()>) {
    if shared.shutting_down.swap(true, Ordering::AcqRel) {
        return;
    }
    // A quiet shard sleeps up to `shard::QUIET_TICK`: its tick closes the clients now instead.
    for wake in shared.applier.shard_wake.iter() {
        wake.wake();
    }
    if let Some(tx) = &shared.control {
        let (reply_tx, reply_rx) = bounded(1);
        let answer = tx
            .send(Control::Checkpoint(reply_tx))
            .ok()
            .and_then(|_| reply_rx.recv_timeout(Duration::from_secs(10)).ok());
        match answer {
            Some(Ok(version)) => tracing::info!(version, "checkpoint written"),
            Some(Err(e)) => tracing::error!(error = %e, "writing the checkpoint failed"),
            None => tracing::error!("the applier did not write the checkpoint within 10 s"),
        }
    }
    let _ = done.try_send(());
}

/// Turns the caller's `Stop` requests into a drain or the end.
fn spawn_stop_listener(shared: Arc<Shared>, stop: Receiver<Stop>, done: Sender<()>) -> std::io::Result<()> {
    std::thread::Builder::new().name("placecast-stop".into()).spawn(move || {
        while let Ok(req) = stop.recv() {
            match req {
                Stop::Drain(why) => shared.start_drain(why),
                Stop::Now => {
                    finish(&shared, &done);
                    return;
                }
            }
        }
    })?;
    Ok(())
}

/// SIGTERM/SIGINT ask for a drain; a second signal for the end, now (after the checkpoint).
pub fn forward_signals(to: Sender<Stop>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("placecast-signals".into()).spawn(move || {
        let mut draining = false;
        for sig in signals.forever() {
            let req = match (draining, sig) {
                (true, _) => Stop::Now,
                (false, SIGTERM) => Stop::Drain("SIGTERM"),
                (false, _) => Stop::Drain("SIGINT"),
            };
            if req == Stop::Now {
                tracing::info!(signal = sig, "second signal: stopping now");
            }
            draining = true;
            if to.send(req).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Starts the applier from `DATA_DIR/checkpoint.bin` when it fits this log; otherwise the whole
/// log is replayed.
/// Writes the newest published checkpoint as this node's own, if it has none and one exists
/// (`edit_log::published`); true when it did. Any failure leaves the node to replay the topic.
#[cfg(feature = "kafka")]
fn join_from_published(args: &crate::config::ServeArgs, head: u64) -> bool {
    if args.no_published_join || crate::checkpoint::path_in(&args.data_dir).exists() {
        return false;
    }
    let Some(settings) = crate::edit_log::kafka::KafkaSettings::of(args) else { return false };
    let topic = checkpoint_topic(args);
    let started = Instant::now();
    let found = match crate::edit_log::published::fetch_newest(&settings, &topic) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, topic, "cannot read the published checkpoints; replaying the whole edit topic");
            return false;
        }
    };
    let Some((version, bytes)) = found else {
        tracing::info!(topic, "no published checkpoint; replaying the whole edit topic");
        return false;
    };
    let Some(cp) = Checkpoint::decode(&bytes).filter(|cp| cp.version == version && version <= head) else {
        tracing::warn!(
            version,
            head,
            topic,
            "the published checkpoint does not fit this topic; replaying the whole edit topic"
        );
        return false;
    };
    if let Err(e) = cp.write(&args.data_dir) {
        tracing::warn!(error = %e, "cannot keep the published checkpoint; replaying the whole edit topic");
        return false;
    }
    tracing::info!(version, head, bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, topic,
        "joining from a published checkpoint: replaying only the edits after it (pixel lookups and the past start there on this node)");
    true
}

#[cfg(not(feature = "kafka"))]
fn join_from_published(_args: &crate::config::ServeArgs, _head: u64) -> bool {
    false
}

/// The topic of published checkpoints (`--checkpoint-topic`, or the edit topic's `-checkpoints`).
pub fn checkpoint_topic(args: &crate::config::ServeArgs) -> String {
    match args.checkpoint_topic.trim() {
        "" => format!("{}-checkpoints", args.kafka_topic),
        t => t.to_string(),
    }
}

fn restore_checkpoint(
    applier: &mut Applier,
    dir: &Path,
    head: u64,
    oldest_after: u64,
    use_checkpoint: impl Fn(u64) -> bool,
) -> Result<(), ServerError> {
    let started = Instant::now();
    match Checkpoint::load(dir) {
        Ok(Some(cp)) if cp.version <= head && !use_checkpoint(cp.version) => {
            tracing::warn!(
                version = cp.version,
                "the history does not reach the checkpoint; replaying the whole topic to rebuild it"
            );
        }
        Ok(Some(cp)) if cp.version > head => {
            return Err(ServerError::Checkpoint(format!(
                "{} is at version {} but the topic holds only {head} edits: the topic was recreated or is another one; \
                 delete the checkpoint to rebuild this node from the topic",
                crate::checkpoint::path_in(dir).display(),
                cp.version
            )))
        }
        Ok(Some(cp)) => {
            let version = cp.version;
            match applier.restore(cp) {
                Ok(()) => tracing::info!(version, ms = started.elapsed().as_millis() as u64, "checkpoint loaded"),
                Err(why) => tracing::warn!(%why, "ignoring the checkpoint; replaying the whole log"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "ignoring the checkpoint; replaying the whole log"),
    }
    if applier.version() < oldest_after {
        return Err(ServerError::Checkpoint(format!(
            "the topic no longer holds versions {}..={oldest_after} (retention deleted them) and this node's checkpoint is older; \
             copy a recent checkpoint.bin from another node into the data directory, and set the topic's retention to infinite",
            applier.version() + 1
        )));
    }
    Ok(())
}
