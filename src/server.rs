//! Wiring: opens the edit log, replays it into the applier, starts the applier, the housekeeping
//! and signal threads, and one shard per core; `Shared` is what they all hold.
//!
//! Invariant: shards start serving only after the log's history is applied, so the first
//! snapshot and every catch-up include every acknowledged edit. On a Kafka log, "history" is the
//! topic up to its end at start, applied from the local checkpoint on.

use crate::applier::{Applier, ApplierSetup, ApplierStats, CatchUpReq, ClusterSetup, Control, ShardMsg};
use crate::canvas::{Canvas, Geometry};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::edit_log::{file::FileLog, EditLog, LogError};
use crate::limiter::Limiter;
use crate::metrics::{Metrics, ShardStats};
use crate::snapshot::SnapshotStore;
use crate::token::Signer;
use crate::verdict::Verdicts;
use crossbeam_channel::{bounded, unbounded, Sender};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// State every shard and thread shares. Hot-path fields are read-mostly atomics.
pub struct Shared {
    pub config: Config,
    pub geometry: Geometry,
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
    pub shutting_down: AtomicBool,
    pub max_conns_per_shard: usize,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("edit log: {0}")]
    Log(#[from] LogError),
    #[error("token secret: {0}")]
    Secret(String),
    #[error("{0}")]
    Shard(String),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// The edit log the configuration asks for, and the lowest version a tail may start after.
fn open_log(args: &crate::config::ServeArgs) -> Result<(Arc<dyn EditLog>, u64), ServerError> {
    #[cfg(feature = "kafka")]
    if let Some(brokers) = &args.kafka_brokers {
        use crate::edit_log::kafka::{KafkaLog, KafkaSettings};
        let k = KafkaLog::connect(KafkaSettings {
            brokers: brokers.clone(),
            topic: args.kafka_topic.clone(),
            timeout_ms: args.kafka_timeout_ms,
        })?;
        let oldest = k.oldest_after();
        return Ok((Arc::new(k), oldest));
    }
    Ok((Arc::new(FileLog::open(&args.data_dir, !args.no_fsync)?), 0))
}

/// The secret from configuration, or one created once and kept in the data directory.
fn load_secret(config: &Config) -> Result<Vec<u8>, ServerError> {
    if let Some(s) = &config.args.secret {
        return Ok(s.as_bytes().to_vec());
    }
    let dir = &config.args.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| ServerError::Secret(format!("{}: {e}", dir.display())))?;
    let path = dir.join("secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if s.trim().len() >= 32 {
            return Ok(s.trim().as_bytes().to_vec());
        }
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ServerError::Secret(e.to_string()))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    write_private(&path, &hex).map_err(|e| ServerError::Secret(format!("{}: {e}", path.display())))?;
    tracing::warn!(path = %path.display(), "no --secret given: created a token secret; use the same secret on every node");
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
    }
    l.rlim_cur
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// Runs the appliance until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), ServerError> {
    let started = Instant::now();
    let args = config.args.clone();
    let cpus = allowed_cpus();
    let shards = if args.shards == 0 { cpus.len() } else { args.shards };
    let fd_limit = raise_fd_limit();
    let max_conns_per_shard = if args.max_conns > 0 {
        args.max_conns.div_ceil(shards)
    } else {
        (fd_limit.saturating_sub(64 + 16 * shards as u64) as usize / shards).max(1)
    };
    let secret = load_secret(&config)?;
    let (log, oldest_after) = open_log(&args)?;
    let shared_log = args.kafka_brokers.is_some();
    let limiter = Arc::new(Limiter::new(args.cooldown * 1000));
    let snapshots = Arc::new(SnapshotStore::default());
    let stats = Arc::new(ApplierStats::new(shards));
    let (shard_txs, shard_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| unbounded::<ShardMsg>()).unzip();
    let (catchup_tx, catchup_rx) = bounded(65_536);
    let (edits_tx, edits_rx) = bounded(1 << 16);
    let (control_tx, control_rx) = unbounded::<Control>();
    let verdicts = shared_log.then(|| Arc::new(Verdicts::new(0)));
    let cluster = verdicts.as_ref().map(|v| ClusterSetup {
        cooldown_ms: args.cooldown * 1000,
        verdicts: v.clone(),
        dir: args.data_dir.clone(),
        log_id: format!("kafka topic {}", args.kafka_topic),
        checkpoint_every: Duration::from_secs(args.checkpoint_secs),
        control: control_rx,
    });

    let mut applier = Applier::new(ApplierSetup {
        canvas: Canvas::new(config.geometry.clone()),
        window: args.window,
        stride: args.edit_stride,
        batch: Duration::from_millis(args.batch_ms),
        shards: shard_txs,
        limiter: limiter.clone(),
        snapshots: snapshots.clone(),
        stats: stats.clone(),
        cluster,
    });
    let head = log.head();
    if shared_log {
        restore_checkpoint(&mut applier, &args.data_dir, head, oldest_after)?;
    }
    let from = applier.version();
    log.tail(from, edits_tx)?;
    applier.replay(&edits_rx, head);
    tracing::info!(edits = head, replayed = head - from, ms = started.elapsed().as_millis() as u64, log = %log.describe(), "history applied");
    std::thread::Builder::new().name("placecast-applier".into()).spawn(move || applier.run(edits_rx, catchup_rx))?;

    let shared = Arc::new(Shared {
        geometry: config.geometry.clone(),
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
    spawn_housekeeping(limiter);
    spawn_signals(shared.clone(), shared_log.then_some(control_tx))?;

    let (ready_tx, ready_rx) = unbounded();
    let mut handles = Vec::new();
    for (i, rx) in shard_rxs.into_iter().enumerate() {
        let cpu = (shards <= cpus.len()).then(|| cpus[i]);
        handles.push(crate::shard::spawn(i, cpu, shared.clone(), rx, ready_tx.clone())?);
    }
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(addr)) => tracing::debug!(%addr, "shard listening"),
            Ok(Err(e)) => return Err(ServerError::Shard(e)),
            Err(_) => return Err(ServerError::Shard("a shard did not start within 10 s".into())),
        }
    }
    tracing::info!(
        listen = %args.listen, shards, max_conns_per_shard, batch_ms = args.batch_ms, cooldown_s = args.cooldown,
        width = shared.geometry.width, height = shared.geometry.height, conn_bytes = crate::hub::CONN_BYTES,
        startup_ms = started.elapsed().as_millis() as u64, "placecast serving"
    );
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Reclaims expired limiter entries every few seconds, off the shards.
fn spawn_housekeeping(limiter: Arc<Limiter>) {
    let _ = std::thread::Builder::new().name("placecast-sweep".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        limiter.sweep(crate::now_ms());
    });
}

/// Starts the applier from `DATA_DIR/checkpoint.bin` when it fits this log; otherwise the whole
/// log is replayed.
fn restore_checkpoint(applier: &mut Applier, dir: &Path, head: u64, oldest_after: u64) -> Result<(), ServerError> {
    let started = Instant::now();
    match Checkpoint::load(dir) {
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

/// SIGTERM/SIGINT: clients get a 1001 close, then the process exits. Acknowledged edits are
/// already durable; a node on a shared log writes its checkpoint first.
fn spawn_signals(shared: Arc<Shared>, checkpoint: Option<Sender<Control>>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("placecast-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
            shared.shutting_down.store(true, Ordering::Release);
            let started = Instant::now();
            if let Some(tx) = &checkpoint {
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
            std::thread::sleep(Duration::from_millis(300).saturating_sub(started.elapsed()));
            std::process::exit(0);
        }
    })?;
    Ok(())
}
