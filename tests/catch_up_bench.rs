//! Benchmarks of the catch-up path (issue 9), not tests: ignored by default, they print figures
//! (lines starting with BENCH) for bench/RESULTS.md and assert only that the server stayed
//! correct. Run on an otherwise idle machine:
//!
//!     cargo test --release --test catch_up_bench -- --ignored --nocapture --test-threads 1
//!
//! The server gets a 2,000,000-edit embedded log written directly in the log's format (what two
//! million placements would have written), and a 2,000,000-edit catch-up window.

mod common;

use common::Server;
use placecast::edit_log::file::{encode, LOG_FILE, RECORD};
use placecast::edit_log::Edit;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EDITS: u64 = 2_000_000;

fn write_log(dir: &std::path::Path) {
    let mut out = vec![0u8; EDITS as usize * RECORD];
    for v in 1..=EDITS {
        let e = Edit {
            x: (v % 1000) as u16,
            y: (v / 1000 % 1000) as u16,
            color: (v % 16) as u8,
            user: v,
            ts_ms: v,
            ext: 0,
            aux: 0,
        };
        encode(v, &e, &mut out[(v as usize - 1) * RECORD..]);
    }
    std::fs::write(dir.join(LOG_FILE), out).unwrap();
}

fn raise_nofile() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer, then a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap()
}

/// Kernel TCP memory of the whole host, KiB (`/proc/net/sockstat`, in pages).
fn tcp_mem_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let pages: u64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1)?.parse().ok())
        .unwrap();
    pages * 4
}

fn upgrade(since: u64) -> Vec<u8> {
    format!("GET /ws?since={since} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}

fn connect_from(src: Ipv4Addr, dst: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(b) = rcvbuf {
        s.set_recv_buffer_size(b)?;
    }
    s.bind(&SocketAddr::new(src.into(), 0).into())?;
    s.connect(&dst.into())?;
    Ok(s.into())
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn stalled_catch_up_clients_cost_a_bounded_amount_and_are_closed() {
    raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let s = Server::start_in(
        dir.path(),
        common::free_port(),
        &["--window", "2000000", "--catchups-per-addr-per-min", "0", "--catch-up-drain-ms", "10000"],
    );
    let pid = s.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let (rss0, tcp0) = (rss_kib(pid), tcp_mem_kib());
    let n = 3000u64;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..n {
        // Spread over the window so heads are private (the worst case for sharing).
        let since = 1 + (i * 653) % (EDITS - 100_000);
        let src = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        let mut c = connect_from(src, s.addr, Some(4096)).unwrap();
        c.write_all(&upgrade(since)).unwrap();
        clients.push(c);
    }
    std::thread::sleep(Duration::from_secs(3));
    let (rss1, tcp1) = (rss_kib(pid), tcp_mem_kib());
    println!(
        "BENCH {n} stalled catch-up clients (2M-edit window, private heads): server RSS +{} KiB ({:.1} KiB each), kernel TCP memory +{} KiB ({:.1} KiB each), opened in {} ms",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / n as f64,
        tcp1.saturating_sub(tcp0),
        tcp1.saturating_sub(tcp0) as f64 / n as f64,
        started.elapsed().as_millis()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metric("placecast_closed_catch_up_stalled_total") < n {
        assert!(
            Instant::now() < deadline,
            "stalled clients not closed: {}",
            s.metric("placecast_closed_catch_up_stalled_total")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed_after = started.elapsed();
    drop(clients);
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "BENCH all {n} closed (4000) {} ms after they connected (--catch-up-drain-ms 10000); server RSS then {} KiB over the start ({} KiB before the clients)",
        closed_after.as_millis(),
        rss_kib(pid).saturating_sub(rss0) as i64,
        rss0
    );
}

/// One normal client's wait from sending its upgrade with `since` to its first (catch-up) batch.
fn catch_up_wait(addr: SocketAddr, since: u64) -> Option<Duration> {
    let started = Instant::now();
    let mut c = connect_from(Ipv4Addr::new(127, 0, 9, 9), addr, None).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    c.write_all(&upgrade(since)).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = Vec::new();
    loop {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n.min(4096)]);
        // The first binary frame (0x82) after the 101 and the hello is the catch-up batch.
        let body = seen.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        if seen[body..].contains(&0x82) {
            return Some(started.elapsed());
        }
        if seen.len() > 1 << 20 {
            return None;
        }
    }
}

fn storm(addr: SocketAddr, label: &str, extra: &[&str], dir: &std::path::Path) {
    let mut flags = vec!["--window", "2000000"];
    flags.extend_from_slice(extra);
    let s = Server::start_in(dir, common::free_port(), &flags);
    let addr = if addr.port() == 0 { s.addr } else { addr };
    std::thread::sleep(Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let stormers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, cycles) = (stop.clone(), cycles.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let since = 1 + (i * 7919 + t * 104_729) % (EDITS - 1);
                    if let Ok(mut c) = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr, None) {
                        let _ = c.write_all(&upgrade(since));
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut waits = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(w) = catch_up_wait(addr, EDITS - 1000) {
            waits.push(w);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in stormers {
        t.join().unwrap();
    }
    waits.sort();
    let pct = |p: f64| waits.get(((waits.len() as f64 - 1.0) * p) as usize).map_or(0, |d| d.as_millis());
    println!(
        "BENCH catch-up storm, {label}: {:.0} connect+upgrade(since=old)+close cycles/s from one address for 20 s; a normal client's catch-up wait over {} tries: p50 {} ms, p99 {} ms, max {} ms; refused by the address rate {}, by the full queue {}, catch-ups served {}",
        cycles.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        waits.len(),
        pct(0.5),
        pct(0.99),
        waits.last().map_or(0, |d| d.as_millis()),
        s.metric("placecast_admission_refused_total{rule=\"catch_ups_per_address\"}"),
        s.metric("placecast_admission_refused_total{rule=\"catch_up_queue_full\"}"),
        s.metric("placecast_catchups"),
    );
    assert!(!waits.is_empty(), "the normal client was served");
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn a_catch_up_storm_does_not_delay_a_normal_client() {
    raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    storm(any, "default per-address rate (120/min)", &["--catchups-per-addr-per-min", "120"], dir.path());
    storm(
        any,
        "per-address rate off (only the bounded queue and 1013)",
        &["--catchups-per-addr-per-min", "0"],
        dir.path(),
    );
}
