//! History benchmarks (not tests: `#[ignore]`, run by hand; figures go to bench/RESULTS.md).
//!
//! ```sh
//! cargo run --release -p placecast-load -- trace --edits 16000000 --out /tmp/trace16m.csv
//! cargo build --release -p placecast
//! PLACECAST_BIN=target/release/placecast HISTORY_BENCH_CSV=/tmp/trace16m.csv \
//!   cargo test --release --test history_bench -- --ignored --nocapture
//! ```
//!
//! On a 1000x1000 canvas with the whole event imported: the import and export rates, the
//! server's start (replaying the log and building the history), the history's disk cost
//! (records and keyframes), pixel lookups and canvases at V both over HTTP (loopback, keep-alive)
//! and in-process (`HistoryReader`), and the naive baselines measured in the same run: the canvas
//! at V by replaying the log from the start, and a pixel's last edit by scanning the log.
mod common;

use common::{free_port, Server};
use placecast::canvas::{Geometry, RPLACE_2017_PALETTE};
use placecast::history::{HistorySetup, HistoryWriter, Lookup};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn quantiles(mut us: Vec<f64>) -> String {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| us[((us.len() - 1) as f64 * p) as usize];
    format!("p50 {:.1} us, p99 {:.1} us, max {:.1} us (n={})", q(0.5), q(0.99), us[us.len() - 1], us.len())
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: std::net::SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { r: BufReader::new(s) }
    }

    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.r.get_mut(), "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (status, body)
    }
}

fn timed(what: &str, cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let s = t.elapsed().as_secs_f64();
    println!("{what}: {s:.1} s");
    s
}

fn dir_bytes(dir: &Path, prefix: &str) -> (u64, usize) {
    let mut total = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            total.0 += e.metadata().unwrap().len();
            total.1 += 1;
        }
    }
    total
}

#[test]
#[ignore = "benchmark: run by hand, see the module doc"]
fn history_at_event_scale() {
    let csv = std::env::var("HISTORY_BENCH_CSV").unwrap_or_else(|_| "/tmp/trace16m.csv".into());
    let tmp = tempfile::tempdir_in(std::env::var("HISTORY_BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let bin = common::bin();
    let canvas = ["--width", "1000", "--height", "1000"];
    let import_s = timed("import", Command::new(&bin).args(["import", "--data-dir", d, "--in", &csv]).args(canvas));
    let head = std::fs::metadata(data.join("edits.log")).unwrap().len() / 32;
    println!("import: {head} edits, {:.2} M edits/s", head as f64 / import_s / 1e6);

    let started = Instant::now();
    let port = free_port();
    let s = Server::start_in(
        &data,
        port,
        &["--width", "1000", "--height", "1000", "--cooldown", "0", "--catchups-per-addr-per-min", "0"],
    );
    common::wait_for(600, "readiness", || (s.http("GET", "/readyz", &[], b"").status == 200).then_some(()));
    println!("start with {head} edits (replay + history index + keyframes): {:.1} s", started.elapsed().as_secs_f64());
    let hist = data.join("history");
    let kf_every = 65_536;
    common::wait_for(600, "every keyframe", || (dir_bytes(&hist, "kf-").1 as u64 == head / kf_every).then_some(()));
    let (rec_bytes, _) = dir_bytes(&hist, "edits.hist");
    let (kf_bytes, kf_count) = dir_bytes(&hist, "kf-");
    println!(
        "history on disk: records {:.0} MB ({} B/edit), {kf_count} keyframes {:.1} MB ({:.0} KB each)",
        rec_bytes as f64 / 1e6,
        rec_bytes / head.max(1),
        kf_bytes as f64 / 1e6,
        kf_bytes as f64 / kf_count.max(1) as f64 / 1e3
    );

    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut conn = Conn::open(s.addr);
    for n in [1, 10, 100] {
        let mut us = Vec::new();
        for _ in 0..2_000 {
            let (x, y) = (rng.next() % 1000, rng.next() % 1000);
            let t = Instant::now();
            let (status, _) = conn.get(&format!("/api/v1/pixel?x={x}&y={y}&history={n}"));
            us.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(status, 200);
        }
        println!("HTTP pixel lookup, history={n}: {}", quantiles(us));
    }
    for (what, path) in [("binary", "/api/v1/canvas"), ("PNG", "/api/v1/canvas.png")] {
        let mut us = Vec::new();
        for _ in 0..if what == "PNG" { 40 } else { 200 } {
            let v = rng.next() % head;
            let t = Instant::now();
            let (status, _) = conn.get(&format!("{path}?at={v}"));
            us.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(status, 200);
        }
        println!("HTTP canvas at a random V ({what}, uncached): {}", quantiles(us));
    }
    let mut us = Vec::new();
    for _ in 0..50 {
        let from = rng.next() % (head / 65_536) * 65_536;
        let t = Instant::now();
        let (status, _) = conn.get(&format!("/api/v1/edits?from={from}"));
        us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(status, 200);
    }
    println!("HTTP edit chunk (65,536 versions): {}", quantiles(us));
    drop(conn);
    drop(s);

    // In-process: the index itself.
    let g = Geometry::new(1000, 1000, RPLACE_2017_PALETTE.to_vec()).unwrap();
    let log_id = placecast::edit_log::file::identity(&data);
    let w = HistoryWriter::open(HistorySetup {
        data_dir: &data,
        geometry: g.clone(),
        log_id: &log_id,
        log_head: head,
        keyframe_every: kf_every,
        lookup: Lookup::Names,
        secret: b"bench",
    })
    .unwrap();
    assert_eq!(w.span(), (0, head));
    let r = w.reader();
    for n in [1, 10, 100] {
        let mut us = Vec::new();
        for _ in 0..100_000 {
            let (x, y) = ((rng.next() % 1000) as u32, (rng.next() % 1000) as u32);
            let t = Instant::now();
            let found = r.pixel(x, y, n).unwrap().unwrap();
            us.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(found.len() <= n);
        }
        println!("in-process pixel lookup, history={n}: {}", quantiles(us));
    }
    let mut us = Vec::new();
    for _ in 0..200 {
        let v = rng.next() % head;
        let t = Instant::now();
        let c = r.canvas_at(v).unwrap();
        us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(c.pixels().len(), 1_000_000);
    }
    println!("in-process canvas at a random V: {}", quantiles(us));

    // Baselines, same run: replay the log from version 1 to V (no keyframes), and find a pixel's
    // last edit by scanning the whole log (no index).
    let log = std::fs::read(data.join("edits.log")).unwrap();
    let t = Instant::now();
    let v = head;
    let mut px = vec![0u8; 1_000_000];
    for rec in log.chunks_exact(32).take(v as usize) {
        let (x, y) = (u16::from_le_bytes([rec[0], rec[1]]) as usize, u16::from_le_bytes([rec[2], rec[3]]) as usize);
        px[y * 1000 + x] = rec[4];
    }
    std::hint::black_box(&px);
    let replay_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("baseline: the canvas at V = {v} by replaying the log from memory: {replay_ms:.0} ms");
    let t = Instant::now();
    let last = std::hint::black_box(&log).chunks_exact(32).rposition(|rec| rec[0..4] == [0xf4, 0x01, 0xf4, 0x01]);
    println!(
        "baseline: the last edit of (500,500) by scanning the log from memory: {:.0} ms ({last:?})",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(log);

    let out = tmp.path().join("export.csv");
    let export_s = timed(
        "export",
        Command::new(&bin).args(["export", "--data-dir", d, "--out", out.to_str().unwrap()]).args(canvas),
    );
    println!(
        "export: {:.2} M edits/s, {:.0} MB",
        head as f64 / export_s / 1e6,
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6
    );
    std::fs::remove_file(&out).unwrap();

    // The baseline: one frame, the cost of reading and applying the whole log alone.
    for (ext, duration, fps, frames) in [
        ("apng", "1", "1", 1.0),
        ("apng", "60", "30", 1800.0),
        ("gif", "60", "30", 1800.0),
        ("mp4", "60", "30", 1800.0),
    ] {
        let out = tmp.path().join(format!("timelapse-{frames}.{ext}"));
        let secs = timed(
            &format!("timelapse {duration} s x {fps} fps, 1000x1000, {ext}"),
            Command::new(&bin)
                .args([
                    "timelapse",
                    "--data-dir",
                    d,
                    "--duration",
                    duration,
                    "--fps",
                    fps,
                    "--out",
                    out.to_str().unwrap(),
                ])
                .args(canvas),
        );
        let bytes = std::fs::metadata(&out).unwrap().len();
        println!(
            "timelapse {ext}: {:.2} M edits/s, {:.0} frames/s, {:.1} MB",
            head as f64 / secs / 1e6,
            frames / secs,
            bytes as f64 / 1e6
        );
    }
}
