//! History against the real binary: who placed a pixel (after placements over HTTP and
//! WebSocket, after a SIGKILL and restart, hashed and off), the canvas at a version or time
//! equal to what a client following the stream had at that version and to a replay of the
//! exported log, whole edit chunks, and export/import round trips on a generated event
//! (`placecast-load trace`). Two Kafka nodes answering identically are in `tests/kafka.rs`.
mod common;

use common::{free_port, wait_for, Got, Server, TEST_SECRET};
use placecast::protocol::{parse_snapshot, unpack_edit, BatchView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const W: u32 = 64;
const H: u32 = 32;

fn token(user: &str) -> String {
    placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint(user, 0).unwrap()
}

fn canvas_flags() -> Vec<&'static str> {
    vec![
        "--width",
        "64",
        "--height",
        "32",
        "--cooldown",
        "0",
        "--keyframe-every",
        "4096",
        "--catchups-per-addr-per-min",
        "0",
    ]
}

fn pixel(s: &Server, x: u32, y: u32, n: usize) -> serde_json::Value {
    let r = s.http("GET", &format!("/api/v1/pixel?x={x}&y={y}&history={n}"), &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// (user, color) of a pixel's history, newest first.
fn who(v: &serde_json::Value) -> Vec<(String, u64)> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["user"].as_str().unwrap_or("?").to_string(), e["color"].as_u64().unwrap()))
        .collect()
}

#[test]
fn who_placed_a_pixel_over_http_and_websocket_survives_a_kill_and_can_be_hashed_or_off() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = Server::start_in(tmp.path(), port, &canvas_flags());
    let alice = token("alice");
    assert_eq!(s.place(&alice, 3, 4, 1).status, 200);
    assert_eq!(s.place(&alice, 3, 4, 2).status, 200);
    // Bob places over the WebSocket: his name comes from the token he connected with.
    let mut ws = s.ws(&format!("?token={}", token("bob")));
    ws.send_text(r#"{"type":"place","x":3,"y":4,"color":5}"#);
    ws.next_text("placed");
    let want = vec![("bob".to_string(), 5), ("alice".to_string(), 2), ("alice".to_string(), 1)];
    let got = wait_for(10, "three edits of (3,4)", || {
        let p = pixel(&s, 3, 4, 10);
        (who(&p) == want).then_some(p)
    });
    assert_eq!(got["last"], got["history"][0]);
    let versions: Vec<u64> =
        got["history"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    // Only the last edit without `history`; an untouched pixel has none.
    let last = s.http("GET", "/api/v1/pixel?x=3&y=4", &[], b"").json();
    assert_eq!(last["last"]["user"], "bob");
    assert!(last.get("history").is_none());
    assert_eq!(pixel(&s, 0, 0, 5)["last"], serde_json::Value::Null);
    // Bad input: clear 400s.
    for q in ["x=64&y=0", "x=0", "x=-1&y=0", "x=0&y=0&history=0", "x=0&y=0&history=101", "x=01&y=0"] {
        let r = s.http("GET", &format!("/api/v1/pixel?{q}"), &[], b"");
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["error"]["code"].is_string());
    }
    drop(ws);

    // Every acknowledged edit and every name is durable: a SIGKILL loses nothing.
    s.kill9();
    let s = Server::start_in(tmp.path(), port, &canvas_flags());
    assert_eq!(who(&pixel(&s, 3, 4, 10)), want);
    drop(s);

    let mut hashed = canvas_flags();
    hashed.extend(["--pixel-lookup", "hashed"]);
    let s = Server::start_in(tmp.path(), port, &hashed);
    let h = who(&pixel(&s, 3, 4, 10));
    assert!(h.iter().all(|(u, _)| u.len() == 12 && u.bytes().all(|b| b.is_ascii_hexdigit())), "{h:?}");
    assert_eq!(h[1].0, h[2].0, "one user, one hash");
    assert_ne!(h[0].0, h[1].0);
    drop(s);

    let mut off = canvas_flags();
    off.extend(["--pixel-lookup", "off"]);
    let s = Server::start_in(tmp.path(), port, &off);
    let r = s.http("GET", "/api/v1/pixel?x=3&y=4", &[], b"");
    assert_eq!((r.status, r.error_code()), (403, "pixel_lookup_off".to_string()));
    drop(s);

    // Building the past from disk counts against the address's catch-up rate.
    let mut rated = canvas_flags();
    rated.extend(["--catchups-per-addr-per-min", "2"]);
    let s = Server::start_in(tmp.path(), port, &rated);
    assert_eq!(s.http("GET", "/api/v1/canvas?at=1", &[], b"").status, 200);
    assert_eq!(s.http("GET", "/api/v1/canvas?at=2", &[], b"").status, 200);
    assert_eq!(s.http("GET", "/api/v1/canvas?at=1", &[], b"").status, 200, "a cached answer costs nothing");
    let r = s.http("GET", "/api/v1/canvas?at=3", &[], b"");
    assert_eq!((r.status, r.error_code()), (429, "catch_up_rate_limited".to_string()));
    assert!(r.header("Retry-After").is_some());
}

/// `placecast-load`, built beside the binary under test (the workspace build makes it; a test
/// run of this package alone builds it once).
/// A client told "placed, version V" that asks at once sees its own edit: who placed the pixel,
/// and the canvas at V (not `version_not_yet`). The embedded log's applier takes committed
/// edits only every 25 ms or at a cut, so without `read_your_writes` nearly every lookup here
/// showed the previous owner.
#[test]
fn a_placement_is_in_the_history_as_soon_as_it_is_acknowledged() {
    let s = Server::start(&canvas_flags());
    let (alice, bob) = (token("alice"), token("bob"));
    for i in 0..40u32 {
        let (x, y) = (i % W, i / W);
        let user = if i % 2 == 0 { &alice } else { &bob };
        let r = s.place(user, x, y, (i % 15 + 1) as u8);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json()["version"].as_u64().unwrap();
        let last = &pixel(&s, x, y, 1)["last"];
        assert_eq!(last["version"].as_u64(), Some(v), "placement {i}: the lookup right after its answer shows {last}");
        assert_eq!(last["user"], if i % 2 == 0 { "alice" } else { "bob" });
        if i % 8 == 0 {
            let r = s.http("GET", &format!("/api/v1/canvas?at={v}"), &[], b"");
            assert_eq!(r.status, 200, "the canvas at {v}: {}", String::from_utf8_lossy(&r.body));
            let at = parse_snapshot(&r.body).unwrap();
            assert_eq!((at.version, at.pixels[(y * W + x) as usize]), (v, (i % 15 + 1) as u8));
        }
    }
}

fn load_bin() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_placecast")).parent().unwrap().to_path_buf();
    let bin = dir.join("placecast-load");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO")).args(["build", "-p", "placecast-load"]).status().unwrap().success();
        assert!(ok, "building placecast-load failed");
    }
    bin
}

/// A generated r/place-like event of `edits` edits on the test canvas.
fn trace(dir: &Path, edits: u64, seed: u64) -> PathBuf {
    let out = dir.join(format!("trace-{edits}-{seed}.csv"));
    let status = Command::new(load_bin())
        .args(["trace", "--edits", &edits.to_string(), "--seed", &seed.to_string(), "--width", "64", "--height", "32"])
        .args(["--colors", "16", "--cooldown-s", "60", "--hours", "2", "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "placecast-load trace failed");
    out
}

fn tool(args: &[&str]) -> std::process::Output {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    assert!(out.status.success(), "placecast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn import(dir: &Path, csv: &Path) {
    tool(&[
        "import",
        "--data-dir",
        dir.to_str().unwrap(),
        "--width",
        "64",
        "--height",
        "32",
        "--in",
        csv.to_str().unwrap(),
    ]);
}

/// Rows of a CSV of ours: (ts, pixel index, color), by version.
fn rows(csv: &Path) -> Vec<(u64, u32, u8)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let cols = placecast::tools::csv::Columns::from_header(text.lines().next().unwrap()).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let r = placecast::tools::csv::parse_row(&cols, l).unwrap();
            let placecast::tools::csv::Color::Index(c) = r.color else { panic!("index colors") };
            (r.ts_ms, r.y * W + r.x, c as u8)
        })
        .collect()
}

fn replay(rows: &[(u64, u32, u8)], to: u64) -> Vec<u8> {
    let mut c = vec![0u8; (W * H) as usize];
    for &(_, i, color) in &rows[..to as usize] {
        c[i as usize] = color;
    }
    c
}

fn canvas_at(s: &Server, q: &str) -> (u64, Vec<u8>, common::HttpResponse) {
    let r = s.http("GET", &format!("/api/v1/canvas?{q}"), &[], b"");
    assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
    let snap = parse_snapshot(&r.body).unwrap();
    (snap.version, snap.pixels, r)
}

#[test]
fn the_canvas_at_a_version_is_what_a_client_had_then_and_what_the_log_replays_to() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = trace(tmp.path(), 70_000, 7);
    let data = tmp.path().join("data");
    import(&data, &csv);
    let rows = rows(&csv);
    assert_eq!(rows.len(), 70_000);
    let s = Server::start_in(&data, free_port(), &canvas_flags());

    // A client that joined at version 0 and follows catch-up and then live batches: the canvas it
    // had at the end of every frame.
    let mut ws = s.ws("?since=0");
    let (mut canvas, mut at) = (vec![0u8; (W * H) as usize], 0u64);
    let mut seen: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let tok = token("live");
    let mut placed = 0;
    while at < 70_000 + 20 {
        if at >= 70_000 && placed < 20 {
            assert_eq!(s.place(&tok, placed, 1, (placed % 15 + 1) as u8).status, 200);
            placed += 1;
        }
        match ws.next() {
            Got::Batch { from, to, edits } => {
                assert_eq!(from, at);
                for (i, c) in edits {
                    canvas[i as usize] = c;
                }
                at = to;
                seen.insert(at, canvas.clone());
            }
            Got::Closed(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert!(seen.len() > 3, "catch-up came in several frames");
    for (&v, want) in &seen {
        let (version, got, r) = canvas_at(&s, &format!("at={v}"));
        assert_eq!(version, v);
        assert_eq!(&got, want, "the canvas at {v}");
        assert_eq!(r.header("Cache-Control"), Some("public, max-age=31536000, immutable"));
    }
    // Anywhere between frames (and across keyframes every 4,096): the replay of the log.
    for v in [0, 1, 4095, 4096, 4097, 12_345, 65_536, 69_999, 70_000] {
        assert_eq!(canvas_at(&s, &format!("at={v}")).1, replay(&rows, v), "at={v}");
    }
    // By time: the version whose timestamp is the asked time (trace times increase).
    let v = 33_333u64;
    let t = rows[v as usize - 1].0;
    if rows[v as usize].0 > t {
        let (version, pixels, r) = canvas_at(&s, &format!("t={t}"));
        assert_eq!((version, pixels), (v, replay(&rows, v)));
        assert_eq!(r.header("X-Canvas-Time-Ms"), Some(t.to_string().as_str()));
    }
    // PNG of the past.
    let png = s.http("GET", "/api/v1/canvas.png?at=4096", &[], b"");
    assert_eq!((png.status, png.header("Content-Type")), (200, Some("image/png")));
    let mut d = png::Decoder::new(std::io::Cursor::new(png.body.clone())).read_info().unwrap();
    let mut buf = vec![0; d.output_buffer_size().unwrap()];
    let info = d.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (W, H));
    // Bad input and the future: clear answers, nothing built.
    let future = s.http("GET", "/api/v1/canvas?at=999999", &[], b"");
    assert_eq!((future.status, future.error_code()), (404, "version_not_yet".to_string()));
    let soon = s.http("GET", &format!("/api/v1/canvas?t={}", placecast::now_ms()), &[], b"");
    assert_eq!((soon.status, soon.error_code()), (404, "version_not_yet".to_string()));
    for q in ["at=x", "at=1&t=1", "at=-1", "at=01"] {
        assert_eq!(s.http("GET", &format!("/api/v1/canvas?{q}"), &[], b"").status, 400, "{q}");
    }

    // Whole chunks of the log: the first is complete and immutable and holds versions 1..=65536.
    let r = s.http("GET", "/api/v1/edits?from=0", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=31536000, immutable"));
    let b = BatchView::parse(&r.body).unwrap();
    assert_eq!((b.from, b.to, b.count), (0, 65_536, 65_536));
    let edits: Vec<(u32, u8)> = b.iter().collect();
    assert_eq!(edits[0], (rows[0].1, rows[0].2));
    assert_eq!(edits[65_535], (rows[65_535].1, rows[65_535].2));
    let _ = unpack_edit; // the packed form is PROTOCOL.md's
    let tail = s.http("GET", "/api/v1/edits?from=65536", &[], b"");
    assert_eq!(tail.header("Cache-Control"), Some("public, max-age=1"), "the newest chunk is still growing");
    let tb = BatchView::parse(&tail.body).unwrap();
    assert_eq!((tb.from, tb.to), (65_536, 70_020));
    assert_eq!(s.http("GET", "/api/v1/edits?from=100", &[], b"").status, 400);
    assert_eq!(s.http("GET", "/api/v1/edits?from=131072", &[], b"").status, 404);
    let info = s.http("GET", "/api/v1/history/info", &[], b"").json();
    assert_eq!((info["first_version"].as_u64(), info["version"].as_u64()), (Some(0), Some(70_020)));
    assert_eq!(info["first_ts_ms"].as_u64(), Some(rows[0].0));
}

#[test]
fn export_and_import_round_trip_a_generated_event_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = trace(tmp.path(), 20_000, 3);
    assert_eq!(
        std::fs::read(&csv).unwrap(),
        std::fs::read(trace(tmp.path(), 20_000, 3)).unwrap(),
        "the trace is deterministic"
    );
    let a = tmp.path().join("a");
    import(&a, &csv);
    let out = tmp.path().join("out.csv");
    tool(&[
        "export",
        "--data-dir",
        a.to_str().unwrap(),
        "--width",
        "64",
        "--height",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&csv).unwrap(), "export(import(trace)) == trace");
    // Into a non-empty log: refused, nothing changed.
    let again = Command::new(common::bin())
        .args([
            "import",
            "--data-dir",
            a.to_str().unwrap(),
            "--width",
            "64",
            "--height",
            "32",
            "--in",
            csv.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    // A bad row: refused with its line, and no log left behind.
    let bad = tmp.path().join("bad.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("2017-04-03 17:00:00.000 UTC,00000000000000aa,64,0,1,20001\n");
    std::fs::write(&bad, text).unwrap();
    let b = tmp.path().join("b");
    let r = Command::new(common::bin())
        .args([
            "import",
            "--data-dir",
            b.to_str().unwrap(),
            "--width",
            "64",
            "--height",
            "32",
            "--in",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("line 20002"), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::metadata(b.join("edits.log")).map(|m| m.len()).unwrap_or(0), 0);
    // A server on the imported log serves the event's final canvas.
    let s = Server::start_in(&a, free_port(), &canvas_flags());
    let snap = s.snapshot();
    assert_eq!(snap.version, 20_000);
    assert_eq!(snap.pixels, replay(&rows(&csv), 20_000));
}

/// Every frame ffmpeg decodes from `path`, as RGB24 frames of `w`x`h`.
fn decoded_frames(path: &Path, w: u32, h: u32) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg is part of the test setup (scripts/install-test-deps.sh)");
    assert!(out.status.success(), "ffmpeg decoding {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let frame = (w * h * 3) as usize;
    assert_eq!(out.stdout.len() % frame, 0, "whole {w}x{h} frames");
    out.stdout.chunks(frame).map(<[u8]>::to_vec).collect()
}

fn rgb(pixels: &[u8]) -> Vec<u8> {
    let p = placecast::canvas::RPLACE_2017_PALETTE;
    pixels
        .iter()
        .flat_map(|&c| [(p[c as usize] >> 16) as u8, (p[c as usize] >> 8) as u8, p[c as usize] as u8])
        .collect()
}

/// (frames, width, height, duration in seconds) as ffprobe reads them.
fn probe(path: &Path) -> (u64, u32, u32, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height,nb_read_frames:format=duration", "-of", "default=nw=1"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap().to_string();
    (
        field("nb_read_frames").parse().unwrap(),
        field("width").parse().unwrap(),
        field("height").parse().unwrap(),
        field("duration").parse().unwrap(),
    )
}

#[test]
fn a_timelapse_of_a_generated_event_ends_on_the_canvas_the_log_replays_to_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = trace(tmp.path(), 20_000, 11);
    let data = tmp.path().join("data");
    import(&data, &csv);
    let rows = rows(&csv);
    // The server keeps running on the log: the timelapse reads beside it.
    let s = Server::start_in(&data, free_port(), &canvas_flags());
    let dir = data.to_str().unwrap();
    let film = |out: &Path, extra: &[&str]| {
        let mut a = vec!["timelapse", "--data-dir", dir, "--width", "64", "--height", "32"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--out", out.to_str().unwrap()]);
        tool(&a)
    };
    // APNG and GIF, written by placecast: lossless, so the last frame is the replay to --to.
    for (name, to) in [("a.apng", 20_000u64), ("b.gif", 12_345)] {
        let out = tmp.path().join(name);
        let to_s = to.to_string();
        let o = film(&out, &["--to", &to_s, "--duration", "2", "--fps", "10", "--pace", "edits"]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("20 frames of 64x32"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let frames = decoded_frames(&out, W, H);
        assert_eq!(frames.len(), 20, "{name}");
        assert_eq!(frames.last().unwrap(), &rgb(&replay(&rows, to)), "{name}: the last frame is the canvas at {to}");
        // Frames are evenly spaced in versions (`--pace edits`): frame i shows the canvas at the
        // i-th cut, and the picture changes along the way.
        assert_ne!(frames[0], frames[19], "{name}");
        assert!(!Path::new(&format!("{}.partial", out.display())).exists());
    }
    // A region, scaled: the window of the replay, each pixel 2x2.
    let out = tmp.path().join("c.apng");
    film(&out, &["--region", "8,4,16,8", "--scale", "2", "--duration", "1", "--fps", "5"]);
    let last = decoded_frames(&out, 32, 16).pop().unwrap();
    let full = replay(&rows, 20_000);
    let window: Vec<u8> = (0..16)
        .flat_map(|y| (0..32).map(move |x| (x, y)))
        .map(|(x, y)| full[((4 + y / 2) * W + 8 + x / 2) as usize])
        .collect();
    assert_eq!(last, rgb(&window), "the region, scaled");
    // MP4 and WebM through ffmpeg: the frames, the size and the playing time are what was asked.
    for name in ["d.mp4", "e.webm"] {
        let out = tmp.path().join(name);
        film(&out, &["--duration", "3", "--fps", "10", "--scale", "2"]);
        let (frames, w, h, secs) = probe(&out);
        assert_eq!((frames, w, h), (30, 128, 64), "{name}");
        assert!((secs - 3.0).abs() < 0.2, "{name}: {secs} s");
    }
    // Bad flags: exit 2 and a message, no file.
    let bad = Command::new(common::bin())
        .args(["timelapse", "--data-dir", dir, "--width", "64", "--height", "32", "--region", "60,0,10,10"])
        .args(["--out", tmp.path().join("f.gif").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(!tmp.path().join("f.gif").exists());
    drop(s);
}

#[test]
fn a_timelapse_stops_cleanly_on_sigint_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = trace(tmp.path(), 20_000, 5);
    let data = tmp.path().join("data");
    import(&data, &csv);
    let out = tmp.path().join("long.webm");
    let partial = tmp.path().join("long.webm.partial");
    // Minutes of VP9 at 1024x512: far longer than it takes to see it start and stop it.
    let mut child = Command::new(common::bin())
        .args(["timelapse", "--data-dir", data.to_str().unwrap(), "--width", "64", "--height", "32"])
        .args(["--scale", "16", "--fps", "60", "--duration", "60", "--out", out.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(60, "the render to start", || partial.exists().then_some(()));
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(!partial.exists() && !out.exists(), "nothing left behind");
}
