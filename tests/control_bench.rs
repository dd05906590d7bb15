//! Region changes at event scale (a benchmark, not a test: `#[ignore]`, run by hand; figures go
//! to bench/RESULTS.md):
//!
//! ```sh
//! cargo build --release -p placecast -p placecast-load
//! PLACECAST_BIN=target/release/placecast cargo test --release --test control_bench -- --ignored --nocapture
//! ```
//!
//! A 1000x1000 canvas with a generated event of 2,000,000 edits imported; a WebSocket client
//! following the live stream; a user placing once every 20 ms throughout. Then a 500x500 restore
//! to the middle of the event and a 500x500 fill: the request's time, the pixels logged, the
//! frames the follower got (edits, bytes), and the placements' answer times during the change
//! (does fan-out stall?). Baseline in the same run: the same pixels placed one by one through
//! the placement API, measured on a 50x50 square and scaled (the only way to do it without
//! region changes).
//!
//! `resize_1000_to_2000_on_a_live_canvas`: the same event, follower and steady user; then the
//! canvas grows from 1000x1000 to 2000x2000: the request's time, when the follower has the resize
//! message, the longest pause between its frames around it, the placements' answer times, and
//! the first snapshot of the grown canvas. Baseline in the same run: what each client would
//! fetch without a live resize (a reload: the grown canvas's snapshot).
mod common;

use common::{free_port, Got, Server, TEST_SECRET};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-secret-1-0123456789abcdefghijklmnop";

fn load_bin() -> String {
    let dir = Path::new(&common::bin()).parent().unwrap().to_path_buf();
    dir.join("placecast-load").to_str().unwrap().to_string()
}

fn admin(s: &Server, action: &str, body: &str) -> (serde_json::Value, f64) {
    let t = Instant::now();
    let auth = format!("Bearer {ADMIN}");
    let r = s.http("POST", &format!("/api/v1/admin/{action}"), &[("Authorization", &auth)], body.as_bytes());
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r.status, 200, "{action}: {}", String::from_utf8_lossy(&r.body));
    (r.json(), ms)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Follows the stream from `at` until version `to`; returns (frames, edits, bytes, version).
fn follow(ws: &mut common::Ws, mut at: u64, to: u64) -> (usize, usize, usize, u64) {
    let (mut frames, mut edits, mut bytes) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while at < to {
        assert!(Instant::now() < deadline, "stuck at {at}, want {to}");
        match ws.next() {
            Got::Batch { from, to: t, edits: e } => {
                assert_eq!(from, at);
                frames += 1;
                edits += e.len();
                bytes += placecast::protocol::BATCH_HEADER_LEN + 4 * e.len();
                at = t;
            }
            Got::Resize { from, to: t, .. } => {
                assert_eq!(from, at);
                frames += 1;
                bytes += placecast::protocol::RESIZE_LEN;
                at = t;
            }
            _ => {}
        }
    }
    (frames, edits, bytes, at)
}

/// A 1000x1000 canvas with a generated event of 2,000,000 edits, served; and its head.
fn event_server(tmp: &Path) -> (Arc<Server>, u64) {
    let csv = tmp.join("trace.csv");
    let ok = Command::new(load_bin())
        .args(["trace", "--edits", "2000000", "--seed", "5", "--width", "1000", "--height", "1000", "--out"])
        .arg(&csv)
        .status()
        .unwrap()
        .success();
    assert!(ok, "placecast-load trace");
    let data = tmp.join("data");
    let out = Command::new(common::bin())
        .args(["import", "--width", "1000", "--height", "1000", "--data-dir", data.to_str().unwrap(), "--in"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flags = ["--width", "1000", "--height", "1000", "--cooldown", "0", "--admin-token", ADMIN];
    let s = Arc::new(Server::start_in(&data, free_port(), &flags));
    common::wait_for(120, "the history", || {
        (s.http("GET", "/api/v1/canvas?at=1000000", &[], b"").status == 200).then_some(())
    });
    let head = s.http("GET", "/healthz", &[], b"").json()["version"].as_u64().unwrap();
    (s, head)
}

type Answers = Vec<(Instant, f64)>;

/// A user placing every 20 ms until `stop`: their answer times show whether placements stall.
fn steady_placer(s: &Arc<Server>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<Answers> {
    let (s, stop) = (s.clone(), stop.clone());
    std::thread::spawn(move || {
        let t = placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint("steady", 0).unwrap();
        let mut ms = Vec::new();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            assert_eq!(s.place(&t, 900 + i % 100, 900, 1).status, 200);
            ms.push((Instant::now(), t0.elapsed().as_secs_f64() * 1e3));
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        ms
    })
}

/// The placements' answer times inside the `during` spans and outside them.
fn report_placements(answers: &Answers, during: &[(Instant, Instant)]) {
    let (inside, outside): (Vec<_>, Vec<_>) =
        answers.iter().partition(|(at, _)| during.iter().any(|(a, b)| at >= a && at <= b));
    let ms = |v: Vec<&(Instant, f64)>| v.iter().map(|(_, m)| *m).collect::<Vec<f64>>();
    let (i, o) = (ms(inside), ms(outside));
    if !i.is_empty() {
        println!(
            "placements during the changes: n={}, p50 {:.1} ms, max {:.1} ms; otherwise n={}, p50 {:.1} ms, max {:.1} ms",
            i.len(),
            percentile(i.clone(), 0.5),
            percentile(i, 1.0),
            o.len(),
            percentile(o.clone(), 0.5),
            percentile(o, 1.0)
        );
    }
}

#[test]
#[ignore = "benchmark: run by hand, see the module doc"]
fn restore_and_fill_500x500_on_a_live_canvas() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, head) = event_server(tmp.path());
    let stop = Arc::new(AtomicBool::new(false));
    let placer = steady_placer(&s, &stop);
    let mut ws = s.ws(&format!("?since={head}"));
    std::thread::sleep(Duration::from_millis(500));

    let mut during = Vec::new();
    let mut at = head;
    for (action, body) in [
        ("restore", r#"{"x":0,"y":0,"w":500,"h":500,"version":1000000}"#.to_string()),
        ("fill", r#"{"x":250,"y":250,"w":500,"h":500,"color":3}"#.to_string()),
    ] {
        let started = Instant::now();
        let (r, ms) = admin(&s, action, &body);
        let v = r["version"].as_u64().unwrap();
        let seen_at = Instant::now();
        let (frames, edits, bytes, reached) = follow(&mut ws, at, v);
        at = reached;
        println!(
            "{action} 500x500: {} pixels logged, answered in {ms:.0} ms; the follower got {frames} frames, {edits} edits (with the steady user's), {:.2} MB, the last {:.0} ms after the answer",
            r["pixels"],
            bytes as f64 / 1e6,
            seen_at.elapsed().as_secs_f64() * 1e3
        );
        during.push((started, Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    report_placements(&placer.join().unwrap(), &during);

    // Baseline: the same kind of change placed pixel by pixel through the placement API.
    let t = placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint("by-hand", 0).unwrap();
    let started = Instant::now();
    for y in 0..50 {
        for x in 0..50 {
            assert_eq!(s.place(&t, x, 600 + y, 5).status, 200);
        }
    }
    let per = started.elapsed().as_secs_f64() / 2500.0;
    println!(
        "baseline: 2,500 placements one by one took {:.2} s ({:.2} ms each): 250,000 would take {:.0} s",
        per * 2500.0,
        per * 1e3,
        per * 250_000.0
    );
}

#[test]
#[ignore = "benchmark: run by hand, see the module doc"]
fn resize_1000_to_2000_on_a_live_canvas() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, head) = event_server(tmp.path());
    let stop = Arc::new(AtomicBool::new(false));
    let placer = steady_placer(&s, &stop);
    let mut ws = s.ws(&format!("?since={head}"));
    ws.set_timeout(Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    let (r, ms) = admin(&s, "resize", r#"{"width":2000,"height":2000}"#);
    let v = r["version"].as_u64().unwrap();
    let answered = Instant::now();
    // Every frame for 2 s around the resize: when each came, and when the resize did.
    let (mut at, mut last_frame, mut longest, mut resize_seen) = (head, started, 0f64, None);
    let until = answered + Duration::from_secs(2);
    while Instant::now() < until || at < v {
        match ws.next() {
            Got::Batch { from, to, .. } => {
                assert_eq!(from, at);
                at = to;
            }
            Got::Resize { from, to, width, height } => {
                assert_eq!((from, to, width, height), (v - 1, v, 2000, 2000));
                at = to;
                resize_seen = Some(Instant::now());
            }
            Got::Closed(c) => panic!("closed {c:?}"),
            _ => continue,
        }
        let now = Instant::now();
        longest = longest.max((now - last_frame).as_secs_f64() * 1e3);
        last_frame = now;
    }
    let seen = resize_seen.expect("the resize message");
    // Signed: the message usually reaches the follower before the route's answer does.
    let after_answer =
        if seen >= answered { (seen - answered).as_secs_f64() * 1e3 } else { -((answered - seen).as_secs_f64() * 1e3) };
    println!(
        "resize 1000x1000 -> 2000x2000: answered in {ms:.1} ms; the follower had the 28-byte resize message {after_answer:.1} ms after the answer; longest pause between its frames: {longest:.0} ms (batches every 100 ms)"
    );
    let t = Instant::now();
    let snap = s.http("GET", "/api/v1/canvas", &[], b"");
    let first = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let again = s.http("GET", "/api/v1/canvas", &[], b"");
    let cached = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(placecast::protocol::parse_snapshot(&again.body).unwrap().width, 2000);
    println!(
        "baseline: a reload instead (the grown snapshot): {:.2} MB per client, the first fetch {first:.1} ms, cached {cached:.1} ms",
        snap.body.len() as f64 / 1e6
    );
    stop.store(true, Ordering::Relaxed);
    report_placements(&placer.join().unwrap(), &[(started, answered + Duration::from_millis(500))]);
}
