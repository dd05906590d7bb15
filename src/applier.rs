//! The ordered applier: the one thread that applies committed edits to the canvas in log order,
//! keeps the catch-up window, cuts a batch every `--batch-ms`, encodes it ONCE into a WebSocket
//! frame and hands the same `Bytes` to every shard over crossbeam channels. It also answers
//! catch-up requests and builds snapshots.
//!
//! Invariants (asserted): applied versions are contiguous; a batch covers exactly the versions
//! applied since the previous cut, `(cut_version, version]`; the batches and catch-up answers a
//! shard receives arrive on one FIFO channel, so a catch-up covering `(since, cut]` is followed by
//! the batch starting at `cut`: no gap, no duplicate.

use crate::canvas::Canvas;
use crate::edit_log::Committed;
use crate::limiter::Limiter;
use crate::protocol::{encode_batch, pack_edit};
use crate::snapshot::{Snapshot, SnapshotStore};
use bytes::Bytes;
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Versions per shared catch-up chunk: clients catching up far share these frames.
pub const CHUNK: u64 = 65_536;
/// Longest a cut waits for a busy shard: progress is guaranteed even if a shard stalls.
const MAX_DEFER: Duration = Duration::from_secs(1);
/// How often a deferred cut looks again.
const DEFER_STEP: Duration = Duration::from_millis(2);
/// Marks a version that changed no pixel (an edit rejected in log order).
const NO_OP: u32 = u32::MAX;

/// A connection on a shard: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

pub enum ShardMsg {
    /// A live batch covering `(from, to]`.
    Batch { frame: Bytes, from: u64, to: u64 },
    /// The answer to a catch-up request.
    CatchUp { conn: ConnId, reply: CatchUpReply },
}

pub enum CatchUpReply {
    /// Batch frames covering `(since, cut]`, in order, then live batches follow.
    Frames(Vec<Bytes>),
    /// `since` is older than the window; the oldest `since` still served.
    Reload { oldest_since: u64 },
    /// `since` is newer than anything applied.
    Ahead { version: u64 },
}

pub struct CatchUpReq {
    pub shard: usize,
    pub conn: ConnId,
    pub since: u64,
}

/// Counters the applier publishes for everyone else.
#[derive(Default)]
pub struct ApplierStats {
    /// Last applied version.
    pub version: AtomicU64,
    /// Last version handed to the shards in a batch.
    pub cut_version: AtomicU64,
    pub batches: AtomicU64,
    pub edits: AtomicU64,
    pub catchups: AtomicU64,
    pub snapshots: AtomicU64,
    /// Batches each shard holds that it has not finished writing; set by the shards.
    pub shard_backlog: Box<[AtomicU64]>,
    /// Cuts postponed because a shard was still writing the previous batch.
    pub cuts_deferred: AtomicU64,
}

impl ApplierStats {
    pub fn new(shards: usize) -> Self {
        ApplierStats { shard_backlog: (0..shards).map(|_| AtomicU64::new(0)).collect(), ..Default::default() }
    }

    fn shards_busy(&self) -> bool {
        self.shard_backlog.iter().any(|b| b.load(Ordering::Acquire) > 0)
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
    stride: u8,
    batch: Duration,
    shards: Vec<Sender<ShardMsg>>,
    limiter: Arc<Limiter>,
    snapshots: Arc<SnapshotStore>,
    stats: Arc<ApplierStats>,
}

pub struct ApplierSetup {
    pub canvas: Canvas,
    pub window: usize,
    pub stride: u8,
    pub batch: Duration,
    pub shards: Vec<Sender<ShardMsg>>,
    pub limiter: Arc<Limiter>,
    pub snapshots: Arc<SnapshotStore>,
    pub stats: Arc<ApplierStats>,
}

impl Applier {
    pub fn new(s: ApplierSetup) -> Self {
        Applier {
            canvas: s.canvas,
            version: 0,
            cut_version: 0,
            pending: Vec::new(),
            window: VecDeque::with_capacity(s.window.min(1 << 22)),
            window_base: 0,
            window_cap: s.window,
            chunks: HashMap::new(),
            stride: s.stride,
            batch: s.batch,
            shards: s.shards,
            limiter: s.limiter,
            snapshots: s.snapshots,
            stats: s.stats,
        }
    }

    /// Applies the log's history up to `head` before serving starts, so the first snapshot and
    /// every catch-up see it. Returns when `head` is applied.
    pub fn replay(&mut self, edits: &Receiver<Committed>, head: u64) {
        while self.version < head {
            match edits.recv() {
                Ok(c) => self.apply(c),
                Err(_) => return,
            }
        }
        // History is not re-broadcast: clients get it from snapshots and catch-up.
        self.pending.clear();
        self.cut_version = self.version;
        self.publish_versions();
    }

    pub fn run(mut self, edits: Receiver<Committed>, requests: Receiver<CatchUpReq>) {
        let mut next_cut = Instant::now() + self.batch;
        let mut recheck: Option<Instant> = None;
        loop {
            let wait = recheck.unwrap_or(next_cut).saturating_duration_since(Instant::now());
            select! {
                recv(edits) -> c => match c {
                    Ok(c) => {
                        self.apply(c);
                        // Drain what is already queued, bounded so cuts stay on time.
                        for _ in 0..65_536 {
                            match edits.try_recv() { Ok(c) => self.apply(c), Err(_) => break }
                        }
                    }
                    Err(_) => return,
                },
                recv(requests) -> r => match r {
                    Ok(r) => self.catch_up(r),
                    Err(_) => return,
                },
                default(wait) => {}
            }
            let now = Instant::now();
            // Under overload, batches grow instead of queueing: while a shard is still writing
            // the previous batch, the cut waits (at most MAX_DEFER), so every client gets every
            // edit in fewer, larger frames and no shard builds a backlog.
            if now >= next_cut && self.stats.shards_busy() && now < next_cut + MAX_DEFER {
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
        }
    }

    fn apply(&mut self, c: Committed) {
        assert_eq!(c.version, self.version + 1, "edit versions must be contiguous");
        self.version = c.version;
        let e = c.edit;
        let g = &self.canvas.geometry;
        let packed = match g.index(e.x as i64, e.y as i64) {
            Some(i) if g.valid_color(e.color as i64) => {
                self.canvas.set(i, e.color);
                pack_edit(i, e.color)
            }
            _ => {
                tracing::warn!(
                    version = c.version,
                    x = e.x,
                    y = e.y,
                    color = e.color,
                    "edit outside this canvas; applied as no-op"
                );
                NO_OP
            }
        };
        self.limiter.observe(e.user, e.ts_ms);
        if packed != NO_OP {
            self.pending.push(packed);
        }
        self.window.push_back(packed);
        if self.window.len() > self.window_cap {
            self.window.pop_front();
            self.window_base += 1;
            if self.window_base % CHUNK == 0 {
                self.chunks.remove(&(self.window_base / CHUNK - 1));
            }
        }
        self.stats.edits.fetch_add(1, Ordering::Relaxed);
    }

    fn publish_versions(&self) {
        self.stats.version.store(self.version, Ordering::Release);
        self.stats.cut_version.store(self.cut_version, Ordering::Release);
    }

    /// Encodes the edits since the last cut into one frame and hands it to every shard.
    fn cut(&mut self) {
        if self.version == self.cut_version {
            return;
        }
        let from = self.cut_version;
        let frame = encode_batch(from, self.version, &self.pending, self.stride);
        for s in &self.shards {
            // A shard that has exited is shutting down; the rest still get the batch.
            let _ = s.send(ShardMsg::Batch { frame: frame.clone(), from, to: self.version });
        }
        self.pending.clear();
        self.cut_version = self.version;
        self.publish_versions();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
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
        if let Some(s) = self.shards.get(r.shard) {
            let _ = s.send(ShardMsg::CatchUp { conn: r.conn, reply });
        }
    }

    /// Frames covering `(since, cut_version]`: a private head up to a chunk boundary, shared
    /// whole chunks, and a private tail.
    fn catch_up_frames(&mut self, since: u64) -> Vec<Bytes> {
        let end = self.cut_version;
        let mut frames = Vec::new();
        let mut at = since;
        while at < end {
            let chunk = at / CHUNK;
            let chunk_end = (chunk + 1) * CHUNK;
            if at == chunk * CHUNK && chunk_end <= end && at >= self.window_base {
                let f = match self.chunks.get(&chunk) {
                    Some(f) => f.clone(),
                    None => {
                        let f = self.encode_range(at, chunk_end);
                        self.chunks.insert(chunk, f.clone());
                        f
                    }
                };
                frames.push(f);
                at = chunk_end;
            } else {
                let to = chunk_end.min(end);
                frames.push(self.encode_range(at, to));
                at = to;
            }
        }
        if frames.is_empty() {
            frames.push(encode_batch(since, since, &[], self.stride));
        }
        frames
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
            shards: vec![tx],
            limiter: Arc::new(Limiter::new(0)),
            snapshots: Arc::new(SnapshotStore::default()),
            stats: Arc::new(ApplierStats::new(1)),
        });
        (a, rx)
    }

    fn edit(v: u64) -> Committed {
        Committed { version: v, edit: Edit { x: (v % 100) as u16, y: 0, color: (v % 16) as u8, user: 1, ts_ms: 0 } }
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
        // The whole chunks are shared between requests.
        let again = a.catch_up_frames(60_000);
        assert!(frames.iter().any(|f| again.iter().any(|g| g.as_ptr() == f.as_ptr())));
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
}
