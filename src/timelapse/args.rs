//! The flags of `placecast timelapse` and their validation into a `Plan`: what to render, where,
//! how big, how many frames.
//!
//! Invariants of a `Plan` (checked once, here, so the renderer and encoders never re-check): the
//! region lies inside the canvas; the output is 1..=8192 px on each side; fps is 1..=60; there are
//! 1..=36,000 frames; `from` and `to` name points inside the log (versions at most the head) and,
//! when both are in the same unit, `from` is before `to`; `to` is in the pace's unit (or resolves
//! to the head), so the spacing of every frame is known before the first edit arrives.

use super::Head;
use crate::canvas::Geometry;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest output side: beyond it a frame no longer fits a viewer (or ffmpeg's defaults).
pub const MAX_SIDE: u32 = 8192;
/// Most frames a timelapse may have (20 minutes at 30 fps).
pub const MAX_FRAMES: u64 = 36_000;
/// Highest frame rate; browsers do not show more.
pub const MAX_FPS: u32 = 60;

/// A point in the log: a version (a position in it) or a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Version(u64),
    /// Unix milliseconds: the canvas after every edit stamped at or before it.
    Time(u64),
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Version(v) => write!(f, "version {v}"),
            Point::Time(ms) => write!(f, "{}", format_rfc3339(*ms)),
        }
    }
}

/// A rectangle of the canvas, in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.width, self.height)
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Animated PNG: lossless, indexed, small; every modern browser plays it.
    Apng,
    /// GIF: lossless, indexed; frame delays in whole centiseconds.
    Gif,
    /// H.264 in MP4 through ffmpeg.
    Mp4,
    /// VP9 in WebM through ffmpeg.
    Webm,
}

impl Format {
    /// The format an output's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" | "apng" => Some(Format::Apng),
            "gif" => Some(Format::Gif),
            "mp4" => Some(Format::Mp4),
            "webm" => Some(Format::Webm),
            _ => None,
        }
    }
}

/// How cut points are spaced between `from` and `to`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Evenly in wall-clock time: quiet hours (nights) pass at the same speed as busy ones.
    Time,
    /// Evenly in versions: every frame holds about the same number of edits.
    Edits,
}

/// `placecast timelapse`: renders a span of the edit log as an animation.
#[derive(clap::Args, Debug, Clone)]
pub struct TimelapseArgs {
    /// Where it starts: a version (`1000`), `t:MS` (Unix milliseconds) or an RFC 3339 UTC time
    /// (`2017-04-03T17:00:00Z`). Default: the empty canvas, version 0.
    #[arg(long, value_name = "V|T", value_parser = parse_point)]
    pub from: Option<Point>,
    /// Where it ends (the last frame), in the same forms. Default: the log's head.
    #[arg(long, value_name = "V|T", value_parser = parse_point)]
    pub to: Option<Point>,
    /// Playing time in seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Frames per second (1 to 60).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub fps: u32,
    /// The part of the canvas to show, X,Y,W,H in canvas pixels. Default: all of it.
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_region)]
    pub region: Option<Region>,
    /// Each canvas pixel becomes KxK output pixels.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub scale: u32,
    /// The output file (written to FILE.partial, renamed when complete).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The output format. Default: from the extension (.png/.apng, .gif, .mp4, .webm).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Space frames evenly in time (quiet hours pass at the same speed) or in edits.
    #[arg(long, value_enum, default_value_t = Pace::Time)]
    pub pace: Pace,
}

#[derive(Debug, Error, PartialEq)]
pub enum ArgsError {
    #[error("bad point {0:?}: expected a version (1234), t:MS (Unix milliseconds) or an RFC 3339 UTC time (2017-04-03T17:00:00Z)")]
    Point(String),
    #[error("bad time {0:?}: {1}")]
    Time(String, &'static str),
    #[error("bad region {0:?}: expected X,Y,W,H (four integers, W and H at least 1)")]
    Region(String),
    #[error("region {region} is not inside the {width}x{height} canvas")]
    RegionOutside { region: Region, width: u32, height: u32 },
    #[error("--scale must be at least 1")]
    ScaleZero,
    #[error("the output would be {width}x{height}; at most {MAX_SIDE} px a side (lower --scale or --region)")]
    TooLarge { width: u64, height: u64 },
    #[error("--fps {0}: must be between 1 and {MAX_FPS}")]
    Fps(u32),
    #[error("--duration {0}: must be a positive number of seconds")]
    Duration(f64),
    #[error("--duration x --fps makes {0} frames; at least 1 and at most {MAX_FRAMES}")]
    Frames(u64),
    #[error("the log is empty: there is nothing to render")]
    EmptyLog,
    #[error("--{flag} {version} is past the log's head, version {head}")]
    PastHead { flag: &'static str, version: u64, head: u64 },
    #[error("--to {0} is before the log's first edit")]
    ToBeforeLog(Point),
    #[error("--from {0} is at or after the log's last edit")]
    FromAfterLog(Point),
    #[error("--from ({from}) must be before --to ({to})")]
    FromNotBeforeTo { from: Point, to: Point },
    #[error("--to {0} is a version but --pace time spaces frames in time, so it needs --to as a time (t:MS or RFC 3339); or use --pace edits")]
    ToNeedsTime(Point),
    #[error("--to {0} is a time but --pace edits spaces frames in versions, so it needs --to as a version; or use --pace time")]
    ToNeedsVersion(Point),
    #[error("{0}: cannot tell the format from the extension; use .apng, .png, .gif, .mp4 or .webm, or --format")]
    UnknownFormat(PathBuf),
}

/// What to render, validated against the canvas and the log (see the module's invariants).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub out: PathBuf,
    pub format: Format,
    pub region: Region,
    pub scale: u32,
    pub out_width: u32,
    pub out_height: u32,
    pub fps: u32,
    pub frames: u32,
    pub pace: Pace,
    pub from: Point,
    /// `to`, with a time past the log's last edit clamped to it.
    pub to: Point,
}

impl Plan {
    pub fn new(args: &TimelapseArgs, geometry: &Geometry, head: &Head) -> Result<Plan, ArgsError> {
        let format = match args.format {
            Some(f) => f,
            None => Format::from_path(&args.out).ok_or_else(|| ArgsError::UnknownFormat(args.out.clone()))?,
        };
        let region = check_region(args.region, geometry)?;
        let (out_width, out_height) = check_scale(region, args.scale)?;
        let fps = check_fps(args.fps)?;
        let frames = check_frames(args.duration, fps)?;
        let (from, to) = check_points(args, head)?;
        Ok(Plan {
            out: args.out.clone(),
            format,
            region,
            scale: args.scale,
            out_width,
            out_height,
            fps,
            frames,
            pace: args.pace,
            from,
            to,
        })
    }
}

fn check_region(region: Option<Region>, g: &Geometry) -> Result<Region, ArgsError> {
    let full = Region { x: 0, y: 0, width: g.width, height: g.height };
    let r = region.unwrap_or(full);
    let inside = r.width >= 1
        && r.height >= 1
        && r.x as u64 + r.width as u64 <= g.width as u64
        && r.y as u64 + r.height as u64 <= g.height as u64;
    if !inside {
        return Err(ArgsError::RegionOutside { region: r, width: g.width, height: g.height });
    }
    Ok(r)
}

fn check_scale(r: Region, scale: u32) -> Result<(u32, u32), ArgsError> {
    if scale == 0 {
        return Err(ArgsError::ScaleZero);
    }
    let (w, h) = (r.width as u64 * scale as u64, r.height as u64 * scale as u64);
    if w > MAX_SIDE as u64 || h > MAX_SIDE as u64 {
        return Err(ArgsError::TooLarge { width: w, height: h });
    }
    Ok((w as u32, h as u32))
}

fn check_fps(fps: u32) -> Result<u32, ArgsError> {
    if !(1..=MAX_FPS).contains(&fps) {
        return Err(ArgsError::Fps(fps));
    }
    Ok(fps)
}

fn check_frames(duration: f64, fps: u32) -> Result<u32, ArgsError> {
    if !duration.is_finite() || duration <= 0.0 {
        return Err(ArgsError::Duration(duration));
    }
    // Capped before the cast so a huge duration reports itself instead of saturating.
    let frames = (duration * fps as f64).round().min(u32::MAX as f64) as u64;
    if frames == 0 || frames > MAX_FRAMES {
        return Err(ArgsError::Frames(frames));
    }
    Ok(frames as u32)
}

/// Resolves the defaults, checks both points against the log and each other, and clamps a `to`
/// time past the last edit (a round time after the event's end is the natural way to say "all").
fn check_points(args: &TimelapseArgs, head: &Head) -> Result<(Point, Point), ArgsError> {
    if head.version == 0 {
        return Err(ArgsError::EmptyLog);
    }
    let from = args.from.unwrap_or(Point::Version(0));
    let mut to = args.to.unwrap_or(Point::Version(head.version));
    for (flag, p) in [("from", from), ("to", to)] {
        if let Point::Version(v) = p {
            if v > head.version {
                return Err(ArgsError::PastHead { flag, version: v, head: head.version });
            }
        }
    }
    if let Point::Time(t) = from {
        if t >= head.last_ts_ms {
            return Err(ArgsError::FromAfterLog(from));
        }
    }
    if let Point::Time(t) = to {
        if t < head.first_ts_ms {
            return Err(ArgsError::ToBeforeLog(to));
        }
        to = Point::Time(t.min(head.last_ts_ms));
    }
    let ordered = match (from, to) {
        (Point::Version(a), Point::Version(b)) | (Point::Time(a), Point::Time(b)) => a < b,
        // Mixed units are ordered once `from` is reached (the renderer checks).
        _ => true,
    };
    if !ordered {
        return Err(ArgsError::FromNotBeforeTo { from, to });
    }
    check_to_unit(args.pace, to, head)?;
    Ok((from, to))
}

/// The spacing of the frames needs `to` in the pace's unit before the first edit: the log is read
/// once, so a version's time (or a time's version) is known only when the reader gets there.
fn check_to_unit(pace: Pace, to: Point, head: &Head) -> Result<(), ArgsError> {
    match (pace, to) {
        (Pace::Time, Point::Version(v)) if v != head.version => Err(ArgsError::ToNeedsTime(to)),
        (Pace::Edits, Point::Time(t)) if t < head.last_ts_ms => Err(ArgsError::ToNeedsVersion(to)),
        _ => Ok(()),
    }
}

/// `--from`/`--to`: a bare integer is a version; `t:MS` or an RFC 3339 UTC time is a time.
pub fn parse_point(s: &str) -> Result<Point, ArgsError> {
    let s = s.trim();
    if let Some(ms) = s.strip_prefix("t:") {
        return ms.parse().map(Point::Time).map_err(|_| ArgsError::Point(s.to_string()));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Point::Version).map_err(|_| ArgsError::Point(s.to_string()));
    }
    if s.len() >= 10 && s.as_bytes()[4] == b'-' {
        return parse_rfc3339(s).map(Point::Time);
    }
    Err(ArgsError::Point(s.to_string()))
}

/// `--region X,Y,W,H`.
pub fn parse_region(s: &str) -> Result<Region, ArgsError> {
    let bad = || ArgsError::Region(s.to_string());
    let parts: Vec<u32> = s.split(',').map(|p| p.trim().parse::<u32>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    match parts[..] {
        [x, y, width, height] if width >= 1 && height >= 1 => Ok(Region { x, y, width, height }),
        _ => Err(bad()),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)` into Unix milliseconds. Only UTC: a local
/// offset is almost always a mistake in a flag meant to match the log's UTC stamps.
pub fn parse_rfc3339(s: &str) -> Result<u64, ArgsError> {
    let err = |why: &'static str| ArgsError::Time(s.to_string(), why);
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(err("expected YYYY-MM-DDTHH:MM:SSZ"));
    }
    let num = |range: std::ops::Range<usize>| -> Result<u64, ArgsError> {
        let part = &b[range];
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(err("expected YYYY-MM-DDTHH:MM:SSZ"));
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + (d - b'0') as u64))
    };
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(err("expected YYYY-MM-DDTHH:MM:SSZ"));
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(err("no such date (or before 1970)"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(err("no such time of day"));
    }
    let (millis, rest) = parse_fraction(&b[19..]).ok_or_else(|| err("bad fraction of a second"))?;
    if !matches!(rest, b"Z" | b"z" | b"+00:00" | b"-00:00") {
        return Err(err("only UTC times, ending in Z"));
    }
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// An optional `.digits` (kept to milliseconds, the log's resolution; further digits truncated),
/// and what follows it.
fn parse_fraction(b: &[u8]) -> Option<(u64, &[u8])> {
    let Some(rest) = b.strip_prefix(b".") else {
        return Some((0, b));
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut ms = 0;
    for i in 0..3 {
        ms = ms * 10 + rest.get(i).filter(|_| i < digits).map_or(0, |d| (d - b'0') as u64);
    }
    Some((ms, &rest[digits..]))
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date at or after it (H. Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of `days_from_civil`.
fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

/// Unix milliseconds as RFC 3339 UTC, for messages.
pub fn format_rfc3339(ms: u64) -> String {
    let (days, rem) = (ms / 86_400_000, ms % 86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The flags of a command line `line` (without the program name), for the timelapse's tests.
#[cfg(test)]
pub(crate) fn parse_line(line: &str) -> Result<TimelapseArgs, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TimelapseArgs,
    }
    <Cli as clap::Parser>::try_parse_from(std::iter::once("timelapse").chain(line.split_whitespace())).map(|c| c.args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::RPLACE_2017_PALETTE;

    fn parse(line: &str) -> Result<TimelapseArgs, clap::Error> {
        parse_line(line)
    }

    fn geometry() -> Geometry {
        Geometry::new(1000, 1000, RPLACE_2017_PALETTE.to_vec()).unwrap()
    }

    const T0: u64 = 1_491_238_800_000; // 2017-04-03T17:00:00Z

    fn head() -> Head {
        Head { version: 1000, first_ts_ms: T0, last_ts_ms: T0 + 3_600_000 }
    }

    fn plan(line: &str) -> Result<Plan, ArgsError> {
        Plan::new(&parse(line).unwrap(), &geometry(), &head())
    }

    #[test]
    fn points() {
        assert_eq!(parse_point("1234").unwrap(), Point::Version(1234));
        assert_eq!(parse_point("t:1491238800000").unwrap(), Point::Time(T0));
        assert_eq!(parse_point("2017-04-03T17:00:00Z").unwrap(), Point::Time(T0));
        assert_eq!(parse_point("2017-04-03T17:00:00.250Z").unwrap(), Point::Time(T0 + 250));
        assert_eq!(parse_point("2017-04-03T17:00:00.25Z").unwrap(), Point::Time(T0 + 250));
        assert_eq!(parse_point("2017-04-03T17:00:00.123456Z").unwrap(), Point::Time(T0 + 123));
        assert_eq!(parse_point("2017-04-03t17:00:01+00:00").unwrap(), Point::Time(T0 + 1000));
        assert_eq!(parse_point("1970-01-01T00:00:00Z").unwrap(), Point::Time(0));
        assert_eq!(parse_point("2000-03-01T00:00:00Z").unwrap(), Point::Time(951_868_800_000));
        assert_eq!(parse_point("2024-02-29T12:00:00Z").unwrap(), Point::Time(1_709_208_000_000));
        for bad in [
            "",
            "-5",
            "t:",
            "t:x",
            "v12",
            "2017-04-03",
            "2017-04-03T17:00:00",
            "2017-04-03T17:00:00+02:00",
            "2017-02-29T00:00:00Z",
            "2017-13-01T00:00:00Z",
            "2017-04-03T24:00:00Z",
            "2017-04-03T17:00:00.Z",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
        ] {
            assert!(parse_point(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_times_back() {
        for ms in [0, T0, T0 + 250, 951_868_800_000, 1_709_208_000_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)).unwrap(), ms);
        }
        assert_eq!(format_rfc3339(T0 + 250), "2017-04-03T17:00:00.250Z");
    }

    #[test]
    fn regions() {
        assert_eq!(parse_region("1,2,3,4").unwrap(), Region { x: 1, y: 2, width: 3, height: 4 });
        assert_eq!(parse_region(" 1, 2 ,3,4").unwrap(), Region { x: 1, y: 2, width: 3, height: 4 });
        for bad in ["1,2,3", "1,2,3,4,5", "1,2,0,4", "a,b,c,d", "-1,0,5,5", ""] {
            assert!(parse_region(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn defaults() {
        let p = plan("--out a.apng").unwrap();
        assert_eq!(p.format, Format::Apng);
        assert_eq!(p.region, Region { x: 0, y: 0, width: 1000, height: 1000 });
        assert_eq!((p.scale, p.out_width, p.out_height, p.fps, p.frames), (1, 1000, 1000, 30, 300));
        assert_eq!((p.from, p.to, p.pace), (Point::Version(0), Point::Version(1000), Pace::Time));
    }

    #[test]
    fn all_flags() {
        let p = plan(
            "--from 2017-04-03T17:10:00Z --to t:1491250000000 --duration 2.5 --fps 12 \
             --region 10,20,100,50 --scale 4 --out x.bin --format gif --pace edits",
        )
        .unwrap();
        assert_eq!(p.format, Format::Gif);
        assert_eq!((p.out_width, p.out_height, p.frames), (400, 200, 30));
        assert_eq!(p.from, Point::Time(T0 + 600_000));
        // A time past the last edit is clamped to it, which is the head: fine for --pace edits.
        assert_eq!(p.to, Point::Time(T0 + 3_600_000));
        assert_eq!(plan("--out x.PNG").unwrap().format, Format::Apng);
        assert_eq!(plan("--out x.webm").unwrap().format, Format::Webm);
        assert_eq!(plan("--out x.mp4").unwrap().format, Format::Mp4);
    }

    #[test]
    fn rejects_bad_values() {
        use ArgsError::*;
        type Check = fn(&ArgsError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("--out x.avi", |e| matches!(e, UnknownFormat(_))),
            ("--out x", |e| matches!(e, UnknownFormat(_))),
            ("--out x.gif --region 900,0,101,10", |e| matches!(e, RegionOutside { .. })),
            ("--out x.gif --region 0,999,10,2", |e| matches!(e, RegionOutside { .. })),
            ("--out x.gif --scale 0", |e| *e == ScaleZero),
            ("--out x.gif --scale 9", |e| matches!(e, TooLarge { width: 9000, .. })),
            ("--out x.gif --region 0,0,10,10 --scale 820", |e| matches!(e, TooLarge { .. })),
            ("--out x.gif --fps 0", |e| *e == Fps(0)),
            ("--out x.gif --fps 61", |e| *e == Fps(61)),
            ("--out x.gif --duration 0", |e| matches!(e, Duration(_))),
            ("--out x.gif --duration 0.001", |e| *e == Frames(0)),
            ("--out x.gif --duration 1201", |e| *e == Frames(36_030)),
            ("--out x.gif --from 500 --to 500", |e| matches!(e, FromNotBeforeTo { .. })),
            ("--out x.gif --from 600 --to 500 --pace edits", |e| matches!(e, FromNotBeforeTo { .. })),
            ("--out x.gif --from t:1491238900000 --to t:1491238800000", |e| matches!(e, FromNotBeforeTo { .. })),
            ("--out x.gif --to 1001", |e| matches!(e, PastHead { flag: "to", .. })),
            ("--out x.gif --from 1001", |e| matches!(e, PastHead { flag: "from", .. })),
            ("--out x.gif --to 500", |e| matches!(e, ToNeedsTime(_))),
            ("--out x.gif --to 2017-04-03T17:30:00Z --pace edits", |e| matches!(e, ToNeedsVersion(_))),
            ("--out x.gif --to 2017-04-03T16:00:00Z", |e| matches!(e, ToBeforeLog(_))),
            ("--out x.gif --from 2017-04-03T18:00:00Z", |e| matches!(e, FromAfterLog(_))),
        ];
        for (line, want) in cases {
            let e = plan(line).unwrap_err();
            assert!(want(&e), "{line}: got {e:?}");
            assert!(!e.to_string().is_empty());
        }
        assert!(plan("--out x.gif --duration 1200").is_ok());
        assert!(plan("--out x.gif --to 500 --pace edits").is_ok());
        let empty = Head { version: 0, first_ts_ms: 0, last_ts_ms: 0 };
        assert_eq!(Plan::new(&parse("--out x.gif").unwrap(), &geometry(), &empty).unwrap_err(), EmptyLog);
    }

    #[test]
    fn clap_rejects_bad_syntax() {
        assert!(parse("--out x.gif --from yesterday").is_err());
        assert!(parse("--out x.gif --region 1,2").is_err());
        assert!(parse("--out x.gif --format avi").is_err());
        assert!(parse("--out x.gif --pace fast").is_err());
        assert!(parse("--fps 10").is_err(), "--out is required");
    }
}
