//! The abuse scenario's two populations, over plain blocking HTTP/1.1 keep-alive connections
//! bound to chosen loopback source addresses:
//!
//! - **the abuser**: one source address, `conns` connections (one thread each), each looping as
//!   fast as the server answers: mint a fresh anonymous session (with the proof of work when the
//!   server asks for one, [`crate::session`]) and place one pixel with it, like a script trying to
//!   take the canvas past the per-user cooldown. A solved challenge the server turned down with a
//!   rate limit is presented again (it is not used up). Optionally it waits out `retry_after_ms`.
//! - **honest users**: `n` users spread over many source addresses (`per_addr` each, so every
//!   address stays inside the per-address session, placement and connection limits), one
//!   keep-alive connection per address; each user places once per cooldown (+ slack), their first
//!   placements spread evenly over the first period. Every honest placement should be accepted;
//!   the request round trip is the latency an honest user sees while the abuser runs.
//!
//! The honest threads ask for a higher priority (`nice -5`, when the tester may) so that, with
//! both populations on one tester core, the honest round trips measure the server rather than
//! the abuser's solving threads (in the wild they are different machines); the report's
//! schedule lag shows what the tester itself added.

use crate::driver::{pixel_for, Placement, Placer};
use crate::error::LoadError;
use crate::hist::{LatencyHist, LatencySummary};
use crate::http::KeepAlive;
use crate::session::{Minted, Sessions};
use crate::sys::now_ns;
use crate::ws::splitmix64;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The rate-limit answers the report singles out.
pub const LIMIT_CODES: [&str; 3] =
    ["session_rate_limited", "address_rate_limited", "too_many_connections_from_address"];

#[derive(Debug, Clone)]
pub struct AbuseConfig {
    pub target: SocketAddr,
    pub duration: Duration,
    /// The server's cooldown: each honest user places once per `cooldown_ms + slack_ms`.
    pub cooldown_ms: u64,
    pub slack_ms: u64,
    pub honest: usize,
    /// Honest user `u` uses `honest_sources[u % len]`.
    pub honest_sources: Vec<IpAddr>,
    pub honest_threads: usize,
    /// None: no abuser (honest users alone, for comparison).
    pub abuser: Option<IpAddr>,
    pub abuser_conns: usize,
    pub abuser_nice: i32,
    pub honest_nice: i32,
    pub honor_retry_after: bool,
    pub proof: bool,
    pub width: u32,
    pub height: u32,
    pub palette_len: u32,
    pub seed: u64,
}

/// The honest addresses `auto` stands for: `n` loopback addresses from 127.0.1.1 on, skipping
/// host parts 0 and 255 and `avoid` (the abuser's).
pub fn auto_honest_sources(n: usize, avoid: Option<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(n);
    let mut x = u32::from(Ipv4Addr::new(127, 0, 1, 1));
    while out.len() < n && x < u32::from(Ipv4Addr::new(127, 255, 255, 255)) {
        let ip = Ipv4Addr::from(x);
        let last = ip.octets()[3];
        if last != 0 && last != 255 && Some(IpAddr::V4(ip)) != avoid {
            out.push(IpAddr::V4(ip));
        }
        x += 1;
    }
    out
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct AbuseCounters {
    pub abuser_attempts: AtomicU64,
    pub abuser_sessions: AtomicU64,
    pub abuser_placed: AtomicU64,
    pub honest_sessions: AtomicU64,
    pub honest_attempted: AtomicU64,
    pub honest_accepted: AtomicU64,
    pub honest_refused: AtomicU64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AbuserReport {
    pub source_addr: String,
    pub conns: usize,
    pub nice: i32,
    pub honor_retry_after: bool,
    /// Whether sessions needed a proof of work.
    pub proof: bool,
    /// One attempt: a session request (after solving a challenge if needed) and, if it gave a
    /// token, one placement with it.
    pub attempts: u64,
    pub attempts_per_s: f64,
    pub session_requests: u64,
    pub sessions_accepted: u64,
    pub sessions_accepted_per_s: f64,
    pub placements_attempted: u64,
    pub placements_accepted: u64,
    pub placements_accepted_per_s: f64,
    /// All requests (challenges, sessions, placements) per second.
    pub requests_per_s: f64,
    pub session_refused: BTreeMap<String, u64>,
    pub place_refused: BTreeMap<String, u64>,
    /// session_rate_limited, address_rate_limited, too_many_connections_from_address (session
    /// and placement answers together).
    pub rate_limited: BTreeMap<String, u64>,
    /// Connection failures by errno (each followed by a reconnect).
    pub transport_errors: BTreeMap<String, u64>,
    pub connects: u64,
    pub challenges: u64,
    pub solves: u64,
    /// Wall time per solve (threads solving at once share the tester's cores).
    pub solve_mean_ms: Option<f64>,
    /// Proof-of-work hashes computed.
    pub hashes: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct HonestReport {
    pub users: usize,
    pub source_addrs: usize,
    pub max_users_per_addr: usize,
    pub threads: usize,
    pub period_ms: u64,
    /// The nice value asked for the honest threads, and whether the kernel allowed it.
    pub nice: i32,
    pub nice_applied: bool,
    /// Time to get every honest user its session (before the measured phase).
    pub setup_s: f64,
    pub setup_proof: bool,
    /// Placements a fixed period would give in the window, and those sent (fewer when answers
    /// are slow: a user waits a period after each answer).
    pub nominal: u64,
    pub attempted: u64,
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    pub transport_errors: u64,
    /// Requests (setup included) sent again on a fresh connection after a kept-alive one failed.
    pub retries: u64,
    pub all_accepted: bool,
    /// Round trip of accepted honest placements (request written to answer read).
    pub latency: LatencySummary,
    pub refused_latency: LatencySummary,
    /// How late each placement was sent against its schedule (tester-side delay).
    pub schedule_lag: LatencySummary,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AbuseReport {
    pub duration_s: f64,
    pub cooldown_ms: u64,
    pub abuser: Option<AbuserReport>,
    pub honest: HonestReport,
}

/// One honest address: its kept-alive connection and its users' tokens.
struct HonestAddr {
    conn: KeepAlive,
    /// (global user index, token)
    users: Vec<(usize, String)>,
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(n) => format!("errno_{n}"),
        None => e.kind().to_string(),
    }
}

/// Gets every honest user a session from its own address; returns the addresses by thread.
pub fn setup_honest(
    cfg: &AbuseConfig,
    sessions: &Arc<Sessions>,
    counters: &Arc<AbuseCounters>,
    mut tick: impl FnMut(),
) -> Result<Vec<Vec<HonestAddrHandle>>, LoadError> {
    let nsrc = cfg.honest_sources.len().max(1);
    let used = nsrc.min(cfg.honest);
    let threads = cfg.honest_threads.clamp(1, used.max(1));
    let mut per_thread: Vec<Vec<HonestAddr>> = (0..threads).map(|_| Vec::new()).collect();
    for a in 0..used {
        per_thread[a % threads]
            .push(HonestAddr { conn: KeepAlive::new(Some(cfg.honest_sources[a]), cfg.target), users: Vec::new() });
    }
    for u in 0..cfg.honest {
        let a = u % nsrc;
        per_thread[a % threads][a / threads].users.push((u, String::new()));
    }
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|mut addrs| {
            let (sessions, counters) = (sessions.clone(), counters.clone());
            std::thread::spawn(move || -> Result<Vec<HonestAddr>, LoadError> {
                for a in &mut addrs {
                    let src = a.conn.source;
                    for (_, tok) in &mut a.users {
                        *tok = sessions.token(&mut a.conn).map_err(|e| match e {
                            LoadError::Http { what, detail } => LoadError::Http {
                                what: format!("{what} from {}", src.map(|s| s.to_string()).unwrap_or_default()),
                                detail,
                            },
                            e => e,
                        })?;
                        counters.honest_sessions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(addrs)
            })
        })
        .collect();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        tick();
    }
    let mut out = Vec::new();
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(a)) => out.push(a.into_iter().map(HonestAddrHandle).collect()),
            Ok(Err(e)) => err = err.or(Some(e)),
            Err(_) => err = err.or(Some(LoadError::Server("an honest setup thread panicked".into()))),
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// An honest address set up with its sessions (opaque outside this module).
pub struct HonestAddrHandle(HonestAddr);

struct HonestResult {
    niced: bool,
    nominal: u64,
    attempted: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
    transport_errors: u64,
    retries: u64,
    lat: LatencyHist,
    rej_lat: LatencyHist,
    lag: LatencyHist,
}

/// Each user places at its slot, then once per period; never sooner than a period after the
/// answer to its previous placement (what a real client waiting out its cooldown does, so a
/// slow answer cannot make the next placement arrive inside the cooldown).
fn honest_thread(
    cfg: &AbuseConfig,
    tid: usize,
    mut addrs: Vec<HonestAddr>,
    start: u64,
    deadline: u64,
    counters: &AbuseCounters,
    stop: &AtomicBool,
) -> HonestResult {
    let niced = cfg.honest_nice == 0 || crate::sys::nice_current_thread(cfg.honest_nice);
    let period = (cfg.cooldown_ms + cfg.slack_ms) * 1_000_000;
    let n = cfg.honest.max(1) as u64;
    let mut r = HonestResult {
        niced,
        nominal: 0,
        attempted: 0,
        accepted: 0,
        refused: BTreeMap::new(),
        transport_errors: 0,
        retries: 0,
        lat: LatencyHist::new(),
        rej_lat: LatencyHist::new(),
        lag: LatencyHist::new(),
    };
    // (due instant, address index, user index within the address)
    let mut heap = BinaryHeap::new();
    for (ai, a) in addrs.iter().enumerate() {
        for (ui, (g, _)) in a.users.iter().enumerate() {
            let first = start + (*g as u64 * period) / n;
            r.nominal += deadline.saturating_sub(first).div_ceil(period);
            heap.push(Reverse((first, ai, ui)));
        }
    }
    let mut rng = splitmix64(cfg.seed ^ 0x4f4e_4553 ^ (tid as u64) << 20);
    let mut placer = Placer::default();
    while let Some(Reverse((due, ai, ui))) = heap.pop() {
        if due >= deadline {
            break;
        }
        loop {
            let now = now_ns();
            if now >= due || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_nanos((due - now).min(50_000_000)));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        rng = splitmix64(rng);
        let (x, y, color) = pixel_for(rng, cfg.width, cfg.height, cfg.palette_len);
        let a = &mut addrs[ai];
        r.attempted += 1;
        r.lag.record_ns(now_ns().saturating_sub(due));
        counters.honest_attempted.fetch_add(1, Ordering::Relaxed);
        // Open (or replace an idle) connection first: the round trip is the request's alone.
        let res = a.conn.get().map(|_| ()).and_then(|()| {
            let t0 = now_ns();
            let p = placer.place(&mut a.conn, &a.users[ui].1, x, y, color)?;
            Ok((p, now_ns() - t0))
        });
        let answered = now_ns();
        let mut next = due + period;
        match res {
            Ok((Placement::Accepted(_), ns)) => {
                r.accepted += 1;
                r.lat.record_ns(ns);
                counters.honest_accepted.fetch_add(1, Ordering::Relaxed);
                next = next.max(answered + period);
            }
            Ok((Placement::Refused { code, retry_after_ms, .. }, ns)) => {
                *r.refused.entry(code).or_default() += 1;
                r.rej_lat.record_ns(ns);
                counters.honest_refused.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after_ms.map_or(period, |ms| ms * 1_000_000 + cfg.slack_ms * 1_000_000);
                next = next.max(answered + wait);
            }
            Err(_) => {
                a.conn.reset();
                r.transport_errors += 1;
                counters.honest_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        heap.push(Reverse((next, ai, ui)));
    }
    r.retries = addrs.iter().map(|a| a.conn.retries).sum();
    r
}

struct AbuserResult {
    attempts: u64,
    session_requests: u64,
    sessions_accepted: u64,
    placements_attempted: u64,
    placements_accepted: u64,
    session_refused: BTreeMap<String, u64>,
    place_refused: BTreeMap<String, u64>,
    transport_errors: BTreeMap<String, u64>,
    connects: u64,
}

fn abuser_thread(
    cfg: &AbuseConfig,
    tid: usize,
    source: IpAddr,
    sessions: &Sessions,
    deadline: u64,
    counters: &AbuseCounters,
    stop: &AtomicBool,
) -> AbuserResult {
    if cfg.abuser_nice != 0 {
        crate::sys::nice_current_thread(cfg.abuser_nice);
    }
    let mut r = AbuserResult {
        attempts: 0,
        session_requests: 0,
        sessions_accepted: 0,
        placements_attempted: 0,
        placements_accepted: 0,
        session_refused: BTreeMap::new(),
        place_refused: BTreeMap::new(),
        transport_errors: BTreeMap::new(),
        connects: 0,
    };
    let mut rng = splitmix64(cfg.seed ^ 0xABu64 << 40 ^ tid as u64);
    let mut placer = Placer::default();
    let mut conn = KeepAlive::new(Some(source), cfg.target);
    let mut held = None;
    let pause = |ms: u64| {
        let end = now_ns() + ms * 1_000_000;
        while now_ns() < end.min(deadline) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(ms.min(20)));
        }
    };
    while now_ns() < deadline && !stop.load(Ordering::Relaxed) {
        r.attempts += 1;
        counters.abuser_attempts.fetch_add(1, Ordering::Relaxed);
        r.session_requests += 1;
        let minted = match sessions.mint(&mut conn, &mut held, Some(stop)) {
            Ok(m) => m,
            Err(e) => {
                *r.transport_errors.entry(errno_name(&e)).or_default() += 1;
                conn.reset();
                pause(10);
                continue;
            }
        };
        let token = match minted {
            Minted::Token(t) => t,
            Minted::Stopped => break,
            Minted::Refused { code, retry_after_ms, .. } => {
                *r.session_refused.entry(code).or_default() += 1;
                if let (true, Some(ms)) = (cfg.honor_retry_after, retry_after_ms) {
                    pause(ms);
                }
                continue;
            }
        };
        r.sessions_accepted += 1;
        counters.abuser_sessions.fetch_add(1, Ordering::Relaxed);
        rng = splitmix64(rng);
        let (x, y, color) = pixel_for(rng, cfg.width, cfg.height, cfg.palette_len);
        r.placements_attempted += 1;
        match placer.place(&mut conn, &token, x, y, color) {
            Ok(Placement::Accepted(_)) => {
                r.placements_accepted += 1;
                counters.abuser_placed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Placement::Refused { code, retry_after_ms, .. }) => {
                *r.place_refused.entry(code).or_default() += 1;
                if let (true, Some(ms)) = (cfg.honor_retry_after, retry_after_ms) {
                    pause(ms);
                }
            }
            Err(e) => {
                *r.transport_errors.entry(errno_name(&e)).or_default() += 1;
                conn.reset();
            }
        }
    }
    r.connects = conn.connects;
    r
}

fn merge(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Runs the measured phase: the abuser (if any) and the honest users together for
/// `cfg.duration`, or until `stop`. `tick` is called every 50 ms from the calling thread.
pub fn run(
    cfg: &AbuseConfig,
    honest: Vec<Vec<HonestAddrHandle>>,
    abuser_sessions: Arc<Sessions>,
    counters: Arc<AbuseCounters>,
    stop: Arc<AtomicBool>,
    mut tick: impl FnMut(),
) -> AbuseReport {
    let start = now_ns() + 50_000_000;
    let deadline = start + cfg.duration.as_nanos() as u64;
    let cfg_arc = Arc::new(cfg.clone());
    let honest_threads = honest.len();
    let hh: Vec<_> = honest
        .into_iter()
        .enumerate()
        .map(|(t, addrs)| {
            let (cfg, counters, stop) = (cfg_arc.clone(), counters.clone(), stop.clone());
            let addrs: Vec<HonestAddr> = addrs.into_iter().map(|h| h.0).collect();
            std::thread::Builder::new()
                .name(format!("honest-{t}"))
                .spawn(move || honest_thread(&cfg, t, addrs, start, deadline, &counters, &stop))
                .expect("spawning an honest thread")
        })
        .collect();
    let ah: Vec<_> = match cfg.abuser {
        Some(src) => (0..cfg.abuser_conns)
            .map(|t| {
                let (cfg, counters, stop, sessions) =
                    (cfg_arc.clone(), counters.clone(), stop.clone(), abuser_sessions.clone());
                std::thread::Builder::new()
                    .name(format!("abuser-{t}"))
                    .spawn(move || {
                        while now_ns() < start {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        abuser_thread(&cfg, t, src, &sessions, deadline, &counters, &stop)
                    })
                    .expect("spawning an abuser thread")
            })
            .collect(),
        None => Vec::new(),
    };
    while now_ns() < deadline && !(hh.iter().all(|h| h.is_finished()) && ah.iter().all(|h| h.is_finished())) {
        std::thread::sleep(Duration::from_millis(50));
        tick();
    }
    // Abusers may be mid-solve: the stop flag ends the search.
    stop.store(true, Ordering::SeqCst);
    let elapsed_s = (now_ns().min(deadline).max(start) - start) as f64 / 1e9;
    let per_s = |n: u64| if elapsed_s > 0.0 { n as f64 / elapsed_s } else { 0.0 };

    let mut h = HonestReport {
        users: cfg.honest,
        source_addrs: cfg.honest_sources.len().min(cfg.honest),
        max_users_per_addr: cfg.honest.div_ceil(cfg.honest_sources.len().max(1)),
        threads: honest_threads,
        period_ms: cfg.cooldown_ms + cfg.slack_ms,
        nice: cfg.honest_nice,
        nice_applied: true,
        ..Default::default()
    };
    let (mut lat, mut rej, mut lag) = (LatencyHist::new(), LatencyHist::new(), LatencyHist::new());
    for t in hh {
        let Ok(r) = t.join() else { continue };
        h.nice_applied &= r.niced;
        h.nominal += r.nominal;
        h.attempted += r.attempted;
        h.accepted += r.accepted;
        merge(&mut h.refused, &r.refused);
        h.transport_errors += r.transport_errors;
        h.retries += r.retries;
        lat.add(&r.lat);
        rej.add(&r.rej_lat);
        lag.add(&r.lag);
    }
    h.latency = lat.summary();
    h.refused_latency = rej.summary();
    h.schedule_lag = lag.summary();
    h.all_accepted = h.attempted > 0 && h.accepted == h.attempted;

    let abuser = cfg.abuser.map(|src| {
        let mut a = AbuserReport {
            source_addr: src.to_string(),
            conns: cfg.abuser_conns,
            nice: cfg.abuser_nice,
            honor_retry_after: cfg.honor_retry_after,
            ..Default::default()
        };
        for t in ah {
            let Ok(r) = t.join() else { continue };
            a.attempts += r.attempts;
            a.session_requests += r.session_requests;
            a.sessions_accepted += r.sessions_accepted;
            a.placements_attempted += r.placements_attempted;
            a.placements_accepted += r.placements_accepted;
            merge(&mut a.session_refused, &r.session_refused);
            merge(&mut a.place_refused, &r.place_refused);
            merge(&mut a.transport_errors, &r.transport_errors);
            a.connects += r.connects;
        }
        for code in LIMIT_CODES {
            let n = a.session_refused.get(code).copied().unwrap_or(0) + a.place_refused.get(code).copied().unwrap_or(0);
            a.rate_limited.insert(code.to_string(), n);
        }
        let sc = &abuser_sessions.counters;
        a.proof = abuser_sessions.proof();
        a.challenges = sc.challenges.load(Ordering::Relaxed);
        a.solves = sc.solves.load(Ordering::Relaxed);
        let solve_ns = sc.solve_ns.load(Ordering::Relaxed);
        a.solve_mean_ms = (a.solves > 0).then(|| solve_ns as f64 / 1e6 / a.solves as f64);
        a.hashes = sc.hashes.load(Ordering::Relaxed);
        a.attempts_per_s = per_s(a.attempts);
        a.sessions_accepted_per_s = per_s(a.sessions_accepted);
        a.placements_accepted_per_s = per_s(a.placements_accepted);
        a.requests_per_s = per_s(a.challenges + a.session_requests + a.placements_attempted);
        a
    });
    AbuseReport { duration_s: elapsed_s, cooldown_ms: cfg.cooldown_ms, abuser, honest: h }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_sources_skip_the_abuser_and_edges() {
        let abuser: IpAddr = "127.0.1.2".parse().unwrap();
        let v = auto_honest_sources(300, Some(abuser));
        assert_eq!(v.len(), 300);
        assert!(!v.contains(&abuser));
        assert_eq!(v[0].to_string(), "127.0.1.1");
        assert_eq!(v[1].to_string(), "127.0.1.3");
        assert!(v.iter().all(|a| matches!(a, IpAddr::V4(x) if x.octets()[3] != 0 && x.octets()[3] != 255)));
        assert_eq!(v[253].to_string(), "127.0.2.1");
    }
}
