//! `placecast timelapse`: renders a span of the edit log as an animation: APNG or GIF (written
//! here), MP4 or WebM (through an `ffmpeg` child). The caller reads the log; this module owns
//! everything after: the flags, the frame schedule, the filmed region, the encoders, the output
//! file and the progress line.
//!
//! The path of an edit: `run` pulls it from the caller's iterator, takes every frame whose cut
//! point it passes (`schedule`), then applies it to the region buffer (`raster`: a store and a
//! bounding-box update). A frame is the rectangle that changed since the one before, handed to
//! the format's `encode::Sink`.
//!
//! Invariants: the log is read once, in order, and no further than `--to`; frame `i` shows the
//! canvas after every edit up to its cut point and the last frame the canvas at `--to`; the
//! output appears at `--out` only complete (it is written to `FILE.partial` and renamed), and an
//! error or a stop removes the partial file; the stop flag is polled every `POLL_EDITS` edits
//! and every frame.

mod apng;
mod args;
mod encode;
mod gifenc;
mod raster;
mod schedule;
#[cfg(test)]
mod tests;
mod video;

pub use args::{
    format_rfc3339, parse_point, parse_region, parse_rfc3339, ArgsError, Format, Pace, Point, Region, TimelapseArgs,
    MAX_FPS, MAX_FRAMES, MAX_SIDE,
};

use crate::canvas::{Canvas, Geometry};
use crate::progress::Progress;
use args::Plan;
use encode::Sink;
use raster::{Raster, Rect, KEEP};
use schedule::{Cut, Schedule};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use thiserror::Error;

/// Edits between two looks at the stop flag: often enough to stop within a millisecond, rarely
/// enough to cost nothing.
const POLL_EDITS: u64 = 4096;
/// Edits between two progress updates.
const PROGRESS_EDITS: u64 = 1 << 16;

/// One applied edit, in log order (versions increase; only edits that changed a pixel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEdit {
    pub version: u64,
    pub ts_ms: u64,
    pub x: u16,
    pub y: u16,
    pub color: u8,
}

/// The log as it was when the render started: its last version and the stamps of its first and
/// last edits. `--to` defaults to `version`; times resolve against the stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: u64,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
}

/// What a render produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub out: PathBuf,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    /// Edits applied (those before `--from` included).
    pub edits: u64,
    /// Size of the output file.
    pub bytes: u64,
    /// Wall-clock time of the render.
    pub seconds: f64,
    /// The rate a viewer plays: `--fps`, except for GIF's centisecond delays (see `gifenc`).
    pub fps: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} frames of {}x{} at {:.2} fps ({:.1} s), {} edits, {} bytes, rendered in {:.1} s",
            self.out.display(),
            self.frames,
            self.width,
            self.height,
            self.fps,
            self.frames as f64 / self.fps,
            self.edits,
            self.bytes,
            self.seconds
        )
    }
}

#[derive(Debug, Error)]
pub enum TimelapseError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("the log holds an edit outside the canvas or its palette: version {version}, ({x}, {y}), color {color}")]
    BadEdit { version: u64, x: u16, y: u16, color: u8 },
    #[error("reading the log: {0}")]
    Log(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing the APNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("writing the GIF: {0}")]
    Gif(#[from] gif::EncodingError),
    #[error(
        "{program} was not found on PATH; .mp4 and .webm are encoded by ffmpeg: install it (apt-get install ffmpeg), \
         or write .apng or .gif, which need nothing else"
    )]
    FfmpegMissing { program: String },
    #[error("starting {program}: {source}")]
    FfmpegSpawn { program: String, source: std::io::Error },
    #[error("ffmpeg failed ({status}): {stderr}")]
    Ffmpeg { status: String, stderr: String },
    #[error("stopped; the partial output was removed")]
    Stopped,
}

/// Renders the timelapse `args` describe from `edits` (the log from its start, in order) and
/// writes it to `--out`. `stop` (set by SIGINT/SIGTERM) abandons the render and its file.
pub fn run(
    args: &TimelapseArgs,
    geometry: &Geometry,
    head: Head,
    edits: impl Iterator<Item = Result<FrameEdit, String>>,
    stop: &AtomicBool,
) -> Result<Summary, TimelapseError> {
    run_with(args, geometry, head, edits, stop, &Options::default())
}

/// What tests vary: the ffmpeg program, and whether progress is shown.
pub(crate) struct Options {
    pub ffmpeg: OsString,
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { ffmpeg: "ffmpeg".into(), progress: true }
    }
}

pub(crate) fn run_with(
    args: &TimelapseArgs,
    geometry: &Geometry,
    head: Head,
    edits: impl Iterator<Item = Result<FrameEdit, String>>,
    stop: &AtomicBool,
    opts: &Options,
) -> Result<Summary, TimelapseError> {
    let started = Instant::now();
    let plan = Plan::new(args, geometry, &head)?;
    // Declared before the renderer, so dropped after it: an ffmpeg child is gone before its
    // file is removed.
    let partial = Partial::new(&plan.out);
    let sink = open_sink(&plan, geometry, &partial.path, opts)?;
    let target = progress_target(&plan, head);
    let progress = match opts.progress {
        true => Progress::new("timelapse", target, "versions"),
        false => Progress::hidden("timelapse", target, "versions"),
    };
    let mut renderer = Renderer::new(&plan, geometry, head, sink, progress);
    renderer.render(edits, stop)?;
    let edits = renderer.finish()?;
    let bytes = fs::metadata(&partial.path).map_err(|e| io_error(&partial.path, e))?.len();
    partial.commit()?;
    let fps = match plan.format {
        Format::Gif => gifenc::real_fps(plan.frames, plan.fps),
        _ => plan.fps as f64,
    };
    Ok(Summary {
        out: plan.out.clone(),
        format: plan.format,
        width: plan.out_width,
        height: plan.out_height,
        frames: plan.frames,
        edits,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        fps,
    })
}

fn open_sink(plan: &Plan, g: &Geometry, path: &Path, opts: &Options) -> Result<Box<dyn Sink>, TimelapseError> {
    let size = (plan.out_width, plan.out_height);
    let create = || File::create(path).map_err(|e| io_error(path, e));
    Ok(match plan.format {
        Format::Apng => Box::new(apng::Apng::create(create()?, size, &g.palette, plan.frames, plan.fps, plan.scale)?),
        Format::Gif => Box::new(gifenc::Gif::create(create()?, size, &g.palette, plan.fps)?),
        Format::Mp4 | Format::Webm => {
            Box::new(video::Video::spawn(&opts.ffmpeg, plan.format, path, size, &g.palette, plan.fps)?)
        }
    })
}

/// The last version the render reads (for progress): `--to`, or the head for a time.
fn progress_target(plan: &Plan, head: Head) -> u64 {
    match plan.to {
        Point::Version(v) => v,
        Point::Time(_) => head.version,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> TimelapseError {
    TimelapseError::Io { path: path.to_path_buf(), source }
}

/// The color of a pixel no edit has touched: whatever `Canvas::new` starts with, asked of a
/// 1x1 canvas so the two can never disagree.
fn initial_color(g: &Geometry) -> u8 {
    Geometry::new(1, 1, g.palette.clone()).map_or(0, |one| Canvas::new(one).get(0))
}

/// Walks the log once: takes each frame as its cut point is passed, applies the edits between.
struct Renderer<'a> {
    geometry: &'a Geometry,
    schedule: Schedule,
    raster: Raster,
    sink: Box<dyn Sink>,
    progress: Progress,
    /// The version at which the render is complete.
    target: u64,
    /// The next frame to take, and its cut.
    next: u32,
    cut: Cut,
    frame: Vec<u8>,
    applied: u64,
    /// (version, stamp) of the last edit applied.
    last: Option<(u64, u64)>,
}

impl<'a> Renderer<'a> {
    fn new(plan: &Plan, geometry: &'a Geometry, head: Head, sink: Box<dyn Sink>, progress: Progress) -> Self {
        let schedule = Schedule::new(plan, head);
        let r = plan.region;
        let raster = Raster::new(r.x, r.y, r.width, r.height, plan.scale, initial_color(geometry));
        let cut = schedule.cut(0);
        let target = progress_target(plan, head);
        Renderer {
            geometry,
            schedule,
            raster,
            sink,
            progress,
            target,
            next: 0,
            cut,
            frame: Vec::new(),
            applied: 0,
            last: None,
        }
    }

    fn done(&self) -> bool {
        self.next >= self.schedule.frames()
    }

    fn render(
        &mut self,
        edits: impl Iterator<Item = Result<FrameEdit, String>>,
        stop: &AtomicBool,
    ) -> Result<(), TimelapseError> {
        for item in edits {
            let e = item.map_err(TimelapseError::Log)?;
            while self.cut.passed_by(e.version, e.ts_ms) {
                self.take_frame(stop)?;
                if self.done() {
                    // Past `--to`: the rest of the log is not read.
                    return Ok(());
                }
            }
            self.apply(&e)?;
            if self.applied.is_multiple_of(POLL_EDITS) {
                check_stop(stop)?;
                if self.applied.is_multiple_of(PROGRESS_EDITS) {
                    self.show_progress();
                }
            }
        }
        // The log ended at or before every remaining cut: they all show its last canvas.
        while !self.done() {
            self.take_frame(stop)?;
        }
        Ok(())
    }

    #[inline]
    fn apply(&mut self, e: &FrameEdit) -> Result<(), TimelapseError> {
        let g = self.geometry;
        if e.x as u32 >= g.width || e.y as u32 >= g.height || e.color as usize >= g.palette.len() {
            return Err(TimelapseError::BadEdit { version: e.version, x: e.x, y: e.y, color: e.color });
        }
        self.raster.set(e.x, e.y, e.color);
        self.applied += 1;
        self.last = Some((e.version, e.ts_ms));
        Ok(())
    }

    fn take_frame(&mut self, stop: &AtomicBool) -> Result<(), TimelapseError> {
        check_stop(stop)?;
        // Nothing changed: a 1x1 "keep" frame holds the frame's place and delay.
        let rect = self.raster.take_frame(&mut self.frame).unwrap_or_else(|| {
            self.frame.push(KEEP);
            Rect { x: 0, y: 0, width: 1, height: 1 }
        });
        self.sink.frame(rect, &self.frame)?;
        if self.next == 0 && self.schedule.frames() > 1 {
            self.schedule.start(self.last)?;
        }
        self.next += 1;
        if !self.done() {
            self.cut = self.schedule.cut(self.next);
        }
        self.show_progress();
        Ok(())
    }

    /// Progress is the version reached, so the ETA follows the edits still to read, which is
    /// where the time goes.
    fn show_progress(&mut self) {
        let (frame, frames, edits) = (self.next, self.schedule.frames(), self.applied);
        let version = self.last.map_or(0, |(v, _)| v).min(self.target);
        self.progress.set_detail(version, || format!("frame {frame}/{frames}, {edits} edits"));
    }

    /// Completes the output; returns the edits applied.
    fn finish(mut self) -> Result<u64, TimelapseError> {
        self.sink.finish()?;
        self.progress.clear();
        Ok(self.applied)
    }
}

fn check_stop(stop: &AtomicBool) -> Result<(), TimelapseError> {
    match stop.load(Ordering::Relaxed) {
        true => Err(TimelapseError::Stopped),
        false => Ok(()),
    }
}

/// `FILE.partial`, removed when dropped unless `commit` renamed it to `FILE`.
struct Partial {
    path: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Partial {
    fn new(out: &Path) -> Partial {
        let mut name = out.as_os_str().to_owned();
        name.push(".partial");
        Partial { path: name.into(), out: out.to_path_buf(), committed: false }
    }

    fn commit(mut self) -> Result<(), TimelapseError> {
        fs::rename(&self.path, &self.out).map_err(|e| io_error(&self.out, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            // Nothing to do if it was never created.
            let _ = fs::remove_file(&self.path);
        }
    }
}
