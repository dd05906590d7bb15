//! The simulated clients: one OS thread per core, each running its own level-triggered epoll
//! loop over nonblocking sockets, with one shared receive buffer per thread and about 40 bytes
//! of state per client (fd, state, version, a lazily allocated carry for a frame that straddles
//! reads, an optional edit log for the catch-up check).
//!
//! A thread ramps its clients at a bounded rate (bind to the next source address, nonblocking
//! connect, upgrade handshake with a derived random key, check of the 101), then follows the
//! protocol: it tracks each client's version and counts gaps, duplicates, disconnects and close
//! codes, answers pings, and measures placement-to-receive latency against the
//! [`SendTable`](crate::sendtable::SendTable).
//!
//! Latency is measured two ways (see bench/RESULTS.md): `frame_latency`, one sample per
//! delivered frame per client, the age of the frame's oldest edit (its worst edit); and
//! `edit_latency`, one sample per edit per client, for every `latency_every`-th client only.

use crate::batch::{self, BatchHeader};
use crate::delivery::{self, Timing, NO_VERSION};
use crate::error::{classify, LimitError};
use crate::hist::{HistExport, LatencyHist};
use crate::merge::{merge_hist, merge_map};
use crate::sendtable::SendTable;
use crate::sys::{self, errno_name, now_ns, Epoll, EV_IN, EV_OUT};
use crate::ws;
use crate::wsread::{self, Phase, Stop, Wire};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most receptions a thread keeps waiting for their send instant.
const MAX_DEFERRED: usize = 4 << 20;

/// What every engine thread of a process shares with the scenario.
pub struct EngineConfig {
    pub target: SocketAddr,
    /// Source addresses; client `g` binds `sources[g % len]` (none: the kernel chooses).
    pub sources: Vec<IpAddr>,
    pub seed: u64,
    pub connect_timeout_ms: u64,
    /// Largest frame payload accepted (bounds the per-client carry).
    pub max_payload: u64,
    /// Per-edit latency is recorded for clients whose global index is a multiple of this.
    pub latency_every: u64,
    /// `since` for every client's first connection (None: live only).
    pub since: Option<u64>,
    /// Clients with a global index below this keep their edit log (reconnect scenario).
    pub track_below: u64,
    /// Most connections being set up at once per thread.
    pub max_pending: usize,
    /// Send a close frame to every open client at the end (else just close the sockets).
    pub close_politely: bool,
}

/// Live control and progress shared by the scenario and the engine threads.
pub struct Shared {
    pub stop: AtomicBool,
    /// Threads that have allocated their state and wait for `go` (so the fleet can read the
    /// process's memory before any client exists, and after the fixed per-thread costs).
    pub inited: AtomicU64,
    pub go: AtomicBool,
    /// Frames with `to` above this are inside the measurement window (u64::MAX: none yet).
    pub window_from: AtomicU64,
    /// Bumped to ask threads to drop their tracked clients and reconnect them.
    pub drop_generation: AtomicU64,
    pub drop_delay_ms: AtomicU64,
    pub table: Option<Arc<SendTable>>,
    pub fatal: Mutex<Option<LimitError>>,
    /// Any other error that stopped a thread.
    pub error: Mutex<Option<String>>,
    pub progress: Vec<ThreadProgress>,
}

impl Shared {
    pub fn new(threads: usize, table: Option<Arc<SendTable>>) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            inited: AtomicU64::new(0),
            go: AtomicBool::new(false),
            window_from: AtomicU64::new(u64::MAX),
            drop_generation: AtomicU64::new(0),
            drop_delay_ms: AtomicU64::new(0),
            table,
            fatal: Mutex::new(None),
            error: Mutex::new(None),
            progress: (0..threads).map(|_| ThreadProgress::default()).collect(),
        }
    }

    fn set_error(&self, e: String) {
        let mut f = self.error.lock().unwrap();
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn set_fatal(&self, e: LimitError) {
        let mut f = self.fatal.lock().unwrap();
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Client sockets open or connecting in this process (as last published by the threads).
    pub fn sockets_now(&self) -> usize {
        self.progress.iter().map(|t| t.open.load(Ordering::Relaxed) + t.connecting.load(Ordering::Relaxed)).sum::<u64>()
            as usize
    }

    /// Sum of all threads' progress.
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for t in &self.progress {
            p.add(&t.snapshot());
        }
        p
    }
}

/// One thread's live counters (written by its thread only, read by the progress printer).
#[derive(Default)]
#[repr(align(128))]
pub struct ThreadProgress {
    pub target: AtomicU64,
    pub started: AtomicU64,
    pub open: AtomicU64,
    pub connecting: AtomicU64,
    pub failed: AtomicU64,
    pub disconnects: AtomicU64,
    pub frames: AtomicU64,
    pub edits: AtomicU64,
    pub gaps: AtomicU64,
    pub dups: AtomicU64,
    pub ramp_done: AtomicBool,
}

impl ThreadProgress {
    /// Publishes a thread's tallies: its counts and its clients open and connecting now.
    pub(crate) fn publish(&self, counts: &Counts, open: u64, connecting: u64) {
        let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        s(&self.started, counts.started);
        s(&self.open, open);
        s(&self.connecting, connecting);
        s(&self.failed, counts.connect_failed + counts.connect_timeouts + counts.handshake_failed);
        s(&self.disconnects, counts.unexpected_disconnects);
        s(&self.frames, counts.frames);
        s(&self.edits, counts.edits);
        s(&self.gaps, counts.gaps);
        s(&self.dups, counts.duplicates);
    }

    fn snapshot(&self) -> Progress {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Progress {
            target: l(&self.target),
            started: l(&self.started),
            open: l(&self.open),
            connecting: l(&self.connecting),
            failed: l(&self.failed),
            disconnects: l(&self.disconnects),
            frames: l(&self.frames),
            edits: l(&self.edits),
            gaps: l(&self.gaps),
            dups: l(&self.dups),
            ramp_done_threads: u64::from(self.ramp_done.load(Ordering::Relaxed)),
            threads: 1,
            rss_bytes: 0,
        }
    }
}

/// Progress of a set of clients (summed over threads and processes).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub target: u64,
    pub started: u64,
    pub open: u64,
    pub connecting: u64,
    pub failed: u64,
    pub disconnects: u64,
    pub frames: u64,
    pub edits: u64,
    pub gaps: u64,
    pub dups: u64,
    pub ramp_done_threads: u64,
    pub threads: u64,
    /// Resident memory of the client processes (filled by the fleet).
    pub rss_bytes: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.target += o.target;
        self.started += o.started;
        self.open += o.open;
        self.connecting += o.connecting;
        self.failed += o.failed;
        self.disconnects += o.disconnects;
        self.frames += o.frames;
        self.edits += o.edits;
        self.gaps += o.gaps;
        self.dups += o.dups;
        self.ramp_done_threads += o.ramp_done_threads;
        self.threads += o.threads;
        self.rss_bytes += o.rss_bytes;
    }

    pub fn ramp_done(&self) -> bool {
        self.threads > 0 && self.ramp_done_threads == self.threads
    }
}

/// Event counts of a set of clients; every field sums across threads and processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    /// Connection attempts started (including reconnects).
    pub started: u64,
    /// Handshakes completed with a valid 101.
    pub connected: u64,
    /// Connects that failed (refused, reset, ...) before the upgrade answer.
    pub connect_failed: u64,
    /// Connects or handshakes not done within --connect-timeout-ms.
    pub connect_timeouts: u64,
    /// Upgrade answers that were not a valid 101 (see `handshake_errors`).
    pub handshake_failed: u64,
    /// Clients open when the run ended.
    pub open_at_end: u64,
    /// Connections that ended before the run did, not by the tester's choice.
    pub unexpected_disconnects: u64,
    pub frames: u64,
    pub edits: u64,
    pub payload_bytes: u64,
    pub text_messages: u64,
    pub reload_messages: u64,
    /// Batches whose `from` was above the client's version, and the versions missed.
    pub gaps: u64,
    pub gap_versions: u64,
    /// Batches whose `from` was below the client's version, and the versions seen twice.
    pub duplicates: u64,
    pub duplicate_versions: u64,
    pub bad_batches: u64,
    pub protocol_errors: u64,
    pub fragmented_frames: u64,
    pub pongs_sent: u64,
    /// Inside the measurement window: frames, edits and versions delivered.
    pub window_frames: u64,
    pub window_edits: u64,
    pub window_versions: u64,
    /// Window frames / versions whose send instant was not in the send table.
    pub untimed_frames: u64,
    pub untimed_versions: u64,
    /// Reconnect scenario: clients dropped by the tester and reconnected with `since`.
    pub dropped: u64,
    pub reconnected: u64,
    /// Drain: closes after a `{"type":"reconnect"}` hint (any close), 1012 and 1001 without one.
    #[serde(default)]
    pub drain_closes_hinted: u64,
    #[serde(default)]
    pub drain_closes_1012: u64,
    #[serde(default)]
    pub drain_closes_1001: u64,
    /// Drained clients' reconnect attempts, and those that failed (retried with backoff).
    #[serde(default)]
    pub drain_reconnects: u64,
    #[serde(default)]
    pub drain_reconnect_failures: u64,
    /// Drained clients that got their first batch after the reconnect.
    #[serde(default)]
    pub drain_live_again: u64,
    /// That first batch started past the client's version (missed edits) / before it.
    #[serde(default)]
    pub drain_gaps: u64,
    #[serde(default)]
    pub drain_duplicates: u64,
    /// Drained clients not live again at the end.
    #[serde(default)]
    pub drain_not_live_at_end: u64,
    /// Closes with 1013 (try again later), followed: reconnect with since after the reason's
    /// `retry_after_ms` (+ jitter).
    #[serde(default)]
    pub retry_closes_1013: u64,
    /// Upgrades refused with 429/503 and a retry hint on the reconnect path, retried after it.
    #[serde(default)]
    pub retry_refusals: u64,
    /// Reconnects after such a hint by clients that were not drained.
    #[serde(default)]
    pub retry_reconnects: u64,
    /// Clients (not drained) still waiting out a retry hint, or not live again after it, at the end.
    #[serde(default)]
    pub retry_not_live_at_end: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        sum!(
            started,
            connected,
            connect_failed,
            connect_timeouts,
            handshake_failed,
            open_at_end,
            unexpected_disconnects,
            frames,
            edits,
            payload_bytes,
            text_messages,
            reload_messages,
            gaps,
            gap_versions,
            duplicates,
            duplicate_versions,
            bad_batches,
            protocol_errors,
            fragmented_frames,
            pongs_sent,
            window_frames,
            window_edits,
            window_versions,
            untimed_frames,
            untimed_versions,
            dropped,
            reconnected,
            drain_closes_hinted,
            drain_closes_1012,
            drain_closes_1001,
            drain_reconnects,
            drain_reconnect_failures,
            drain_live_again,
            drain_gaps,
            drain_duplicates,
            drain_not_live_at_end,
            retry_closes_1013,
            retry_refusals,
            retry_reconnects,
            retry_not_live_at_end
        );
    }
}

/// The edit log of one tracked client (reconnect scenario).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Track {
    pub index: u64,
    /// The version the log starts from (the `since` of the first connection).
    pub base: u64,
    /// The client's version at the end.
    pub version: u64,
    pub edits: Vec<u32>,
    pub reconnects: u32,
    pub gaps: u32,
    pub open: bool,
}

/// What a set of clients saw, mergeable across threads and processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetResult {
    pub threads: u64,
    pub procs: u64,
    pub counts: Counts,
    pub connect_errors: BTreeMap<String, u64>,
    pub handshake_errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub edit_latency: HistExport,
    pub frame_latency: HistExport,
    pub connect_latency: HistExport,
    /// Drain: close to first batch after the reconnect.
    #[serde(default)]
    pub drain_latency: HistExport,
    /// Drained clients' reconnect attempts started per 250 ms of CLOCK_MONOTONIC
    /// (bucket = ns / 250 ms, count): the rate the clients themselves come back at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drain_starts: Vec<(u64, u64)>,
    /// Window batches by `to`: (to, clients that received it, edits in it).
    pub batches: Vec<(u64, u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<Track>,
    pub fatal: Option<LimitError>,
    /// Client-process memory before the clients existed and once they were all set up.
    pub rss_before_bytes: u64,
    /// Client-process memory once the engine threads had allocated their fixed state.
    #[serde(default)]
    pub rss_init_bytes: u64,
    pub rss_ready_bytes: u64,
    pub clients_ready: u64,
    /// The session scenario's users (its day threads fill it; the WebSocket engine does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<crate::day::DayStats>,
}

impl FleetResult {
    pub fn merge(&mut self, o: &FleetResult) {
        self.threads += o.threads;
        self.procs += o.procs;
        self.counts.add(&o.counts);
        merge_map(&mut self.connect_errors, &o.connect_errors);
        merge_map(&mut self.handshake_errors, &o.handshake_errors);
        merge_map(&mut self.close_codes, &o.close_codes);
        merge_map(&mut self.disconnect_reasons, &o.disconnect_reasons);
        merge_hist(&mut self.edit_latency, &o.edit_latency);
        merge_hist(&mut self.frame_latency, &o.frame_latency);
        merge_hist(&mut self.connect_latency, &o.connect_latency);
        merge_hist(&mut self.drain_latency, &o.drain_latency);
        let mut m: BTreeMap<u64, u64> = self.drain_starts.iter().copied().collect();
        for &(k, n) in &o.drain_starts {
            *m.entry(k).or_default() += n;
        }
        self.drain_starts = m.into_iter().collect();
        let mut m: BTreeMap<u64, (u64, u64)> = self.batches.iter().map(|&(t, c, e)| (t, (c, e))).collect();
        for &(t, c, e) in &o.batches {
            let s = m.entry(t).or_insert((0, e));
            s.0 += c;
            s.1 = s.1.max(e);
        }
        self.batches = m.into_iter().map(|(t, (c, e))| (t, c, e)).collect();
        self.tracks.extend(o.tracks.iter().cloned());
        if self.fatal.is_none() {
            self.fatal = o.fatal.clone();
        }
        self.rss_before_bytes += o.rss_before_bytes;
        self.rss_init_bytes += o.rss_init_bytes;
        self.rss_ready_bytes += o.rss_ready_bytes;
        self.clients_ready += o.clients_ready;
        match (&mut self.day, &o.day) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.day = Some(b.clone()),
            _ => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum St {
    /// Not started yet (or failed for good).
    Idle,
    Connecting,
    /// Writing the upgrade request, then waiting for the 101.
    Handshake,
    Open,
    /// Dropped on purpose; reconnects at `t_us`.
    Waiting,
    Closed,
}

const F_CATCHUP: u8 = 1;
const F_SAMPLED: u8 = 2;
/// A `{"type":"reconnect"}` hint arrived; while open, `t_us` holds its delay in milliseconds.
const F_HINT: u8 = 4;
/// Closed by a drain, reconnecting: `closed_us` is when; the first batch makes it live again.
const F_DRAINED: u8 = 8;
/// Failed reconnects after a drain (backoff exponent), bits 4-6.
const F_RETRY_SHIFT: u8 = 4;
const F_RETRY_MASK: u8 = 0x70;
/// Reconnecting after a server's retry hint (1013 close, or a 429/503 upgrade answer with
/// `Retry-After`) outside a drain; cleared by the first batch.
const F_RETRY: u8 = 0x80;
/// Width of a [`FleetResult::drain_starts`] bucket.
pub const DRAIN_BUCKET_NS: u64 = 250_000_000;
/// Jitter added to a retry hint: random(0..1000) ms, so a refused crowd does not come back at once.
const RETRY_JITTER_MS: u64 = 1000;
/// A 1013 close whose reason carries no `retry_after_ms`: wait this long.
const RETRY_DEFAULT_MS: u64 = 1000;
/// Delay when a drain close brings no hint: 0 + random(0..1000) ms (as for 1001).
const DRAIN_DEFAULT_JITTER_MS: u64 = 1000;
/// Longest reconnect delay a hint may ask for.
const MAX_HINT_MS: u64 = 600_000;

/// Per-client state: about 40 bytes.
struct Client {
    fd: i32,
    st: St,
    flags: u8,
    /// Bytes of the upgrade request written so far.
    sent: u16,
    /// Microseconds since the thread started, wrapping (every 71 minutes; only differences
    /// under 35 minutes are taken): when connecting began, or when the reconnect is due (or,
    /// while open with F_HINT, the hinted reconnect delay in milliseconds).
    t_us: u32,
    /// When a drain closed the connection (same clock as `t_us`; meaningful with F_DRAINED).
    closed_us: u32,
    /// [`NO_VERSION`] before the first batch of a connection without `since`.
    version: u64,
    /// Bytes of a frame (or answer head) that straddles reads; allocated only then.
    // Boxed on purpose: 8 bytes per client instead of the 24 of an empty Vec.
    #[allow(clippy::box_collection)]
    carry: Option<Box<Vec<u8>>>,
    track: Option<Box<Track>>,
}

/// Why a client's connection ended.
enum End {
    Eof,
    Error(io::Error),
    Closed(u16),
    Protocol(&'static str),
    Handshake(ws::HandshakeError),
    /// The server asked to come back later: a 1013 close, or a 429/503 answer to the upgrade
    /// with a retry hint (`code` is the close code or the HTTP status).
    RetryAfter {
        code: u16,
        ms: u64,
    },
}

impl From<Stop> for End {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Eof => End::Eof,
            Stop::Error(e) => End::Error(e),
            Stop::Protocol(p) => End::Protocol(p),
        }
    }
}

struct Thread {
    tid: usize,
    nthreads: usize,
    base: u64,
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    epoll: Epoll,
    clients: Vec<Client>,
    pending: Vec<u32>,
    waiting: Vec<u32>,
    wire: Wire,
    epoch_ns: u64,
    // Local tallies, published to `ThreadProgress` every loop.
    open: u64,
    connecting: u64,
    counts: Counts,
    connect_errors: BTreeMap<String, u64>,
    handshake_errors: BTreeMap<String, u64>,
    close_codes: BTreeMap<String, u64>,
    disconnect_reasons: BTreeMap<String, u64>,
    /// Frame and edit latency, with the receptions whose send instant was not in the table yet
    /// (the broadcast can beat the placement's HTTP answer to the driver).
    timing: Timing,
    connect_lat: LatencyHist,
    drain_lat: LatencyHist,
    /// Drain reconnect attempts started per 250 ms bucket of CLOCK_MONOTONIC.
    drain_starts: BTreeMap<u64, u64>,
    batches: FxHashMap<u64, (u64, u64)>,
    stopping: bool,
}

/// Spawns `threads` engine threads for `clients` clients with global indices
/// `base .. base + clients` (thread t owns base + t, base + t + threads, ...), ramping at
/// `ramp` connections per second in total. Threads are pinned to `cpus` round-robin if given.
pub fn spawn(
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    clients: usize,
    base: u64,
    ramp: f64,
    cpus: &[usize],
) -> io::Result<Vec<std::thread::JoinHandle<FleetResult>>> {
    let n = shared.progress.len();
    let mut handles = Vec::with_capacity(n);
    for tid in 0..n {
        let mine = clients / n + usize::from(tid < clients % n);
        let cfg = cfg.clone();
        let shared = shared.clone();
        let cpu = if cpus.is_empty() { None } else { Some(cpus[tid % cpus.len()]) };
        let per_thread_ramp = (ramp / n as f64).max(1.0);
        let h = std::thread::Builder::new().name(format!("clients-{tid}")).spawn(move || {
            if let Some(c) = cpu {
                sys::pin_current_thread(c);
            }
            match Thread::new(tid, n, base, mine, cfg, shared.clone()) {
                Ok(mut t) => {
                    shared.inited.fetch_add(1, Ordering::SeqCst);
                    while !shared.go.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    t.epoch_ns = now_ns();
                    t.run(per_thread_ramp)
                }
                Err(e) => {
                    shared.inited.fetch_add(1, Ordering::SeqCst);
                    match classify(sys::Step::Socket, &e, None, 0) {
                        Some(l) => shared.set_fatal(l),
                        None => shared.set_error(format!("client thread {tid}: cannot create its epoll instance: {e}")),
                    }
                    shared.progress[tid].ramp_done.store(true, Ordering::Relaxed);
                    FleetResult { threads: 1, ..Default::default() }
                }
            }
        })?;
        handles.push(h);
    }
    Ok(handles)
}

impl Thread {
    fn new(
        tid: usize,
        nthreads: usize,
        base: u64,
        n: usize,
        cfg: Arc<EngineConfig>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let clients = (0..n)
            .map(|_| Client {
                fd: -1,
                st: St::Idle,
                flags: 0,
                sent: 0,
                t_us: 0,
                closed_us: 0,
                version: NO_VERSION,
                carry: None,
                track: None,
            })
            .collect();
        shared.progress[tid].target.store(n as u64, Ordering::Relaxed);
        Ok(Thread {
            tid,
            nthreads,
            base,
            wire: Wire::new(cfg.max_payload, cfg.seed ^ 0xABCD ^ tid as u64),
            cfg,
            shared,
            epoll: Epoll::new()?,
            clients,
            pending: Vec::new(),
            waiting: Vec::new(),
            epoch_ns: now_ns(),
            open: 0,
            connecting: 0,
            counts: Counts::default(),
            connect_errors: BTreeMap::new(),
            handshake_errors: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            disconnect_reasons: BTreeMap::new(),
            timing: Timing::new(MAX_DEFERRED),
            connect_lat: LatencyHist::new(),
            drain_lat: LatencyHist::new(),
            drain_starts: BTreeMap::new(),
            batches: FxHashMap::default(),
            stopping: false,
        })
    }

    fn global(&self, i: usize) -> u64 {
        self.base + self.tid as u64 + i as u64 * self.nthreads as u64
    }

    fn now_us(&self) -> u32 {
        ((now_ns() - self.epoch_ns) / 1_000) as u32
    }

    fn run(&mut self, ramp: f64) -> FleetResult {
        let mut events = sys::event_buffer(1024);
        let ramp_start = now_ns();
        let mut next_start = 0usize;
        let mut last_scan = 0u32;
        let mut drop_gen = 0u64;
        let n = self.clients.len();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = now_ns();
            // Ramp: start clients up to what the rate allows, with a bound on connects in flight.
            if next_start < n {
                let allowed = (((now - ramp_start) as f64 / 1e9 * ramp) as usize + 1).min(n);
                while next_start < allowed && self.pending.len() < self.cfg.max_pending {
                    let i = next_start;
                    next_start += 1;
                    if self.cfg.track_below > self.global(i) {
                        let g = self.global(i);
                        let base = self.cfg.since.unwrap_or(0);
                        self.clients[i].track =
                            Some(Box::new(Track { index: g, base, version: base, ..Default::default() }));
                    }
                    self.start(i);
                    if self.shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            let now_us = self.now_us();
            if now_us.wrapping_sub(last_scan) >= 100_000 {
                last_scan = now_us;
                self.scan_timeouts(now_us);
                self.start_due_reconnects(now_us);
                self.resolve_deferred(false);
            }
            let g = self.shared.drop_generation.load(Ordering::Relaxed);
            if g != drop_gen {
                drop_gen = g;
                let delay_us = self.shared.drop_delay_ms.load(Ordering::Relaxed).min(60_000) as u32 * 1000;
                self.drop_tracked(now_us.wrapping_add(delay_us));
            }
            let ramping = next_start < n || !self.pending.is_empty() || !self.waiting.is_empty();
            let got = match self.epoll.wait(&mut events, if ramping { 5 } else { 50 }) {
                Ok(k) => k,
                Err(e) => {
                    self.shared.set_error(format!("client thread {}: epoll_wait: {e}", self.tid));
                    break;
                }
            };
            for ev in &events[..got] {
                let (key, bits) = (ev.u64, ev.events);
                self.on_event(key as usize, bits);
            }
            self.publish(next_start >= n && self.pending.is_empty() && self.waiting.is_empty());
        }
        self.stopping = true;
        self.shutdown();
        self.publish(true);
        self.result()
    }

    fn publish(&self, ramp_done: bool) {
        let p = &self.shared.progress[self.tid];
        p.publish(&self.counts, self.open, self.connecting);
        p.ramp_done.store(ramp_done, Ordering::Relaxed);
    }

    /// Starts (or restarts) client `i`'s connection.
    fn start(&mut self, i: usize) {
        let g = self.global(i);
        let n = self.cfg.sources.len() as u64;
        let src = (n > 0).then(|| self.cfg.sources[(g % n.max(1)) as usize]);
        self.counts.started += 1;
        match sys::start_connect(src, self.cfg.target) {
            Ok(fd) => {
                if let Err(e) = self.epoll.add(fd, EV_IN | EV_OUT, i as u64) {
                    sys::close(fd, false);
                    self.publish(false);
                    if let Some(l) = classify(sys::Step::Socket, &e, src, self.shared.sockets_now()) {
                        self.shared.set_fatal(l);
                    } else {
                        self.counts.connect_failed += 1;
                        *self.connect_errors.entry(format!("epoll_ctl: {}", errno_name(&e))).or_default() += 1;
                    }
                    return;
                }
                let now_us = self.now_us();
                let since_known = self.clients[i].version != NO_VERSION || self.cfg.since.is_some();
                let sampled = self.cfg.latency_every > 0 && g.is_multiple_of(self.cfg.latency_every);
                let c = &mut self.clients[i];
                c.fd = fd;
                c.st = St::Connecting;
                c.sent = 0;
                c.t_us = now_us;
                c.carry = None;
                c.flags = (c.flags & (F_DRAINED | F_RETRY_MASK | F_RETRY))
                    | if since_known { F_CATCHUP } else { 0 }
                    | if sampled { F_SAMPLED } else { 0 };
                self.connecting += 1;
                self.pending.push(i as u32);
            }
            Err((step, e)) => {
                self.publish(false);
                if let Some(l) = classify(step, &e, src, self.shared.sockets_now()) {
                    self.shared.set_fatal(l);
                } else {
                    self.counts.connect_failed += 1;
                    *self.connect_errors.entry(errno_name(&e)).or_default() += 1;
                }
                self.clients[i].st = St::Closed;
                if self.clients[i].flags & F_DRAINED != 0 && !self.shared.stop.load(Ordering::Relaxed) {
                    self.retry_drained(i);
                }
            }
        }
    }

    fn scan_timeouts(&mut self, now_us: u32) {
        let limit = (self.cfg.connect_timeout_ms.min(600_000) * 1000) as u32;
        let mut expired = Vec::new();
        self.pending.retain(|&i| {
            let c = &self.clients[i as usize];
            match c.st {
                St::Connecting | St::Handshake => {
                    if now_us.wrapping_sub(c.t_us) > limit {
                        expired.push(i);
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            }
        });
        for i in expired {
            self.counts.connect_timeouts += 1;
            self.end(i as usize, End::Protocol("connect_timeout"));
        }
    }

    fn start_due_reconnects(&mut self, now_us: u32) {
        if self.waiting.is_empty() {
            return;
        }
        let due: Vec<u32> = self
            .waiting
            .iter()
            .copied()
            .filter(|&i| (now_us.wrapping_sub(self.clients[i as usize].t_us) as i32) >= 0)
            .collect();
        self.waiting.retain(|&i| (now_us.wrapping_sub(self.clients[i as usize].t_us) as i32) < 0);
        for i in due {
            if self.clients[i as usize].flags & F_DRAINED != 0 {
                self.counts.drain_reconnects += 1;
                *self.drain_starts.entry(now_ns() / DRAIN_BUCKET_NS).or_default() += 1;
            } else if self.clients[i as usize].flags & F_RETRY != 0 {
                self.counts.retry_reconnects += 1;
            } else {
                self.counts.reconnected += 1;
            }
            if let Some(t) = self.clients[i as usize].track.as_mut() {
                t.reconnects += 1;
            }
            self.start(i as usize);
        }
    }

    /// Schedules client `i` (closed by a drain) to reconnect in `delay_ms`.
    fn schedule_drained(&mut self, i: usize, delay_ms: u64) {
        let due = self.now_us().wrapping_add((delay_ms.min(MAX_HINT_MS) * 1000) as u32);
        let c = &mut self.clients[i];
        c.st = St::Waiting;
        c.t_us = due;
        c.carry = None;
        self.waiting.push(i as u32);
    }

    /// A drained client's reconnect failed: try again after 1, 2, 4, 8, 16, 16 ... s (+ jitter).
    fn retry_drained(&mut self, i: usize) {
        self.counts.drain_reconnect_failures += 1;
        let n = (self.clients[i].flags & F_RETRY_MASK) >> F_RETRY_SHIFT;
        let delay = (1000u64 << n.min(4)) + self.wire.jitter(1000);
        let c = &mut self.clients[i];
        c.flags = (c.flags & !F_RETRY_MASK) | ((n + 1).min(7) << F_RETRY_SHIFT);
        self.schedule_drained(i, delay);
    }

    /// The server asked client `i` to come back after `ms`: reconnect (with since) after it plus
    /// random(0..1000) ms. A drained client not live yet stays drained (its close-to-live time
    /// includes the wait); any other is marked [`F_RETRY`].
    fn schedule_retry(&mut self, i: usize, ms: u64) {
        if self.clients[i].flags & F_DRAINED == 0 {
            self.clients[i].flags |= F_RETRY;
        }
        let delay = ms.min(MAX_HINT_MS) + self.wire.jitter(RETRY_JITTER_MS);
        self.schedule_drained(i, delay);
    }

    /// Whether client `i`'s current connection attempt is a reconnect (after a drain, a retry
    /// hint, or the reconnect scenario's drop): a refused upgrade with a hint is then retried.
    fn reconnecting(&self, i: usize) -> bool {
        let c = &self.clients[i];
        c.flags & (F_DRAINED | F_RETRY) != 0 || c.track.as_ref().is_some_and(|t| t.reconnects > 0)
    }

    /// Drops every open tracked client (a reset, like a network drop) and schedules its reconnect.
    fn drop_tracked(&mut self, due_us: u32) {
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.track.is_none() || c.st != St::Open {
                continue;
            }
            sys::close(c.fd, true);
            c.fd = -1;
            c.st = St::Waiting;
            c.t_us = due_us;
            c.carry = None;
            self.open -= 1;
            self.counts.dropped += 1;
            self.waiting.push(i as u32);
        }
    }

    fn on_event(&mut self, i: usize, bits: u32) {
        if i >= self.clients.len() {
            return;
        }
        match self.clients[i].st {
            St::Connecting => {
                if let Err(e) = sys::take_socket_error(self.clients[i].fd) {
                    self.counts.connect_failed += 1;
                    *self.connect_errors.entry(errno_name(&e)).or_default() += 1;
                    self.end(i, End::Error(e));
                    return;
                }
                if bits & (EV_OUT | EV_IN) != 0 {
                    self.clients[i].st = St::Handshake;
                    self.write_request(i);
                }
            }
            St::Handshake => {
                if bits & EV_OUT != 0 && (self.clients[i].sent as usize) < self.request_len(i) {
                    self.write_request(i);
                }
                if bits & !EV_OUT != 0 && self.clients[i].st == St::Handshake {
                    wsread::read_ready(self, i);
                }
            }
            St::Open => wsread::read_ready(self, i),
            _ => {}
        }
    }

    fn build_request(&mut self, i: usize) {
        let g = self.global(i);
        let key = ws::client_key(self.cfg.seed, g);
        let c = &self.clients[i];
        let since = if c.version != NO_VERSION { Some(c.version) } else { self.cfg.since };
        let path = match since {
            Some(v) => format!("/ws?since={v}"),
            None => "/ws".to_string(),
        };
        self.wire.scratch.clear();
        ws::write_upgrade_request(&mut self.wire.scratch, &self.cfg.target.to_string(), &path, &key);
    }

    fn request_len(&mut self, i: usize) -> usize {
        self.build_request(i);
        self.wire.scratch.len()
    }

    fn write_request(&mut self, i: usize) {
        self.build_request(i);
        let fd = self.clients[i].fd;
        let from = self.clients[i].sent as usize;
        match sys::send(fd, &self.wire.scratch[from..]) {
            Ok(n) => {
                let total = from + n;
                self.clients[i].sent = total as u16;
                if total == self.wire.scratch.len() {
                    // Request out: from now on only readability matters (level-triggered).
                    if let Err(e) = self.epoll.modify(fd, EV_IN, i as u64) {
                        self.end(i, End::Error(e));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                self.counts.connect_failed += 1;
                *self.connect_errors.entry(errno_name(&e)).or_default() += 1;
                self.end(i, End::Error(e));
            }
        }
    }

    fn on_batch(&mut self, i: usize, b: &BatchHeader, payload: &[u8], now: u64) {
        let sampled;
        let catchup;
        // First version this batch brings that the client did not have (dups excluded).
        let new_from;
        self.clients[i].flags &= !F_RETRY;
        if self.clients[i].flags & F_DRAINED != 0 {
            let now_us = self.now_us();
            let c = &mut self.clients[i];
            c.flags &= !(F_DRAINED | F_RETRY_MASK);
            if c.version != NO_VERSION {
                if b.from > c.version {
                    self.counts.drain_gaps += 1;
                } else if b.from < c.version {
                    self.counts.drain_duplicates += 1;
                }
            }
            self.counts.drain_live_again += 1;
            self.drain_lat.record_us(u64::from(now_us.wrapping_sub(c.closed_us)));
        }
        {
            let c = &mut self.clients[i];
            sampled = c.flags & F_SAMPLED != 0;
            catchup = c.flags & F_CATCHUP != 0;
            c.flags &= !F_CATCHUP;
            let a = delivery::apply(&mut c.version, b, payload.len(), &mut self.counts);
            new_from = a.new_from;
            if let Some(t) = c.track.as_mut() {
                if a.gap {
                    t.gaps += 1;
                }
                if a.applied {
                    t.edits.extend(batch::edits(payload, b));
                    t.version = b.to;
                }
            }
        }
        let window = self.shared.window_from.load(Ordering::Relaxed);
        if b.to <= window {
            return;
        }
        let first = new_from.max(window);
        self.counts.window_versions += b.to.saturating_sub(first);
        self.counts.window_edits += b.count as u64;
        if catchup {
            // A catch-up batch has its own boundaries and old edits: no frame count, no latency.
            return;
        }
        self.counts.window_frames += 1;
        let e = self.batches.entry(b.to).or_insert((0, b.count as u64));
        e.0 += 1;
        self.timing.record(self.shared.table.as_deref(), first, b.to, now, sampled, &mut self.counts);
    }

    fn resolve_deferred(&mut self, last: bool) {
        self.timing.resolve(self.shared.table.as_deref(), last, &mut self.counts);
    }

    /// Ends client `i`'s connection, counting why.
    fn end(&mut self, i: usize, why: End) {
        let now_us = self.now_us();
        let c = &mut self.clients[i];
        let was = c.st;
        if c.fd >= 0 {
            sys::close(c.fd, false);
        }
        c.fd = -1;
        c.st = St::Closed;
        c.carry = None;
        let hinted = c.flags & F_HINT != 0;
        c.flags &= !F_HINT;
        match was {
            St::Open if !self.stopping && (hinted || matches!(why, End::Closed(1012 | 1001))) => {
                // A drain: wait the hinted delay (1012/1001 without a hint: random(0..1000) ms)
                // and reconnect with since=<version>. A client drained again before it was live
                // keeps its first close instant.
                self.open -= 1;
                if let End::Closed(code) = &why {
                    *self.close_codes.entry(code.to_string()).or_default() += 1;
                }
                let delay = if hinted { u64::from(c.t_us) } else { u64::MAX };
                if c.flags & F_DRAINED == 0 {
                    c.closed_us = now_us;
                    c.flags |= F_DRAINED;
                }
                match why {
                    _ if hinted => self.counts.drain_closes_hinted += 1,
                    End::Closed(1012) => self.counts.drain_closes_1012 += 1,
                    _ => self.counts.drain_closes_1001 += 1,
                }
                let delay = if delay == u64::MAX { self.wire.jitter(DRAIN_DEFAULT_JITTER_MS) } else { delay };
                self.schedule_drained(i, delay);
            }
            St::Open if !self.stopping && matches!(why, End::RetryAfter { .. }) => {
                // 1013 try again later: reconnect with since after the reason's retry_after_ms.
                self.open -= 1;
                let End::RetryAfter { code, ms } = why else { return };
                *self.close_codes.entry(code.to_string()).or_default() += 1;
                self.counts.retry_closes_1013 += 1;
                self.schedule_retry(i, ms);
            }
            St::Open => {
                self.open -= 1;
                if !self.stopping {
                    self.counts.unexpected_disconnects += 1;
                    let reason = match &why {
                        End::Eof => "eof".to_string(),
                        End::Error(e) => errno_name(e),
                        End::Closed(code) => {
                            *self.close_codes.entry(code.to_string()).or_default() += 1;
                            format!("close_{code}")
                        }
                        End::Protocol(p) => (*p).to_string(),
                        End::Handshake(e) => e.to_string(),
                        End::RetryAfter { code, .. } => format!("retry_after_{code}"),
                    };
                    *self.disconnect_reasons.entry(reason).or_default() += 1;
                }
            }
            St::Connecting | St::Handshake => {
                self.connecting -= 1;
                if matches!(why, End::Eof) {
                    self.counts.handshake_failed += 1;
                    *self.handshake_errors.entry("connection closed before the 101".into()).or_default() += 1;
                }
                match why {
                    _ if self.stopping => {}
                    End::RetryAfter { ms, .. } => {
                        // 429/503 with a retry hint on the reconnect path: come back when it says.
                        self.counts.retry_refusals += 1;
                        if c.flags & F_DRAINED != 0 {
                            self.counts.drain_reconnect_failures += 1;
                        }
                        self.schedule_retry(i, ms);
                    }
                    _ if c.flags & F_DRAINED != 0 => self.retry_drained(i),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn shutdown(&mut self) {
        let mut frame = Vec::with_capacity(8);
        for i in 0..self.clients.len() {
            let st = self.clients[i].st;
            if self.clients[i].flags & F_DRAINED != 0 {
                self.counts.drain_not_live_at_end += 1;
            } else if self.clients[i].flags & F_RETRY != 0 {
                self.counts.retry_not_live_at_end += 1;
            }
            if let Some(t) = self.clients[i].track.as_mut() {
                t.open = st == St::Open;
            }
            if matches!(st, St::Open | St::Connecting | St::Handshake) {
                if st == St::Open && self.cfg.close_politely {
                    frame.clear();
                    ws::encode_client_frame(
                        ws::OP_CLOSE,
                        &ws::close_payload(1000),
                        [0x5a, 0x17, 0x33, 0x0c],
                        &mut frame,
                    );
                    let _ = sys::send(self.clients[i].fd, &frame);
                }
                if st == St::Open {
                    self.counts.open_at_end += 1;
                }
                self.end(i, End::Protocol("stop"));
            }
            if st == St::Waiting {
                self.clients[i].st = St::Closed;
            }
        }
        self.pending.clear();
        self.waiting.clear();
    }

    fn result(&mut self) -> FleetResult {
        self.resolve_deferred(true);
        let mut tracks = Vec::new();
        for c in &mut self.clients {
            if let Some(mut t) = c.track.take() {
                t.version = if c.version == NO_VERSION { t.base } else { c.version };
                tracks.push(*t);
            }
        }
        let mut batches: Vec<(u64, u64, u64)> = self.batches.iter().map(|(&t, &(c, e))| (t, c, e)).collect();
        batches.sort_unstable();
        FleetResult {
            threads: 1,
            procs: 0,
            counts: std::mem::take(&mut self.counts),
            connect_errors: std::mem::take(&mut self.connect_errors),
            handshake_errors: std::mem::take(&mut self.handshake_errors),
            close_codes: std::mem::take(&mut self.close_codes),
            disconnect_reasons: std::mem::take(&mut self.disconnect_reasons),
            edit_latency: self.timing.edit.export(),
            frame_latency: self.timing.frame.export(),
            connect_latency: self.connect_lat.export(),
            drain_latency: self.drain_lat.export(),
            drain_starts: std::mem::take(&mut self.drain_starts).into_iter().collect(),
            batches,
            tracks,
            fatal: None,
            rss_before_bytes: 0,
            rss_init_bytes: 0,
            rss_ready_bytes: 0,
            clients_ready: 0,
            day: None,
        }
    }
}

/// The reader's view of the clients: the upgrade answer (the first batch of a connection
/// without `since` sets the version), reload and reconnect hints in text messages, and 1013
/// closes with their retry hint are this engine's.
impl wsread::Clients for Thread {
    type End = End;

    fn fd(&self, i: usize) -> i32 {
        self.clients[i].fd
    }

    fn phase(&self, i: usize) -> Phase {
        match self.clients[i].st {
            St::Handshake => Phase::Handshake,
            St::Open => Phase::Open,
            _ => Phase::Gone,
        }
    }

    fn carry(&mut self, i: usize) -> &mut Option<Box<Vec<u8>>> {
        &mut self.clients[i].carry
    }

    fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn disconnect_reasons(&mut self) -> &mut BTreeMap<String, u64> {
        &mut self.disconnect_reasons
    }

    fn upgrade(&mut self, i: usize, data: &[u8]) -> Result<Option<usize>, End> {
        let accept = ws::accept_for(&ws::client_key(self.cfg.seed, self.global(i)));
        match ws::parse_upgrade_response(data, &accept) {
            Ok(Some(n)) => {
                let c = &mut self.clients[i];
                c.st = St::Open;
                if c.version == NO_VERSION {
                    if let Some(s) = self.cfg.since {
                        c.version = s;
                    }
                }
                let started = c.t_us;
                self.connecting -= 1;
                self.open += 1;
                self.counts.connected += 1;
                self.connect_lat.record_us(u64::from(self.now_us().wrapping_sub(started)));
                Ok(Some(n))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.counts.handshake_failed += 1;
                *self.handshake_errors.entry(e.to_string()).or_default() += 1;
                if matches!(e, ws::HandshakeError::Status(429 | 503)) && self.reconnecting(i) {
                    if let Some((code, ms)) = ws::refusal_retry_after_ms(data) {
                        return Err(End::RetryAfter { code, ms });
                    }
                }
                Err(End::Handshake(e))
            }
        }
    }

    fn batch(&mut self, i: usize, b: &BatchHeader, payload: &[u8], now: u64) {
        self.on_batch(i, b, payload, now);
    }

    fn text(&mut self, i: usize, payload: &[u8]) {
        if payload.windows(8).any(|w| w == b"\"reload\"") {
            self.counts.reload_messages += 1;
        } else if payload.windows(11).any(|w| w == b"\"reconnect\"") {
            if let Some((after, jitter)) = ws::parse_reconnect_hint(payload) {
                let delay = after.min(MAX_HINT_MS) + self.wire.jitter(jitter.min(MAX_HINT_MS));
                let c = &mut self.clients[i];
                c.flags |= F_HINT;
                c.t_us = delay.min(MAX_HINT_MS) as u32;
            }
        }
    }

    fn close(&mut self, _i: usize, payload: &[u8]) -> End {
        let code = ws::close_code(payload);
        if code == 1013 {
            let ms = ws::close_retry_after_ms(payload).unwrap_or(RETRY_DEFAULT_MS);
            return End::RetryAfter { code, ms };
        }
        End::Closed(code)
    }

    fn hang_up(&mut self, i: usize, why: End) {
        self.end(i, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_state_is_small() {
        assert!(std::mem::size_of::<Client>() <= 48, "{}", std::mem::size_of::<Client>());
    }

    /// A scripted server: live-only connections get batches to 5 and a 1012 close; each client's
    /// first `since` connection is closed with 1013 (retry_after_ms=150), its second refused with
    /// 429 + Retry-After (body retry_after_ms=100), its third gets a catch-up to 7 and stays open.
    fn retry_server() -> (SocketAddr, Arc<AtomicU64>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let live = Arc::new(AtomicU64::new(0));
        let attempts: Arc<Mutex<FxHashMap<String, u32>>> = Arc::default();
        let live2 = live.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let (Ok(mut s), live, attempts) = (s, live2.clone(), attempts.clone()) else { continue };
                std::thread::spawn(move || {
                    let frame = |op: u8, p: &[u8]| [&[0x80 | op, p.len() as u8][..], p].concat();
                    let batch = |from: u64, to: u64| {
                        let mut p = Vec::new();
                        batch::encode_batch(from, to, &[], 4, &mut p);
                        frame(ws::OP_BINARY, &p)
                    };
                    let (mut head, mut tmp) = (Vec::new(), [0u8; 2048]);
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp) {
                            Ok(n) if n > 0 => head.extend_from_slice(&tmp[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().to_string();
                    let since = head.lines().next().unwrap().contains("since=5");
                    let n = if since {
                        *attempts.lock().unwrap().entry(key.clone()).and_modify(|n| *n += 1).or_insert(1)
                    } else {
                        0
                    };
                    if n == 2 {
                        let body = r#"{"error":{"code":"catch_up_rate_limited","retry_after_ms":100}}"#;
                        let r = format!(
                            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(r.as_bytes());
                        return;
                    }
                    let accept = ws::accept_for(&key);
                    let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                    let _ = s.write_all(ok.as_bytes());
                    match n {
                        0 => {
                            let _ = s.write_all(&[batch(0, 5), frame(ws::OP_CLOSE, &[0x03, 0xf4])].concat());
                        }
                        1 => {
                            let mut p = vec![0x03, 0xf5];
                            p.extend_from_slice(b"busy catching others up; retry_after_ms=150");
                            let _ = s.write_all(&frame(ws::OP_CLOSE, &p));
                        }
                        _ => {
                            live.fetch_add(1, Ordering::SeqCst);
                            let _ = s.write_all(&batch(5, 7));
                            while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                });
            }
        });
        (addr, live)
    }

    fn retry_run(since: Option<u64>, n: u64) -> FleetResult {
        let (target, live) = retry_server();
        let cfg = EngineConfig {
            target,
            sources: vec!["127.0.0.1".parse().unwrap()],
            seed: 5,
            connect_timeout_ms: 5000,
            max_payload: 1 << 20,
            latency_every: 0,
            since,
            track_below: 0,
            max_pending: 64,
            close_politely: true,
        };
        let f = crate::fleet::LocalFleet::start(cfg, n as usize, 0, 2, 1000.0, &[], None).unwrap();
        let t0 = std::time::Instant::now();
        while live.load(Ordering::SeqCst) < n || f.progress().frames < n * (1 + u64::from(since.is_none())) {
            assert!(t0.elapsed().as_secs() < 10, "clients did not come back: {:?}", f.progress());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        f.stop()
    }

    #[test]
    fn drained_clients_follow_1013_and_429_retry_hints() {
        let r = retry_run(None, 6);
        let c = &r.counts;
        assert_eq!((c.drain_closes_1012, c.retry_closes_1013, c.retry_refusals), (6, 6, 6));
        assert_eq!((c.drain_reconnects, c.drain_reconnect_failures, c.retry_reconnects), (18, 6, 0));
        assert_eq!((c.drain_live_again, c.drain_not_live_at_end, c.drain_gaps, c.gaps), (6, 0, 0, 0));
        assert_eq!(c.unexpected_disconnects, 0, "{:?}", r.disconnect_reasons);
        assert_eq!((r.close_codes.get("1012"), r.close_codes.get("1013")), (Some(&6), Some(&6)));
        // Close to live: the 1012's jitter, then 150 ms + jitter, then 100 ms + jitter (jitter < 1 s).
        let lat = LatencyHist::import(&r.drain_latency).summary();
        assert!(lat.count == 6 && lat.p50_us >= 250_000 && lat.max_us < 4_000_000, "{lat:?}");
    }

    #[test]
    fn clients_joining_with_since_follow_1013_and_429_retry_hints() {
        let r = retry_run(Some(5), 4);
        let c = &r.counts;
        assert_eq!((c.retry_closes_1013, c.retry_refusals, c.retry_reconnects, c.retry_not_live_at_end), (4, 4, 8, 0));
        assert_eq!((c.drain_closes_1012, c.gaps, c.unexpected_disconnects), (0, 0, 0));
    }

    #[test]
    fn fleet_results_merge() {
        let mut a = FleetResult { threads: 1, batches: vec![(10, 3, 5)], ..Default::default() };
        a.counts.frames = 3;
        let mut b = FleetResult { threads: 1, batches: vec![(10, 2, 5), (20, 5, 7)], ..Default::default() };
        b.counts.frames = 7;
        a.merge(&b);
        assert_eq!(a.threads, 2);
        assert_eq!(a.counts.frames, 10);
        assert_eq!(a.batches, vec![(10, 5, 5), (20, 5, 7)]);
    }
}
