//! The placement driver: anonymous tokens from `POST /api/v1/session`, then `POST
//! /api/v1/place` over a few keep-alive HTTP/1.1 connections (one blocking thread each) at a
//! fixed total rate (open loop; 0 = as fast as the server answers), for a bounded time. With
//! `Via::Ws` the same placements go as WebSocket `place` messages instead (`wsplace`), as the
//! web client sends them.
//!
//! For every accepted placement it records in the [`SendTable`] the instant the request was
//! sent, keyed by the version the server answered, which is what client threads measure
//! placement-to-receive latency against. It also counts accepted and rejected placements (by
//! error code) and the request round-trip latency.

use crate::error::LoadError;
use crate::hist::{LatencyHist, LatencySummary};
use crate::http::HttpConn;
use crate::sendtable::SendTable;
use crate::session::Sessions;
use crate::sys::now_ns;
use crate::ws::splitmix64;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the driver's placements reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /api/v1/place` on keep-alive HTTP/1.1 connections.
    #[default]
    Http,
    /// `{"type":"place"}` messages on WebSocket connections (the web client's way).
    Ws,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub target: SocketAddr,
    /// Placements per second in total; 0 = closed loop, as fast as answers come.
    pub rate: f64,
    pub duration: Duration,
    /// Keep-alive connections (= threads).
    pub conns: usize,
    pub width: u32,
    pub height: u32,
    pub palette_len: u32,
    pub seed: u64,
    pub via: Via,
}

/// Live counters, read by the progress printer.
#[derive(Default)]
pub struct DriverCounters {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Highest version answered so far (0 = none).
    pub last_version: AtomicU64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DriverReport {
    pub target_rate: f64,
    pub conns: usize,
    pub elapsed_s: f64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Refused placements by `error.code` (or `status_NNN` without one).
    pub rejected: BTreeMap<String, u64>,
    pub rejected_total: u64,
    /// Connection or protocol failures (each followed by a reconnect).
    pub transport_errors: u64,
    /// Sends that were more than 1 s behind schedule (the schedule was reset).
    pub schedule_resets: u64,
    pub first_version: Option<u64>,
    pub last_version: Option<u64>,
    /// Request round trip (send to complete answer) of accepted placements.
    pub request_latency: LatencySummary,
    /// Request round trip of refused placements.
    pub rejected_latency: LatencySummary,
}

/// Gets `n` anonymous user tokens (`POST /api/v1/session`) using up to `threads` connections,
/// solving the server's proof of work when it asks for one (or from the start with `proof`).
pub fn obtain_tokens(target: SocketAddr, n: usize, threads: usize, proof: bool) -> Result<Vec<String>, LoadError> {
    obtain_tokens_from(target, None, n, threads, &Arc::new(Sessions::new(proof)))
}

/// [`obtain_tokens`] from source address `source`, sharing `sessions` (its proof mode and costs).
pub fn obtain_tokens_from(
    target: SocketAddr,
    source: Option<IpAddr>,
    n: usize,
    threads: usize,
    sessions: &Arc<Sessions>,
) -> Result<Vec<String>, LoadError> {
    let threads = threads.clamp(1, n.max(1));
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let err: Arc<Mutex<Option<LoadError>>> = Arc::new(Mutex::new(None));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (out, err, sessions) = (out.clone(), err.clone(), sessions.clone());
            let mine = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || {
                let run = || -> Result<Vec<String>, LoadError> {
                    let mut c = crate::http::KeepAlive::new(source, target);
                    let mut toks = Vec::with_capacity(mine);
                    for _ in 0..mine {
                        toks.push(sessions.token(&mut c)?);
                    }
                    Ok(toks)
                };
                match run() {
                    Ok(t) => out.lock().unwrap().extend(t),
                    Err(e) => *err.lock().unwrap() = Some(e),
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    if let Some(e) = err.lock().unwrap().take() {
        return Err(e);
    }
    let v = std::mem::take(&mut *out.lock().unwrap());
    Ok(v)
}

/// Finds `"key":<digits>` in a JSON body without a full parse (the hot 200 path).
pub fn json_u64_field(body: &[u8], key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let pos = body.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let digits: Vec<u8> =
        body[pos..].iter().skip_while(|b| **b == b' ').take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The answer to one `POST /api/v1/place`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// 200 with the version the edit got.
    Accepted(u64),
    /// Refused: HTTP status, `error.code` (or `status_NNN`, or `200_without_version`), retry hint.
    Refused { status: u16, code: String, retry_after_ms: Option<u64> },
}

/// Sends placements, reusing its request buffers.
#[derive(Default)]
pub struct Placer {
    auth: String,
    body: String,
}

impl Placer {
    /// `POST /api/v1/place` of pixel (x, y) in `color` as `token`'s user, on `conn`.
    pub fn place(
        &mut self,
        conn: &mut impl crate::http::Requester,
        token: &str,
        x: u64,
        y: u64,
        color: u64,
    ) -> std::io::Result<Placement> {
        use std::fmt::Write;
        self.body.clear();
        let _ = write!(self.body, "{{\"x\":{x},\"y\":{y},\"color\":{color}}}");
        self.auth.clear();
        let _ = write!(self.auth, "Bearer {token}");
        let resp = conn.send("POST", "/api/v1/place", &[("Authorization", &self.auth)], self.body.as_bytes())?;
        if resp.status == 200 {
            return Ok(match json_u64_field(&resp.body, "version") {
                Some(v) => Placement::Accepted(v),
                None => Placement::Refused { status: 200, code: "200_without_version".into(), retry_after_ms: None },
            });
        }
        Ok(Placement::Refused { status: resp.status, code: resp.error_code(), retry_after_ms: resp.retry_after_ms() })
    }
}

/// A pixel and color from one random draw.
pub fn pixel_for(rng: u64, width: u32, height: u32, palette_len: u32) -> (u64, u64, u64) {
    let pixels = (width as u64 * height as u64).max(1);
    let i = rng % pixels;
    let color = (rng >> 40) % palette_len.max(1) as u64;
    (i % width.max(1) as u64, i / width.max(1) as u64, color)
}

struct ThreadResult {
    sent: u64,
    accepted: u64,
    rejected: BTreeMap<String, u64>,
    transport_errors: u64,
    schedule_resets: u64,
    first: Option<u64>,
    last: Option<u64>,
    ok_lat: LatencyHist,
    rej_lat: LatencyHist,
}

/// Runs the driver until `cfg.duration` has passed or `stop` is set; blocks until all its
/// threads are done.
pub fn run(
    cfg: &DriverConfig,
    tokens: Arc<Vec<String>>,
    table: Option<Arc<SendTable>>,
    counters: Arc<DriverCounters>,
    stop: Arc<AtomicBool>,
) -> DriverReport {
    let conns = cfg.conns.max(1);
    let start = now_ns();
    let deadline = start + cfg.duration.as_nanos() as u64;
    let interval_ns = if cfg.rate > 0.0 { (conns as f64 * 1e9 / cfg.rate) as u64 } else { 0 };
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let cfg = cfg.clone();
            let tokens = tokens.clone();
            let table = table.clone();
            let counters = counters.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("driver-{i}"))
                .spawn(move || {
                    let offset = if cfg.rate > 0.0 { (i as f64 * 1e9 / cfg.rate) as u64 } else { 0 };
                    drive(
                        &cfg,
                        i,
                        conns,
                        start + offset,
                        interval_ns,
                        deadline,
                        &tokens,
                        table.as_deref(),
                        &counters,
                        &stop,
                    )
                })
                .expect("spawning a driver thread")
        })
        .collect();
    let mut rep = DriverReport { target_rate: cfg.rate, conns, ..Default::default() };
    let mut ok_lat = LatencyHist::new();
    let mut rej_lat = LatencyHist::new();
    for h in handles {
        let Ok(r) = h.join() else { continue };
        rep.sent += r.sent;
        rep.accepted += r.accepted;
        for (k, v) in r.rejected {
            *rep.rejected.entry(k).or_default() += v;
        }
        rep.transport_errors += r.transport_errors;
        rep.schedule_resets += r.schedule_resets;
        rep.first_version = match (rep.first_version, r.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        rep.last_version = rep.last_version.max(r.last);
        ok_lat.add(&r.ok_lat);
        rej_lat.add(&r.rej_lat);
    }
    rep.elapsed_s = (now_ns() - start) as f64 / 1e9;
    rep.rejected_total = rep.rejected.values().sum();
    rep.accepted_per_s = if rep.elapsed_s > 0.0 { rep.accepted as f64 / rep.elapsed_s } else { 0.0 };
    rep.request_latency = ok_lat.summary();
    rep.rejected_latency = rej_lat.summary();
    rep
}

#[allow(clippy::too_many_arguments)]
fn drive(
    cfg: &DriverConfig,
    idx: usize,
    conns: usize,
    first_send: u64,
    interval_ns: u64,
    deadline: u64,
    tokens: &[String],
    table: Option<&SendTable>,
    counters: &DriverCounters,
    stop: &AtomicBool,
) -> ThreadResult {
    let mut r = ThreadResult {
        sent: 0,
        accepted: 0,
        rejected: BTreeMap::new(),
        transport_errors: 0,
        schedule_resets: 0,
        first: None,
        last: None,
        ok_lat: LatencyHist::new(),
        rej_lat: LatencyHist::new(),
    };
    let mut rng = splitmix64(cfg.seed ^ (idx as u64) << 32);
    let mut conn: Option<Conn> = None;
    let mut next = first_send;
    let mut k = idx; // token index: thread idx, idx + conns, ...
    let mut placer = Placer::default();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut now = now_ns();
        if now >= deadline {
            break;
        }
        if interval_ns > 0 {
            if now < next {
                std::thread::sleep(Duration::from_nanos((next - now).min(deadline - now)));
                now = now_ns();
                if now >= deadline {
                    break;
                }
            } else if now > next + 1_000_000_000 {
                next = now;
                r.schedule_resets += 1;
            }
            next += interval_ns;
        }
        let tok = if tokens.is_empty() { "none" } else { &tokens[k % tokens.len()] };
        if conn.is_none() {
            match Conn::open(cfg, tok, idx) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    r.transport_errors += 1;
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        rng = splitmix64(rng);
        let (x, y, color) = pixel_for(rng, cfg.width, cfg.height, cfg.palette_len);
        k += conns;
        let t0 = now_ns();
        r.sent += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let res = conn.as_mut().expect("connected above").place(&mut placer, tok, x, y, color);
        let t1 = now_ns();
        match res {
            Ok(Placement::Accepted(v)) => {
                if let Some(t) = table {
                    t.record(v, t0);
                }
                r.accepted += 1;
                r.first = Some(r.first.map_or(v, |f| f.min(v)));
                r.last = Some(r.last.map_or(v, |l| l.max(v)));
                r.ok_lat.record_ns(t1 - t0);
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters.last_version.fetch_max(v, Ordering::Relaxed);
            }
            Ok(Placement::Refused { code, .. }) => {
                *r.rejected.entry(code).or_default() += 1;
                r.rej_lat.record_ns(t1 - t0);
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                if conn.as_ref().is_some_and(Conn::closing) {
                    conn = None;
                }
            }
            Err(_) => {
                r.transport_errors += 1;
                counters.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    r
}

/// A driver thread's connection.
enum Conn {
    Http(HttpConn),
    Ws(crate::wsplace::WsPlacer),
}

impl Conn {
    fn open(cfg: &DriverConfig, token: &str, idx: usize) -> std::io::Result<Self> {
        let timeout = Duration::from_secs(10);
        Ok(match cfg.via {
            Via::Http => Conn::Http(HttpConn::connect(cfg.target, timeout)?),
            Via::Ws => Conn::Ws(crate::wsplace::WsPlacer::connect(cfg.target, token, timeout, cfg.seed ^ idx as u64)?),
        })
    }

    fn place(&mut self, placer: &mut Placer, token: &str, x: u64, y: u64, color: u64) -> std::io::Result<Placement> {
        match self {
            Conn::Http(c) => placer.place(c, token, x, y, color),
            Conn::Ws(w) => w.place(token, x, y, color),
        }
    }

    /// Whether the server said it closes this connection after its answer (HTTP only: a
    /// WebSocket close arrives as an error).
    fn closing(&self) -> bool {
        matches!(self, Conn::Http(h) if h.closing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_version_field() {
        assert_eq!(json_u64_field(br#"{"version":123,"next_at_ms":5}"#, "version"), Some(123));
        assert_eq!(json_u64_field(br#"{"next_at_ms":5, "version": 77}"#, "version"), Some(77));
        assert_eq!(json_u64_field(br#"{"error":{}}"#, "version"), None);
    }
}
