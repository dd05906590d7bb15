//! Wiring: opens the edit log, replays it into the applier, starts the applier, the housekeeping
//! and signal threads, and one shard per core; `Shared` is what they all hold.
//!
//! Invariant: shards start serving only after the log's history is applied, so the first
//! snapshot and every catch-up include every acknowledged edit.

use crate::applier::{Applier, ApplierSetup, ApplierStats, CatchUpReq, ShardMsg};
use crate::canvas::{Canvas, Geometry};
use crate::config::Config;
use crate::edit_log::{file::FileLog, EditLog, LogError};
use crate::limiter::Limiter;
use crate::metrics::{Metrics, ShardStats};
use crate::snapshot::SnapshotStore;
use crate::token::Signer;
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
    let log: Arc<dyn EditLog> = Arc::new(FileLog::open(&args.data_dir, !args.no_fsync)?);
    let limiter = Arc::new(Limiter::new(args.cooldown * 1000));
    let snapshots = Arc::new(SnapshotStore::default());
    let stats = Arc::new(ApplierStats::new(shards));
    let (shard_txs, shard_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| unbounded::<ShardMsg>()).unzip();
    let (catchup_tx, catchup_rx) = bounded(65_536);
    let (edits_tx, edits_rx) = bounded(1 << 16);

    let mut applier = Applier::new(ApplierSetup {
        canvas: Canvas::new(config.geometry.clone()),
        window: args.window,
        stride: args.edit_stride,
        batch: Duration::from_millis(args.batch_ms),
        shards: shard_txs,
        limiter: limiter.clone(),
        snapshots: snapshots.clone(),
        stats: stats.clone(),
    });
    let head = log.head();
    log.tail(0, edits_tx)?;
    applier.replay(&edits_rx, head);
    tracing::info!(edits = head, ms = started.elapsed().as_millis() as u64, log = %log.describe(), "history applied");
    std::thread::Builder::new().name("placecast-applier".into()).spawn(move || applier.run(edits_rx, catchup_rx))?;

    let shared = Arc::new(Shared {
        geometry: config.geometry.clone(),
        config,
        limiter: limiter.clone(),
        log,
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
    spawn_signals(shared.clone())?;

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

/// SIGTERM/SIGINT: clients get a 1001 close, then the process exits. Acknowledged edits are
/// already durable, so there is nothing else to flush.
fn spawn_signals(shared: Arc<Shared>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("placecast-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
            shared.shutting_down.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(300));
            std::process::exit(0);
        }
    })?;
    Ok(())
}
