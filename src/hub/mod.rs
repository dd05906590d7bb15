//! A shard's WebSocket connections after the handshake: the connection table, the ring of recent
//! batch frames shared by all of them, the tick, reads through one edge-triggered epoll per
//! shard, timers (pings, catch-up deadlines, drain). The send path (batch writes submitted in
//! bulk through the shard's own io_uring, or one `send()` per socket) is `send.rs`; what client
//! messages mean is `messages.rs`.
//!
//! Why not glommio streams here: a glommio stream and its task cost far more than the ~100 bytes
//! an idle connection may cost, and glommio submits one `send()` per socket; this module keeps a
//! connection to a few fields (see `Conn`) and submits a batch's sends for all sockets at once.
//!
//! Invariants:
//! - Only this shard's thread touches its connections: no lock, no cross-core traffic.
//! - A frame in flight is never interleaved with another: `out` finishes before anything else.
//! - A connection receives batches in sequence order, each exactly once; one that falls more than
//!   `max_lag` batches behind is closed with 4000, so a client that stops reading costs at most one
//!   frame reference plus its kernel socket buffer, and never stalls the shard (all I/O is
//!   non-blocking: `MSG_DONTWAIT`).
//! - With no new batch, nothing iterates the connections, except the ping sweep once per
//!   `--ws-ping-secs` (one pass over the table, a 2-byte shared ping frame to each silent
//!   connection: no per-connection memory beyond two flag bits in `Conn`'s spare byte).
//! - A connection's client address and token expiry (`meta`, a column beside the table: 8 B)
//!   are what admission and placements check: the address is counted in `admission` from
//!   adoption to `drop_conn` (and the descriptor in `Shared::open_conns`); a token that expires
//!   while the socket is open cannot place (`expired_token`; the client may `auth` again).
//! - A drain closes the connections of its start evenly over the spread window, each with a
//!   `reconnect` hint and 1012.

mod messages;
mod send;

pub use messages::{assemble, parse_client_message, ClientMessage, Refusal};

use crate::client_addr::AddrKey;
use crate::config::SendMode;
use crate::messages::{CatchUpReply, CatchUpReq, ConnId, ShardMsg};
use crate::metrics::{add, ShardStats};
use crate::place;
use crate::protocol::{close, close_frame, text_frame, PING_FRAME};
use crate::shared::Shared;
use crate::sys::{self, set_opt, Epoll};
use crate::token::User;
use crate::ws::{reason, CloseReason};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use io_uring::IoUring;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounds::{
    CATCH_UP_BUSY_RETRY_MS, CATCH_UP_CHECK, CLOSE_GRACE, EVENTS, MAX_IN_FLIGHT, MAX_QUEUED, MERGE_FRAMES,
    READS_PER_EVENT, SCRATCH, SLICE,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Free,
    /// Waiting for the applier's catch-up answer; batches are held back.
    CatchingUp,
    Live,
    /// Sending its last frames, then the close frame; then draining until EOF or the deadline.
    Closing,
}

/// One WebSocket connection. Kept small on purpose: this is the per-connection memory.
struct Conn {
    fd: RawFd,
    gen: u32,
    state: State,
    blocked: bool,
    in_flight: u8,
    /// `HEARD` and `PINGED` (the ping sweep's state); fits the byte the layout leaves spare.
    flags: u8,
    out_off: u32,
    /// Shard sequence number of the next batch this connection needs.
    next_seq: u64,
    /// Limiter key of the authenticated user, 0 when anonymous.
    user: u64,
    /// The frame being written (a shared batch or a queued frame).
    out: Option<Bytes>,
    /// Rarely needed state, allocated only while needed.
    extra: Option<Box<Extra>>,
}

/// Something arrived from the client since the last ping sweep.
const HEARD: u8 = 1;
/// The last sweep pinged this connection; the next closes it unless `HEARD` is set by then.
const PINGED: u8 = 2;

// The table's entry is the per-connection memory: keep it at 72 bytes.
const _: () = assert!(std::mem::size_of::<Conn>() == 72);

#[derive(Default)]
struct Extra {
    queue: VecDeque<Bytes>,
    carry: Vec<u8>,
    fragments: Vec<u8>,
    in_message: bool,
    deadline: Option<Instant>,
    shut_write: bool,
}

impl Conn {
    fn free(gen: u32) -> Self {
        Conn {
            fd: -1,
            gen,
            state: State::Free,
            blocked: false,
            in_flight: 0,
            flags: 0,
            out_off: 0,
            next_seq: 0,
            user: 0,
            out: None,
            extra: None,
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    fn queued(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.queue.is_empty())
    }
}

/// What the hub hands back to its task for things that must await (placements).
pub struct PlaceJob {
    pub conn: ConnId,
    pub id: Option<serde_json::Number>,
    pub pending: place::Pending,
}

/// What a tick found, so the shard knows how soon to tick again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// A broadcast is unfinished: come back right after the other tasks had a turn.
    Busy,
    /// Socket work happened, and some may be left (a socket with more to read than one turn
    /// takes, closes in progress): tick again soon.
    Active,
    /// Nothing to do until a socket is ready, the applier sends something, or a timer is due.
    Idle,
}

/// A batch in the ring, and when it reached the shard (the fan-out histogram's start).
struct Queued {
    frame: Bytes,
    arrived: Instant,
}

/// Where the broadcast in progress stands: the batch, and the next slot to consider.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    seq: u64,
    slot: usize,
}

pub struct Hub {
    shard: usize,
    cursor: Option<Cursor>,
    shared: Arc<Shared>,
    conns: Vec<Conn>,
    /// Client address and token expiry of each slot (meaningful while the slot is in use).
    meta: Vec<Meta>,
    free: Vec<u32>,
    live: usize,
    max_conns: usize,
    /// The last `max_lag` batches, oldest first; the front is batch `first_seq`.
    ring: VecDeque<Queued>,
    first_seq: u64,
    max_lag: usize,
    epoll: Epoll,
    uring: Option<IoUring>,
    scratch: Vec<u8>,
    events: Vec<libc::epoll_event>,
    blocked: Vec<ConnId>,
    closing: Vec<ConnId>,
    read_again: Vec<ConnId>,
    rx: Receiver<ShardMsg>,
    pub jobs: Vec<PlaceJob>,
    stats_idx: usize,
    next_ping: Instant,
    drain: Option<Drain>,
    /// Connections with catch-up frames queued, and when they must have taken them.
    catching_up: Vec<(ConnId, Instant)>,
    next_catch_up_check: Instant,
}

/// What admission and placements need of a connection, beside its `Conn`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    addr: AddrKey,
    /// Unix seconds when the connection's token expires; 0 = never (or no token).
    expires_s: u32,
}

impl Meta {
    fn new(addr: AddrKey, user: Option<&User>) -> Self {
        Meta { addr, expires_s: user.map_or(0, |u| expires_u32(u.expires)) }
    }
}

/// Token expiries past 2106 are "never" to a u32, as they are to anyone alive.
fn expires_u32(expires: u64) -> u32 {
    u32::try_from(expires).unwrap_or(0)
}

/// A drain in progress on this shard: the connections it started with, how many it closed.
struct Drain {
    total: usize,
    closed: usize,
    next_slot: usize,
}

fn key(id: ConnId) -> u64 {
    id.slot as u64 | (id.gen as u64) << 32
}

impl Hub {
    pub fn new(shard: usize, shared: Arc<Shared>, rx: Receiver<ShardMsg>) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let uring = match shared.config.args.send_mode {
            SendMode::Uring => {
                Some(IoUring::builder().setup_single_issuer().build(4096).or_else(|_| IoUring::new(4096))?)
            }
            SendMode::Syscall => None,
        };
        Ok(Hub {
            shard,
            cursor: None,
            max_conns: shared.max_conns_per_shard,
            max_lag: shared.config.args.max_lag_batches,
            // Reserved up front (virtual memory only: pages become resident as slots are used), so
            // the table never doubles and copies itself under load.
            conns: Vec::with_capacity(shared.max_conns_per_shard.min(1 << 24)),
            meta: Vec::with_capacity(shared.max_conns_per_shard.min(1 << 24)),
            next_ping: Instant::now() + Duration::from_secs(shared.config.args.ws_ping_secs),
            drain: None,
            catching_up: Vec::new(),
            next_catch_up_check: Instant::now(),
            shared,
            free: Vec::new(),
            live: 0,
            ring: VecDeque::new(),
            first_seq: 0,
            epoll,
            uring,
            scratch: vec![0; SCRATCH],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            blocked: Vec::new(),
            closing: Vec::new(),
            read_again: Vec::new(),
            rx,
            jobs: Vec::new(),
            stats_idx: shard,
        })
    }

    fn stats(&self) -> &ShardStats {
        &self.shared.shard_stats[self.stats_idx]
    }

    fn head_seq(&self) -> u64 {
        self.first_seq + self.ring.len() as u64
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The epoll descriptor every connection's readiness is reported on: readable when any
    /// connection has something for the next tick.
    pub fn epoll_fd(&self) -> std::os::fd::RawFd {
        self.epoll.raw_fd()
    }

    pub fn has_room(&self) -> bool {
        self.live < self.max_conns
    }

    pub fn connections(&self) -> usize {
        self.live
    }

    fn get(&self, id: ConnId) -> Option<usize> {
        let c = self.conns.get(id.slot as usize)?;
        (c.gen == id.gen && c.state != State::Free).then_some(id.slot as usize)
    }

    fn id(&self, slot: usize) -> ConnId {
        ConnId { slot: slot as u32, gen: self.conns[slot].gen }
    }

    /// Takes over a socket whose handshake is done: `fd` is owned from here on.
    /// The client at `addr` holds one of its address's connections and one descriptor of the
    /// budget; both are given back when the connection is dropped.
    pub fn adopt(&mut self, fd: RawFd, user: Option<User>, since: Option<u64>, leftover: &[u8], addr: AddrKey) {
        configure_socket(fd, self.shared.config.args.ws_sndbuf);
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.conns.push(Conn::free(0));
                self.meta.push(Meta::new(addr, None));
                self.conns.len() - 1
            }
        };
        self.meta[slot] = Meta::new(addr, user.as_ref());
        let gen = self.conns[slot].gen;
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if let Err(e) = self.epoll.add(fd, events, key(ConnId { slot: slot as u32, gen })) {
            tracing::warn!(error = %e, "epoll_ctl ADD failed; dropping connection");
            sys::close(fd);
            self.free.push(slot as u32);
            self.release(addr);
            return;
        }
        let head = self.head_seq();
        let c = &mut self.conns[slot];
        c.fd = fd;
        c.user = user.as_ref().map_or(0, |u| u.id);
        c.next_seq = head;
        c.state = if since.is_some() { State::CatchingUp } else { State::Live };
        self.live += 1;
        add(&self.stats().connections, 1);
        add(&self.stats().accepted, 1);
        let hello = serde_json::json!({
            "type": "hello",
            "version": self.shared.applier.cut_version.load(std::sync::atomic::Ordering::Acquire),
            "cooldown_ms": self.shared.limiter.cooldown_ms(),
            "user": user.map(|u| u.name),
            "shard": self.shard,
        });
        self.conns[slot].extra().queue.push_back(text_frame(&hello.to_string()));
        let id = self.id(slot);
        if let Some(since) = since {
            if !self.request_catch_up(slot, since) {
                return;
            }
        }
        self.pump(slot);
        if !leftover.is_empty() && self.get(id).is_some() {
            let mut buf = leftover.to_vec();
            self.ingest(slot, &mut buf);
        }
    }

    /// Asks the applier for a catch-up, or closes with 1013 and a hint when the applier's queue
    /// is full: a shard never blocks on the applier. (The per-address catch-up rate is checked
    /// before the upgrade, in `http.rs`, where a refusal costs least.)
    fn request_catch_up(&mut self, slot: usize, since: u64) -> bool {
        use crossbeam_channel::TrySendError;
        let req = CatchUpReq { shard: self.shard, conn: self.id(slot), since };
        match self.shared.catchup_tx.try_send(req) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.shared.metrics.refused_catch_up_busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let why = format!("busy catching others up; retry_after_ms={CATCH_UP_BUSY_RETRY_MS}");
                self.close_frame_then(slot, close::TRY_AGAIN_LATER, &why);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.close_with(slot, reason(close::GOING_AWAY, "server shutting down"));
                false
            }
        }
    }

    /// Closes connections that have not taken their catch-up within `--catch-up-drain-ms`; forgets
    /// those that have. Runs only while some connection is catching up.
    fn check_catching_up(&mut self, now: Instant) {
        let list = std::mem::take(&mut self.catching_up);
        for (id, deadline) in list {
            let Some(slot) = self.get(id) else { continue };
            let c = &self.conns[slot];
            if c.state != State::Live || (!c.queued() && c.out.is_none()) {
                continue;
            }
            if now < deadline {
                self.catching_up.push((id, deadline));
                continue;
            }
            self.shared.metrics.closed_catch_up_stalled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.close_frame_then(slot, close::TOO_SLOW, "too slow taking the catch-up; reconnect with since");
        }
    }

    /// One turn of the shard: new batches and catch-ups, one slice of the broadcast in progress,
    /// then socket readiness and timers. Says how soon the caller should come back.
    pub fn tick(&mut self) -> Tick {
        let before = self.head_seq();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ShardMsg::Batch { frame, .. } => {
                    self.ring.push_back(Queued { frame, arrived: Instant::now() });
                    add(&self.stats().batches, 1);
                }
                ShardMsg::CatchUp { conn, reply } => self.on_catch_up(conn, reply),
            }
        }
        if self.head_seq() > before {
            while self.ring.len() > self.max_lag {
                self.ring.pop_front();
                self.first_seq += 1;
            }
            let start = Cursor { seq: before.max(self.first_seq), slot: 0 };
            self.cursor = Some(self.cursor.map_or(start, |c| if c.seq < self.first_seq { start } else { c }));
        }
        if self.cursor.is_some() {
            self.broadcast_slice();
        }
        // Only socket work keeps the tick fast: batches and catch-up answers wake the tick task
        // themselves (`ShardWake`), so a steady stream of batches costs no timer wakeups.
        let mut sockets = self.poll_sockets();
        if !self.closing.is_empty() {
            sockets += 1;
            self.expire_closing();
        }
        let now = Instant::now();
        if !self.catching_up.is_empty() && now >= self.next_catch_up_check {
            self.next_catch_up_check = now + CATCH_UP_CHECK;
            self.check_catching_up(now);
        }
        if now >= self.next_ping {
            self.next_ping = now + Duration::from_secs(self.shared.config.args.ws_ping_secs);
            self.ping_sweep();
        }
        let backlog = self.cursor.map_or(0, |c| self.head_seq() - c.seq);
        self.shared.applier.shard_backlog[self.shard].store(backlog, std::sync::atomic::Ordering::Release);
        match (self.cursor.is_some(), sockets > 0 || !self.read_again.is_empty()) {
            (true, _) => Tick::Busy,
            (false, true) => Tick::Active,
            (false, false) => Tick::Idle,
        }
    }

    fn on_catch_up(&mut self, conn: ConnId, reply: CatchUpReply) {
        let Some(slot) = self.get(conn) else { return };
        if self.conns[slot].state != State::CatchingUp {
            return;
        }
        match reply {
            CatchUpReply::Frames(frames) => {
                let head = self.head_seq();
                let c = &mut self.conns[slot];
                c.extra().queue.extend(frames);
                c.state = State::Live;
                c.next_seq = head;
                let drain = Duration::from_millis(self.shared.config.args.catch_up_drain_ms);
                self.catching_up.push((conn, Instant::now() + drain));
                self.pump(slot);
            }
            CatchUpReply::Reload { oldest_since } => {
                let msg = serde_json::json!({"type": "reload", "oldest_since": oldest_since}).to_string();
                self.conns[slot].extra().queue.push_back(text_frame(&msg));
                self.close_with(
                    slot,
                    reason(close::RELOAD, "since is older than the catch-up window: reload the snapshot"),
                );
            }
            CatchUpReply::Ahead { .. } => {
                self.close_with(slot, reason(close::POLICY, "since is ahead of the server's version"))
            }
        }
    }

    /// Queues the close frame after whatever is in flight, then stops sending batches.
    fn close_frame_then(&mut self, slot: usize, code: u16, why: &str) {
        let c = &mut self.conns[slot];
        if c.state == State::Closing || c.state == State::Free {
            return;
        }
        c.state = State::Closing;
        let e = c.extra();
        e.queue.push_back(close_frame(code, why));
        e.deadline = Some(Instant::now() + CLOSE_GRACE);
        let id = self.id(slot);
        self.closing.push(id);
        self.pump(slot);
    }

    fn close_with(&mut self, slot: usize, r: CloseReason) {
        if matches!(
            r.code,
            close::PROTOCOL_ERROR | close::UNSUPPORTED | close::BAD_DATA | close::TOO_BIG | close::POLICY
        ) {
            add(&self.stats().closed_protocol, 1);
        }
        self.close_frame_then(slot, r.code, r.reason);
    }

    fn expire_closing(&mut self) {
        let now = Instant::now();
        let list = std::mem::take(&mut self.closing);
        for id in list {
            let Some(slot) = self.get(id) else { continue };
            let late = self.conns[slot].extra.as_ref().and_then(|e| e.deadline).is_none_or(|d| d <= now);
            if late {
                self.drop_conn(slot);
            } else {
                self.closing.push(id);
            }
        }
    }

    fn drop_conn(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.state == State::Free {
            return;
        }
        sys::close(c.fd);
        let gen = c.gen.wrapping_add(1);
        *c = Conn::free(gen);
        self.free.push(slot as u32);
        self.live -= 1;
        self.shared.shard_stats[self.stats_idx].connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let addr = self.meta[slot].addr;
        self.release(addr);
    }

    /// Gives back what an adopted connection held of the process's budgets.
    fn release(&self, addr: AddrKey) {
        self.shared.release_connection(Some(addr));
    }

    /// Once per `--ws-ping-secs`: pings connections silent since the last sweep and closes those
    /// that stayed silent through a whole period after their ping (4002). A connection with a
    /// frame already in flight is left for the next sweep (it is not idle, and the ping must not
    /// interleave with that frame).
    fn ping_sweep(&mut self) {
        let ping = Bytes::from_static(PING_FRAME);
        let mut closed = 0u64;
        for slot in 0..self.conns.len() {
            let c = &mut self.conns[slot];
            if c.state != State::Live {
                continue;
            }
            if c.flags & HEARD != 0 {
                c.flags = 0;
                continue;
            }
            if c.flags & PINGED != 0 {
                closed += 1;
                self.close_frame_then(slot, close::PING_TIMEOUT, "no answer to ping");
                continue;
            }
            if c.out.is_some() || c.queued() || c.blocked {
                continue;
            }
            c.flags = PINGED;
            c.out = Some(ping.clone());
            c.out_off = 0;
            self.pump(slot);
        }
        if closed > 0 {
            self.shared.metrics.closed_ping_timeout.fetch_add(closed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// One step of a drain `elapsed_ms` into its `spread_ms` window: closes as many of the
    /// connections the drain started with as are due by now (`lifecycle::closes_due`).
    pub fn drain_step(&mut self, elapsed_ms: u64, spread_ms: u64) {
        let live = self.live;
        let d = self.drain.get_or_insert(Drain { total: live, closed: 0, next_slot: 0 });
        let due = crate::lifecycle::closes_due(d.total, elapsed_ms, spread_ms);
        if d.closed >= due {
            return;
        }
        let mut want = due - d.closed;
        let mut slot = d.next_slot;
        let jitter_ms = crate::bounds::drain_jitter_ms(spread_ms);
        let hint = serde_json::json!({"type": "reconnect", "after_ms": 0, "jitter_ms": jitter_ms}).to_string();
        let hint = text_frame(&hint);
        let mut closed = 0usize;
        while want > 0 && slot < self.conns.len() {
            if matches!(self.conns[slot].state, State::Live | State::CatchingUp) {
                self.conns[slot].extra().queue.push_back(hint.clone());
                self.close_frame_then(slot, close::SERVICE_RESTART, "draining: reconnect with since");
                want -= 1;
                closed += 1;
            }
            slot += 1;
        }
        let d = self.drain.as_mut().expect("set above");
        d.next_slot = slot;
        // Connections that left by themselves count as closed: the schedule stays on time.
        d.closed = if slot >= self.conns.len() { d.total } else { d.closed + closed };
        self.shared.metrics.closed_drain.fetch_add(closed as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Handles ready sockets; returns how many events there were.
    fn poll_sockets(&mut self) -> usize {
        let mut seen = 0;
        for id in std::mem::take(&mut self.read_again) {
            if let Some(slot) = self.get(id) {
                self.read(slot);
            }
        }
        loop {
            let n = self.epoll.poll(&mut self.events);
            if n == 0 {
                return seen;
            }
            seen += n;
            for i in 0..n {
                let ev = self.events[i];
                let (bits, k) = (ev.events, ev.u64);
                let id = ConnId { slot: k as u32, gen: (k >> 32) as u32 };
                let Some(slot) = self.get(id) else { continue };
                if bits & libc::EPOLLOUT as u32 != 0 && self.conns[slot].blocked {
                    self.conns[slot].blocked = false;
                    self.pump(slot);
                }
                if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
                    && self.get(id).is_some()
                {
                    self.read(slot);
                }
            }
            if n < EVENTS {
                return seen;
            }
        }
    }

    fn read(&mut self, slot: usize) {
        let id = self.id(slot);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut drained = false;
        for _ in 0..READS_PER_EVENT {
            let n = match sys::recv_nonblocking(self.conns[slot].fd, &mut scratch) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Ok(0) | Err(_) => {
                    // EOF or a socket error: the peer is gone.
                    self.drop_conn(slot);
                    drained = true;
                    break;
                }
                Ok(n) => n,
            };
            self.conns[slot].flags |= HEARD;
            if self.conns[slot].state != State::Closing {
                self.ingest(slot, &mut scratch[..n]);
            }
            if self.get(id).is_none() || n < scratch.len() {
                drained = true;
                break;
            }
        }
        if !drained {
            // Edge-triggered: a busy socket gets the rest of its turn next tick.
            self.read_again.push(id);
        }
        self.scratch = scratch;
    }

    /// Server shutdown: every client gets 1001.
    pub fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].state != State::Free {
                self.close_frame_then(slot, close::GOING_AWAY, "server shutting down; reconnect with since");
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for c in &self.conns {
            if c.state != State::Free {
                sys::close(c.fd);
            }
        }
    }
}

/// Non-blocking, no Nagle (batches go out at once), kernel keepalive to reap dead peers, and an
/// optional send buffer bound.
fn configure_socket(fd: RawFd, sndbuf: usize) {
    if let Err(e) = sys::set_nonblocking(fd) {
        tracing::warn!(error = %e, "cannot make a WebSocket non-blocking");
    }
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    set_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6);
    if sndbuf > 0 {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, sndbuf.min(i32::MAX as usize) as i32);
    }
}

/// The user-space size of one connection: its entry and its address column (for the memory
/// report).
pub const CONN_BYTES: usize = std::mem::size_of::<Conn>() + std::mem::size_of::<Meta>();
