//! The session scenario's users: one OS thread per core, each with its own epoll loop over
//! nonblocking WebSocket connections and a timer heap, following its users through the day of a
//! [`DayPlan`]: arrive, get a session and the snapshot (through a small pool of blocking HTTP
//! connections), open `/ws?since=<snapshot version>&token=…`, place each planned pixel with a
//! `{"type":"place"}` message no earlier than the server's `next_at_ms`, idle, leave (close
//! 1000), and on a return visit reconnect with `since=<their last version>`; a `reload` answer
//! (the version left the server's window) fetches the snapshot again.
//!
//! Every user applies every batch as the web client does (`from == version`), so gaps and
//! duplicates are counted per batch; whether a return caught up from its version or had to
//! reload; whether a user's own accepted edit came back before it left. Latency: the thread
//! records the instant each `place` was sent against the version its `placed` answer names in the
//! process's send table, and every user's batches are timed against it (the oldest new edit of
//! each frame; every edit for every `latency_every`-th user), as the fanout clients are.
//!
//! Per user: 48 bytes of state ([`User`]), 4 bytes of plan index, 8 bytes per planned placement
//! and the session token in the thread's arena (1 + 75 bytes for an anonymous session); a
//! carry buffer only while a frame straddles reads. Bounds: the HTTP job queue
//! ([`HTTP_QUEUE`]; full: the user tries again 100 ms later), deferred receptions
//! ([`MAX_DEFERRED`]; past it: untimed), connections being set up per thread (`max_pending`;
//! past it: the arrival waits 50 ms), one placement in flight per user, every wait bounded by
//! the user's departure.

use crate::batch::{self, BatchHeader};
use crate::dayplan::{self, DayPlan, VISIT};
use crate::delivery::{self, Timing, NO_VERSION};
use crate::engine::{Counts, FleetResult, Shared};
use crate::error::classify;
use crate::hist::{HistExport, LatencyHist};
use crate::http::KeepAlive;
use crate::merge::{merge_hist, merge_map, merge_vec};
use crate::session::Sessions;
use crate::sys::{self, errno_name, now_ns, Epoll, EV_IN, EV_OUT};
use crate::ws;
use crate::wsread::{self, Phase, Stop, Wire};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;

/// HTTP jobs (session + snapshot) waiting for a pool connection, per process.
pub const HTTP_QUEUE: usize = 16_384;
/// Receptions waiting for their send instant, per thread.
const MAX_DEFERRED: usize = 1 << 20;
/// A placement is sent this long after the server's `next_at_ms` at the earliest.
const NEXT_AT_SLACK_MS: u32 = 20;
/// Retries of one placement refused with a retry hint (cooldown, rate limit, log busy).
const MAX_RETRIES: u8 = 2;
/// Waits before trying again: after a failed connection or HTTP job, after a full HTTP queue.
const RETRY_MS: u32 = 1000;
const QUEUE_FULL_MS: u32 = 100;
/// Longest reconnect delay a server hint may ask for (ms; kept in a u16 field).
const MAX_HINT_MS: u64 = 60_000;
/// No timer.
const NEVER: u32 = u32::MAX;
const NO_TOKEN: u32 = u32::MAX;

/// What every day thread of a process shares.
#[derive(Debug, Clone)]
pub struct DayConfig {
    pub target: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub seed: u64,
    pub connect_timeout_ms: u64,
    pub max_payload: u64,
    /// Every edit's latency for users whose global index is a multiple of this (0: none).
    pub latency_every: u64,
    pub max_pending: usize,
    /// The day's start, wall clock.
    pub day_start_unix_ms: u64,
    /// HTTP connections (threads) of the process's pool.
    pub http_conns: usize,
    /// Solve proofs of work for sessions from the start.
    pub proof: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum St {
    /// Not connected; `due` is the next arrival (or a retry).
    Away,
    /// Waiting for the HTTP pool (session and/or snapshot).
    Http,
    Connecting,
    Handshake,
    Open,
    /// No visit left.
    Done,
}

/// The connection was opened with `since`: its first batch must start at the version.
const F_CATCHUP: u8 = 1;
/// ...and it is a return visit's, without a fresh snapshot.
const F_RETURN: u8 = 2;
/// A `place` is in flight (`own` holds its send instant).
const F_INFLIGHT: u8 = 4;
/// The server said reload: fetch the snapshot before connecting again.
const F_RELOAD: u8 = 8;
/// A placement of the current visit was sent (or skipped): `next` is past the visit's first.
const F_STARTED: u8 = 16;
/// The current visit has begun (and is counted); cleared when it ends.
const F_INVISIT: u8 = 32;
/// Retries of the current placement (2 bits).
const F_RETRY_SHIFT: u8 = 6;
const F_RETRY_MASK: u8 = 0xC0;

/// One user: 48 bytes.
struct User {
    fd: i32,
    st: St,
    flags: u8,
    /// Bytes of the upgrade request written; while open, a drain hint's reconnect delay (ms).
    sent: u16,
    /// Real ms from the day's start of this user's next timer ([`NEVER`]: none).
    due: u32,
    /// The next placement to send (index into the thread's plan arrays); the one in flight is
    /// `next - 1`.
    next: u32,
    /// Offset of the token in the thread's arena ([`NO_TOKEN`]: none yet).
    tok: u32,
    /// The last version applied ([`NO_VERSION`] before the first snapshot).
    version: u64,
    /// While [`F_INFLIGHT`]: the send instant (ns) of the placement; else the version of the
    /// last accepted own placement not yet seen in a batch (0: none).
    own: u64,
    // Boxed on purpose: 8 bytes per user instead of the 24 of an empty Vec.
    #[allow(clippy::box_collection)]
    carry: Option<Box<Vec<u8>>>,
}

/// What a set of users did over the day; every field sums across threads, processes, agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DayStats {
    pub users: u64,
    /// Users who started at least one visit.
    pub users_arrived: u64,
    pub visits_planned: u64,
    pub visits: u64,
    /// Visits after a user's first.
    pub returns: u64,
    pub placements_planned: u64,
    pub placements_sent: u64,
    pub placements_accepted: u64,
    /// Refusals by `error.code`.
    pub placements_refused: BTreeMap<String, u64>,
    /// Placements sent again after a refusal with a retry hint.
    pub placements_retried: u64,
    /// Planned placements not made: the visit (or the day) ended first.
    pub placements_missed: u64,
    /// Placements whose answer had not come when the user left or the run ended.
    pub answers_missing: u64,
    /// Accepted own placements seen in a batch before the user left / not seen.
    pub own_seen: u64,
    pub own_unseen: u64,
    pub sessions: u64,
    pub session_errors: BTreeMap<String, u64>,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub snapshot_errors: BTreeMap<String, u64>,
    /// Connections with since = a fresh snapshot's version.
    pub joins_after_snapshot: u64,
    /// Return visits connecting with since=<their last version>, and those whose first batch
    /// started exactly there (caught up, no reload).
    pub returns_with_since: u64,
    pub returns_caught_up: u64,
    /// Told to reload (`reload` + 4001: the version left the window): snapshot again.
    pub reloads: u64,
    /// A connection with since whose first batch did not start at the version.
    pub catch_up_gaps: u64,
    /// Reconnects within a visit after the server closed (drain, 1013) or the connection broke.
    pub reconnects: u64,
    pub http_queue_full: u64,
    /// By hour of the day (24 buckets).
    pub arrivals_by_hour: Vec<u64>,
    pub placements_by_hour: Vec<u64>,
    /// How late placements were sent against their planned time (server cooldowns included).
    pub schedule_lag: HistExport,
    /// `place` sent to its answer.
    pub place_rtt: HistExport,
    pub snapshot_latency: HistExport,
    pub session_latency: HistExport,
    /// A visit's arrival to its first batch (session, snapshot, connect and catch-up).
    pub arrive_to_live: HistExport,
    /// Memory of the engine's own state: per user, of the plan, of the token arenas.
    pub state_bytes_per_user: u64,
    pub plan_bytes: u64,
    pub token_bytes: u64,
}

impl DayStats {
    pub fn merge(&mut self, o: &DayStats) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        sum!(
            users,
            users_arrived,
            visits_planned,
            visits,
            returns,
            placements_planned,
            placements_sent,
            placements_accepted,
            placements_retried,
            placements_missed,
            answers_missing,
            own_seen,
            own_unseen,
            sessions,
            snapshots,
            snapshot_bytes,
            joins_after_snapshot,
            returns_with_since,
            returns_caught_up,
            reloads,
            catch_up_gaps,
            reconnects,
            http_queue_full,
            plan_bytes,
            token_bytes
        );
        self.state_bytes_per_user = self.state_bytes_per_user.max(o.state_bytes_per_user);
        merge_map(&mut self.placements_refused, &o.placements_refused);
        merge_map(&mut self.session_errors, &o.session_errors);
        merge_map(&mut self.snapshot_errors, &o.snapshot_errors);
        merge_vec(&mut self.arrivals_by_hour, &o.arrivals_by_hour);
        merge_vec(&mut self.placements_by_hour, &o.placements_by_hour);
        merge_hist(&mut self.schedule_lag, &o.schedule_lag);
        merge_hist(&mut self.place_rtt, &o.place_rtt);
        merge_hist(&mut self.snapshot_latency, &o.snapshot_latency);
        merge_hist(&mut self.session_latency, &o.session_latency);
        merge_hist(&mut self.arrive_to_live, &o.arrive_to_live);
    }
}

/// A job for the HTTP pool: thread `tid`'s user `idx` needs a session (if `token`) and the
/// snapshot.
struct HttpJob {
    tid: usize,
    idx: u32,
    token: bool,
}

/// The pool's answer.
struct HttpReply {
    idx: u32,
    token: Option<Result<String, String>>,
    snapshot: Result<(u64, u64), String>,
    session_ns: u64,
    snapshot_ns: u64,
}

/// Starts the HTTP pool and one day thread per `shared.progress` slot for `plan`'s users
/// (thread t takes local users t, t + n, ...).
pub fn spawn(
    cfg: Arc<DayConfig>,
    shared: Arc<Shared>,
    plan: DayPlan,
    cpus: &[usize],
) -> io::Result<Vec<std::thread::JoinHandle<FleetResult>>> {
    let n = shared.progress.len();
    let (job_tx, job_rx) = mpsc::sync_channel::<HttpJob>(HTTP_QUEUE);
    let mut reply_txs = Vec::with_capacity(n);
    let mut reply_rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<HttpReply>();
        reply_txs.push(tx);
        reply_rxs.push(rx);
    }
    start_pool(&cfg, job_rx, reply_txs)?;
    let plan = Arc::new(plan);
    let mut handles = Vec::with_capacity(n);
    for (tid, replies) in reply_rxs.into_iter().enumerate() {
        let (cfg, shared, plan, jobs) = (cfg.clone(), shared.clone(), plan.clone(), job_tx.clone());
        let cpu = if cpus.is_empty() { None } else { Some(cpus[tid % cpus.len()]) };
        let h = std::thread::Builder::new().name(format!("users-{tid}")).spawn(move || {
            if let Some(c) = cpu {
                sys::pin_current_thread(c);
            }
            match DayThread::new(tid, n, &plan, cfg, shared.clone(), jobs, replies) {
                Ok(mut t) => {
                    drop(plan);
                    shared.inited.fetch_add(1, Ordering::SeqCst);
                    while !shared.go.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    t.run()
                }
                Err(e) => {
                    shared.inited.fetch_add(1, Ordering::SeqCst);
                    let mut f = shared.error.lock().unwrap();
                    if f.is_none() {
                        *f = Some(format!("user thread {tid}: cannot create its epoll instance: {e}"));
                    }
                    shared.stop.store(true, Ordering::SeqCst);
                    shared.progress[tid].ramp_done.store(true, Ordering::Relaxed);
                    FleetResult { threads: 1, ..Default::default() }
                }
            }
        })?;
        handles.push(h);
    }
    Ok(handles)
}

/// The pool's threads: each takes jobs off the shared queue and answers on the job's thread's
/// channel; they end when every day thread has dropped its sender.
fn start_pool(cfg: &Arc<DayConfig>, jobs: Receiver<HttpJob>, replies: Vec<Sender<HttpReply>>) -> io::Result<()> {
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    let replies = Arc::new(replies);
    let sessions = Arc::new(Sessions::new(cfg.proof));
    for w in 0..cfg.http_conns.max(1) {
        let (cfg, jobs, replies, sessions) = (cfg.clone(), jobs.clone(), replies.clone(), sessions.clone());
        std::thread::Builder::new().name(format!("users-http-{w}")).spawn(move || {
            let src = (!cfg.sources.is_empty()).then(|| cfg.sources[w % cfg.sources.len()]);
            let mut conn = KeepAlive::new(src, cfg.target);
            loop {
                let job = match jobs.lock().unwrap().recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let reply = http_job(&mut conn, &sessions, &job);
                if let Some(tx) = replies.get(job.tid) {
                    let _ = tx.send(reply);
                }
            }
        })?;
    }
    Ok(())
}

fn http_job(conn: &mut KeepAlive, sessions: &Sessions, job: &HttpJob) -> HttpReply {
    let mut r = HttpReply { idx: job.idx, token: None, snapshot: Err(String::new()), session_ns: 0, snapshot_ns: 0 };
    if job.token {
        let t0 = now_ns();
        let tok = sessions.token(conn).map_err(|e| short_error(&e.to_string()));
        r.session_ns = now_ns() - t0;
        let failed = tok.is_err();
        r.token = Some(tok);
        if failed {
            r.snapshot = Err("no session".into());
            return r;
        }
    }
    let t0 = now_ns();
    r.snapshot = match conn.request("GET", "/api/v1/canvas", &[], b"") {
        Err(e) => {
            conn.reset();
            Err(format!("transport: {}", e.kind()))
        }
        Ok(resp) if resp.status != 200 => Err(format!("status_{}", resp.status)),
        Ok(resp) => snapshot_version(&resp.body, resp.header("x-canvas-version")).map(|v| (v, resp.body.len() as u64)),
    };
    r.snapshot_ns = now_ns() - t0;
    r
}

/// The version of a binary snapshot (its header's, which `X-Canvas-Version` must equal).
fn snapshot_version(body: &[u8], header: Option<&str>) -> Result<u64, String> {
    if body.len() < batch::SNAPSHOT_HEADER_LEN || &body[..4] != b"PCS1" {
        return Err("not a PCS1 snapshot".into());
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&body[16..24]);
    let v = u64::from_le_bytes(v);
    match header.map(|h| h.trim().parse::<u64>()) {
        Some(Ok(h)) if h == v => Ok(v),
        Some(_) => Err("X-Canvas-Version differs from the snapshot".into()),
        None => Err("no X-Canvas-Version".into()),
    }
}

/// A load error as a short key for the report's maps.
fn short_error(s: &str) -> String {
    let s = s.trim_start_matches("HTTP POST /api/v1/session: ");
    s.split(':').next().unwrap_or(s).chars().take(60).collect()
}

/// Why a connection ended.
enum End {
    /// We left (the visit ended) or the run stopped.
    Leave,
    Eof,
    Error(io::Error),
    Closed(u16),
    Protocol(&'static str),
    Handshake(ws::HandshakeError),
    Timeout,
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

struct DayThread {
    tid: usize,
    nthreads: usize,
    cfg: Arc<DayConfig>,
    shared: Arc<Shared>,
    epoll: Epoll,
    users: Vec<User>,
    /// User u's placements: `ustart[u] .. ustart[u + 1]` of `at` / `px`.
    ustart: Vec<u32>,
    at: Vec<u32>,
    px: Vec<u32>,
    /// Global index of this thread's user 0 in the plan, and the stride between its users.
    plan_base: u64,
    /// The highest batch end any of this thread's connections has received.
    seen_to: u64,
    /// Users catching up, with `seen_to` at their connect: their frames ending at or before it
    /// are catch-up (old edits on their own boundaries: not a delivery latency), even when the
    /// catch-up takes several frames. At most one entry per user: removed when its first live
    /// frame comes or it leaves.
    catch_up_to: FxHashMap<u32, u64>,
    day_ms: u32,
    factor: f64,
    plan_seed: u64,
    width: u32,
    tokens: Vec<u8>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
    jobs: SyncSender<HttpJob>,
    replies: Receiver<HttpReply>,
    day_start_ns: u64,
    wire: Wire,
    pending: usize,
    open: u64,
    connecting: u64,
    counts: Counts,
    stats: DayStats,
    connect_errors: BTreeMap<String, u64>,
    handshake_errors: BTreeMap<String, u64>,
    close_codes: BTreeMap<String, u64>,
    disconnect_reasons: BTreeMap<String, u64>,
    timing: Timing,
    connect_lat: LatencyHist,
    lag: LatencyHist,
    rtt: LatencyHist,
    snap_lat: LatencyHist,
    sess_lat: LatencyHist,
    live_lat: LatencyHist,
    stopping: bool,
}

impl DayThread {
    fn new(
        tid: usize,
        nthreads: usize,
        plan: &DayPlan,
        cfg: Arc<DayConfig>,
        shared: Arc<Shared>,
        jobs: SyncSender<HttpJob>,
        replies: Receiver<HttpReply>,
    ) -> io::Result<Self> {
        let total = plan.users();
        let mine: Vec<usize> = (tid..total).step_by(nthreads.max(1)).collect();
        let mut ustart = Vec::with_capacity(mine.len() + 1);
        let placements: usize = mine.iter().map(|&u| (plan.start[u + 1] - plan.start[u]) as usize).sum();
        let (mut at, mut px) = (Vec::with_capacity(placements), Vec::with_capacity(placements));
        for &u in &mine {
            ustart.push(at.len() as u32);
            let (s, e) = (plan.start[u] as usize, plan.start[u + 1] as usize);
            at.extend_from_slice(&plan.at[s..e]);
            px.extend_from_slice(&plan.px[s..e]);
        }
        ustart.push(at.len() as u32);
        let users: Vec<User> = (0..mine.len())
            .map(|i| User {
                fd: -1,
                st: St::Away,
                flags: 0,
                sent: 0,
                due: NEVER,
                next: ustart[i],
                tok: NO_TOKEN,
                version: NO_VERSION,
                own: 0,
                carry: None,
            })
            .collect();
        let visits = at.iter().filter(|&&t| t & VISIT != 0).count() as u64;
        shared.progress[tid].target.store(users.len() as u64, Ordering::Relaxed);
        let stats = DayStats {
            users: users.len() as u64,
            visits_planned: visits,
            placements_planned: at.len() as u64,
            arrivals_by_hour: vec![0; 24],
            placements_by_hour: vec![0; 24],
            state_bytes_per_user: std::mem::size_of::<User>() as u64,
            plan_bytes: (ustart.len() * 4 + at.len() * 8) as u64,
            ..Default::default()
        };
        Ok(DayThread {
            tid,
            nthreads,
            epoll: Epoll::new()?,
            heap: BinaryHeap::with_capacity(users.len()),
            users,
            ustart,
            at,
            px,
            plan_base: plan.base,
            seen_to: 0,
            catch_up_to: FxHashMap::default(),
            day_ms: plan.day_ms,
            factor: plan.factor,
            plan_seed: plan.seed,
            width: plan.width.max(1),
            tokens: Vec::new(),
            jobs,
            replies,
            day_start_ns: 0,
            wire: Wire::new(cfg.max_payload, cfg.seed ^ 0xDA7 ^ tid as u64),
            pending: 0,
            open: 0,
            connecting: 0,
            counts: Counts::default(),
            stats,
            connect_errors: BTreeMap::new(),
            handshake_errors: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            disconnect_reasons: BTreeMap::new(),
            timing: Timing::new(MAX_DEFERRED),
            connect_lat: LatencyHist::new(),
            lag: LatencyHist::new(),
            rtt: LatencyHist::new(),
            snap_lat: LatencyHist::new(),
            sess_lat: LatencyHist::new(),
            live_lat: LatencyHist::new(),
            stopping: false,
            cfg,
            shared,
        })
    }

    fn global(&self, i: usize) -> u64 {
        self.plan_base + self.tid as u64 + i as u64 * self.nthreads as u64
    }

    /// Real ms since the day's start (0 before it).
    fn now_ms(&self) -> u32 {
        (now_ns().saturating_sub(self.day_start_ns) / 1_000_000).min(u32::MAX as u64 - 1) as u32
    }

    fn run(&mut self) -> FleetResult {
        let unix_now = crate::link::unix_ms();
        let ahead_ms = self.cfg.day_start_unix_ms.saturating_sub(unix_now);
        let behind_ms = unix_now.saturating_sub(self.cfg.day_start_unix_ms);
        self.day_start_ns = (now_ns() + ahead_ms * 1_000_000).saturating_sub(behind_ms * 1_000_000);
        for i in 0..self.users.len() {
            self.schedule(i);
        }
        self.shared.progress[self.tid].ramp_done.store(true, Ordering::Relaxed);
        let mut events = sys::event_buffer(1024);
        let mut last_scan = 0u64;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if now_ns() < self.day_start_ns {
                std::thread::sleep(std::time::Duration::from_millis(1));
                self.publish();
                continue;
            }
            let now = self.now_ms();
            while let Some(&Reverse((due, i))) = self.heap.peek() {
                if due > now {
                    break;
                }
                self.heap.pop();
                if self.users[i as usize].due == due {
                    self.users[i as usize].due = NEVER;
                    self.on_timer(i as usize, now);
                }
            }
            while let Ok(r) = self.replies.try_recv() {
                self.on_reply(r);
            }
            if now_ns() - last_scan > 100_000_000 {
                last_scan = now_ns();
                self.resolve_deferred(false);
            }
            let wait = match self.heap.peek() {
                Some(&Reverse((due, _))) => due.saturating_sub(self.now_ms()).clamp(0, 10) as i32,
                None => 10,
            };
            let got = match self.epoll.wait(&mut events, wait.max(1)) {
                Ok(k) => k,
                Err(e) => {
                    let mut f = self.shared.error.lock().unwrap();
                    if f.is_none() {
                        *f = Some(format!("user thread {}: epoll_wait: {e}", self.tid));
                    }
                    self.shared.stop.store(true, Ordering::SeqCst);
                    break;
                }
            };
            for ev in &events[..got] {
                let (key, bits) = (ev.u64, ev.events);
                self.on_event(key as usize, bits);
            }
            self.publish();
        }
        self.stopping = true;
        self.shutdown();
        self.publish();
        self.result()
    }

    fn publish(&self) {
        self.shared.progress[self.tid].publish(&self.counts, self.open, self.connecting);
    }

    // --- the plan ------------------------------------------------------------------------

    fn time(&self, k: u32) -> u32 {
        self.at[k as usize] & !VISIT
    }

    fn user_end(&self, i: usize) -> u32 {
        self.ustart[i + 1]
    }

    /// One past the current (or, when away, the next) visit's last placement.
    fn visit_end(&self, i: usize) -> u32 {
        let u = &self.users[i];
        let end = self.user_end(i);
        let mut j = u.next;
        if j < end && self.at[j as usize] & VISIT != 0 && u.flags & F_STARTED == 0 {
            j += 1;
        }
        while j < end && self.at[j as usize] & VISIT == 0 {
            j += 1;
        }
        j
    }

    /// The first placement of the visit the user is in (or about to start).
    fn visit_start(&self, i: usize) -> u32 {
        let u = &self.users[i];
        let j = if u.flags & F_STARTED != 0 && u.next > self.ustart[i] { u.next - 1 } else { u.next };
        let mut j = j.min(self.user_end(i).saturating_sub(1));
        while j > self.ustart[i] && self.at[j as usize] & VISIT == 0 {
            j -= 1;
        }
        j
    }

    fn key(&self, i: usize, k: u32, what: u64) -> u64 {
        dayplan::key(self.plan_seed, self.global(i), k - self.ustart[i], what)
    }

    /// Arrival of the visit starting at placement `k`.
    fn arrival(&self, i: usize, k: u32) -> u32 {
        let prev = (k > self.ustart[i]).then(|| self.time(k - 1));
        dayplan::arrival(self.time(k), prev, self.factor, self.key(i, k, 1))
    }

    /// Departure of the visit the user is in.
    fn departure(&self, i: usize) -> u32 {
        let vend = self.visit_end(i);
        let last = vend.max(self.ustart[i] + 1) - 1;
        let next = (vend < self.user_end(i)).then(|| self.arrival(i, vend));
        dayplan::departure(self.time(last), next, self.factor, self.day_ms, self.key(i, last, 2))
    }

    /// Whether the current visit has a placement left to make.
    fn placement_left(&self, i: usize) -> bool {
        let u = &self.users[i];
        u.next < self.user_end(i) && (self.at[u.next as usize] & VISIT == 0 || u.flags & F_STARTED == 0)
    }

    fn set_due(&mut self, i: usize, due: u32) {
        self.users[i].due = due;
        if due != NEVER {
            self.heap.push(Reverse((due, i as u32)));
        }
    }

    /// Sets the user's timer for its state.
    fn schedule(&mut self, i: usize) {
        let due = match self.users[i].st {
            St::Away => {
                let next = self.users[i].next;
                if next < self.user_end(i) {
                    self.arrival(i, next)
                } else {
                    self.users[i].st = St::Done;
                    NEVER
                }
            }
            St::Open => {
                let leave = self.departure(i);
                if self.placement_left(i) && self.users[i].flags & F_INFLIGHT == 0 {
                    leave.min(self.time(self.users[i].next))
                } else {
                    leave
                }
            }
            St::Connecting | St::Handshake => self.users[i].due,
            St::Http | St::Done => NEVER,
        };
        self.set_due(i, due);
    }

    /// Skips the rest of the current visit's placements; returns how many.
    fn skip_visit(&mut self, i: usize) -> u64 {
        let vend = self.visit_end(i);
        let missed = u64::from(vend - self.users[i].next);
        let u = &mut self.users[i];
        u.next = vend;
        u.flags &= !(F_STARTED | F_INVISIT | F_RETRY_MASK);
        missed
    }

    fn hour(&self, t: u32) -> usize {
        ((t as u64 * 24) / self.day_ms.max(1) as u64).min(23) as usize
    }

    // --- timers --------------------------------------------------------------------------

    fn on_timer(&mut self, i: usize, now: u32) {
        match self.users[i].st {
            St::Away => self.arrive(i, now),
            St::Connecting | St::Handshake => {
                self.counts.connect_timeouts += 1;
                self.end(i, End::Timeout);
            }
            St::Open => {
                if now >= self.departure(i) {
                    self.leave(i);
                } else if self.placement_left(i) && self.users[i].flags & F_INFLIGHT == 0 {
                    self.place(i, now);
                } else {
                    self.schedule(i);
                }
            }
            St::Http | St::Done => {}
        }
    }

    /// The visit at `next` begins (or a retry of its start): session/snapshot, or connect.
    fn arrive(&mut self, i: usize, now: u32) {
        let k = self.users[i].next;
        if k >= self.user_end(i) {
            self.users[i].st = St::Done;
            return;
        }
        if now >= self.departure(i) {
            // Too late for this visit (its retries ran out of time).
            self.stats.placements_missed += self.skip_visit(i);
            self.schedule(i);
            return;
        }
        let new_visit = self.users[i].flags & F_INVISIT == 0;
        if new_visit {
            self.users[i].flags |= F_INVISIT;
            self.stats.visits += 1;
            if k > self.ustart[i] {
                self.stats.returns += 1;
            } else {
                self.stats.users_arrived += 1;
            }
            let h = self.hour(now);
            self.stats.arrivals_by_hour[h] += 1;
        }
        let u = &self.users[i];
        if u.tok == NO_TOKEN || u.version == NO_VERSION || u.flags & F_RELOAD != 0 {
            let job = HttpJob { tid: self.tid, idx: i as u32, token: u.tok == NO_TOKEN };
            match self.jobs.try_send(job) {
                Ok(()) => self.users[i].st = St::Http,
                Err(TrySendError::Full(_)) => {
                    self.stats.http_queue_full += 1;
                    self.set_due(i, now + QUEUE_FULL_MS);
                }
                Err(TrySendError::Disconnected(_)) => self.set_due(i, NEVER),
            }
            return;
        }
        if new_visit && k > self.ustart[i] {
            // A return: straight back with since=<the last version seen>, no snapshot.
            self.users[i].flags |= F_RETURN;
            self.stats.returns_with_since += 1;
        }
        self.connect(i, now);
    }

    fn on_reply(&mut self, r: HttpReply) {
        let i = r.idx as usize;
        if i >= self.users.len() || self.users[i].st != St::Http {
            return;
        }
        self.users[i].st = St::Away;
        let now = self.now_ms();
        if let Some(tok) = r.token {
            self.sess_lat.record_ns(r.session_ns);
            match tok {
                Ok(t) if t.len() <= 255 && self.tokens.len() < u32::MAX as usize - 256 => {
                    self.users[i].tok = self.tokens.len() as u32;
                    self.tokens.push(t.len() as u8);
                    self.tokens.extend_from_slice(t.as_bytes());
                    self.stats.sessions += 1;
                }
                Ok(_) => *self.stats.session_errors.entry("token longer than 255 bytes".into()).or_default() += 1,
                Err(e) => *self.stats.session_errors.entry(e).or_default() += 1,
            }
        }
        match r.snapshot {
            Ok((v, bytes)) if self.users[i].tok != NO_TOKEN => {
                self.snap_lat.record_ns(r.snapshot_ns);
                self.stats.snapshots += 1;
                self.stats.snapshot_bytes += bytes;
                let u = &mut self.users[i];
                u.version = v;
                u.flags &= !(F_RELOAD | F_RETURN);
                self.stats.joins_after_snapshot += 1;
                if self.stopping {
                } else if now >= self.departure(i) {
                    self.stats.placements_missed += self.skip_visit(i);
                    self.schedule(i);
                } else {
                    self.connect(i, now);
                }
            }
            Ok(_) => self.set_due(i, now + RETRY_MS),
            Err(e) => {
                if e != "no session" {
                    *self.stats.snapshot_errors.entry(e).or_default() += 1;
                }
                self.set_due(i, now + RETRY_MS);
            }
        }
    }

    // --- connections ---------------------------------------------------------------------

    fn connect(&mut self, i: usize, now: u32) {
        if self.pending >= self.cfg.max_pending {
            self.set_due(i, now + 50);
            return;
        }
        let g = self.global(i);
        let n = self.cfg.sources.len() as u64;
        let src = (n > 0).then(|| self.cfg.sources[(g % n.max(1)) as usize]);
        self.counts.started += 1;
        match sys::start_connect(src, self.cfg.target) {
            Ok(fd) => {
                if let Err(e) = self.epoll.add(fd, EV_IN | EV_OUT, i as u64) {
                    sys::close(fd, false);
                    self.connect_failed(i, now, sys::Step::Socket, &e, src);
                    return;
                }
                let u = &mut self.users[i];
                u.fd = fd;
                u.st = St::Connecting;
                u.sent = 0;
                u.carry = None;
                u.flags |= F_CATCHUP;
                self.catch_up_to.insert(i as u32, self.seen_to);
                self.connecting += 1;
                self.pending += 1;
                let deadline = now.saturating_add(self.cfg.connect_timeout_ms.min(600_000) as u32);
                self.set_due(i, deadline);
            }
            Err((step, e)) => self.connect_failed(i, now, step, &e, src),
        }
    }

    fn connect_failed(&mut self, i: usize, now: u32, step: sys::Step, e: &io::Error, src: Option<IpAddr>) {
        let open = self.open as usize + self.connecting as usize;
        if let Some(l) = classify(step, e, src, open) {
            let mut f = self.shared.fatal.lock().unwrap();
            if f.is_none() {
                *f = Some(l);
            }
            self.shared.stop.store(true, Ordering::SeqCst);
            return;
        }
        self.counts.connect_failed += 1;
        *self.connect_errors.entry(errno_name(e)).or_default() += 1;
        self.users[i].st = St::Away;
        self.set_due(i, now + RETRY_MS);
    }

    fn build_request(&mut self, i: usize) {
        let g = self.global(i);
        let key = ws::client_key(self.cfg.seed, g);
        let u = &self.users[i];
        let mut path = format!("/ws?since={}", u.version);
        if u.tok != NO_TOKEN {
            let at = u.tok as usize;
            let len = self.tokens[at] as usize;
            path.push_str("&token=");
            path.push_str(std::str::from_utf8(&self.tokens[at + 1..at + 1 + len]).unwrap_or(""));
        }
        self.wire.scratch.clear();
        ws::write_upgrade_request(&mut self.wire.scratch, &self.cfg.target.to_string(), &path, &key);
    }

    fn write_request(&mut self, i: usize) {
        self.build_request(i);
        let fd = self.users[i].fd;
        let from = self.users[i].sent as usize;
        match sys::send(fd, &self.wire.scratch[from.min(self.wire.scratch.len())..]) {
            Ok(n) => {
                let total = from + n;
                self.users[i].sent = total as u16;
                if total >= self.wire.scratch.len() {
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

    fn on_event(&mut self, i: usize, bits: u32) {
        if i >= self.users.len() {
            return;
        }
        match self.users[i].st {
            St::Connecting => {
                if let Err(e) = sys::take_socket_error(self.users[i].fd) {
                    self.counts.connect_failed += 1;
                    *self.connect_errors.entry(errno_name(&e)).or_default() += 1;
                    self.end(i, End::Error(e));
                    return;
                }
                if bits & (EV_OUT | EV_IN) != 0 {
                    self.users[i].st = St::Handshake;
                    self.write_request(i);
                }
            }
            St::Handshake => {
                if bits & EV_OUT != 0 {
                    self.write_request(i);
                }
                if bits & !EV_OUT != 0 && self.users[i].st == St::Handshake {
                    wsread::read_ready(self, i);
                }
            }
            St::Open => wsread::read_ready(self, i),
            _ => {}
        }
    }

    fn on_text(&mut self, i: usize, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            self.counts.protocol_errors += 1;
            return;
        };
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64());
        match v.get("type").and_then(|t| t.as_str()) {
            Some("placed") => self.on_placed(i, num("version"), num("next_at_ms")),
            Some("error") if self.users[i].flags & F_INFLIGHT != 0 => {
                let code = v.get("code").and_then(|c| c.as_str()).unwrap_or("unknown").to_string();
                self.on_refused(i, code, num("retry_after_ms"));
            }
            Some("reload") => {
                self.counts.reload_messages += 1;
                self.users[i].flags |= F_RELOAD;
            }
            Some("reconnect") => {
                let hint = ws::parse_reconnect_hint(payload).unwrap_or((0, 1000));
                let delay = hint.0.min(MAX_HINT_MS) + self.wire.jitter(hint.1.min(MAX_HINT_MS));
                self.users[i].sent = delay.min(u16::MAX as u64) as u16;
            }
            _ => {}
        }
    }

    // --- placements ----------------------------------------------------------------------

    fn place(&mut self, i: usize, now: u32) {
        let k = self.users[i].next as usize;
        let planned = self.time(k as u32);
        let (idx, color) = batch::unpack(self.px[k]);
        let (x, y) = (idx % self.width, idx / self.width);
        let msg = format!(r#"{{"type":"place","x":{x},"y":{y},"color":{color},"id":{k}}}"#);
        match self.wire.send_frame(self.users[i].fd, ws::OP_TEXT, msg.as_bytes()) {
            Ok(n) if n == self.wire.scratch.len() => {
                if self.users[i].flags & F_RETRY_MASK == 0 {
                    self.stats.placements_sent += 1;
                    let h = self.hour(now);
                    self.stats.placements_by_hour[h] += 1;
                    self.lag.record_us(u64::from(now.saturating_sub(planned)) * 1000 + 1);
                } else {
                    self.stats.placements_retried += 1;
                }
                let u = &mut self.users[i];
                u.flags |= F_INFLIGHT | F_STARTED;
                u.own = now_ns();
                u.next += 1;
                self.schedule(i);
            }
            Ok(_) => self.end(i, End::Protocol("short_write")),
            Err(e) => self.end(i, End::Error(e)),
        }
    }

    fn on_placed(&mut self, i: usize, version: Option<u64>, next_at_ms: Option<u64>) {
        if self.users[i].flags & F_INFLIGHT == 0 {
            return;
        }
        let sent = self.users[i].own;
        self.rtt.record_ns(now_ns().saturating_sub(sent));
        self.stats.placements_accepted += 1;
        let u = &mut self.users[i];
        u.flags &= !(F_INFLIGHT | F_RETRY_MASK);
        u.own = 0;
        if let Some(v) = version {
            if let Some(t) = self.shared.table.as_deref() {
                t.record(v, sent);
            }
            if self.users[i].version != NO_VERSION && self.users[i].version >= v {
                self.stats.own_seen += 1;
            } else {
                self.users[i].own = v;
            }
        }
        if let (Some(at), true) = (next_at_ms, self.placement_left(i)) {
            let rel = at.saturating_sub(self.cfg.day_start_unix_ms) + NEXT_AT_SLACK_MS as u64;
            let k = self.users[i].next as usize;
            let t = (self.at[k] & !VISIT).max(rel.min(u32::MAX as u64 >> 1) as u32);
            self.at[k] = (self.at[k] & VISIT) | t;
        }
        self.schedule(i);
    }

    fn on_refused(&mut self, i: usize, code: String, retry_after_ms: Option<u64>) {
        let now = self.now_ms();
        *self.stats.placements_refused.entry(code).or_default() += 1;
        let u = &mut self.users[i];
        u.flags &= !F_INFLIGHT;
        u.own = 0;
        let retries = (u.flags & F_RETRY_MASK) >> F_RETRY_SHIFT;
        match retry_after_ms {
            Some(ms) if retries < MAX_RETRIES => {
                // Back to the refused placement, later.
                u.flags = (u.flags & !F_RETRY_MASK) | ((retries + 1) << F_RETRY_SHIFT);
                u.next -= 1;
                let k = u.next as usize;
                if self.at[k] & VISIT != 0 {
                    // The visit's first again: nothing of this visit is sent yet.
                    u.flags &= !F_STARTED;
                }
                let t = now.saturating_add(ms.min(MAX_HINT_MS) as u32 + NEXT_AT_SLACK_MS);
                self.at[k] = (self.at[k] & VISIT) | (self.at[k] & !VISIT).max(t);
            }
            _ => u.flags &= !F_RETRY_MASK,
        }
        self.schedule(i);
    }

    fn on_batch(&mut self, i: usize, b: &BatchHeader, payload: &[u8], now: u64) {
        let every = self.cfg.latency_every;
        let sampled = every > 0 && self.global(i).is_multiple_of(every);
        let new_from;
        let catchup = self.users[i].flags & F_CATCHUP != 0;
        {
            let u = &mut self.users[i];
            if catchup {
                u.flags &= !F_CATCHUP;
                if b.from == u.version {
                    if u.flags & F_RETURN != 0 {
                        self.stats.returns_caught_up += 1;
                    }
                } else {
                    self.stats.catch_up_gaps += 1;
                }
                let vs = self.visit_start(i);
                let arrived = self.arrival(i, vs);
                let lat = self.now_ms().saturating_sub(arrived);
                self.live_lat.record_us(u64::from(lat) * 1000 + 1);
            }
            let u = &mut self.users[i];
            u.flags &= !F_RETURN;
            new_from = delivery::apply(&mut u.version, b, payload.len(), &mut self.counts).new_from;
            if u.own != 0 && u.flags & F_INFLIGHT == 0 && u.version >= u.own {
                u.own = 0;
                self.stats.own_seen += 1;
            }
        }
        let old = self.catch_up_to.get(&(i as u32)).is_some_and(|&m| b.to <= m);
        self.seen_to = self.seen_to.max(b.to);
        if catchup || old {
            // A catch-up batch brings old edits on its own boundaries: not a delivery latency.
            return;
        }
        self.catch_up_to.remove(&(i as u32));
        self.timing.record(self.shared.table.as_deref(), new_from, b.to, now, sampled, &mut self.counts);
    }

    fn resolve_deferred(&mut self, last: bool) {
        self.timing.resolve(self.shared.table.as_deref(), last, &mut self.counts);
    }

    // --- leaving and ends ----------------------------------------------------------------

    /// The visit is over: close politely, skip what is left of it, wait for the next.
    fn leave(&mut self, i: usize) {
        let fd = self.users[i].fd;
        if fd >= 0 {
            self.wire.scratch.clear();
            ws::encode_client_frame(
                ws::OP_CLOSE,
                &ws::close_payload(1000),
                [0x11, 0x22, 0x33, 0x44],
                &mut self.wire.scratch,
            );
            let _ = sys::send(fd, &self.wire.scratch);
        }
        self.end(i, End::Leave);
    }

    /// Ends user `i`'s connection, counting why, and decides what the user does next.
    fn end(&mut self, i: usize, why: End) {
        let now = self.now_ms();
        let was = self.users[i].st;
        {
            let u = &mut self.users[i];
            if u.fd >= 0 {
                sys::close(u.fd, false);
            }
            u.fd = -1;
            u.carry = None;
        }
        match was {
            St::Open => self.open -= 1,
            St::Connecting | St::Handshake => {
                self.connecting -= 1;
                self.pending = self.pending.saturating_sub(1);
            }
            _ => {}
        }
        self.users[i].st = St::Away;
        if let End::Closed(code) = &why {
            *self.close_codes.entry(code.to_string()).or_default() += 1;
        }
        let reload = self.users[i].flags & F_RELOAD != 0 || matches!(why, End::Closed(4001));
        match why {
            End::Leave => {
                if self.users[i].flags & F_INFLIGHT != 0 {
                    self.stats.answers_missing += 1;
                    self.users[i].flags &= !F_INFLIGHT;
                }
                if self.users[i].own != 0 {
                    self.stats.own_unseen += 1;
                    self.users[i].own = 0;
                }
                self.users[i].flags &= !(F_CATCHUP | F_RETURN);
                self.catch_up_to.remove(&(i as u32));
                if self.stopping {
                    return;
                }
                self.stats.placements_missed += self.skip_visit(i);
                self.schedule(i);
            }
            _ if self.stopping => {}
            End::Closed(_) if reload => {
                self.users[i].flags |= F_RELOAD;
                self.stats.reloads += 1;
                self.retry_in_visit(i, now, 0);
            }
            End::Closed(1012 | 1001 | 1013) if was == St::Open => {
                let hint = u64::from(self.users[i].sent);
                let delay = if hint > 0 { hint } else { self.wire.jitter(1000) };
                self.stats.reconnects += 1;
                self.retry_in_visit(i, now, delay as u32);
            }
            other => {
                if was == St::Open {
                    self.counts.unexpected_disconnects += 1;
                    let reason = match &other {
                        End::Eof => "eof".to_string(),
                        End::Error(e) => errno_name(e),
                        End::Closed(code) => format!("close_{code}"),
                        End::Protocol(p) => (*p).to_string(),
                        End::Handshake(e) => e.to_string(),
                        End::Timeout => "timeout".into(),
                        End::Leave => "leave".into(),
                    };
                    *self.disconnect_reasons.entry(reason).or_default() += 1;
                    self.stats.reconnects += 1;
                } else if matches!(other, End::Eof) {
                    self.counts.handshake_failed += 1;
                    *self.handshake_errors.entry("connection closed before the 101".into()).or_default() += 1;
                }
                self.retry_in_visit(i, now, RETRY_MS);
            }
        }
    }

    /// Comes back within the current visit after `delay_ms` (with since, or via a snapshot when
    /// told to reload); a placement in flight is given up (its answer is lost with the socket).
    fn retry_in_visit(&mut self, i: usize, now: u32, delay_ms: u32) {
        let u = &mut self.users[i];
        if u.flags & F_INFLIGHT != 0 {
            u.flags &= !F_INFLIGHT;
            u.own = 0;
            self.stats.answers_missing += 1;
        }
        u.flags &= !F_CATCHUP;
        self.set_due(i, now.saturating_add(delay_ms));
    }

    fn shutdown(&mut self) {
        for i in 0..self.users.len() {
            match self.users[i].st {
                St::Open => {
                    self.counts.open_at_end += 1;
                    self.leave(i);
                }
                St::Connecting | St::Handshake => self.end(i, End::Leave),
                _ => {}
            }
            let u = &mut self.users[i];
            if u.flags & F_INFLIGHT != 0 {
                self.stats.answers_missing += 1;
            }
            if u.own != 0 && u.flags & F_INFLIGHT == 0 {
                self.stats.own_unseen += 1;
            }
            u.own = 0;
            u.flags &= !F_INFLIGHT;
        }
    }

    fn result(&mut self) -> FleetResult {
        self.resolve_deferred(true);
        let mut stats = std::mem::take(&mut self.stats);
        stats.schedule_lag = self.lag.export();
        stats.place_rtt = self.rtt.export();
        stats.snapshot_latency = self.snap_lat.export();
        stats.session_latency = self.sess_lat.export();
        stats.arrive_to_live = self.live_lat.export();
        stats.token_bytes = self.tokens.len() as u64;
        FleetResult {
            threads: 1,
            counts: std::mem::take(&mut self.counts),
            connect_errors: std::mem::take(&mut self.connect_errors),
            handshake_errors: std::mem::take(&mut self.handshake_errors),
            close_codes: std::mem::take(&mut self.close_codes),
            disconnect_reasons: std::mem::take(&mut self.disconnect_reasons),
            edit_latency: self.timing.edit.export(),
            frame_latency: self.timing.frame.export(),
            connect_latency: self.connect_lat.export(),
            day: Some(stats),
            ..Default::default()
        }
    }
}

/// The reader's view of the users: the upgrade answer (the user's timer becomes its visit's),
/// text messages (answers to placements, reload, reconnect hints) and closes are this engine's.
impl wsread::Clients for DayThread {
    type End = End;

    fn fd(&self, i: usize) -> i32 {
        self.users[i].fd
    }

    fn phase(&self, i: usize) -> Phase {
        match self.users[i].st {
            St::Handshake => Phase::Handshake,
            St::Open => Phase::Open,
            _ => Phase::Gone,
        }
    }

    fn carry(&mut self, i: usize) -> &mut Option<Box<Vec<u8>>> {
        &mut self.users[i].carry
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
                let deadline = self.users[i].due;
                let u = &mut self.users[i];
                u.st = St::Open;
                u.sent = 0;
                self.connecting -= 1;
                self.pending = self.pending.saturating_sub(1);
                self.open += 1;
                self.counts.connected += 1;
                let waited = (self.cfg.connect_timeout_ms.min(600_000) as u32)
                    .saturating_sub(deadline.saturating_sub(self.now_ms()));
                self.connect_lat.record_us(u64::from(waited) * 1000);
                self.schedule(i);
                Ok(Some(n))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.counts.handshake_failed += 1;
                *self.handshake_errors.entry(e.to_string()).or_default() += 1;
                Err(End::Handshake(e))
            }
        }
    }

    fn batch(&mut self, i: usize, b: &BatchHeader, payload: &[u8], now: u64) {
        self.on_batch(i, b, payload, now);
    }

    fn text(&mut self, i: usize, payload: &[u8]) {
        self.on_text(i, payload);
    }

    fn close(&mut self, _i: usize, payload: &[u8]) -> End {
        End::Closed(ws::close_code(payload))
    }

    fn hang_up(&mut self, i: usize, why: End) {
        self.end(i, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_state_is_small() {
        assert!(std::mem::size_of::<User>() <= 48, "{}", std::mem::size_of::<User>());
    }

    #[test]
    fn snapshot_versions_are_checked() {
        let snap = batch::encode_snapshot(2, 2, 16, 42, &[0, 1, 2, 3]);
        assert_eq!(snapshot_version(&snap, Some("42")), Ok(42));
        assert!(snapshot_version(&snap, Some("41")).is_err());
        assert!(snapshot_version(&snap, None).is_err());
        assert!(snapshot_version(b"nope", Some("1")).is_err());
    }

    #[test]
    fn stats_merge_sums_and_merges_histograms() {
        let mut h = LatencyHist::new();
        h.record_us(500);
        let mut a = DayStats { users: 2, arrivals_by_hour: vec![1; 24], place_rtt: h.export(), ..Default::default() };
        a.placements_refused.insert("cooldown".into(), 1);
        let b = a.clone();
        a.merge(&b);
        assert_eq!((a.users, a.arrivals_by_hour[3], a.placements_refused["cooldown"]), (4, 2, 2));
        assert_eq!(LatencyHist::import(&a.place_rtt).len(), 2);
    }
}
