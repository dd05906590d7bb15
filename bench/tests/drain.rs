//! Drain awareness of the client engine against a scripted WebSocket server on loopback: a
//! client closed with the reconnect hint + 1012 (or with 1001) waits the hinted delay, comes
//! back with `since=<its version>`, and the first batch after it is contiguous; a catch-up that
//! skips versions is counted as a drain gap. Small and fast (about 2 s).

use placecast_load::batch;
use placecast_load::engine::EngineConfig;
use placecast_load::fleet::LocalFleet;
use placecast_load::ws;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// `{"type":"reconnect","after_ms":200,"jitter_ms":100}` then 1012.
    Hinted,
    /// 1001 alone.
    GoingAway,
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn batch_frame(from: u64, to: u64) -> Vec<u8> {
    let edits: Vec<u32> = (from..to).map(|v| batch::pack(v as u32, (v % 16) as u8)).collect();
    let mut p = Vec::new();
    batch::encode_batch(from, to, &edits, 4, &mut p);
    frame(ws::OP_BINARY, &p)
}

/// Reads the upgrade request; returns (path, key).
fn read_upgrade(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head.lines().next()?.split(' ').nth(1)?.to_string();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key:").or_else(|| l.strip_prefix("sec-websocket-key:")))?
        .trim()
        .to_string();
    Some((path, key))
}

/// A server at version 5 that drains every live-only connection (after two batches) and serves
/// `since=V` connections a catch-up to 7 (from V, or from V + 1 with `gap`).
fn start_server(close: Close, gap: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let resumed = Arc::new(AtomicU64::new(0));
    let r2 = resumed.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let resumed = r2.clone();
            std::thread::spawn(move || {
                let Some((path, key)) = read_upgrade(&mut s) else { return };
                let accept = ws::accept_for(&key);
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&frame(ws::OP_TEXT, br#"{"type":"hello","version":0}"#)).unwrap();
                match path.strip_prefix("/ws?since=") {
                    None => {
                        s.write_all(&batch_frame(0, 3)).unwrap();
                        s.write_all(&batch_frame(3, 5)).unwrap();
                        std::thread::sleep(Duration::from_millis(100));
                        if close == Close::Hinted {
                            s.write_all(&frame(ws::OP_TEXT, br#"{"type":"reconnect","after_ms":200,"jitter_ms":100}"#))
                                .unwrap();
                            s.write_all(&frame(ws::OP_CLOSE, &[0x03, 0xf4, b'd'])).unwrap();
                        // 1012
                        } else {
                            s.write_all(&frame(ws::OP_CLOSE, &[0x03, 0xe9])).unwrap();
                            // 1001
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Some(v) => {
                        let v: u64 = v.parse().unwrap();
                        assert_eq!(v, 5, "reconnect with the last applied version");
                        resumed.fetch_add(1, Ordering::SeqCst);
                        s.write_all(&batch_frame(if gap { v + 1 } else { v }, 7)).unwrap();
                        // Stay open until the tester closes.
                        let mut tmp = [0u8; 256];
                        while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
                    }
                }
            });
        }
    });
    (addr, resumed)
}

fn engine(target: SocketAddr) -> EngineConfig {
    EngineConfig {
        target,
        sources: vec!["127.0.0.1".parse().unwrap()],
        seed: 9,
        connect_timeout_ms: 5000,
        max_payload: 1 << 20,
        latency_every: 0,
        since: None,
        track_below: 0,
        max_pending: 64,
        close_politely: true,
    }
}

fn run(close: Close, gap: bool, n: u64) -> placecast_load::engine::FleetResult {
    let (addr, resumed) = start_server(close, gap);
    let f = LocalFleet::start(engine(addr), n as usize, 0, 2, 1000.0, &[], None).unwrap();
    let t0 = Instant::now();
    while resumed.load(Ordering::SeqCst) < n || f.progress().frames < 3 * n {
        assert!(t0.elapsed() < Duration::from_secs(10), "clients did not come back: {:?}", f.progress());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    f.stop()
}

#[test]
fn hinted_drain_reconnects_with_since_and_no_gap() {
    let r = run(Close::Hinted, false, 8);
    let c = &r.counts;
    assert_eq!((c.drain_closes_hinted, c.drain_closes_1012, c.drain_closes_1001), (8, 0, 0));
    assert_eq!((c.drain_reconnects, c.drain_live_again, c.drain_not_live_at_end), (8, 8, 0));
    assert_eq!((c.drain_gaps, c.drain_duplicates, c.gaps), (0, 0, 0));
    assert_eq!(c.unexpected_disconnects, 0, "{:?}", r.disconnect_reasons);
    assert_eq!(r.close_codes.get("1012"), Some(&8));
    let lat = placecast_load::hist::LatencyHist::import(&r.drain_latency).summary();
    assert_eq!(lat.count, 8);
    // after_ms 200 + jitter below 100, plus the reconnect itself.
    assert!(lat.p50_us >= 200_000 && lat.max_us < 1_000_000, "{lat:?}");
}

#[test]
fn going_away_reconnects_within_a_second() {
    let r = run(Close::GoingAway, false, 4);
    let c = &r.counts;
    assert_eq!((c.drain_closes_1001, c.drain_live_again, c.drain_gaps), (4, 4, 0));
    let lat = placecast_load::hist::LatencyHist::import(&r.drain_latency).summary();
    assert!(lat.max_us < 1_500_000, "{lat:?}");
}

#[test]
fn a_catch_up_past_the_version_is_a_drain_gap() {
    let r = run(Close::Hinted, true, 3);
    assert_eq!((r.counts.drain_live_again, r.counts.drain_gaps, r.counts.gaps), (3, 3, 3));
}
