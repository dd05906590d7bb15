//! Whole renders: each output decoded back and composed as a viewer would, every frame compared
//! with the canvas a simple model says it must show; the ffmpeg paths; stop and error cleanup;
//! and the (ignored) benchmark.

use super::raster::Raster;
use super::*;
use crate::canvas::RPLACE_2017_PALETTE;
use std::io::BufReader;
use std::process::Command;

fn args(line: &str) -> TimelapseArgs {
    super::args::parse_line(line).unwrap()
}

fn quiet() -> Options {
    Options { ffmpeg: "ffmpeg".into(), progress: false }
}

/// A deterministic xorshift64*: the same edits on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

/// `n` edits that each change a pixel, versions 1..=n, clustered around a few drifting centers
/// (as people paint), with quiet "nights": stamps advance slowly by day and fast by night.
fn synthetic(n: usize, g: &Geometry, seed: u64) -> Vec<FrameEdit> {
    let (w, h, colors) = (g.width as u64, g.height as u64, g.palette.len() as u64);
    let mut rng = Rng(seed | 1);
    let mut canvas = vec![0u8; g.pixels()];
    let mut centers: Vec<(u64, u64)> = (0..24).map(|_| (rng.below(w), rng.below(h))).collect();
    let mut ts = 1_491_238_800_000u64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i % 4096 == 0 {
            let c = rng.below(centers.len() as u64) as usize;
            centers[c] = (rng.below(w), rng.below(h));
        }
        let (x, y) = if rng.below(10) == 0 {
            (rng.below(w), rng.below(h))
        } else {
            let (cx, cy) = centers[rng.below(centers.len() as u64) as usize];
            let spread = 1 + w.min(h) / 16;
            let dx = rng.below(spread) + rng.below(spread);
            let dy = rng.below(spread) + rng.below(spread);
            ((cx + w + dx).saturating_sub(spread) % w, (cy + h + dy).saturating_sub(spread) % h)
        };
        let idx = (y * w + x) as usize;
        let mut color = rng.below(colors) as u8;
        if color == canvas[idx] {
            color = (color + 1) % colors as u8;
        }
        canvas[idx] = color;
        // About 72 hours for 16M edits; nights (every other 1/8 of the span) pass 10x sparser.
        let night = (i * 8 / n.max(1)) % 2 == 1;
        ts += if night { 100 } else { 10 } + rng.below(4);
        out.push(FrameEdit { version: i as u64 + 1, ts_ms: ts, x: x as u16, y: y as u16, color });
    }
    out
}

fn head_of(edits: &[FrameEdit]) -> Head {
    Head {
        version: edits.last().map_or(0, |e| e.version),
        first_ts_ms: edits.first().map_or(0, |e| e.ts_ms),
        last_ts_ms: edits.last().map_or(0, |e| e.ts_ms),
    }
}

/// The model: the whole canvas after the edits `keep` accepts, cropped to the region, scaled,
/// as RGBA.
fn expected(g: &Geometry, edits: &[FrameEdit], keep: impl Fn(&FrameEdit) -> bool, region: Region, k: u32) -> Vec<u8> {
    let mut canvas = vec![0u8; g.pixels()];
    for e in edits.iter().filter(|e| keep(e)) {
        canvas[e.y as usize * g.width as usize + e.x as usize] = e.color;
    }
    let (ow, oh) = (region.width * k, region.height * k);
    let mut out = Vec::with_capacity((ow * oh * 4) as usize);
    for oy in 0..oh {
        for ox in 0..ow {
            let (x, y) = (region.x + ox / k, region.y + oy / k);
            let c = g.palette[canvas[(y * g.width + x) as usize] as usize];
            out.extend(encode::rgb(c));
            out.push(255);
        }
    }
    out
}

/// A frame as decoded: its rectangle and RGBA pixels (alpha 0 = keep what is shown).
struct Sub {
    rect: Rect,
    rgba: Vec<u8>,
}

/// Composes sub-rectangle frames the way APNG (Over, dispose None) and GIF (transparent, dispose
/// Keep) viewers do; returns the full image after each frame.
fn compose(width: u32, height: u32, subs: &[Sub]) -> Vec<Vec<u8>> {
    let mut screen = vec![0u8; (width * height * 4) as usize];
    let mut shown = Vec::new();
    for s in subs {
        for dy in 0..s.rect.height {
            for dx in 0..s.rect.width {
                let src = ((dy * s.rect.width + dx) * 4) as usize;
                let dst = (((s.rect.y + dy) * width + s.rect.x + dx) * 4) as usize;
                if s.rgba[src + 3] != 0 {
                    screen[dst..dst + 4].copy_from_slice(&s.rgba[src..src + 4]);
                }
            }
        }
        shown.push(screen.clone());
    }
    shown
}

fn decode_apng(path: &Path) -> (u32, u32, Vec<Sub>, (u16, u16)) {
    let mut dec = png::Decoder::new(BufReader::new(File::open(path).unwrap()));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::ALPHA);
    let mut reader = dec.read_info().unwrap();
    let (w, h) = (reader.info().width, reader.info().height);
    let frames = reader.info().animation_control.unwrap().num_frames;
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let mut subs = Vec::new();
    let mut delay = (0, 0);
    for _ in 0..frames {
        let out = reader.next_frame(&mut buf).unwrap();
        let fc = reader.info().frame_control.unwrap();
        assert_eq!((fc.width, fc.height), (out.width, out.height));
        assert_eq!(fc.blend_op, png::BlendOp::Over);
        delay = (fc.delay_num, fc.delay_den);
        let rect = Rect { x: fc.x_offset, y: fc.y_offset, width: fc.width, height: fc.height };
        subs.push(Sub { rect, rgba: buf[..out.buffer_size()].to_vec() });
    }
    (w, h, subs, delay)
}

fn decode_gif(path: &Path) -> (u32, u32, Vec<Sub>, u64) {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(File::open(path).unwrap()).unwrap();
    let (w, h) = (dec.width() as u32, dec.height() as u32);
    let mut subs = Vec::new();
    let mut total_cs = 0;
    while let Some(f) = dec.read_next_frame().unwrap() {
        assert_eq!(f.dispose, gif::DisposalMethod::Keep);
        total_cs += f.delay as u64;
        let rect = Rect { x: f.left as u32, y: f.top as u32, width: f.width as u32, height: f.height as u32 };
        subs.push(Sub { rect, rgba: f.buffer.to_vec() });
    }
    (w, h, subs, total_cs)
}

fn ok_edits(edits: &[FrameEdit]) -> impl Iterator<Item = Result<FrameEdit, String>> + '_ {
    edits.iter().copied().map(Ok)
}

/// Renders `flags` over `edits`; checks every composed frame against the model, frame `i`
/// holding the edits up to version `cut(i)`.
fn round_trip(g: &Geometry, edits: &[FrameEdit], flags: &str, cut: impl Fn(u32) -> u64) -> Summary {
    let a = args(flags);
    let summary = run_with(&a, g, head_of(edits), ok_edits(edits), &AtomicBool::new(false), &quiet()).unwrap();
    assert!(!Partial::new(&a.out).path.exists(), "the partial file is renamed");
    let plan = Plan::new(&a, g, &head_of(edits)).unwrap();
    let (w, h, subs) = match plan.format {
        Format::Apng => {
            let (w, h, subs, delay) = decode_apng(&a.out);
            assert_eq!(delay, (1, plan.fps as u16));
            (w, h, subs)
        }
        Format::Gif => {
            let (w, h, subs, total_cs) = decode_gif(&a.out);
            assert_eq!(summary.fps, subs.len() as f64 * 100.0 / total_cs as f64);
            (w, h, subs)
        }
        _ => unreachable!("round trips are for the formats written here"),
    };
    assert_eq!((w, h), (plan.out_width, plan.out_height));
    assert_eq!(subs.len() as u32, plan.frames);
    assert_eq!(summary.frames, plan.frames);
    assert_eq!(subs[0].rect, Rect { x: 0, y: 0, width: w, height: h }, "the first frame is whole");
    assert!(subs[1..].iter().any(|s| s.rect.width * s.rect.height < w * h), "later frames are sub-rectangles");
    for (i, screen) in compose(w, h, &subs).iter().enumerate() {
        let v = cut(i as u32);
        let want = expected(g, edits, |e| e.version <= v, plan.region, plan.scale);
        assert!(*screen == want, "frame {i} (version {v}) differs from the canvas");
    }
    assert_eq!(summary.bytes, fs::metadata(&a.out).unwrap().len());
    summary
}

/// `from + (to - from) * i / (frames - 1)`, rounded to nearest as the schedule does.
fn even(from: u64, to: u64, frames: u32) -> impl Fn(u32) -> u64 {
    move |i| from + ((to - from) * i as u64 * 2 + (frames as u64 - 1)) / (2 * (frames as u64 - 1))
}

fn rplace(w: u32, h: u32) -> Geometry {
    Geometry::new(w, h, RPLACE_2017_PALETTE.to_vec()).unwrap()
}

#[test]
fn apng_round_trip_region_and_scale() {
    // 16 colors + keep: 8-bit indexes.
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(23, 17);
    let edits = synthetic(600, &g, 7);
    let out = dir.path().join("t.apng");
    let flags = format!("--out {} --region 3,2,15,11 --scale 3 --fps 12 --duration 2 --pace edits", out.display());
    let s = round_trip(&g, &edits, &flags, even(0, 600, 24));
    assert_eq!((s.width, s.height, s.fps, s.edits), (45, 33, 12.0, 600));
}

#[test]
fn apng_round_trip_four_bit_odd_width_to_a_version() {
    // 4 colors + keep: 4-bit indexes, rows of odd width padded.
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(9, 6, vec![0xffffff, 0xff0000, 0x00ff00, 0x0000ff]).unwrap();
    let edits = synthetic(500, &g, 3);
    let out = dir.path().join("t.png");
    let flags = format!("--out {} --fps 5 --duration 2 --pace edits --from 100 --to 400", out.display());
    let s = round_trip(&g, &edits, &flags, even(100, 400, 10));
    // Reading stops at --to: everything up to 400, nothing after.
    assert_eq!(s.edits, 400);
}

#[test]
fn apng_time_pace_shows_nights_and_ends_at_to() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(16, 16);
    let edits = synthetic(4000, &g, 11);
    let head = head_of(&edits);
    let out = dir.path().join("t.apng");
    let a = args(&format!("--out {} --fps 10 --duration 2", out.display()));
    let s = run_with(&a, &g, head, ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap();
    let (w, h, subs, _) = decode_apng(&out);
    assert_eq!(subs.len(), 20);
    let screens = compose(w, h, &subs);
    let region = Region { x: 0, y: 0, width: 16, height: 16 };
    let span = head.last_ts_ms - head.first_ts_ms;
    for (i, screen) in screens.iter().enumerate().skip(1) {
        let t = head.first_ts_ms + (span * i as u64 * 2 + 19) / 38;
        let want = if i == 19 {
            expected(&g, &edits, |_| true, region, 1)
        } else {
            expected(&g, &edits, |e| e.ts_ms <= t, region, 1)
        };
        assert!(*screen == want, "frame {i}");
    }
    // A night (a tenth the edits per ms) takes as many frames as a day: frames 2-4 are a
    // night's, so they hold fewer edits than a day's frames.
    let edits_by = |t: u64| edits.iter().filter(|e| e.ts_ms <= t).count();
    let at = |i: u64| head.first_ts_ms + span * i / 19;
    assert!(edits_by(at(4)) - edits_by(at(3)) < (edits_by(at(1)) - edits_by(at(0))) / 3);
    assert_eq!(s.edits, 4000);
}

#[test]
fn gif_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(21, 13);
    let edits = synthetic(2500, &g, 5);
    let out = dir.path().join("t.gif");
    let flags = format!("--out {} --region 1,1,19,11 --scale 2 --fps 30 --duration 0.5 --pace edits", out.display());
    let s = round_trip(&g, &edits, &flags, even(0, 2500, 15));
    assert_eq!(s.fps, 30.0);
    assert_eq!(s.format, Format::Gif);
}

#[test]
fn gif_reports_the_rate_it_can_play() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(8, 8);
    let edits = synthetic(300, &g, 9);
    let out = dir.path().join("t.gif");
    let s = round_trip(
        &g,
        &edits,
        &format!("--out {} --fps 60 --duration 0.5 --pace edits", out.display()),
        even(0, 300, 30),
    );
    assert_eq!(s.fps, 50.0);
}

/// ffmpeg is part of the test setup (`scripts/install-test-deps.sh` installs it): its absence
/// fails the test rather than skipping what it checks.
fn ffmpeg_available() -> bool {
    let found = Command::new("ffprobe").arg("-version").output().is_ok_and(|o| o.status.success());
    assert!(found, "ffmpeg/ffprobe are not installed: run scripts/install-test-deps.sh (apt-get install ffmpeg)");
    found
}

/// (frames, width, height) as ffprobe counts them.
fn probe(path: &Path) -> (u64, u32, u32) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<u64> = text.trim().split(',').map(|v| v.parse().unwrap()).collect();
    (f[2], f[0] as u32, f[1] as u32)
}

#[test]
fn mp4_and_webm_through_ffmpeg() {
    if !ffmpeg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(31, 17);
    let edits = synthetic(2000, &g, 13);
    for (name, extra, size) in [
        ("a.mp4", "--scale 2", (62, 34)),
        // Odd sides are padded to even.
        ("b.mp4", "--region 0,0,31,17", (32, 18)),
        ("c.webm", "--region 1,1,20,10", (20, 10)),
    ] {
        let out = dir.path().join(name);
        let a = args(&format!("--out {} --fps 10 --duration 1.2 {extra}", out.display()));
        let s = run_with(&a, &g, head_of(&edits), ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap();
        assert_eq!(probe(&out), (12, size.0, size.1), "{name}");
        assert_eq!((s.frames, s.bytes), (12, fs::metadata(&out).unwrap().len()));
        assert!(!Partial::new(&out).path.exists());
    }
}

#[test]
fn missing_ffmpeg_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(8, 8);
    let edits = synthetic(100, &g, 1);
    let out = dir.path().join("a.mp4");
    let opts = Options { ffmpeg: "placecast-test-no-such-ffmpeg".into(), progress: false };
    let a = args(&format!("--out {}", out.display()));
    let e = run_with(&a, &g, head_of(&edits), ok_edits(&edits), &AtomicBool::new(false), &opts).unwrap_err();
    assert!(matches!(e, TimelapseError::FfmpegMissing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("apt-get install ffmpeg") && msg.contains(".apng") && msg.contains(".gif"), "{msg}");
    assert!(!out.exists() && !Partial::new(&out).path.exists());
}

#[test]
fn failing_ffmpeg_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(8, 8);
    let edits = synthetic(100, &g, 1);
    let out = dir.path().join("a.webm");
    // `false` takes any arguments, reads nothing and fails: a stand-in for a broken ffmpeg.
    let opts = Options { ffmpeg: "false".into(), progress: false };
    let a = args(&format!("--out {} --scale 64", out.display()));
    let e = run_with(&a, &g, head_of(&edits), ok_edits(&edits), &AtomicBool::new(false), &opts).unwrap_err();
    assert!(matches!(e, TimelapseError::Ffmpeg { .. }), "{e:?}");
    assert!(!out.exists() && !Partial::new(&out).path.exists());
    if !ffmpeg_available() {
        return;
    }
    // A real ffmpeg that cannot write its output: the error carries what it said.
    let out = dir.path().join("missing-dir").join("a.mp4");
    let a = args(&format!("--out {}", out.display()));
    let e = run_with(&a, &g, head_of(&edits), ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap_err();
    let TimelapseError::Ffmpeg { stderr, .. } = &e else { panic!("{e:?}") };
    assert!(stderr.contains("missing-dir"), "{e}");
}

/// Edits that raise `stop` once `after` of them were read, and count how many were.
fn stopping<'a>(
    edits: &'a [FrameEdit],
    stop: &'a AtomicBool,
    after: usize,
    read: &'a std::cell::Cell<usize>,
) -> impl Iterator<Item = Result<FrameEdit, String>> + 'a {
    edits.iter().copied().map(move |e| {
        read.set(read.get() + 1);
        if read.get() == after {
            stop.store(true, Ordering::Relaxed);
        }
        Ok(e)
    })
}

#[test]
fn stop_removes_the_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(32, 32);
    let edits = synthetic(50_000, &g, 2);
    let mut names = vec!["s.apng", "s.gif"];
    if ffmpeg_available() {
        names.push("s.mp4");
    }
    for name in names {
        let out = dir.path().join(name);
        let (stop, read) = (AtomicBool::new(false), std::cell::Cell::new(0));
        let a = args(&format!("--out {} --pace edits", out.display()));
        let e = run_with(&a, &g, head_of(&edits), stopping(&edits, &stop, 20_000, &read), &stop, &quiet());
        assert!(matches!(e, Err(TimelapseError::Stopped)), "{name}: {e:?}");
        assert!(read.get() < 20_000 + 2 * POLL_EDITS as usize, "{name}: stopped promptly");
        assert!(!out.exists() && !Partial::new(&out).path.exists(), "{name}");
    }
}

#[test]
fn log_errors_and_bad_edits_remove_the_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(8, 8);
    let mut edits = synthetic(1000, &g, 4);
    let out = dir.path().join("e.apng");
    let a = args(&format!("--out {}", out.display()));
    let head = head_of(&edits);
    let failing = ok_edits(&edits).take(500).chain(std::iter::once(Err("record 501: bad checksum".to_string())));
    let e = run_with(&a, &g, head, failing, &AtomicBool::new(false), &quiet()).unwrap_err();
    assert!(e.to_string().contains("record 501: bad checksum"), "{e}");
    assert!(!out.exists() && !Partial::new(&out).path.exists());
    edits[700].color = 16;
    let e = run_with(&a, &g, head, ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap_err();
    assert!(matches!(e, TimelapseError::BadEdit { version: 701, color: 16, .. }), "{e:?}");
    edits[700].color = 1;
    edits[800].x = 8;
    let e = run_with(&a, &g, head, ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap_err();
    assert!(matches!(e, TimelapseError::BadEdit { version: 801, x: 8, .. }), "{e:?}");
    assert!(!out.exists() && !Partial::new(&out).path.exists());
}

#[test]
fn bad_flags_fail_before_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = rplace(8, 8);
    let edits = synthetic(10, &g, 4);
    let out = dir.path().join("x.apng");
    let a = args(&format!("--out {} --region 0,0,9,8", out.display()));
    let e = run_with(&a, &g, head_of(&edits), ok_edits(&edits), &AtomicBool::new(false), &quiet()).unwrap_err();
    assert!(matches!(e, TimelapseError::Args(ArgsError::RegionOutside { .. })), "{e:?}");
    assert!(!out.exists() && !Partial::new(&out).path.exists());
}

#[test]
fn raster_frames_are_tight_rectangles_of_changes() {
    let mut r = Raster::new(2, 1, 5, 4, 1, 0);
    let mut out = Vec::new();
    assert_eq!(r.take_frame(&mut out), Some(Rect { x: 0, y: 0, width: 5, height: 4 }));
    assert!(out.iter().all(|&v| v == 1), "the first frame is whole, color 0 is index 1");
    assert_eq!(r.take_frame(&mut out), None);
    r.set(3, 2, 5); // region (1, 1)
    r.set(5, 3, 7); // region (3, 2)
    r.set(0, 0, 9); // outside: ignored
    r.set(6, 4, 2); // region (4, 3)
    r.set(6, 4, 0); // ... and back: unchanged
    assert_eq!(r.take_frame(&mut out), Some(Rect { x: 1, y: 1, width: 3, height: 2 }));
    assert_eq!(out, [6, 0, 0, 0, 0, 8]);
    assert_eq!(r.pixels()[5 + 1], 5);
    let mut scaled = Raster::new(0, 0, 3, 2, 2, 0);
    scaled.take_frame(&mut out);
    scaled.set(1, 1, 3);
    assert_eq!(scaled.take_frame(&mut out), Some(Rect { x: 2, y: 2, width: 2, height: 2 }));
    assert_eq!(out, [4, 4, 4, 4]);
}

/// The published benchmark: 16M clustered edits on 1000x1000, 60 s at 30 fps, as APNG and GIF.
/// `cargo test --release --no-default-features --lib timelapse::tests::bench -- --ignored --nocapture`
/// Measured on the 2-core dev VM (one core): 16M edits alone (one frame) 0.1 s; APNG, 1800
/// frames, 1.7 s (45 MB) in either pace; GIF 20.6 s (31 MB), its LZW being the cost. ffmpeg's
/// own decoders agree that the last frame of each equals the one-frame render.
#[test]
#[ignore]
fn bench_16m_edits_1800_frames() {
    let g = rplace(1000, 1000);
    let t = Instant::now();
    let edits = synthetic(16_000_000, &g, 2017);
    eprintln!("generated {} edits in {:.2} s", edits.len(), t.elapsed().as_secs_f64());
    let head = head_of(&edits);
    let stop = AtomicBool::new(false);
    let time = |flags: &str| {
        let s = run_with(&args(flags), &g, head, ok_edits(&edits), &stop, &quiet()).unwrap();
        eprintln!("{flags}\n  {s}\n  {:.1} ns per edit overall", s.seconds * 1e9 / s.edits as f64);
        s
    };
    time("--out /tmp/placecast-bench-1frame.apng --fps 1 --duration 1");
    time("--out /tmp/placecast-bench.apng --fps 30 --duration 60");
    time("--out /tmp/placecast-bench-edits.apng --fps 30 --duration 60 --pace edits");
    time("--out /tmp/placecast-bench.gif --fps 30 --duration 60");
}
