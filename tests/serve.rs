//! End-to-end tests of `placecast serve`: the real binary on loopback with 2 shards, real
//! WebSocket clients.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const W: usize = 1000 * 1000;

#[test]
fn a_placement_reaches_every_client_in_a_batch() {
    placement_reaches_every_client(&[]);
}

#[test]
fn the_one_send_per_socket_path_delivers_too() {
    placement_reaches_every_client(&["--send-mode", "syscall"]);
}

fn placement_reaches_every_client(mode: &[&str]) {
    let mut args = vec!["--cooldown", "0"];
    args.extend_from_slice(mode);
    let s = Server::start(&args);
    let (mut a, mut b) = one_per_shard(&s, "");
    let mut more: Vec<Ws> = (0..4).map(|_| s.ws("")).collect();
    let t = s.session();
    let r = s.place(&t, 12, 34, 5);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let version = r.json()["version"].as_u64().unwrap();
    assert_eq!(version, 1);
    for c in [&mut a, &mut b].into_iter().chain(more.iter_mut()) {
        match c.next() {
            Got::Batch { from, to, edits } => {
                assert_eq!((from, to), (0, 1));
                assert_eq!(edits, vec![(34 * 1000 + 12, 5)]);
            }
            other => panic!("expected the batch, got {other:?}"),
        }
    }
    // Each shard times the pass that wrote the batch to its clients (it books the pass after
    // its last send, so a client can have the frame first).
    let shards = wait_for(30, "both shards to time their fan-out", || {
        let counts: Vec<u64> =
            (0..2).map(|i| s.metric(&format!("placecast_fanout_seconds_count{{shard=\"{i}\"}}"))).collect();
        counts.iter().all(|&c| c >= 1).then_some(counts)
    });
    let every = s.metric("placecast_fanout_seconds_bucket{shard=\"0\",le=\"+Inf\"}");
    assert_eq!(every, shards[0], "the +Inf bucket holds every timed batch");
    assert!(s.metric("placecast_fanout_seconds_bucket{shard=\"0\",le=\"0.005\"}") <= every);
    // The snapshot agrees, with its version and caching headers.
    let r = s.http("GET", "/api/v1/canvas", &[], b"");
    assert_eq!(r.header("X-Canvas-Version"), Some("1"));
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=1"));
    let etag = r.header("ETag").unwrap().to_string();
    assert_eq!(s.http("GET", "/api/v1/canvas", &[("If-None-Match", &etag)], b"").status, 304);
    assert_eq!(s.snapshot().pixels[34 * 1000 + 12], 5);
    let png = s.http("GET", "/api/v1/canvas.png", &[], b"");
    assert_eq!((png.status, png.header("Content-Type")), (200, Some("image/png")));
    assert_eq!(&png.body[1..4], b"PNG");
}

#[test]
fn websocket_place_answers_like_http() {
    let s = Server::start(&["--cooldown", "60"]);
    let t = s.session();
    let mut c = s.ws(&format!("?token={t}"));
    assert!(c.hello["user"].as_str().unwrap().starts_with("anon-"));
    c.send_text(r#"{"type":"place","x":1,"y":2,"color":3,"id":7}"#);
    let placed = c.next_text("placed");
    assert_eq!((placed["id"].as_u64(), placed["version"].as_u64()), (Some(7), Some(1)));
    c.send_text(r#"{"type":"place","x":1,"y":2,"color":3,"id":8}"#);
    let e = c.next_text("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("cooldown"), Some(8)));
    assert!(e["retry_after_ms"].as_u64().unwrap() > 50_000);
    // HTTP says the same, with Retry-After.
    let r = s.place(&t, 3, 3, 3);
    assert_eq!((r.status, r.error_code().as_str()), (429, "cooldown"));
    assert!(r.header("Retry-After").unwrap().parse::<u64>().unwrap() >= 59);
    // Anonymous connections cannot place; auth fixes that.
    let mut anon = s.ws("");
    anon.send_text(r#"{"type":"place","x":1,"y":2,"color":3}"#);
    assert_eq!(anon.next_text("error")["code"], "missing_token");
    let t2 = s.session();
    anon.send_text(&format!(r#"{{"type":"auth","token":"{t2}"}}"#));
    anon.next_text("authed");
    anon.send_text(r#"{"type":"place","x":9,"y":9,"color":1,"id":1}"#);
    assert_eq!(anon.next_text("placed")["version"], 2);
    // Each accepted placement is timed once, by its client's shard, before its answer goes out;
    // the refusals are not timed.
    assert_eq!(s.metric("placecast_placement_ack_seconds_count"), 2);
    assert_eq!(
        s.metric("placecast_placement_ack_seconds_bucket{shard=\"0\",le=\"+Inf\"}")
            + s.metric("placecast_placement_ack_seconds_bucket{shard=\"1\",le=\"+Inf\"}"),
        2
    );
    // The cooldown is live-changeable by the operator.
    let s2 = Server::start(&["--cooldown", "300", "--admin-token", "admin-secret-1-0123456789abcdefghijklmnop"]);
    let t = s2.session();
    assert_eq!(s2.place(&t, 0, 0, 1).status, 200);
    assert_eq!(s2.place(&t, 0, 0, 1).status, 429);
    let r = s2.http("POST", "/api/v1/admin/cooldown", &[("Authorization", "Bearer wrong")], br#"{"seconds":0}"#);
    assert_eq!(r.status, 401);
    let r = s2.http(
        "POST",
        "/api/v1/admin/cooldown",
        &[("Authorization", "Bearer admin-secret-1-0123456789abcdefghijklmnop")],
        br#"{"seconds":0}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(s2.place(&t, 0, 0, 1).status, 200);
    assert_eq!(s2.http("GET", "/api/v1/canvas/info", &[], b"").json()["cooldown_ms"], 0);
    assert_eq!(s2.metric("placecast_placement_ack_seconds_count"), 2, "the two HTTP placements accepted");
}

#[test]
fn catch_up_with_since_has_no_gap_and_no_duplicate() {
    let s = Arc::new(Server::start(&["--cooldown", "0", "--batch-ms", "20"]));
    let t = s.session();
    for i in 0..30 {
        assert_eq!(s.place(&t, i, 0, (i % 16) as u8).status, 200);
    }
    // Placements keep flowing while clients join from older versions.
    let writer = {
        let s = s.clone();
        let t = t.clone();
        std::thread::spawn(move || {
            (30..130).map(|i| s.place(&t, i, 1, (i % 16) as u8).json()["version"].as_u64().unwrap()).max().unwrap()
        })
    };
    let mut clients: Vec<(u64, Ws)> = [0u64, 5, 17, 29].iter().map(|&v| (v, s.ws(&format!("?since={v}")))).collect();
    let last = writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let snap = s.snapshot();
    assert_eq!(snap.version, last);
    for (since, c) in clients.iter_mut() {
        // Start from the canvas at `since`: replay it from a since=0 client's view is not needed,
        // because edits 1..=since only touch row 0 pixels 0..since, set again below.
        let mut canvas = vec![0u8; W];
        for (i, px) in canvas.iter_mut().enumerate().take(*since as usize) {
            *px = (i % 16) as u8;
        }
        let at = c.follow_until(*since, last, &mut canvas);
        assert_eq!(at, last);
        assert_eq!(canvas, snap.pixels, "client from since={since} converged");
    }
    // A version from the future is refused; an unparsable one gets 400 before the upgrade.
    let mut c = s.ws("?since=999999");
    assert!(matches!(c.next(), Got::Closed(Some((1008, _)))));
    let r = s.http(
        "GET",
        "/ws?since=abc",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_since"));
}

#[test]
fn since_older_than_the_window_is_told_to_reload() {
    let s = Server::start(&["--cooldown", "0", "--window", "10", "--batch-ms", "20"]);
    let t = s.session();
    for i in 0..25 {
        assert_eq!(s.place(&t, i, 0, 1).status, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut c = s.ws("?since=3");
    let reload = c.next_text("reload");
    assert_eq!(reload["oldest_since"], 15);
    assert!(matches!(c.next(), Got::Closed(Some((4001, _)))));
    let mut ok = s.ws("?since=15");
    let mut canvas = vec![0u8; W];
    assert_eq!(ok.follow_until(15, 25, &mut canvas), 25);
}

#[test]
fn crash_restart_keeps_every_acknowledged_edit() {
    let mut s = Server::start(&["--cooldown", "0"]);
    let dir = s.dir.clone();
    let port = s.addr.port();
    let _keep = tempfile::TempDir::new().unwrap();
    let t = s.session();
    let addr = s.addr;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(u64, u32, u32, u8)>::new()));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let acked = acked.clone();
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    let (x, y, c) = (i % 1000, w * 10 + i / 1000, ((i + w) % 16) as u8);
                    let body = format!("{{\"x\":{x},\"y\":{y},\"color\":{c}}}");
                    let auth = format!("Bearer {t}");
                    match try_http(addr, "POST", "/api/v1/place", &[("Authorization", &auth)], body.as_bytes()) {
                        // An answer cut short by the kill is not an acknowledgement.
                        Ok(r) if r.status == 200 => match serde_json::from_slice::<serde_json::Value>(&r.body) {
                            Ok(v) => acked.lock().unwrap().push((v["version"].as_u64().unwrap(), x, y, c)),
                            Err(_) => return,
                        },
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "some placements were acknowledged before the kill");
    // The harness's tempdir goes with `s`; keep the directory by restarting in it first.
    let s2 = Server::start_in(&dir, port, &["--cooldown", "0"]);
    let max = acked.iter().map(|a| a.0).max().unwrap();
    let mut c = s2.ws("?since=0");
    let mut canvas = vec![0u8; W];
    let head = s2.http("GET", "/healthz", &[], b"").json()["version"].as_u64().unwrap();
    assert!(head >= max, "every acknowledged version survives: head {head} < acked {max}");
    // Replay every version from the start: contiguous, and each acknowledged edit is where its
    // version says.
    let mut at = 0;
    let mut by_version = std::collections::HashMap::new();
    while at < head {
        match c.next() {
            Got::Batch { from, to, edits } => {
                assert_eq!(from, at);
                assert_eq!(edits.len() as u64, to - from, "single-node batches carry every version");
                for (k, (i, col)) in edits.into_iter().enumerate() {
                    by_version.insert(from + 1 + k as u64, (i, col));
                    canvas[i as usize] = col;
                }
                at = to;
            }
            other => panic!("{other:?}"),
        }
    }
    for (v, x, y, col) in acked {
        assert_eq!(by_version[&v], (y * 1000 + x, col), "acknowledged edit at version {v}");
    }
    drop(s);
    drop(s2);
}

#[test]
fn one_user_on_two_cores_gets_exactly_one_acceptance() {
    let s = Server::start(&["--cooldown", "60"]);
    for round in 0..3 {
        let t = s.session();
        let (mut a, mut b) = one_per_shard(&s, &format!("?token={t}"));
        assert_ne!(a.shard(), b.shard());
        // Both connections fire in the same instant, and HTTP placements join in.
        let barrier = Arc::new(Barrier::new(2));
        let http = {
            let (addr, t, barrier) = (s.addr, t.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let auth = format!("Bearer {t}");
                (0..10)
                    .filter(|_| {
                        try_http(
                            addr,
                            "POST",
                            "/api/v1/place",
                            &[("Authorization", &auth)],
                            br#"{"x":1,"y":1,"color":1}"#,
                        )
                        .unwrap()
                        .status
                            == 200
                    })
                    .count()
            })
        };
        let msg = r#"{"type":"place","x":2,"y":2,"color":2}"#;
        barrier.wait();
        for _ in 0..10 {
            a.send_text(msg);
            b.send_text(msg);
        }
        let mut wins = http.join().unwrap();
        for c in [&mut a, &mut b] {
            for _ in 0..10 {
                let v = loop {
                    if let Got::Text(v) = c.next() {
                        if v["type"] == "placed" || v["type"] == "error" {
                            break v;
                        }
                    }
                };
                if v["type"] == "placed" {
                    wins += 1;
                } else {
                    assert_eq!(v["code"], "cooldown");
                }
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one acceptance per cooldown");
    }
}

#[test]
fn a_client_that_stops_reading_is_closed_while_others_keep_up() {
    slow_client_is_closed(&[]);
}

#[test]
fn a_client_that_stops_reading_is_closed_on_the_one_send_per_socket_path_too() {
    slow_client_is_closed(&["--send-mode", "syscall"]);
}

fn slow_client_is_closed(mode: &[&str]) {
    let mut args = vec![
        "--cooldown",
        "0",
        "--batch-ms",
        "20",
        "--max-lag-batches",
        "5",
        "--ws-sndbuf",
        "4096",
        "--edit-stride",
        "64",
        "--no-fsync",
    ];
    args.extend_from_slice(mode);
    let s = Arc::new(Server::start(&args));
    // The slow client has a tiny receive buffer and never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut slow = Ws::over(sock.into(), s.addr, "");
    let mut fast = s.ws("");
    let t = s.session();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (s, t, stop) = (s.clone(), t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.place(&t, i % 1000, 5, 3);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut worst_gap = Duration::ZERO;
    let mut last = Instant::now();
    let mut at = None;
    while s.metric("placecast_closed_slow_total") == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the slow client was never closed");
        // Meanwhile the fast client gets every batch, contiguous and on time.
        for _ in 0..10 {
            if let Got::Batch { from, to, .. } = fast.next() {
                if let Some(a) = at {
                    assert_eq!(from, a);
                }
                at = Some(to);
                worst_gap = worst_gap.max(last.elapsed());
                last = Instant::now();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(worst_gap < Duration::from_millis(1000), "the fast client waited {worst_gap:?} for a batch");
    // Reading now, the slow client finds what was buffered, then the close code and reason.
    slow.set_timeout(Duration::from_secs(5));
    let close = loop {
        match slow.next() {
            Got::Closed(c) => break c,
            Got::Timeout => panic!("no close"),
            _ => {}
        }
    };
    let (code, reason) = close.expect("a close frame, not just a dropped socket");
    assert_eq!(code, 4000);
    assert!(reason.contains("too slow"), "{reason}");
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(s.http("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let s = Server::start(&["--cooldown", "0", "--handshake-timeout-ms", "500"]);
    let mut watcher = s.ws("");
    let t = s.session();
    let auth = format!("Bearer {t}");
    // HTTP.
    let r = raw_http(s.addr, b"\x16\x03\x01 not http at all\r\n\r\n").unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_http(s.addr, &big).unwrap().status, 431);
    let r = s.http("POST", "/api/v1/place", &[("Authorization", &auth)], b"{not json");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_json"));
    let r = s.http("POST", "/api/v1/place", &[("Authorization", &auth)], br#"{"x":"a","y":1,"color":1}"#);
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_body"));
    let r = s.http("POST", "/api/v1/place", &[("Authorization", &auth)], br#"{"x":1000,"y":1,"color":1}"#);
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_coordinates"));
    let r = s.http("POST", "/api/v1/place", &[("Authorization", &auth)], br#"{"x":1,"y":1,"color":16}"#);
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_color"));
    let r =
        s.http("POST", "/api/v1/place", &[("Authorization", "Bearer anon-1.0.forged")], br#"{"x":1,"y":1,"color":1}"#);
    assert_eq!((r.status, r.error_code().as_str()), (401, "bad_token"));
    let r = s.http("POST", "/api/v1/place", &[], br#"{"x":1,"y":1,"color":1}"#);
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_token"));
    let r = s.http("POST", "/api/v1/place", &[("Authorization", &auth)], &vec![b' '; 5000]);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    assert_eq!(s.http("GET", "/nope", &[], b"").status, 404);
    assert_eq!(s.http("DELETE", "/api/v1/canvas", &[], b"").status, 405);
    let r = s.http("GET", "/ws", &[], b"");
    assert_eq!(r.status, 426);
    // A handshake that never finishes times out.
    let mut slowloris = TcpStream::connect(s.addr).unwrap();
    slowloris.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    slowloris.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    let _ = slowloris.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&out));
    // A bad token on the WebSocket URL is refused before the upgrade.
    let r = s.http(
        "GET",
        "/ws?token=x.0.y",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    assert_eq!(r.status, 401);
    // WebSocket frames.
    let close_of = |bytes: &[u8]| -> u16 {
        let mut c = s.ws("");
        c.ws.get_mut().write_all(bytes).unwrap();
        loop {
            match c.next() {
                Got::Closed(Some((code, _))) => return code,
                Got::Closed(None) | Got::Timeout => panic!("no close frame for {bytes:?}"),
                _ => {}
            }
        }
    };
    assert_eq!(close_of(&[0x81, 0x02, b'h', b'i']), 1002, "unmasked");
    assert_eq!(close_of(&[0x82, 0x81, 1, 2, 3, 4, 9]), 1003, "binary");
    assert_eq!(close_of(&[0x81, 0xFE, 0x20, 0x00, 1, 2, 3, 4]), 1009, "8 KiB text");
    assert_eq!(close_of(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]), 1007, "not UTF-8");
    assert_eq!(close_of(&[0x8B, 0x80, 1, 2, 3, 4]), 1002, "reserved opcode");
    let mut c = s.ws("");
    c.send_text("{nope");
    assert_eq!(c.next_text("error")["code"], "bad_json");
    c.send_text(r#"{"type":"dance"}"#);
    assert_eq!(c.next_text("error")["code"], "unknown_type");
    c.send_text(r#"{"type":"place","x":"1"}"#);
    assert_eq!(c.next_text("error")["code"], "bad_body");
    // Everyone else is still served.
    assert_eq!(s.place(&t, 4, 4, 4).status, 200);
    let got = loop {
        if let Got::Batch { edits, .. } = watcher.next() {
            break edits;
        }
    };
    assert_eq!(got, vec![(4004, 4)]);
}

#[test]
fn large_canvas_with_32_colors() {
    let pal: Vec<String> = (0..32).map(|i| format!("#{:02x}{:02x}{:02x}", i * 8, 255 - i * 8, i)).collect();
    let pal = pal.join(",");
    let s = Server::start(&["--cooldown", "0", "--width", "4000", "--height", "4000", "--palette", &pal]);
    let info = s.http("GET", "/api/v1/canvas/info", &[], b"").json();
    assert_eq!((info["width"].as_u64(), info["palette"].as_array().unwrap().len()), (Some(4000), 32));
    let t = s.session();
    assert_eq!(s.place(&t, 3999, 3999, 31).status, 200);
    let snap = s.snapshot();
    assert_eq!((snap.width, snap.height, snap.version), (4000, 4000, 1));
    assert_eq!(snap.pixels[4000 * 4000 - 1], 31);
    let png = s.http("GET", "/api/v1/canvas.png", &[], b"");
    assert_eq!(png.status, 200);
}

#[test]
fn a_log_that_cannot_write_gets_503_and_spends_no_cooldown() {
    // The edit log's file is /dev/full: opening works, every write fails with ENOSPC.
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", tmp.path().join("edits.log")).unwrap();
    let s = Server::start_in(tmp.path(), free_port(), &["--cooldown", "300"]);
    let mut watcher = s.ws("");
    let t = s.session();
    for _ in 0..2 {
        let r = s.place(&t, 1, 1, 1);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "log_unavailable"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("Retry-After").is_some());
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("nothing was placed"));
    }
    // Nothing reached the canvas and the connection is still served.
    watcher.set_timeout(Duration::from_millis(500));
    assert!(matches!(watcher.next(), Got::Timeout));
    assert_eq!(s.http("GET", "/healthz", &[], b"").json()["version"], 0);
}

#[test]
fn snapshots_are_encoded_once_per_interval_however_many_ask() {
    let s = Arc::new(Server::start(&["--cooldown", "0", "--batch-ms", "200"]));
    let t = s.session();
    assert_eq!(s.place(&t, 5, 5, 5).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let before = s.metric("placecast_snapshots_built");
    let askers: Vec<_> = (0..40)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let r = s.http("GET", "/api/v1/canvas", &[], b"");
                (r.status, r.header("X-Canvas-Version").unwrap().to_string())
            })
        })
        .collect();
    for a in askers {
        assert_eq!(a.join().unwrap(), (200, "1".to_string()));
    }
    let built = s.metric("placecast_snapshots_built") - before;
    assert!(built <= 1, "40 requests for one version built {built} snapshots");
}

/// The applier's heartbeat is one turn of its loop: a node that slept through each batch
/// interval went unready (`applier_down`) and stopped feeding the watchdog once an idle interval
/// passed the 5 s stall limit (`--batch-ms` goes up to 10 s).
#[test]
fn an_idle_node_with_a_ten_second_batch_interval_stays_ready() {
    let s = Server::start(&["--batch-ms", "10000"]);
    wait_for(30, "the node to be ready", || (s.http("GET", "/readyz", &[], b"").status == 200).then_some(()));
    // Longer than the stall limit, from the first batch interval on.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let r = s.http("GET", "/readyz", &[], b"");
        assert_eq!(r.status, 200, "/readyz of an idle node: {}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(250));
    }
}
