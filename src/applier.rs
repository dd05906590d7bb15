//! The ordered applier: the one thread that applies committed edits to the canvas in log order,
//! keeps the catch-up window, cuts a batch every `--batch-ms`, encodes it ONCE into a WebSocket
//! frame and hands the same `Bytes` to every shard over crossbeam channels. It also answers
//! catch-up requests and builds snapshots.
//!
//! Invariants (asserted): applied versions are contiguous; a batch covers exactly the versions
//! applied since the previous cut, `(cut_version, version]`; the batches and catch-up answers a
//! shard receives arrive on one FIFO channel, so a catch-up covering `(since, cut]` is followed by
//! the batch starting at `cut`: no gap, no duplicate.
//!
//! On a shared (clustered) log the applier is also the judge: an edit is valid iff its user's
//! last VALID edit in the log is at least `cooldown` ms earlier by the edits' own timestamps.
//! The rule reads only the log, so every node decides every edit the same way; rejected edits
//! become no-op versions. The applier then tells waiting placements (`verdict`) and writes the
//! node's checkpoint (`checkpoint`), since it alone owns the canvas and the rule's state.

use crate::canvas::{Canvas, Geometry, LiveGeometry};
use crate::checkpoint::Checkpoint;
use crate::control::{Audit, AuditEntry, Control as ControlEntry, Entry, LiveSwitches, Switches};
use crate::edit_log::{Committed, CommittedRun, Edit};
use crate::history::HistoryWriter;
use crate::limiter::Limiter;
use crate::log_rule::{LogRule, Rejection};
use crate::protocol::{encode_batch, encode_resize, pack_edit};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::verdict::Verdicts;
use bytes::Bytes;
use crossbeam_channel::{never, select, Receiver, Sender};
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounds::{AHEAD_WAIT, APPLIER_BEAT, APPLY_EVERY, DEFER_BACKLOG, DEFER_STEP, MAX_AHEAD_WAITING, MAX_DEFER};
pub use crate::bounds::{CHUNK, MAX_SUBS, SUB};
/// Marks a version that changed no pixel (an edit rejected in log order).
const NO_OP: u32 = u32::MAX;

/// Requests to the applier thread from outside.
pub enum Control {
    /// Write the checkpoint now; answers with its version.
    Checkpoint(Sender<Result<u64, String>>),
}

/// What a node on a shared log adds to the applier.
pub struct ClusterSetup {
    /// The cooldown of the log-order validity rule (must be the same on every node).
    pub cooldown_ms: u64,
    /// The claim classes' cooldowns (`claims.rs`; the same on every node).
    pub class_cooldowns: Vec<u64>,
    pub verdicts: Arc<Verdicts>,
    /// Where `checkpoint.bin` lives.
    pub dir: PathBuf,
    /// Names the log in the checkpoint.
    pub log_id: String,
    pub checkpoint_every: Duration,
    pub control: Receiver<Control>,
    /// The user directory: made durable before each checkpoint (names learned from the topic
    /// after it are read again on replay).
    pub names: Arc<crate::names::Names>,
}

pub use crate::messages::{CatchUpReply, CatchUpReq, ConnId, ShardMsg};

/// Counters the applier publishes for everyone else.
#[derive(Default)]
pub struct ApplierStats {
    /// Last applied version.
    pub version: AtomicU64,
    /// The last version whose edit changed a pixel (the final version once the event ended).
    pub last_change: AtomicU64,
    /// Last version handed to the shards in a batch.
    pub cut_version: AtomicU64,
    pub batches: AtomicU64,
    pub edits: AtomicU64,
    pub catchups: AtomicU64,
    pub snapshots: AtomicU64,
    /// Edits rejected in log order by the validity rule (shared logs only).
    pub rejected: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Milliseconds from an edit's timestamp (its placement) to the batch carrying it, over the
    /// live edits since start.
    pub log_to_batch_p50_ms: AtomicU64,
    pub log_to_batch_p99_ms: AtomicU64,
    pub log_to_batch_max_ms: AtomicU64,
    /// Batches each shard holds that it has not finished writing; set by the shards.
    pub shard_backlog: Box<[AtomicU64]>,
    /// Cuts postponed because a shard was still writing the previous batch.
    pub cuts_deferred: AtomicU64,
    /// Times the applier took committed edits off its queue: on a shared log one per wake for
    /// edits, on the embedded log at most one per `bounds::APPLY_EVERY` and one per cut.
    pub edit_takes: AtomicU64,
    /// Wall-clock ms of the applier loop's last turn (readiness and the systemd watchdog).
    pub heartbeat_ms: AtomicU64,
    /// Wakes each shard's tick task after a message to it.
    pub shard_wake: Box<[crate::messages::ShardWake]>,
    /// Shards ask the loop to take its queue now (history reads, `read_your_writes`).
    pub take_now: crate::messages::TakeNow,
}

impl ApplierStats {
    pub fn new(shards: usize) -> Self {
        ApplierStats {
            shard_backlog: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            shard_wake: (0..shards).map(|_| Default::default()).collect(),
            ..Default::default()
        }
    }

    /// Whether some shard has `depth` or more batches not yet written to all its connections.
    fn shards_behind(&self, depth: u64) -> bool {
        self.shard_backlog.iter().any(|b| b.load(Ordering::Acquire) >= depth)
    }
}

pub struct Applier {
    canvas: Canvas,
    version: u64,
    cut_version: u64,
    pending: Vec<u32>,
    /// Packed edits for versions `(window_base, window_base + window.len()]`.
    window: VecDeque<u32>,
    window_base: u64,
    window_cap: usize,
    chunks: HashMap<u64, Bytes>,
    subs: FxHashMap<u64, Bytes>,
    /// The last private tail built, `(from, to, frame)`: every catch-up between two cuts ends
    /// with the same one.
    tail: Option<(u64, u64, Bytes)>,
    stride: u8,
    batch: Duration,
    /// A cut waits while a shard has this many batches unwritten (`bounds::DEFER_BACKLOG`).
    defer_backlog: u64,
    shards: Vec<Sender<ShardMsg>>,
    limiter: Arc<Limiter>,
    snapshots: Arc<SnapshotStore>,
    stats: Arc<ApplierStats>,
    cluster: Option<ClusterSetup>,
    /// The log-order rule's state: the switches everywhere, the cooldown on shared logs.
    rule: LogRule,
    /// The switches changed since they were last published to `switches`.
    switches_dirty: bool,
    /// The switches as the shards read them at admission.
    switches: Arc<LiveSwitches>,
    /// The control entries applied (the admin API's audit list).
    audit: Arc<Audit>,
    /// Rejections not yet told to `verdicts`.
    rejected: Vec<(u64, Rejection)>,
    /// Timestamps of the edits in `pending`, for the log-to-batch latency.
    pending_ts: Vec<u64>,
    /// Set once history is replayed: only live edits count for latency.
    live: bool,
    /// The history index (`history/`): every applied version, in order.
    history: Option<HistoryWriter>,
    latency: hdrhistogram::Histogram<u64>,
    /// The canvas's size as the shards read it (published at each resize).
    geometry: Arc<LiveGeometry>,
    /// Resizes applied at versions after `window_base`, `(version, width, height)` ascending: a
    /// catch-up frame never spans one (its pixel indexes would mix two widths). Bounded by the
    /// window (and by growth: at most 131,070 resizes can ever change a size).
    resizes: VecDeque<(u64, u32, u32)>,
    /// Catch-ups whose `since` this node has not applied yet (shared logs only), with their
    /// deadline: answered once the applier gets there, or told `Ahead` at the deadline.
    /// Bounded by `MAX_AHEAD_WAITING`.
    ahead: Vec<(CatchUpReq, Instant)>,
}

pub struct ApplierSetup {
    pub canvas: Canvas,
    pub window: usize,
    pub stride: u8,
    pub batch: Duration,
    /// `--max-lag-batches`: the deferral starts at half of it at the latest.
    pub max_lag: usize,
    pub shards: Vec<Sender<ShardMsg>>,
    pub limiter: Arc<Limiter>,
    pub snapshots: Arc<SnapshotStore>,
    pub stats: Arc<ApplierStats>,
    pub cluster: Option<ClusterSetup>,
    pub history: Option<HistoryWriter>,
    pub switches: Arc<LiveSwitches>,
    pub audit: Arc<Audit>,
    /// Where the applier publishes the canvas's size for the shards.
    pub geometry: Arc<LiveGeometry>,
}

impl Applier {
    pub fn new(s: ApplierSetup) -> Self {
        let embedded_cooldown = s.limiter.cooldown_ms();
        Applier {
            canvas: s.canvas,
            version: 0,
            cut_version: 0,
            pending: Vec::new(),
            window: VecDeque::with_capacity(s.window.min(1 << 22)),
            window_base: 0,
            window_cap: s.window,
            chunks: HashMap::new(),
            subs: FxHashMap::default(),
            tail: None,
            stride: s.stride,
            batch: s.batch,
            defer_backlog: DEFER_BACKLOG.min(s.max_lag as u64 / 2).max(1),
            shards: s.shards,
            limiter: s.limiter,
            snapshots: s.snapshots,
            stats: s.stats,
            rule: match &s.cluster {
                Some(c) => LogRule::new(c.cooldown_ms).with_classes(c.class_cooldowns.clone()),
                None => LogRule::embedded(embedded_cooldown),
            },
            switches_dirty: false,
            switches: s.switches,
            audit: s.audit,
            cluster: s.cluster,
            rejected: Vec::new(),
            pending_ts: Vec::new(),
            live: false,
            history: s.history,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 2).expect("histogram bounds"),
            geometry: s.geometry,
            resizes: VecDeque::new(),
            ahead: Vec::new(),
        }
    }

    /// Starts from a checkpoint instead of version 0, if it was made by this configuration.
    pub fn restore(&mut self, cp: Checkpoint) -> Result<(), String> {
        let Some(cl) = &self.cluster else { return Err("checkpoints are used with a shared log only".into()) };
        let g = &self.canvas.geometry;
        // The log may have grown the canvas before the checkpoint: never smaller than configured.
        if cp.width < g.width || cp.height < g.height {
            return Err(format!("it is for a {}x{} canvas, smaller than the configured one", cp.width, cp.height));
        }
        let g = Geometry::new(cp.width, cp.height, g.palette.clone()).map_err(|e| e.to_string())?;
        if cp.cooldown_ms != cl.cooldown_ms {
            return Err(format!("it was made with a cooldown of {} ms", cp.cooldown_ms));
        }
        if cp.log_id != cl.log_id {
            return Err(format!("it was made from {}", cp.log_id));
        }
        let canvas = Canvas::from_pixels(g, cp.pixels).ok_or("its pixels do not fit this palette")?;
        self.canvas = canvas;
        self.geometry.publish(&self.canvas.geometry);
        self.version = cp.version;
        self.cut_version = cp.version;
        self.window_base = cp.version;
        self.window.clear();
        let rule = LogRule {
            cooldown_ms: cp.switches.cooldown_ms.unwrap_or(cl.cooldown_ms),
            judge_cooldown: true,
            class_cooldowns: cl.class_cooldowns.clone(),
            last_valid: cp.last_valid.into_iter().collect(),
            log_clock: cp.log_clock_ms,
            switches: cp.switches,
        };
        for (&user, &ts) in &rule.last_valid {
            self.limiter.observe(user, ts);
        }
        self.limiter.set_cooldown_ms(rule.cooldown_ms);
        for e in cp.audit {
            self.audit.push(e);
        }
        self.stats.last_change.store(cp.last_change, Ordering::Relaxed);
        self.rule = rule;
        self.switches_dirty = true;
        self.publish_switches();
        self.settle();
        self.publish_versions();
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn make_checkpoint(&self) -> Option<Checkpoint> {
        let (cl, rule) = (self.cluster.as_ref()?, &self.rule);
        let mut last_valid: Vec<(u64, u64)> = rule.last_valid.iter().map(|(&u, &t)| (u, t)).collect();
        last_valid.sort_unstable();
        Some(Checkpoint {
            version: self.version,
            cooldown_ms: cl.cooldown_ms,
            log_clock_ms: rule.log_clock,
            width: self.canvas.geometry.width,
            height: self.canvas.geometry.height,
            log_id: cl.log_id.clone(),
            pixels: self.canvas.pixels().to_vec(),
            last_valid,
            switches: rule.switches.clone(),
            audit: self.audit.all(),
            last_change: self.stats.last_change.load(Ordering::Relaxed),
        })
    }

    /// Writes `checkpoint.bin` for the current version.
    pub fn checkpoint(&self) -> Result<u64, String> {
        let (Some(cp), Some(cl)) = (self.make_checkpoint(), self.cluster.as_ref()) else {
            return Err("no shared log".into());
        };
        let started = Instant::now();
        cl.names.sync().map_err(|e| format!("syncing the user directory: {e}"))?;
        cp.write(&cl.dir).map_err(|e| e.to_string())?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(version = cp.version, ms = started.elapsed().as_millis() as u64, "checkpoint written");
        Ok(cp.version)
    }

    /// Tells waiting placements the verdicts on everything applied so far.
    fn settle(&mut self) {
        if let Some(cl) = &self.cluster {
            cl.verdicts.settle(self.version, &mut self.rejected);
        }
    }

    /// The switches as of the applied version (the embedded log's writer starts from them).
    pub fn switches(&self) -> &Switches {
        &self.rule.switches
    }

    /// Makes changed switches visible to admission (once per turn of the loop, and after the
    /// replay, so a replay of many bans copies the banned set once).
    fn publish_switches(&mut self) {
        if std::mem::take(&mut self.switches_dirty) {
            self.switches.publish(&self.rule.switches);
        }
    }

    /// Applies the log's history up to `head` before serving starts, so the first snapshot and
    /// every catch-up see it. Returns when `head` is applied.
    pub fn replay(&mut self, edits: &Receiver<CommittedRun>, head: u64) {
        let (started, from, mut next_report) = (Instant::now(), self.version, Instant::now() + Duration::from_secs(5));
        while self.version < head {
            let Ok(run) = edits.recv() else { return };
            let before = self.version;
            self.apply_run(run);
            // A report at most every 5 s, looked at once per 65,536 versions crossed.
            if self.version / 65_536 > before / 65_536 && Instant::now() >= next_report {
                let rate = (self.version - from) as f64 / started.elapsed().as_secs_f64().max(0.001);
                let eta_s = ((head - self.version) as f64 / rate.max(1.0)).ceil() as u64;
                tracing::info!(version = self.version, head, per_s = rate as u64, eta_s, "replaying the log");
                next_report += Duration::from_secs(5);
            }
        }
        self.flush_history();
        self.publish_switches();
        // History is not re-broadcast: clients get it from snapshots and catch-up.
        self.pending.clear();
        self.pending_ts.clear();
        self.live = true;
        self.settle();
        self.cut_version = self.version;
        self.publish_versions();
    }

    /// The loop: edits, catch-ups, cuts, checkpoints.
    ///
    /// On a shared log the applier takes each run as it arrives: placements wait for its
    /// verdicts. On the embedded log nothing waits for it (the writer answers placements), and
    /// what it applies is seen only at the next cut (`stats.version`, snapshots and catch-ups
    /// all stop at `cut_version`). So there it takes the queue at each cut and, while edits keep
    /// coming, at most every [`APPLY_EVERY`] between cuts, instead of waking for every group
    /// commit (200 a second at 1,000 placements/s in 5 ms groups, each a wake on the core the
    /// shards share, and a history write).
    pub fn run(mut self, edits: Receiver<CommittedRun>, requests: Receiver<CatchUpReq>) {
        let mut next_cut = Instant::now() + self.batch;
        let control = self.cluster.as_ref().map_or_else(never, |c| c.control.clone());
        let every = self.cluster.as_ref().map(|c| c.checkpoint_every);
        let mut next_checkpoint = every.map(|e| Instant::now() + e);
        let mut recheck: Option<Instant> = None;
        // A shared log's placements wait for the verdicts: there every run is taken at once.
        let apply_every = if self.cluster.is_some() { Duration::ZERO } else { APPLY_EVERY };
        let not_now: Receiver<CommittedRun> = never();
        // Held by `self.stats` too, so it never disconnects.
        let take_now = self.stats.take_now.asks();
        // When the applier next listens for edits: `apply_every` after it last found some;
        // until then runs wait in the queue and wake nobody.
        let mut listen_at = Instant::now();
        loop {
            self.stats.heartbeat_ms.store(crate::now_ms(), Ordering::Relaxed);
            let now = Instant::now();
            if now >= listen_at && self.take_queued(None, &edits) {
                listen_at = now + apply_every;
            }
            let listening = now >= listen_at;
            // Each turn is the heartbeat, so the loop never sleeps past APPLIER_BEAT.
            let mut wake = recheck.unwrap_or(next_cut).min(now + APPLIER_BEAT);
            if !listening {
                wake = wake.min(listen_at);
            }
            let wait = wake.saturating_duration_since(now);
            select! {
                recv(if listening { &edits } else { &not_now }) -> run => match run {
                    Ok(run) => {
                        self.take_queued(Some(run), &edits);
                        listen_at = Instant::now() + apply_every;
                    }
                    Err(_) => return,
                },
                recv(control) -> m => match m {
                    Ok(Control::Checkpoint(reply)) => { let _ = reply.send(self.checkpoint()); }
                    Err(_) => return,
                },
                recv(take_now) -> _ => {
                    self.take_queued(None, &edits);
                }
                recv(requests) -> r => match r {
                    Ok(r) => {
                        // The writer queues a run before it answers its placements, so a `since`
                        // a client was answered is in the queue, if not yet applied: taken
                        // first, it is not refused as ahead of this node.
                        if r.since > self.version {
                            self.take_queued(None, &edits);
                        }
                        self.catch_up(r)
                    }
                    Err(_) => return,
                },
                default(wait) => {}
            }
            let now = Instant::now();
            // After every turn (new edits among them): catch-ups waiting for this node to get
            // to their `since`.
            self.serve_ahead(now);
            // Under overload, batches grow instead of queueing: a shard a little behind merges
            // the batches a connection misses into one send (hub/send.rs); one further behind
            // (`defer_backlog`) makes the cut wait (at most MAX_DEFER), so every client gets
            // every edit and no shard's backlog grows past it.
            if now >= next_cut {
                // Everything committed before the cut goes in it, as if taken on arrival.
                self.take_queued(None, &edits);
            }
            if now >= next_cut && self.stats.shards_behind(self.defer_backlog) && now < next_cut + MAX_DEFER {
                if recheck.is_none() && self.version > self.cut_version {
                    self.stats.cuts_deferred.fetch_add(1, Ordering::Relaxed);
                }
                recheck = Some(now + DEFER_STEP);
                continue;
            }
            if now >= next_cut {
                recheck = None;
                self.cut();
                if self.snapshots.take_wanted() {
                    self.snapshot();
                }
                next_cut += self.batch;
                if next_cut < now {
                    next_cut = now + self.batch;
                }
            }
            if let (Some(at), Some(every)) = (next_checkpoint, every) {
                if now >= at {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "writing the checkpoint failed; a restart will replay more of the log");
                    }
                    next_checkpoint = Some(Instant::now() + every);
                }
            }
        }
    }

    /// Applies `first` and the runs already queued (bounded, so cuts stay on time), then
    /// publishes what they changed. Returns whether there were any.
    fn take_queued(&mut self, first: Option<CommittedRun>, edits: &Receiver<CommittedRun>) -> bool {
        let mut applied = first.map_or(0, |run| self.apply_run(run));
        while applied < 65_536 {
            match edits.try_recv() {
                Ok(run) => applied += self.apply_run(run),
                Err(_) => break,
            }
        }
        if applied > 0 {
            self.stats.edit_takes.fetch_add(1, Ordering::Relaxed);
            self.flush_history();
            self.publish_switches();
            self.settle();
        }
        applied > 0
    }

    /// Applies one run of the log's tail; returns how many edits it held.
    fn apply_run(&mut self, run: CommittedRun) -> usize {
        let n = run.len();
        for c in run {
            self.apply(c);
        }
        n
    }

    fn apply(&mut self, c: Committed) {
        assert_eq!(c.version, self.version + 1, "edit versions must be contiguous");
        self.version = c.version;
        let e = c.edit;
        let applied = match crate::control::classify(&e) {
            Entry::Pixel => self.apply_pixel(c.version, &e),
            Entry::Control(ctl) => {
                self.apply_control(c.version, &e, ctl);
                None
            }
            Entry::Void => None,
            Entry::Unknown(kind) => {
                tracing::warn!(
                    version = c.version,
                    kind,
                    "a control entry of a kind this binary does not know (a newer binary wrote it); applied as a no-op"
                );
                None
            }
        };
        let packed = applied.map_or(NO_OP, |i| pack_edit(i, e.color));
        if packed != NO_OP {
            self.pending.push(packed);
            if self.live {
                self.pending_ts.push(e.ts_ms);
            }
        }
        self.rule.after(c.version);
        if let Some(h) = &mut self.history {
            h.record(c.version, &e, applied, &self.canvas);
        }
        if self.cluster.is_some() && self.rejected.len() >= 4096 {
            self.settle();
        }
        self.window.push_back(packed);
        if self.window.len() > self.window_cap {
            self.window.pop_front();
            self.window_base += 1;
            if self.window_base.is_multiple_of(CHUNK) {
                self.chunks.remove(&(self.window_base / CHUNK - 1));
            }
            if self.window_base.is_multiple_of(SUB) {
                self.subs.remove(&(self.window_base / SUB - 1));
            }
            while self.resizes.front().is_some_and(|r| r.0 <= self.window_base) {
                self.resizes.pop_front();
            }
        }
        self.stats.edits.fetch_add(1, Ordering::Relaxed);
    }

    /// A pixel edit: the pixel index it changed, or `None` (outside the canvas, or refused by the
    /// log-order rule).
    fn apply_pixel(&mut self, version: u64, e: &Edit) -> Option<u32> {
        let g = &self.canvas.geometry;
        let Some(i) = g.index(e.x as i64, e.y as i64).filter(|_| g.valid_color(e.color as i64)) else {
            tracing::warn!(version, x = e.x, y = e.y, color = e.color, "edit outside this canvas; applied as no-op");
            return None;
        };
        match self.rule.judge(e) {
            Ok(()) => {
                self.canvas.set(i, e.color);
                // A region edit is not a placement: it starts nobody's cooldown.
                if e.aux & crate::control::EDIT_REGION == 0 {
                    self.limiter.observe(e.user, e.ts_ms);
                }
                self.stats.last_change.store(version, Ordering::Relaxed);
                Some(i)
            }
            Err(r) => {
                if self.cluster.is_some() {
                    self.rejected.push((version, r));
                } else {
                    // The embedded writer refuses these before they are logged; only a log
                    // written another way (an import) can hold one.
                    tracing::warn!(version, rejection = ?r, "the log holds an edit its switches refuse; applied as a no-op");
                }
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A control entry: the switches (and the cooldown) change at its version.
    fn apply_control(&mut self, version: u64, e: &Edit, ctl: ControlEntry) {
        self.rule.control(&ctl);
        match ctl {
            ControlEntry::Cooldown { ms } => self.limiter.set_cooldown_ms(ms),
            ControlEntry::Resize { width, height } => self.resize(version, width, height),
            _ => {}
        }
        self.switches_dirty = true;
        self.audit.push(AuditEntry { version, ts_ms: e.ts_ms, control: ctl, actor: e.aux });
        if self.live {
            tracing::info!(version, action = ctl.action(), entry = ?ctl, "control entry applied");
        }
    }

    /// A resize entry at `version`: the edits before it go out in their own batch (their indexes
    /// use the old width), the canvas grows, and the resize goes to every shard as a message of
    /// its own covering `(version - 1, version]`, so a client applies it in order and keeps its
    /// version. A resize that changes nothing (or exceeds the bound) is a no-op version.
    fn resize(&mut self, version: u64, width: u32, height: u32) {
        let Some(g) = self.canvas.geometry.grown(width, height) else {
            tracing::warn!(
                version,
                width,
                height,
                "a resize that does not grow the canvas (or exceeds MAX_GROWN_PIXELS); a no-op"
            );
            return;
        };
        let (w, h) = (g.width, g.height);
        // The size first: the cut below publishes `version` as applied, and an admin route
        // waiting for it answers then, so a placement sent next must find the new size.
        // (`pending` holds packed indexes already: growing does not change them.)
        self.canvas.grow(g);
        self.geometry.publish(&self.canvas.geometry);
        self.resizes.push_back((version, w, h));
        if self.live {
            self.cut_to(version - 1);
            self.broadcast(encode_resize(version - 1, version, w, h), version);
            tracing::info!(version, width = w, height = h, "the canvas grew");
        }
    }

    /// Makes the history's buffered records readable (once per turn of the loop).
    fn flush_history(&mut self) {
        if let Some(h) = &mut self.history {
            h.flush();
        }
    }

    /// What readers of the history share (after `begin_history`, which may start it again).
    pub fn history_reader(&self) -> Option<Arc<crate::history::HistoryReader>> {
        self.history.as_ref().map(|h| h.reader())
    }

    /// The canvas as applied so far (the history starts from it).
    pub fn canvas(&self) -> &Canvas {
        &self.canvas
    }

    /// Tells the history the version and canvas the applier starts from (after any checkpoint).
    pub fn begin_history(&mut self) -> std::io::Result<()> {
        let (version, canvas) = (self.version, &self.canvas);
        match &mut self.history {
            Some(h) => h.begin(version, canvas),
            None => Ok(()),
        }
    }

    fn publish_versions(&self) {
        self.stats.version.store(self.version, Ordering::Release);
        self.stats.cut_version.store(self.cut_version, Ordering::Release);
    }

    /// Encodes the edits since the last cut into one frame and hands it to every shard.
    fn cut(&mut self) {
        self.cut_to(self.version);
    }

    /// `cut` up to `to` (a resize cuts just before its own version): `pending` holds exactly
    /// the edits of `(cut_version, to]`.
    fn cut_to(&mut self, to: u64) {
        if to == self.cut_version {
            return;
        }
        self.broadcast(encode_batch(self.cut_version, to, &self.pending, self.stride), to);
        self.pending.clear();
        if !self.pending_ts.is_empty() {
            let now = crate::now_ms();
            for &ts in &self.pending_ts {
                let _ = self.latency.record(now.saturating_sub(ts).clamp(1, 3_600_000));
            }
            self.pending_ts.clear();
            let h = &self.latency;
            self.stats.log_to_batch_p50_ms.store(h.value_at_quantile(0.5), Ordering::Relaxed);
            self.stats.log_to_batch_p99_ms.store(h.value_at_quantile(0.99), Ordering::Relaxed);
            self.stats.log_to_batch_max_ms.store(h.max(), Ordering::Relaxed);
        }
    }

    fn snapshot(&mut self) {
        let current = self.snapshots.latest().map(|s| s.version);
        if current == Some(self.cut_version) {
            return;
        }
        // Snapshots are cut at batch boundaries so `since=version` lines up with live batches.
        debug_assert_eq!(self.version, self.cut_version);
        self.snapshots.publish(Snapshot::build(&self.canvas, self.cut_version));
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    fn catch_up(&mut self, r: CatchUpReq) {
        self.stats.catchups.fetch_add(1, Ordering::Relaxed);
        if r.since > self.version && self.cluster.is_some() && self.ahead.len() < MAX_AHEAD_WAITING {
            self.ahead.push((r, Instant::now() + AHEAD_WAIT));
            return;
        }
        self.answer_catch_up(r);
    }

    /// Answers the waiting catch-ups this node has now reached, and those past their deadline
    /// (`Ahead`). Cheap when none wait.
    fn serve_ahead(&mut self, now: Instant) {
        if self.ahead.is_empty() {
            return;
        }
        let (version, waiting) = (self.version, std::mem::take(&mut self.ahead));
        for (r, deadline) in waiting {
            if r.since <= version || now >= deadline {
                self.answer_catch_up(r);
            } else {
                self.ahead.push((r, deadline));
            }
        }
    }

    fn answer_catch_up(&mut self, r: CatchUpReq) {
        let reply = if r.since > self.version {
            CatchUpReply::Ahead { version: self.version }
        } else if r.since < self.window_base {
            CatchUpReply::Reload { oldest_since: self.window_base }
        } else {
            if r.since > self.cut_version {
                // The client saw a version not yet batched: batch it now so live frames start
                // exactly at `since`.
                self.cut();
            }
            CatchUpReply::Frames(self.catch_up_frames(r.since))
        };
        if r.shard < self.shards.len() {
            self.send_to(r.shard, ShardMsg::CatchUp { conn: r.conn, reply });
        }
    }

    /// Hands `frame`, covering `(cut_version, to]`, to every shard: the versions up to `to` are
    /// cut (a batch, or a resize message).
    fn broadcast(&mut self, frame: Bytes, to: u64) {
        let from = self.cut_version;
        for i in 0..self.shards.len() {
            self.send_to(i, ShardMsg::Batch { frame: frame.clone(), from, to });
        }
        self.cut_version = to;
        self.publish_versions();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// A message to shard `i`, and the wake that makes its tick task read it now.
    fn send_to(&self, i: usize, m: ShardMsg) {
        // A shard that has exited is shutting down; the rest still get their messages.
        let _ = self.shards[i].send(m);
        if let Some(w) = self.stats.shard_wake.get(i) {
            w.wake();
        }
    }

    /// Frames covering `(since, cut_version]`: a private head up to a sub-chunk boundary,
    /// shared sub-chunks up to a chunk boundary, shared whole chunks, shared sub-chunks, and a
    /// tail shared by every catch-up until the next cut.
    fn catch_up_frames(&mut self, since: u64) -> Vec<Bytes> {
        let end = self.cut_version;
        let mut frames = Vec::new();
        let mut at = since;
        while at < end {
            let (f, next) = self.next_frame(at, end);
            frames.push(f);
            at = next;
        }
        if frames.is_empty() {
            frames.push(encode_batch(since, since, &[], self.stride));
        }
        frames
    }

    /// The frame starting at `at` (at most up to `end`) and where the next one starts: a resize
    /// is a frame of its own, and no batch spans one.
    fn next_frame(&mut self, at: u64, end: u64) -> (Bytes, u64) {
        let i = self.resizes.partition_point(|r| r.0 <= at);
        match self.resizes.get(i) {
            Some(&(v, w, h)) if v == at + 1 && v <= end => (encode_resize(at, v, w, h), v),
            Some(&(v, _, _)) if v <= end => self.batch_frame(at, v - 1),
            _ => self.batch_frame(at, end),
        }
    }

    /// The batch frame starting at `at` (at most up to `end`, no resize inside) and where the
    /// next one starts.
    fn batch_frame(&mut self, at: u64, end: u64) -> (Bytes, u64) {
        let chunk_end = (at / CHUNK + 1) * CHUNK;
        if at.is_multiple_of(CHUNK) && chunk_end <= end && at >= self.window_base {
            if let Some(f) = self.chunks.get(&(at / CHUNK)) {
                return (f.clone(), chunk_end);
            }
            let f = self.encode_range(at, chunk_end);
            self.chunks.insert(at / CHUNK, f.clone());
            return (f, chunk_end);
        }
        let sub_end = (at / SUB + 1) * SUB;
        if at.is_multiple_of(SUB) && sub_end <= end && at >= self.window_base {
            if let Some(f) = self.subs.get(&(at / SUB)) {
                return (f.clone(), sub_end);
            }
            if self.subs.len() >= MAX_SUBS {
                let victim = *self.subs.keys().next().expect("full, so not empty");
                self.subs.remove(&victim);
            }
            let f = self.encode_range(at, sub_end);
            self.subs.insert(at / SUB, f.clone());
            return (f, sub_end);
        }
        let to = sub_end.min(end);
        if let Some((from, t, f)) = &self.tail {
            if (*from, *t) == (at, to) {
                return (f.clone(), to);
            }
        }
        let f = self.encode_range(at, to);
        if to == end {
            self.tail = Some((at, to, f.clone()));
        }
        (f, to)
    }

    fn encode_range(&self, from: u64, to: u64) -> Bytes {
        let start = (from - self.window_base) as usize;
        let end = (to - self.window_base) as usize;
        let edits: Vec<u32> = self.window.range(start..end).copied().filter(|&e| e != NO_OP).collect();
        encode_batch(from, to, &edits, self.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::{Geometry, RPLACE_2017_PALETTE};
    use crate::edit_log::Edit;
    use crate::protocol::BatchView;
    use crossbeam_channel::unbounded;

    fn applier(window: usize) -> (Applier, Receiver<ShardMsg>) {
        let (tx, rx) = unbounded();
        let g = Geometry::new(100, 100, RPLACE_2017_PALETTE.to_vec()).unwrap();
        let a = Applier::new(ApplierSetup {
            canvas: Canvas::new(g),
            window,
            stride: 4,
            batch: Duration::from_millis(100),
            max_lag: 50,
            shards: vec![tx],
            limiter: Arc::new(Limiter::new(0)),
            snapshots: Arc::new(SnapshotStore::default()),
            stats: Arc::new(ApplierStats::new(1)),
            cluster: None,
            history: None,
            switches: Default::default(),
            audit: Default::default(),
            geometry: Arc::new(LiveGeometry::new(&Geometry::new(100, 100, RPLACE_2017_PALETTE.to_vec()).unwrap())),
        });
        (a, rx)
    }

    /// The real loop on its own thread, fed through the channels the server gives it.
    struct Looping {
        edits: crossbeam_channel::Sender<CommittedRun>,
        requests: crossbeam_channel::Sender<CatchUpReq>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Looping {
        fn start(a: Applier) -> Self {
            let (edits, edits_rx) = crossbeam_channel::bounded(crate::bounds::EDIT_RUNS_QUEUE);
            let (requests, requests_rx) = crossbeam_channel::bounded(4);
            Looping { edits, requests, thread: std::thread::spawn(move || a.run(edits_rx, requests_rx)) }
        }

        /// Closes the edit channel, which ends the loop, and waits for it.
        fn stop(self) {
            drop(self.edits);
            self.thread.join().unwrap();
        }
    }

    /// Polls `done` every millisecond until it holds; fails the test naming `what` after `limit`.
    fn within(limit: Duration, what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn edit(v: u64) -> Committed {
        Committed {
            version: v,
            edit: Edit { x: (v % 100) as u16, y: 0, color: (v % 16) as u8, user: 1, ts_ms: 0, ext: 0, aux: 0 },
        }
    }

    fn payload(f: &Bytes) -> &[u8] {
        crate::protocol::server_frame_payload(f)
    }

    fn ranges(frames: &[Bytes]) -> Vec<(u64, u64, u32)> {
        frames
            .iter()
            .map(|f| {
                let b = BatchView::parse(payload(f)).unwrap();
                (b.from, b.to, b.count)
            })
            .collect()
    }

    fn cluster_applier(dir: &std::path::Path) -> (Applier, Receiver<ShardMsg>, Arc<Verdicts>) {
        let (tx, rx) = unbounded();
        let (_ctl_tx, ctl_rx) = unbounded();
        let verdicts = Arc::new(Verdicts::new(0));
        let g = Geometry::new(100, 100, RPLACE_2017_PALETTE.to_vec()).unwrap();
        let a = Applier::new(ApplierSetup {
            canvas: Canvas::new(g),
            window: 1000,
            stride: 4,
            batch: Duration::from_millis(100),
            max_lag: 50,
            shards: vec![tx],
            limiter: Arc::new(Limiter::new(1000)),
            snapshots: Arc::new(SnapshotStore::default()),
            stats: Arc::new(ApplierStats::new(1)),
            cluster: Some(ClusterSetup {
                cooldown_ms: 1000,
                class_cooldowns: Vec::new(),
                verdicts: verdicts.clone(),
                dir: dir.to_path_buf(),
                log_id: "test".into(),
                checkpoint_every: Duration::from_secs(60),
                control: ctl_rx,
                names: Arc::new(crate::names::Names::open(dir).unwrap()),
            }),
            history: None,
            switches: Default::default(),
            audit: Default::default(),
            geometry: Arc::new(LiveGeometry::new(&Geometry::new(100, 100, RPLACE_2017_PALETTE.to_vec()).unwrap())),
        });
        (a, rx, verdicts)
    }

    fn by(v: u64, user: u64, ts_ms: u64) -> Committed {
        Committed { version: v, edit: Edit { x: v as u16, y: 0, color: 1, user, ts_ms, ext: 0, aux: 0 } }
    }

    #[test]
    fn log_order_rule_uses_edit_timestamps_and_survives_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, rx, verdicts) = cluster_applier(dir.path());
        let log = [
            by(1, 7, 10_000),
            by(2, 7, 10_500),
            by(3, 8, 10_500),
            by(4, 7, 10_999),
            by(5, 7, 11_000),
            by(6, 7, 11_001),
        ];
        for c in &log[..4] {
            a.apply(*c);
        }
        a.settle();
        a.checkpoint().unwrap();
        for c in &log[4..] {
            a.apply(*c);
        }
        a.settle();
        a.cut();
        let ShardMsg::Batch { frame, .. } = rx.try_recv().unwrap() else { panic!() };
        // Versions 2, 4 and 6 came within the cooldown of user 7's last valid edit.
        assert_eq!(ranges(&[frame]), vec![(0, 6, 3)]);
        let got: Vec<_> = (1..=6).map(|v| verdicts.wait(v).try_recv().unwrap().unwrap()).collect();
        let cd = |next_at_ms| Err(Rejection::Cooldown { next_at_ms });
        assert_eq!(got, vec![Ok(()), cd(11_000), Ok(()), cd(11_000), Ok(()), cd(12_000)]);
        // A node restored from the checkpoint at version 4 decides versions 5 and 6 the same.
        let (mut b, _rx, _v) = cluster_applier(dir.path());
        b.restore(crate::checkpoint::Checkpoint::load(dir.path()).unwrap().unwrap()).unwrap();
        assert_eq!(b.version(), 4);
        for c in &log[4..] {
            b.apply(*c);
        }
        assert_eq!(a.canvas.pixels(), b.canvas.pixels());
        assert_eq!(a.rule, b.rule);
    }

    #[test]
    fn batch_covers_exactly_its_edits() {
        let (mut a, rx) = applier(1000);
        for v in 1..=5 {
            a.apply(edit(v));
        }
        a.cut();
        a.cut(); // nothing new: no frame
        let ShardMsg::Batch { frame, from, to } = rx.try_recv().unwrap() else { panic!() };
        assert_eq!((from, to), (0, 5));
        assert_eq!(ranges(&[frame]), vec![(0, 5, 5)]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_refused() {
        let (mut a, _rx) = applier(10);
        a.apply(edit(1));
        a.apply(edit(3));
    }

    #[test]
    fn catch_up_spans_chunks_and_window() {
        let (mut a, rx) = applier(150_000);
        let n = 3 * CHUNK + 10;
        for v in 1..=n {
            a.apply(edit(v));
        }
        a.cut();
        let _ = rx.try_recv();
        let frames = a.catch_up_frames(50_000);
        let r = ranges(&frames);
        assert_eq!(r.first().unwrap().0, 50_000);
        assert_eq!(r.last().unwrap().1, n);
        for w in r.windows(2) {
            assert_eq!(w[0].1, w[1].0, "contiguous");
        }
        assert_eq!(r.iter().map(|x| x.2 as u64).sum::<u64>(), n - 50_000);
        // The whole chunks are shared between requests, and so is all but a sub-chunk's head.
        let again = a.catch_up_frames(60_000);
        assert!(frames.iter().any(|f| again.iter().any(|g| g.as_ptr() == f.as_ptr())));
        let private = |mine: &[Bytes], theirs: &[Bytes]| -> usize {
            mine.iter().filter(|f| !theirs.iter().any(|g| g.as_ptr() == f.as_ptr())).map(|f| f.len()).sum()
        };
        let near = a.catch_up_frames(50_001);
        assert!(private(&near, &frames) <= (SUB as usize) * 4 + 64, "private bytes {}", private(&near, &frames));
        let r = ranges(&near);
        for w in r.windows(2) {
            assert_eq!(w[0].1, w[1].0, "contiguous");
        }
        assert_eq!((r[0].0, r.last().unwrap().1), (50_001, n));
        // Older than the window: reload.
        a.catch_up(CatchUpReq { shard: 0, conn: ConnId { slot: 0, gen: 0 }, since: 0 });
        match rx.try_recv().unwrap() {
            ShardMsg::CatchUp { reply: CatchUpReply::Reload { oldest_since }, .. } => {
                assert_eq!(oldest_since, n - 150_000)
            }
            _ => panic!("expected reload"),
        }
    }

    #[test]
    fn a_resize_is_its_own_message_live_and_in_catch_up() {
        use crate::protocol::{ResizeView, StreamMessage};
        let (mut a, rx) = applier(1000);
        a.live = true;
        let at = |v: u64, x: u16, y: u16| Committed {
            version: v,
            edit: Edit { x, y, color: 3, user: 1, ts_ms: 0, ext: 0, aux: 0 },
        };
        a.apply(at(1, 99, 1));
        a.apply(Committed { version: 2, edit: ControlEntry::Resize { width: 150, height: 120 }.to_edit(0) });
        a.apply(at(3, 120, 110));
        a.cut();
        let spans: Vec<_> = rx
            .try_iter()
            .map(|m| match m {
                ShardMsg::Batch { frame, .. } => {
                    let (m, _) = StreamMessage::parse_prefix(payload(&frame)).unwrap();
                    (m.span(), matches!(m, StreamMessage::Resize(_)))
                }
                _ => panic!("only batches"),
            })
            .collect();
        assert_eq!(spans, vec![((0, 1), false), ((1, 2), true), ((2, 3), false)]);
        assert_eq!(a.geometry.size(), (150, 120));
        assert_eq!(a.canvas.color_at(99, 1), 3, "the old pixel kept its place");
        // A catch-up from before the resize gets the same three messages.
        let frames = a.catch_up_frames(0);
        let got: Vec<_> = frames.iter().map(|f| StreamMessage::parse_prefix(payload(f)).unwrap().0.span()).collect();
        assert_eq!(got, vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(
            ResizeView::parse(payload(&frames[1])),
            Some(ResizeView { from: 1, to: 2, width: 150, height: 120 })
        );
        let last = BatchView::parse(payload(&frames[2])).unwrap();
        assert_eq!(last.iter().collect::<Vec<_>>(), vec![(110 * 150 + 120, 3)], "indexes after it use the new width");
        // A resize asking for less changes nothing: a no-op version, no message.
        a.apply(Committed { version: 4, edit: ControlEntry::Resize { width: 10, height: 10 }.to_edit(0) });
        a.cut();
        assert_eq!(
            (
                a.geometry.size(),
                ranges(&[match rx.try_recv().unwrap() {
                    ShardMsg::Batch { frame, .. } => frame,
                    _ => panic!(),
                }])
            ),
            ((150, 120), vec![(3, 4, 0)])
        );
    }

    #[test]
    fn catch_up_ahead_of_cut_forces_a_cut() {
        let (mut a, rx) = applier(100);
        for v in 1..=3 {
            a.apply(edit(v));
        }
        a.catch_up(CatchUpReq { shard: 0, conn: ConnId { slot: 1, gen: 1 }, since: 3 });
        assert!(matches!(rx.try_recv().unwrap(), ShardMsg::Batch { from: 0, to: 3, .. }));
        match rx.try_recv().unwrap() {
            ShardMsg::CatchUp { reply: CatchUpReply::Frames(f), .. } => assert_eq!(ranges(&f), vec![(3, 3, 0)]),
            _ => panic!(),
        }
        a.catch_up(CatchUpReq { shard: 0, conn: ConnId { slot: 1, gen: 1 }, since: 9 });
        assert!(matches!(rx.try_recv().unwrap(), ShardMsg::CatchUp { reply: CatchUpReply::Ahead { version: 3 }, .. }));
    }

    #[test]
    fn on_a_shared_log_a_catch_up_ahead_waits_for_the_applier_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, rx, _v) = cluster_applier(dir.path());
        a.apply(by(1, 7, 1_000));
        let conn = ConnId { slot: 1, gen: 1 };
        // A client that saw version 3 on another node lands here at version 1: it waits.
        a.catch_up(CatchUpReq { shard: 0, conn, since: 3 });
        a.serve_ahead(Instant::now());
        assert!(rx.try_recv().is_err(), "answered before the node reached its version");
        a.apply(by(2, 8, 1_001));
        a.apply(by(3, 9, 1_002));
        a.serve_ahead(Instant::now());
        let got: Vec<ShardMsg> = rx.try_iter().collect();
        assert!(
            got.iter().any(|m| matches!(m, ShardMsg::CatchUp { reply: CatchUpReply::Frames(_), .. })),
            "caught up once the node got there"
        );
        // One still ahead at its deadline is told so.
        a.catch_up(CatchUpReq { shard: 0, conn, since: 9 });
        a.serve_ahead(Instant::now() + AHEAD_WAIT);
        assert!(matches!(rx.try_recv().unwrap(), ShardMsg::CatchUp { reply: CatchUpReply::Ahead { version: 3 }, .. }));
    }

    /// On the embedded log the loop takes committed edits at most every `APPLY_EVERY` and at
    /// each cut, not once per group commit, and every edit still reaches the batches in order.
    #[test]
    fn on_the_embedded_log_the_applier_takes_edits_in_bunches_and_every_edit_reaches_a_batch() {
        let (a, rx) = applier(1024);
        let stats = a.stats.clone();
        let looping = Looping::start(a);
        // A group commit every millisecond, one edit each: the old loop woke for every one.
        const RUNS: u64 = 200;
        let started = Instant::now();
        for v in 1..=RUNS {
            looping.edits.send(vec![edit(v)]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let elapsed = started.elapsed();
        let mut covered = 0;
        while covered < RUNS {
            match rx.recv_timeout(Duration::from_secs(10)).expect("a batch carrying the last edits") {
                ShardMsg::Batch { from, to, .. } => {
                    assert_eq!(from, covered, "batches are contiguous");
                    covered = to;
                }
                _ => panic!("only batches were asked for"),
            }
        }
        assert_eq!(covered, RUNS);
        let takes = stats.edit_takes.load(Ordering::Relaxed);
        // The takes while edits came (one per APPLY_EVERY, one per cut), then the first, a look
        // and the cut after the last send, and two for the rounding of both quotients.
        let ms = elapsed.as_millis() as u64;
        let most = ms / APPLY_EVERY.as_millis() as u64 + ms / 100 + 5;
        assert!(takes <= most, "{takes} takes of the queue for {RUNS} group commits in {elapsed:?}: at most {most}");
        looping.stop();
    }

    /// A client answered version V that reconnects with `since=V` at once is served from V, not
    /// refused as ahead: on the embedded log the applier takes its queue only every
    /// APPLY_EVERY, so V may still be queued when the catch-up comes (CI caught this in
    /// `tests/serve.rs`, catch_up_with_since_has_no_gap_and_no_duplicate).
    #[test]
    fn a_catch_up_from_a_version_still_in_the_queue_is_served_not_refused_as_ahead() {
        let (mut a, rx) = applier(1024);
        // No cut during the test: only the catch-up can make the applier take the queue.
        a.batch = Duration::from_secs(10);
        let stats = a.stats.clone();
        let looping = Looping::start(a);
        for round in 1..=5u64 {
            // A take: for APPLY_EVERY after it the loop does not listen for edits.
            looping.edits.send(vec![edit(2 * round - 1)]).unwrap();
            let what = format!("the applier taking edit {}", 2 * round - 1);
            within(Duration::from_secs(10), &what, || stats.edit_takes.load(Ordering::Relaxed) >= round);
            // The next group commit, then its client's catch-up, as the writer orders them.
            looping.edits.send(vec![edit(2 * round)]).unwrap();
            let conn = ConnId { slot: round as u32, gen: 1 };
            looping.requests.send(CatchUpReq { shard: 0, conn, since: 2 * round }).unwrap();
            let reply = loop {
                match rx.recv_timeout(Duration::from_secs(10)).expect("an answer to the catch-up") {
                    ShardMsg::CatchUp { reply, .. } => break reply,
                    _ => continue,
                }
            };
            match reply {
                CatchUpReply::Frames(_) => {}
                CatchUpReply::Ahead { version } => {
                    panic!("round {round}: since={} refused as ahead of {version}", 2 * round)
                }
                CatchUpReply::Reload { .. } => panic!("round {round}: told to reload"),
            }
        }
        looping.stop();
    }

    /// The loop's heartbeat (what `/readyz` and the watchdog judge it by) beats within the stall
    /// limit even when the batch interval is longer than it (`--batch-ms` up to 10 s) and
    /// nothing happens.
    #[test]
    fn an_idle_applier_with_a_long_batch_interval_still_beats_within_the_stall_limit() {
        let (mut a, _rx) = applier(16);
        a.batch = Duration::from_secs(10);
        let stats = a.stats.clone();
        let looping = Looping::start(a);
        let beat = || stats.heartbeat_ms.load(Ordering::Relaxed);
        let limit = Duration::from_millis(crate::bounds::STALL_LIMIT_MS);
        within(limit, "the loop's first heartbeat", || beat() != 0);
        let first = beat();
        within(limit, "a heartbeat with a 10 s batch interval", || beat() != first);
        looping.stop();
    }
}
