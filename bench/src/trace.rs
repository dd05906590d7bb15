//! `placecast-load trace`: a synthetic r/place-like event written as CSV, the input of
//! `placecast import` and of the benchmarks of placecast's history features.
//!
//! It owns the whole model of the event and its CSV encoding:
//! - who: `users` (about edits / 15), each with an edit count from a capped Lomax (shifted
//!   Pareto) law: most place a handful of pixels, a few as many as the span and cooldown allow;
//! - when: each user's edits come in sessions that start at times drawn from a global intensity
//!   (ramp-up at the start, a diurnal cycle on the UTC clock, a few bursts), a cooldown apart;
//! - where and which color: a few hundred artworks (rectangles with heavy-tailed sizes and
//!   popularity, born over the event) that users join and mostly stay on, placing near their
//!   centers; builders repaint pixels that differ from the artwork's target pattern, griefers
//!   spoil pixels that match it, and a small share of edits lands anywhere in any color. The
//!   canvas as the edits leave it (starting all color 0) is kept to make those choices.
//!
//! The same model drives the `session` scenario live: [`replay`] hands over the edits (time,
//! user, pixel) in row order without writing them ([`crate::dayplan`] compresses them into a day).
//!
//! Invariants of the output, whatever the arguments that pass [`validate`]:
//! - the header is exactly [`HEADER`]; rows are sorted by timestamp (ties by user index) and
//!   `version` is the row number from 1;
//! - one user's consecutive edits are at least the cooldown apart and all lie in
//!   `[start_ms, start_ms + hours)`;
//! - `x < width`, `y < height`, `color < colors`; `user_hash` is 16 lowercase hex digits,
//!   never all zeros, distinct per user;
//! - the bytes are a function of the arguments alone: every random draw comes from splitmix64
//!   streams keyed by the seed, rows are generated in their sorted order, and no hash-map order
//!   is involved.
//!
//! Memory: 8 bytes per edit (one sorted `u64` per edit: time in the high half, user in the low
//! half), about 20 bytes per user, one byte per pixel and 16 per second of the span; rows are
//! generated while writing (16 M edits: about 160 MB).

use crate::cli::TraceArgs;
use std::io::{self, Write};
use std::time::Instant;
use thiserror::Error;

/// The CSV header (Reddit's 2017 dataset plus the version).
pub const HEADER: &str = "timestamp,user_hash,x,y,color,version\n";
/// 2017-04-03T17:00:00Z, the start of r/place 2017.
pub const DEFAULT_START_MS: u64 = 1_491_238_800_000;
/// Most edits one trace holds (800 MB of schedule, some 7 GB of CSV).
pub const MAX_EDITS: u64 = 100_000_000;
/// Largest canvas, in pixels (2^27).
pub const MAX_PIXELS: u64 = 1 << 27;
/// Longest event: 30 days keeps every time offset in milliseconds within a `u32`.
pub const MAX_HOURS: u64 = 720;
/// Longest cooldown: one day.
pub const MAX_COOLDOWN_S: u64 = 86_400;
/// Default edits per user: 16.5 M edits by about 1.1 M users in 2017.
pub const EDITS_PER_USER: u64 = 15;
/// 9999-12-31 23:59:59.999 UTC: the timestamp format has four year digits.
const LAST_MS: u64 = 253_402_300_799_999;

/// Why a trace could not be written.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("--edits must be 1 to {MAX_EDITS}, got {0}")]
    Edits(u64),
    #[error("--width and --height must be at least 1 and width*height at most 2^27 (134217728), got {0}x{1}")]
    Canvas(u32, u32),
    #[error("--colors must be 2 to 32, got {0}")]
    Colors(u32),
    #[error("--cooldown-s must be 1 to {MAX_COOLDOWN_S}, got {0}")]
    Cooldown(u64),
    #[error("--hours must be 1 to {MAX_HOURS}, got {0}")]
    Hours(u64),
    #[error("--start-ms {0} puts the event past the year 9999")]
    Start(u64),
    #[error("--users must be 1 to --edits ({edits}), got {users}")]
    Users { users: u64, edits: u64 },
    #[error(
        "{edits} edits by {users} users do not fit: one user places at most {per_user} edits in {hours} h \
         with a {cooldown_s} s cooldown (lower --edits or --cooldown-s, or raise --hours or --users)"
    )]
    Infeasible { edits: u64, users: u64, per_user: u64, hours: u64, cooldown_s: u64 },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl TraceError {
    /// 2 for bad arguments, 1 for a failed write (the exit codes of `placecast-load`).
    pub fn exit_code(&self) -> i32 {
        match self {
            TraceError::Io { .. } => 1,
            _ => 2,
        }
    }
}

/// What a written trace holds (the stderr summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub edits: u64,
    pub users: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub bytes: u64,
}

/// The arguments, checked and derived.
#[derive(Debug, Clone)]
struct Params {
    edits: u64,
    users: u64,
    width: u32,
    height: u32,
    colors: u32,
    cooldown_ms: u64,
    span_ms: u64,
    start_ms: u64,
    seed: u64,
    /// Most edits one user can place: the first at 0, then one per cooldown until the end.
    per_user_max: u64,
}

/// Checks the arguments; the error says which one is out of range and what it may be.
pub fn validate(a: &TraceArgs) -> Result<(), TraceError> {
    params(a).map(|_| ())
}

fn params(a: &TraceArgs) -> Result<Params, TraceError> {
    if a.edits == 0 || a.edits > MAX_EDITS {
        return Err(TraceError::Edits(a.edits));
    }
    if a.width == 0 || a.height == 0 || a.width as u64 * a.height as u64 > MAX_PIXELS {
        return Err(TraceError::Canvas(a.width, a.height));
    }
    if !(2..=32).contains(&a.colors) {
        return Err(TraceError::Colors(a.colors));
    }
    if !(1..=MAX_COOLDOWN_S).contains(&a.cooldown_s) {
        return Err(TraceError::Cooldown(a.cooldown_s));
    }
    if !(1..=MAX_HOURS).contains(&a.hours) {
        return Err(TraceError::Hours(a.hours));
    }
    let span_ms = a.hours * 3_600_000;
    if a.start_ms > LAST_MS + 1 - span_ms {
        return Err(TraceError::Start(a.start_ms));
    }
    let users = a.users.unwrap_or((a.edits / EDITS_PER_USER).max(1));
    if users == 0 || users > a.edits {
        return Err(TraceError::Users { users, edits: a.edits });
    }
    let cooldown_ms = a.cooldown_s * 1000;
    let per_user_max = (span_ms - 1) / cooldown_ms + 1;
    if a.edits > users.saturating_mul(per_user_max) {
        let (edits, hours, cooldown_s) = (a.edits, a.hours, a.cooldown_s);
        return Err(TraceError::Infeasible { edits, users, per_user: per_user_max, hours, cooldown_s });
    }
    Ok(Params {
        edits: a.edits,
        users,
        width: a.width,
        height: a.height,
        colors: a.colors,
        cooldown_ms,
        span_ms,
        start_ms: a.start_ms,
        seed: a.seed,
        per_user_max,
    })
}

/// Writes the trace to `--out` (`-`: stdout) and prints the one-line summary to stderr.
pub fn run(a: &TraceArgs) -> Result<Summary, TraceError> {
    let t0 = Instant::now();
    let summary = if a.out.as_os_str() == "-" {
        generate(a, io::stdout().lock())?
    } else {
        let what = || format!("creating {}", a.out.display());
        let f = std::fs::File::create(&a.out).map_err(|source| TraceError::Io { what: what(), source })?;
        generate(a, f)?
    };
    eprintln!(
        "trace: {} edits by {} users, {} to {} ({:.1} h), {:.1} MB to {} in {:.1} s",
        summary.edits,
        summary.users,
        String::from_utf8_lossy(&format_ts(summary.first_ms)[..19]),
        String::from_utf8_lossy(&format_ts(summary.last_ms)[..19]),
        (summary.last_ms - summary.first_ms) as f64 / 3_600_000.0,
        summary.bytes as f64 / 1e6,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Generates the trace of `a` into `out` (buffered here).
pub fn generate<W: Write>(a: &TraceArgs, out: W) -> Result<Summary, TraceError> {
    let p = params(a)?;
    let intensity = Intensity::new(&p, &mut Rng::new(p.seed, Stream::Intensity));
    let schedule = schedule(&p, &intensity);
    let arts = Artworks::new(&p, &mut Rng::new(p.seed, Stream::Artworks));
    write_rows(&p, &arts, &schedule, out)
}

/// One edit of a trace as the model makes it (a CSV row before formatting): milliseconds from
/// the start, the user's index (`0..users`, the row's `user_hash` is a bijection of it) and the
/// pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEdit {
    pub t_ms: u64,
    pub user: u64,
    pub x: u32,
    pub y: u32,
    pub color: u8,
}

/// The trace of `a` edit by edit, in row order, without writing it: the same model (who, when,
/// where) that a live replay follows (the `session` scenario). Returns the number of users.
pub fn replay(a: &TraceArgs, mut f: impl FnMut(TraceEdit)) -> Result<u64, TraceError> {
    let p = params(a)?;
    let intensity = Intensity::new(&p, &mut Rng::new(p.seed, Stream::Intensity));
    let schedule = schedule(&p, &intensity);
    let arts = Artworks::new(&p, &mut Rng::new(p.seed, Stream::Artworks));
    let _ = walk(&p, &arts, &schedule, |_, e| {
        f(e);
        Ok(())
    });
    Ok(p.users)
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// Independent streams, so that changing how one part draws leaves the others as they were.
#[derive(Clone, Copy)]
enum Stream {
    Counts = 1,
    Intensity = 2,
    Times = 3,
    Artworks = 4,
    Users = 5,
    Hashes = 6,
}

/// The splitmix64 finalizer: a bijection of `u64` with `mix(0) == 0`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: small state (one word per user), fast, and good enough for a workload.
#[derive(Clone, Copy, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: Stream) -> Self {
        Rng(mix(seed ^ mix(stream as u64 ^ 0x7A3C_E9B1_05D4_2F68)))
    }

    fn for_user(seed: u64, stream: Stream, user: u64) -> Self {
        Rng(mix(Rng::new(seed, stream).0 ^ mix(user.wrapping_add(1))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (multiply-shift; the bias is far below anything measured here).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Pareto with minimum 1 and tail index `alpha`.
    fn pareto(&mut self, alpha: f64) -> f64 {
        (1.0 - self.f64()).powf(-1.0 / alpha)
    }
}

// ---------------------------------------------------------------------------------------------
// Who: edits per user

/// Tail index of the users' activity (Lomax: Pareto shifted to start at 0, so that many users
/// stay at one edit). With the 2017 shape (mean 15, cap 864 for 72 h at 300 s) it gives about
/// 16% of users with one edit, a median of 5, the top 1% placing about a quarter of the edits
/// and roughly 0.1% of users at the cap.
const USER_ALPHA: f64 = 1.5;

/// Edits per user: at least 1 and at most `cap` each, summing to `edits` (which must be at most
/// `users * cap`), the edits beyond one each shared in proportion to heavy-tailed weights.
fn edit_counts(users: u64, edits: u64, cap: u64, rng: &mut Rng) -> Vec<u32> {
    let weights: Vec<f64> = (0..users).map(|_| rng.pareto(USER_ALPHA) - 1.0).collect();
    let (extra, room) = (edits - users, cap - 1);
    let scale = water_level(&weights, extra, room);
    let mut counts: Vec<u32> = weights.iter().map(|&w| (1 + share(scale, w, room)) as u32).collect();
    let mut left = extra - counts.iter().map(|&c| c as u64 - 1).sum::<u64>();
    // The few edits the floors left over: one each in user order (already a random order), then
    // (only when nearly every user is full) as many as fit.
    for round in 0..2 {
        for c in counts.iter_mut() {
            let take = if round == 0 { 1 } else { left };
            let add = take.min(cap - *c as u64).min(left);
            *c += add as u32;
            left -= add;
        }
    }
    counts
}

/// Extra edits of a user with weight `w` at scale `s`.
fn share(s: f64, w: f64, room: u64) -> u64 {
    ((s * w) as u64).min(room)
}

/// The largest scale (to bisection precision) whose shares sum to at most `extra`.
fn water_level(weights: &[f64], extra: u64, room: u64) -> f64 {
    let total = |s: f64| weights.iter().map(|&w| share(s, w, room)).sum::<u64>();
    let mut hi = 1.0;
    for _ in 0..80 {
        if total(hi) > extra {
            break;
        }
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if total(mid) <= extra {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

// ---------------------------------------------------------------------------------------------
// When: the global intensity and each user's times

/// Relative activity per second of the event, as a cumulative table to sample from.
struct Intensity {
    cumulative: Vec<f64>,
}

/// Hour (UTC) of the daily peak: afternoon in the Americas, evening in Europe.
const PEAK_HOUR_UTC: f64 = 19.0;
/// Depth of the diurnal cycle: the trough is a third of the peak.
const DIURNAL_DEPTH: f64 = 0.5;
/// Time constant of the ramp-up at the start (word of the event spreading).
const RAMP_S: f64 = 3.0 * 3600.0;
/// Bursts per day (a raid, a front-page post, a coordinated push).
const BURSTS_PER_DAY: f64 = 4.0;

impl Intensity {
    fn new(p: &Params, rng: &mut Rng) -> Self {
        let seconds = (p.span_ms / 1000) as usize;
        let start_s = p.start_ms / 1000;
        let mut rate: Vec<f64> = (0..seconds).map(|s| base_rate(start_s, s as f64)).collect();
        let bursts = (seconds as f64 / 86_400.0 * BURSTS_PER_DAY).ceil() as usize;
        for _ in 0..bursts {
            add_burst(&mut rate, rng);
        }
        let mut acc = 0.0;
        let cumulative = rate
            .iter()
            .map(|r| {
                acc += r;
                acc
            })
            .collect();
        Intensity { cumulative }
    }

    /// A time (ms from the start) before `limit_ms` (at least 1 s), with density proportional
    /// to the intensity.
    fn sample(&self, limit_ms: u64, rng: &mut Rng) -> u64 {
        let seconds = ((limit_ms / 1000) as usize).clamp(1, self.cumulative.len());
        let u = rng.f64() * self.cumulative[seconds - 1];
        let second = self.cumulative[..seconds].partition_point(|&c| c <= u).min(seconds - 1);
        second as u64 * 1000 + rng.below(1000)
    }
}

/// Ramp-up times the diurnal cycle at `offset_s` seconds into an event starting at `start_s`.
fn base_rate(start_s: u64, offset_s: f64) -> f64 {
    let ramp = 1.0 - 0.85 * (-offset_s / RAMP_S).exp();
    let hour = ((start_s % 86_400) as f64 + offset_s) / 3600.0;
    let diurnal = 1.0 + DIURNAL_DEPTH * (std::f64::consts::TAU * (hour - PEAK_HOUR_UTC) / 24.0).cos();
    ramp * diurnal
}

/// Multiplies a triangular bump (10 to 40 minutes either side, up to several times the base).
fn add_burst(rate: &mut [f64], rng: &mut Rng) {
    let center = rng.below(rate.len() as u64) as usize;
    let half = (600.0 + rng.exp(900.0).min(3600.0)) as usize;
    let height = 0.5 + rng.exp(1.5);
    let (lo, hi) = (center.saturating_sub(half), (center + half).min(rate.len()));
    for (s, r) in rate.iter_mut().enumerate().take(hi).skip(lo) {
        let d = s.abs_diff(center) as f64 / half as f64;
        *r *= 1.0 + height * (1.0 - d);
    }
}

/// Mean edits in one sitting (at a 5 minute cooldown, about half an hour).
const SESSION_MEAN: f64 = 6.0;
/// Mean lateness after the cooldown within a session: users come back when the timer ends.
const LATE_MEAN_MS: f64 = 20_000.0;
/// Share of edits within a session after a longer pause.
const PAUSE_SHARE: f64 = 0.1;
const PAUSE_MEAN_MS: f64 = 300_000.0;

/// One user's `count` edit times (ms from the start, sorted), each at least `cooldown_ms` after
/// the previous and all within the span; `count` must be at most `per_user_max`.
fn user_times(count: u64, p: &Params, intensity: &Intensity, rng: &mut Rng, out: &mut Vec<u64>) {
    out.clear();
    let mut left = count;
    while left > 0 {
        let len = (1 + rng.exp(SESSION_MEAN - 1.0) as u64).min(left);
        session(len, p, intensity, rng, out);
        left -= len;
    }
    out.sort_unstable();
    // Users pushed to the end stop at different moments, not all on the last millisecond.
    let slack = (p.span_ms - 1 - (count - 1) * p.cooldown_ms).min(p.cooldown_ms);
    enforce_cooldown(out, p.cooldown_ms, p.span_ms - 1 - rng.below(slack + 1));
}

/// One sitting of `len` edits about a cooldown apart, started (by the intensity) early enough
/// to end within the span when it can.
fn session(len: u64, p: &Params, intensity: &Intensity, rng: &mut Rng, out: &mut Vec<u64>) {
    let first = out.len();
    let mut t = 0.0;
    for _ in 0..len {
        out.push(t as u64);
        let late = if rng.chance(PAUSE_SHARE) { rng.exp(PAUSE_MEAN_MS) } else { rng.exp(LATE_MEAN_MS) };
        t += p.cooldown_ms as f64 + late;
    }
    let length = out.last().copied().unwrap_or(0);
    let start = intensity.sample(p.span_ms.saturating_sub(length), rng);
    for o in &mut out[first..] {
        *o += start;
    }
}

/// Pushes sorted times apart to the cooldown, then pulls them back to end by `last`. Feasible
/// whenever `(len - 1) * cooldown <= last`: the forward pass leaves `t[i] >= i * cooldown`, so
/// the backward pass never goes below zero.
fn enforce_cooldown(t: &mut [u64], cooldown: u64, last: u64) {
    for i in 1..t.len() {
        t[i] = t[i].max(t[i - 1] + cooldown);
    }
    let Some(end) = t.last_mut() else { return };
    *end = (*end).min(last);
    for i in (0..t.len() - 1).rev() {
        t[i] = t[i].min(t[i + 1] - cooldown);
    }
}

/// Every edit as `time_ms << 32 | user`, sorted: time order, ties by user index.
fn schedule(p: &Params, intensity: &Intensity) -> Vec<u64> {
    let counts = edit_counts(p.users, p.edits, p.per_user_max, &mut Rng::new(p.seed, Stream::Counts));
    let mut rng = Rng::new(p.seed, Stream::Times);
    let mut keys = Vec::with_capacity(p.edits as usize);
    let mut times = Vec::new();
    for (user, &count) in counts.iter().enumerate() {
        user_times(count as u64, p, intensity, &mut rng, &mut times);
        keys.extend(times.iter().map(|&t| t << 32 | user as u64));
    }
    keys.sort_unstable();
    keys
}

// ---------------------------------------------------------------------------------------------
// Where and which color: artworks

/// One artwork: a rectangle, its target pattern and when people start on it.
#[derive(Debug, Clone)]
struct Artwork {
    x0: u32,
    y0: u32,
    w: u32,
    h: u32,
    /// Side of one pattern cell in pixels.
    cell: u32,
    pattern: u8,
    palette: [u8; 4],
    palette_len: u8,
    salt: u64,
    birth_ms: u64,
}

/// The artworks sorted by birth, with cumulative popularity for picking among the born ones.
struct Artworks {
    arts: Vec<Artwork>,
    births: Vec<u64>,
    cumulative: Vec<f64>,
}

/// One artwork per this many users (400 for the 2017-sized event), within the bounds below and
/// at most one per 64 pixels of canvas.
const USERS_PER_ARTWORK: u64 = 1000;
const MIN_ARTWORKS: u64 = 8;
const MAX_ARTWORKS: u64 = 400;
/// Together the rectangles cover this many canvases (they overlap: borders are contested).
const COVER: f64 = 2.0;
/// Tail indexes: artwork sides (many small, a few large, at most `SIDE_RANGE` times the
/// smallest) and popularity (a few draw most of the crowd).
const SIDE_ALPHA: f64 = 1.3;
const SIDE_RANGE: f64 = 30.0;
const POPULARITY_ALPHA: f64 = 1.0;
/// Share of artworks started in the first two hours; the rest start until 85% of the span.
const EARLY_SHARE: f64 = 0.35;

impl Artworks {
    fn new(p: &Params, rng: &mut Rng) -> Self {
        let pixels = p.width as u64 * p.height as u64;
        let count = (p.users / USERS_PER_ARTWORK).clamp(MIN_ARTWORKS, MAX_ARTWORKS).min((pixels / 64).max(1));
        let sides: Vec<(f64, f64)> = (0..count).map(|_| raw_sides(rng)).collect();
        let raw_area: f64 = sides.iter().map(|(w, h)| w * h).sum();
        let scale = (COVER * pixels as f64 / raw_area).sqrt();
        let mut arts: Vec<(Artwork, f64)> =
            sides.iter().enumerate().map(|(i, &(w, h))| artwork(p, i as u64, w * scale, h * scale, rng)).collect();
        // The first is there from the start, so a user always has one to join.
        arts[0].0.birth_ms = 0;
        arts.sort_by_key(|(a, _)| a.birth_ms);
        let mut acc = 0.0;
        let cumulative = arts
            .iter()
            .map(|(_, w)| {
                acc += w;
                acc
            })
            .collect();
        let arts: Vec<Artwork> = arts.into_iter().map(|(a, _)| a).collect();
        let births = arts.iter().map(|a| a.birth_ms).collect();
        Artworks { arts, births, cumulative }
    }

    /// An artwork born by `t_ms`, with probability proportional to its popularity.
    fn pick(&self, t_ms: u64, rng: &mut Rng) -> u16 {
        let born = self.births.partition_point(|&b| b <= t_ms).max(1);
        let u = rng.f64() * self.cumulative[born - 1];
        self.cumulative[..born].partition_point(|&c| c <= u).min(born - 1) as u16
    }
}

/// Width and height before scaling to the canvas: a heavy-tailed size, aspect 1:2 to 2:1.
fn raw_sides(rng: &mut Rng) -> (f64, f64) {
    let side = rng.pareto(SIDE_ALPHA).min(SIDE_RANGE);
    let aspect = (rng.f64() * 1.4 - 0.7).exp().sqrt();
    (side * aspect, side / aspect)
}

/// Artwork `i` of `w` x `h` pixels (before clamping to the canvas) and its popularity weight.
fn artwork(p: &Params, i: u64, w: f64, h: f64, rng: &mut Rng) -> (Artwork, f64) {
    let w = (w.round() as u32).clamp(1, p.width);
    let h = (h.round() as u32).clamp(1, p.height);
    let x0 = rng.below((p.width - w + 1) as u64) as u32;
    let y0 = rng.below((p.height - h + 1) as u64) as u32;
    let palette_len = 2 + rng.below(3) as u8;
    let mut palette = [0u8; 4];
    for c in palette.iter_mut() {
        *c = rng.below(p.colors as u64) as u8;
    }
    let cell = 1 + rng.below(4) as u32;
    let pattern = rng.below(4) as u8;
    let early = rng.chance(EARLY_SHARE);
    let birth_ms = if early { rng.below(p.span_ms.min(2 * 3_600_000)) } else { rng.below(p.span_ms * 85 / 100) };
    // Bigger artworks need (and draw) more people.
    let weight = rng.pareto(POPULARITY_ALPHA) * ((w as u64 * h as u64) as f64).sqrt();
    let salt = mix(i ^ p.seed.rotate_left(17));
    (Artwork { x0, y0, w, h, cell, pattern, palette, palette_len, salt, birth_ms }, weight)
}

impl Artwork {
    /// A pixel of the rectangle: half the time anywhere, half the time near the center (each
    /// axis triangular), so centers fill first and edges later.
    fn pixel(&self, rng: &mut Rng) -> (u32, u32) {
        let centered = rng.chance(0.5);
        let mut axis = |n: u32| {
            let f = if centered { (rng.f64() + rng.f64()) / 2.0 } else { rng.f64() };
            ((f * n as f64) as u32).min(n - 1)
        };
        let dx = axis(self.w);
        let dy = axis(self.h);
        (self.x0 + dx, self.y0 + dy)
    }

    /// The color the artwork wants at (x, y): a noise image, stripes, diagonals or rings.
    fn target(&self, x: u32, y: u32) -> u8 {
        let (cx, cy) = ((x - self.x0) / self.cell, (y - self.y0) / self.cell);
        let k = match self.pattern {
            0 => mix(self.salt ^ ((cx as u64) << 32 | cy as u64)),
            1 => cy as u64,
            2 => (cx + cy) as u64,
            _ => {
                let (mx, my) = (self.w / self.cell / 2, self.h / self.cell / 2);
                cx.abs_diff(mx).max(cy.abs_diff(my)) as u64
            }
        };
        self.palette[(k % self.palette_len as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Users' edits and the CSV

/// Share of edits anywhere on the canvas in any color (explorers, misclicks, bots).
const RANDOM_SHARE: f64 = 0.03;
/// Share of users who mostly grief, and how often they and the others place a wrong color.
const GRIEFER_SHARE: f64 = 0.05;
const GRIEFER_WRONG: f64 = 0.8;
const REGULAR_WRONG: f64 = 0.03;
/// Share of users with a second artwork, and of their edits that go to it.
const SECOND_SHARE: f64 = 0.4;
const SECOND_USE: f64 = 0.3;
/// Chance per edit that a user moves on to another artwork anyway.
const SWITCH: f64 = 0.01;
/// Pixels of its artwork a user looks at for one that needs its color (or, griefing, one that
/// has it); when none does, the user places on the last one and moves on next time.
const LOOKS: usize = 4;
/// No artwork yet: the user has not placed.
const NONE: u16 = u16::MAX;

/// What one user does, carried from edit to edit in time order.
#[derive(Clone, Copy)]
struct UserState {
    rng: Rng,
    primary: u16,
    secondary: u16,
    griefer: bool,
}

impl UserState {
    fn new(seed: u64, user: u64) -> Self {
        UserState { rng: Rng::for_user(seed, Stream::Users, user), primary: NONE, secondary: NONE, griefer: false }
    }

    /// The artwork of the next edit at `t_ms` (joining one or two on the first edit).
    fn artwork(&mut self, arts: &Artworks, t_ms: u64) -> u16 {
        let rng = &mut self.rng;
        if self.primary == NONE {
            self.griefer = rng.chance(GRIEFER_SHARE);
            self.primary = arts.pick(t_ms, rng);
            if rng.chance(SECOND_SHARE) {
                self.secondary = arts.pick(t_ms, rng);
            }
        } else if rng.chance(SWITCH) {
            self.primary = arts.pick(t_ms, rng);
        }
        if self.secondary != NONE && rng.chance(SECOND_USE) {
            self.secondary
        } else {
            self.primary
        }
    }
}

/// The canvas as the edits leave it (every pixel starts as color 0), which users look at to
/// decide where to place: builders repair what is wrong, griefers spoil what is right.
struct World<'a> {
    p: &'a Params,
    arts: &'a Artworks,
    canvas: Vec<u8>,
}

impl World<'_> {
    /// User `u`'s next edit at `t_ms`: (x, y, color); the canvas keeps it.
    fn edit(&mut self, u: &mut UserState, t_ms: u64) -> (u32, u32, u8) {
        let (w, h, colors) = (self.p.width as u64, self.p.height as u64, self.p.colors as u64);
        let on = u.artwork(self.arts, t_ms);
        let rng = &mut u.rng;
        let (x, y, color) = if rng.chance(RANDOM_SHARE) {
            (rng.below(w) as u32, rng.below(h) as u32, rng.below(colors) as u8)
        } else {
            let grief = rng.chance(if u.griefer { GRIEFER_WRONG } else { REGULAR_WRONG });
            let art = &self.arts.arts[on as usize];
            let (x, y, target, found) = self.look(art, grief, rng);
            if !found {
                u.primary = self.arts.pick(t_ms, rng);
            }
            (x, y, if grief { other_color(target, colors, rng) } else { target })
        };
        self.canvas[(y as u64 * w + x as u64) as usize] = color;
        (x, y, color)
    }

    /// Up to [`LOOKS`] pixels of `art`: the first that is wrong (or, griefing, right), else the
    /// last looked at. Returns (x, y, target color, whether one was found).
    fn look(&self, art: &Artwork, grief: bool, rng: &mut Rng) -> (u32, u32, u8, bool) {
        let mut last = (art.x0, art.y0, 0);
        for _ in 0..LOOKS {
            let (x, y) = art.pixel(rng);
            let target = art.target(x, y);
            let right = self.canvas[(y as u64 * self.p.width as u64 + x as u64) as usize] == target;
            if right == grief {
                return (x, y, target, true);
            }
            last = (x, y, target);
        }
        (last.0, last.1, last.2, false)
    }
}

/// A color other than `c`, uniform among the rest.
fn other_color(c: u8, colors: u64, rng: &mut Rng) -> u8 {
    let o = rng.below(colors - 1) as u8;
    if o >= c {
        o + 1
    } else {
        o
    }
}

/// The hash of user `user`: `mix` is a bijection with `mix(0) == 0` and the input is never 0
/// (low half `user + 1`), so hashes are distinct per user and never all zeros.
fn user_hash(key: u64, user: u64) -> u64 {
    mix((key << 32) | (user + 1))
}

/// Every edit of the schedule in row order (`i` from 0), with its pixel chosen by the world.
fn walk(
    p: &Params,
    arts: &Artworks,
    keys: &[u64],
    mut f: impl FnMut(usize, TraceEdit) -> io::Result<()>,
) -> io::Result<()> {
    let mut users: Vec<UserState> = (0..p.users).map(|u| UserState::new(p.seed, u)).collect();
    let mut world = World { p, arts, canvas: vec![0; p.width as usize * p.height as usize] };
    for (i, &key) in keys.iter().enumerate() {
        let (t_ms, user) = (key >> 32, key & 0xFFFF_FFFF);
        let (x, y, color) = world.edit(&mut users[user as usize], t_ms);
        f(i, TraceEdit { t_ms, user, x, y, color })?;
    }
    Ok(())
}

fn write_rows<W: Write>(p: &Params, arts: &Artworks, keys: &[u64], out: W) -> Result<Summary, TraceError> {
    let io_err = |source| TraceError::Io { what: "writing the trace".into(), source };
    let mut out = io::BufWriter::with_capacity(4 << 20, out);
    out.write_all(HEADER.as_bytes()).map_err(io_err)?;
    let hash_key = Rng::new(p.seed, Stream::Hashes).next() >> 32;
    let mut clock = Clock::default();
    let mut row = Vec::with_capacity(128);
    let mut bytes = HEADER.len() as u64;
    walk(p, arts, keys, |i, e| {
        row.clear();
        row.extend_from_slice(clock.format(p.start_ms + e.t_ms));
        row.push(b',');
        push_hex(&mut row, user_hash(hash_key, e.user));
        for v in [e.x as u64, e.y as u64, e.color as u64, i as u64 + 1] {
            row.push(b',');
            push_dec(&mut row, v);
        }
        row.push(b'\n');
        bytes += row.len() as u64;
        out.write_all(&row)
    })
    .map_err(io_err)?;
    out.flush().map_err(io_err)?;
    let first_ms = p.start_ms + keys.first().map_or(0, |k| k >> 32);
    let last_ms = p.start_ms + keys.last().map_or(0, |k| k >> 32);
    Ok(Summary { edits: p.edits, users: p.users, first_ms, last_ms, bytes })
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((v >> (shift * 4)) & 0xF) as usize]);
    }
}

fn push_dec(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` with the date and time of the last second kept: rows come in
/// time order, so most rows only rewrite the milliseconds.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    text: [u8; 27],
}

impl Clock {
    fn format(&mut self, ms: u64) -> &[u8] {
        if self.second != Some(ms / 1000) {
            self.text = format_ts(ms);
            self.second = Some(ms / 1000);
        }
        let m = ms % 1000;
        self.text[20] = b'0' + (m / 100) as u8;
        self.text[21] = b'0' + (m / 10 % 10) as u8;
        self.text[22] = b'0' + (m % 10) as u8;
        &self.text
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm UTC` (years 1970 to 9999).
pub fn format_ts(ms: u64) -> [u8; 27] {
    let (days, rem) = (ms / 86_400_000, ms % 86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, m) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    let mut t = *b"0000-00-00 00:00:00.000 UTC";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for k in (at..at + width).rev() {
            t[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, mo);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 3, m);
    t
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn args(edits: u64, seed: u64) -> TraceArgs {
        TraceArgs {
            edits,
            seed,
            width: 1000,
            height: 1000,
            colors: 16,
            cooldown_s: 300,
            hours: 72,
            start_ms: DEFAULT_START_MS,
            users: None,
            out: PathBuf::from("-"),
        }
    }

    fn bytes(a: &TraceArgs) -> Vec<u8> {
        let mut out = Vec::new();
        generate(a, &mut out).expect("valid arguments");
        out
    }

    /// Inverse of [`civil_from_days`] (test only).
    fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Parses `YYYY-MM-DD HH:MM:SS.mmm UTC` strictly back to unix milliseconds.
    fn parse_ts(s: &str) -> u64 {
        let b = s.as_bytes();
        assert_eq!(b.len(), 27, "{s}");
        for (i, &c) in b.iter().enumerate() {
            let want = match i {
                4 | 7 => Some(b'-'),
                10 | 23 => Some(b' '),
                13 | 16 => Some(b':'),
                19 => Some(b'.'),
                24.. => Some(b"UTC"[i - 24]),
                _ => None,
            };
            match want {
                Some(w) => assert_eq!(c, w, "{s}"),
                None => assert!(c.is_ascii_digit(), "{s}"),
            }
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<u64>().unwrap();
        let (mo, d, h, mi, sec) = (n(5..7), n(8..10), n(11..13), n(14..16), n(17..19));
        assert!((1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec < 60, "{s}");
        let ms = ((days_from_civil(n(0..4), mo, d) * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + n(20..23);
        assert_eq!(&format_ts(ms)[..], b, "round trip of {s}");
        ms
    }

    struct Row {
        ts: u64,
        user: u64,
        x: u32,
        y: u32,
        color: u32,
        version: u64,
    }

    fn parse(out: &[u8]) -> Vec<Row> {
        let text = std::str::from_utf8(out).unwrap();
        let body = text.strip_prefix(HEADER).expect("the header first");
        body.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                assert_eq!(f.len(), 6, "{line}");
                let hex = f[1];
                assert!(hex.len() == 16 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{line}");
                let user = u64::from_str_radix(hex, 16).unwrap();
                assert_ne!(user, 0, "{line}");
                let num = |s: &str| {
                    assert!(
                        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
                    );
                    s.parse::<u64>().unwrap()
                };
                Row {
                    ts: parse_ts(f[0]),
                    user,
                    x: num(f[2]) as u32,
                    y: num(f[3]) as u32,
                    color: num(f[4]) as u32,
                    version: num(f[5]),
                }
            })
            .collect()
    }

    /// Share of all edits taken by the busiest `fraction` of the keys in `counts`.
    fn top_share(counts: impl Iterator<Item = u64>, fraction: f64) -> f64 {
        let mut c: Vec<u64> = counts.collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = c.iter().sum();
        let top = ((c.len() as f64 * fraction).ceil() as usize).max(1);
        c[..top].iter().sum::<u64>() as f64 / total as f64
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(&format_ts(DEFAULT_START_MS + 123), b"2017-04-03 17:00:00.123 UTC");
        assert_eq!(&format_ts(0), b"1970-01-01 00:00:00.000 UTC");
        assert_eq!(&format_ts(951_782_400_000 + 86_399_999), b"2000-02-29 23:59:59.999 UTC");
        assert_eq!(&format_ts(LAST_MS), b"9999-12-31 23:59:59.999 UTC");
        let mut clock = Clock::default();
        for ms in [DEFAULT_START_MS + 5, DEFAULT_START_MS + 999, DEFAULT_START_MS + 1000, DEFAULT_START_MS + 86_400_007]
        {
            assert_eq!(clock.format(ms), &format_ts(ms));
        }
    }

    #[test]
    fn trace_is_deterministic_per_seed() {
        let a = bytes(&args(20_000, 7));
        assert_eq!(a, bytes(&args(20_000, 7)));
        assert_ne!(a, bytes(&args(20_000, 8)));
    }

    #[test]
    fn trace_rows_are_well_formed_ordered_and_respect_the_cooldown() {
        let a = TraceArgs { width: 300, height: 200, colors: 5, ..args(30_000, 3) };
        let out = bytes(&a);
        let rows = parse(&out);
        assert_eq!(rows.len(), 30_000);
        let end = a.start_ms + a.hours * 3_600_000;
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.version, i as u64 + 1);
            assert!(r.x < a.width && r.y < a.height && r.color < a.colors);
            assert!((a.start_ms..end).contains(&r.ts));
            if i > 0 {
                assert!(rows[i - 1].ts <= r.ts, "row {} goes back in time", i + 1);
            }
            if let Some(prev) = last.insert(r.user, r.ts) {
                assert!(r.ts - prev >= a.cooldown_s * 1000, "user {:016x} within the cooldown", r.user);
            }
        }
        assert_eq!(last.len() as u64, 30_000 / EDITS_PER_USER, "about edits / 15 users");
    }

    #[test]
    fn trace_activity_is_heavy_tailed_and_clustered() {
        let (side, edits) = (200u32, 150_000);
        let rows = parse(&bytes(&TraceArgs { width: side, height: side, ..args(edits, 1) }));
        let mut per_user: BTreeMap<u64, u64> = BTreeMap::new();
        let mut per_pixel = vec![0u64; (side * side) as usize];
        let mut per_hour = vec![0u64; 72];
        for r in &rows {
            *per_user.entry(r.user).or_default() += 1;
            per_pixel[(r.y * side + r.x) as usize] += 1;
            per_hour[((r.ts - DEFAULT_START_MS) / 3_600_000) as usize] += 1;
        }
        let users = top_share(per_user.values().copied(), 0.01);
        assert!(users > 0.10, "top 1% of users place {:.1}% of the edits", users * 100.0);
        let max = per_user.values().max().copied().unwrap_or(0);
        assert!(max > 400, "the busiest user places {max}");
        // Against as many edits on uniformly random pixels (about 2.7% here).
        let mut rng = Rng(5);
        let mut uniform = vec![0u64; per_pixel.len()];
        for _ in 0..edits {
            uniform[rng.below(side as u64 * side as u64) as usize] += 1;
        }
        let (space, flat) = (top_share(per_pixel.into_iter(), 0.01), top_share(uniform.into_iter(), 0.01));
        assert!(
            space > 0.06 && space > 2.5 * flat,
            "the busiest 1% of pixels get {space:.3} of the edits (uniform {flat:.3})"
        );
        let (lo, hi) = (per_hour.iter().min().copied().unwrap_or(0), per_hour.iter().max().copied().unwrap_or(0));
        assert!(hi > 2 * lo, "edits per hour from {lo} to {hi}: no daily cycle or bursts");
        assert!(per_hour[0] < per_hour[12], "no ramp-up: {} then {}", per_hour[0], per_hour[12]);
    }

    #[test]
    fn user_hashes_are_distinct_and_never_zero() {
        let key = Rng::new(1, Stream::Hashes).next() >> 32;
        let mut seen = std::collections::BTreeSet::new();
        for u in 0..100_000 {
            let h = user_hash(key, u);
            assert_ne!(h, 0);
            assert!(seen.insert(h));
        }
        assert_ne!(user_hash(0, 0), 0);
    }

    #[test]
    fn edit_counts_sum_and_respect_the_cap() {
        for (users, edits, cap) in [(1, 1, 1), (1, 864, 864), (3, 10, 4), (1000, 15_000, 864), (10, 8640, 864)] {
            let c = edit_counts(users, edits, cap, &mut Rng(9));
            assert_eq!(c.len() as u64, users);
            assert_eq!(c.iter().map(|&n| n as u64).sum::<u64>(), edits);
            assert!(c.iter().all(|&n| n >= 1 && n as u64 <= cap), "{users} {edits} {cap}");
        }
    }

    #[test]
    fn cooldown_enforcement_fits_a_full_user() {
        let mut t = vec![5u64; 864];
        enforce_cooldown(&mut t, 300_000, 72 * 3_600_000 - 1);
        assert!(t.windows(2).all(|w| w[1] - w[0] >= 300_000));
        assert!(*t.last().unwrap() < 72 * 3_600_000);
        let mut t = vec![72 * 3_600_000 + 10; 3];
        enforce_cooldown(&mut t, 300_000, 72 * 3_600_000 - 1);
        assert_eq!(t, [72 * 3_600_000 - 600_001, 72 * 3_600_000 - 300_001, 72 * 3_600_000 - 1]);
    }

    #[test]
    fn trace_rejects_bad_arguments() {
        let bad = [
            TraceArgs { edits: 0, ..args(1, 1) },
            TraceArgs { edits: MAX_EDITS + 1, ..args(1, 1) },
            TraceArgs { width: 0, ..args(1, 1) },
            TraceArgs { width: 1 << 14, height: (1 << 13) + 1, ..args(1, 1) },
            TraceArgs { colors: 1, ..args(1, 1) },
            TraceArgs { colors: 33, ..args(1, 1) },
            TraceArgs { cooldown_s: 0, ..args(1, 1) },
            TraceArgs { hours: 0, ..args(1, 1) },
            TraceArgs { hours: MAX_HOURS + 1, ..args(1, 1) },
            TraceArgs { start_ms: LAST_MS, ..args(1, 1) },
            TraceArgs { users: Some(0), ..args(10, 1) },
            TraceArgs { users: Some(11), ..args(10, 1) },
            TraceArgs { hours: 1, cooldown_s: 3600, ..args(30, 1) },
        ];
        for a in &bad {
            let e = validate(a).expect_err("must be refused");
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().starts_with("--") || e.to_string().contains("do not fit"), "{e}");
        }
        assert!(validate(&TraceArgs { width: 1 << 14, height: 1 << 13, ..args(1, 1) }).is_ok());
        let tiny = TraceArgs { width: 1, height: 1, colors: 2, hours: 1, ..args(1, 1) };
        assert_eq!(parse(&bytes(&tiny)).len(), 1);
    }
}
