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
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a shard whose WebSockets sent something in the last `IDLE_AFTER` looks at their
/// readiness again: bounds the wait of a WebSocket placement. New batches and catch-up answers
/// do not wait for it: the applier wakes the tick task (`messages::ShardWake`).
pub const TICK: Duration = Duration::from_millis(1);
/// How often a shard whose WebSockets were quiet for `IDLE_AFTER` looks (pings, timers, the
/// first message after a quiet second). Each wakeup of a glommio executor costs several
/// io_uring_enter calls (tens of microseconds on a VM): 1 ms ticks at all times were most of an
/// idle-client shard's CPU under a trickle of placements (bench/RESULTS.md).
pub const IDLE_TICK: Duration = Duration::from_millis(10);
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

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
    let stopped = async {
        while !shared.shutting_down.load(Ordering::Acquire) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
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
    let mut closed = false;
    let mut last_active = std::time::Instant::now();
    loop {
        let (tick, jobs) = {
            let mut h = hub.borrow_mut();
            let now_ms = crate::now_ms();
            shared.lifecycle.beat(h.shard(), now_ms);
            if let DrainPhase::Closing { elapsed_ms, spread_ms } = shared.lifecycle.phase(now_ms) {
                h.drain_step(elapsed_ms, spread_ms);
            }
            if shared.shutting_down.load(Ordering::Acquire) && !closed {
                h.close_all();
                closed = true;
            }
            let tick = h.tick();
            (tick, std::mem::take(&mut h.jobs))
        };
        for job in jobs {
            let hub = hub.clone();
            glommio::spawn_local(async move {
                let result = job.pending.finish().await;
                hub.borrow_mut().place_done(job.conn, job.id, result);
            })
            .detach();
        }
        // A short sleep rather than a bare yield when busy: it makes the executor poll its own
        // ring, so placements and handshakes waiting on I/O run between broadcast slices.
        let pause = match tick {
            Tick::Busy => Duration::from_micros(20),
            Tick::Active => {
                last_active = std::time::Instant::now();
                TICK
            }
            Tick::Idle if last_active.elapsed() < IDLE_AFTER => TICK,
            Tick::Idle => IDLE_TICK,
        };
        // Until the pause is over or the applier sends something, whichever is first.
        futures_lite::future::or(glommio::timer::sleep(pause), wake.woken()).await;
    }
}
