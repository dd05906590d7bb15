//! A shard: one glommio executor pinned to one core, with its own SO_REUSEPORT listener, its HTTP
//! connections (one task each) and its `hub` of WebSocket connections (one tick task).
//!
//! Invariants: everything a shard owns is touched only by its own thread; the only cross-core
//! traffic is the batch channel from the applier (one message per batch, not per connection) and
//! placements going to the limiter and the log.

use crate::applier::ShardMsg;
use crate::http::serve_conn;
use crate::hub::{Hub, Tick};
use crate::lifecycle::DrainPhase;
use crate::shared::Shared;
use crossbeam_channel::{Receiver, Sender};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How soon a shard whose tick found socket work looks again: a socket with more to read than
/// one turn takes (edge-triggered, so no new readiness), closes in progress. New socket input
/// does not wait for it: it wakes the tick through the epoll descriptor's readiness.
pub const TICK: Duration = Duration::from_millis(1);
/// How often a quiet shard ticks while a drain is under way: the drain closes its clients
/// on an even schedule, one step per tick.
pub const DRAIN_TICK: Duration = Duration::from_millis(10);
/// How often a quiet shard ticks anyway, for its timers: the ping sweep (`--ws-ping-secs`), the
/// catch-up deadlines (`bounds::CATCH_UP_CHECK`, also 100 ms) and its heartbeat
/// (`STALL_LIMIT_MS`, 5 s). Socket input, batches and catch-up answers wake it sooner. Each
/// wakeup of a glommio executor costs several io_uring_enter calls (about 100 us of CPU on this
/// VM): the 10 ms tick this replaced was 1.2% of a core with 1,000 idle clients
/// (bench/RESULTS.md, "A quiet shard sleeps until something happens").
pub const QUIET_TICK: Duration = Duration::from_millis(100);

/// Binds `addr` with SO_REUSEPORT and a deep backlog (glommio's own bind uses 1024).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(65_535)?;
    // SAFETY: `into_raw_fd` hands over a bound, listening socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) })
}

/// Starts shard `id` on `cpu`, listening on `given` (a bound, listening socket) or binding
/// `--listen` itself; it reports its address (or why it failed) on `ready`. The shard returns
/// once `Shared::shutting_down` is set and its clients had their close frames.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    rx: Receiver<ShardMsg>,
    given: Option<std::net::TcpListener>,
    ready: Sender<Result<SocketAddr, String>>,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(&format!("placecast-shard-{id}"))
        // glommio registers this much memory with io_uring; the default 10 MiB exceeds the
        // usual 8 MiB memlock limit, and the shards do no file I/O through glommio.
        .io_memory(256 << 10)
        .ring_depth(256)
        .spawn(move || run(id, shared, rx, given, ready))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn adopt_listener(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    // SAFETY: `into_raw_fd` hands over a bound, listening socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) })
}

/// How long a stopping shard gives its clients' close frames to leave.
const CLOSE_LINGER: Duration = Duration::from_millis(300);

async fn run(
    id: usize,
    shared: Arc<Shared>,
    rx: Receiver<ShardMsg>,
    given: Option<std::net::TcpListener>,
    ready: Sender<Result<SocketAddr, String>>,
) {
    let addr = shared.config.args.listen;
    let listener = match given.map_or_else(|| listen(addr), adopt_listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id}: cannot listen on {addr}: {e}")));
            return;
        }
    };
    let hub = match Hub::new(id, shared.clone(), rx) {
        Ok(h) => Rc::new(RefCell::new(h)),
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id}: cannot set up io_uring/epoll: {e}")));
            return;
        }
    };
    let _ = ready.send(listener.local_addr().map_err(|e| e.to_string()));
    glommio::spawn_local(tick_loop(hub.clone(), shared.clone())).detach();
    // Polled, not woken: a stop may wait this long more, against 5 s of drain grace; every
    // wakeup of a quiet shard costs CPU (see QUIET_TICK).
    let stopped = async {
        while !shared.shutting_down.load(Ordering::Acquire) {
            glommio::timer::sleep(QUIET_TICK).await;
        }
    };
    futures_lite::future::race(accept_loop(id, listener, hub.clone(), shared.clone()), stopped).await;
    // The tick loop sends everyone 1001; give the frames a moment, then the executor ends (and
    // with it the hub, which closes every socket).
    let deadline = std::time::Instant::now() + CLOSE_LINGER;
    while hub.borrow().connections() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn accept_loop(id: usize, listener: TcpListener, hub: Rc<RefCell<Hub>>, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                backoff = Duration::from_millis(5);
                glommio::spawn_local(serve_conn(stream, hub.clone(), shared.clone())).detach();
            }
            Err(e) => {
                // Usually EMFILE: out of file descriptors. Back off instead of spinning.
                tracing::warn!(shard = id, error = %e, "accept failed (raise the open-file limit if this is EMFILE)");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn tick_loop(hub: Rc<RefCell<Hub>>, shared: Arc<Shared>) {
    let wake = &shared.applier.shard_wake[hub.borrow().shard()];
    let epoll_fd = hub.borrow().epoll_fd();
    // Kept across sleeps until it fires: dropping a pending poll would cancel it, and a
    // cancellation's completion wakes the executor for nothing.
    let mut readable: Option<Pin<Box<dyn Future<Output = std::io::Result<()>>>>> = None;
    let mut readiness_failed = false;
    let mut closed = false;
    loop {
        let (tick, jobs, phase) = {
            let mut h = hub.borrow_mut();
            let now_ms = crate::now_ms();
            shared.lifecycle.beat(h.shard(), now_ms);
            let phase = shared.lifecycle.phase(now_ms);
            if let DrainPhase::Closing { elapsed_ms, spread_ms } = phase {
                h.drain_step(elapsed_ms, spread_ms);
            }
            if shared.shutting_down.load(Ordering::Acquire) && !closed {
                h.close_all();
                closed = true;
            }
            let tick = h.tick();
            (tick, std::mem::take(&mut h.jobs), phase)
        };
        for job in jobs {
            let hub = hub.clone();
            glommio::spawn_local(async move {
                let result = job.pending.finish().await;
                hub.borrow_mut().place_done(job.conn, job.id, result);
            })
            .detach();
        }
        // Quiet: nothing to do, serving, and the epoll's readiness can wake us.
        let quiet = tick == Tick::Idle && phase == DrainPhase::Serving && !closed && !readiness_failed;
        // A short sleep rather than a bare yield when busy: it makes the executor poll its own
        // ring, so placements and handshakes waiting on I/O run between broadcast slices.
        let pause = match tick {
            _ if quiet => QUIET_TICK,
            Tick::Busy => Duration::from_micros(20),
            Tick::Active => TICK,
            Tick::Idle => DRAIN_TICK,
        };
        // Until the pause is over or the applier sends something, whichever is first.
        let timer_or_wake = async {
            futures_lite::future::or(glommio::timer::sleep(pause), wake.woken()).await;
            None
        };
        if !quiet {
            timer_or_wake.await;
            continue;
        }
        // Or until a socket is ready.
        let ready = readable.get_or_insert_with(|| Box::pin(glommio::net::readable(epoll_fd)));
        if let Some(result) = futures_lite::future::or(timer_or_wake, async { Some(ready.await) }).await {
            readable = None;
            if let Err(e) = result {
                // Never expected of an epoll descriptor; ticking every DRAIN_TICK still reads
                // every socket, only later.
                tracing::error!(error = %e, "waiting for the shard's epoll readiness failed; ticking every 10 ms instead");
                readiness_failed = true;
            }
        }
    }
}
