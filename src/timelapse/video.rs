//! MP4 (H.264) and WebM (VP9) output through an `ffmpeg` child: every frame painted onto a full
//! RGB image and written raw (`rgb24`) to its stdin.
//!
//! Invariants: the child's stderr is drained by a thread into a bounded buffer (the last
//! `STDERR_KEEP` bytes), so a chatty or failing ffmpeg can neither block on a full pipe nor grow
//! memory; a child that is dropped unfinished (error, stop) is killed and reaped.

use super::args::Format;
use super::encode::{rgb, Sink};
use super::raster::{Rect, KEEP};
use super::TimelapseError;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

/// How much of ffmpeg's stderr an error shows: its end, where the reason is.
const STDERR_KEEP: usize = 8 * 1024;

pub(crate) struct Video {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    frame: Vec<u8>,
    width: usize,
    /// RGB of each frame index; the keep slot is never painted.
    colors: Vec<[u8; 3]>,
}

impl Video {
    /// Starts `program` (ffmpeg) writing `format` to `path`.
    pub fn spawn(
        program: &OsStr,
        format: Format,
        path: &Path,
        size: (u32, u32),
        palette: &[u32],
        fps: u32,
    ) -> Result<Video, TimelapseError> {
        let mut child = Command::new(program)
            .args(ffmpeg_args(format, size, fps, palette.first().copied().unwrap_or(0)))
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TimelapseError::FfmpegMissing { program: program.to_string_lossy().into() },
                _ => TimelapseError::FfmpegSpawn { program: program.to_string_lossy().into(), source: e },
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().map(|s| std::thread::spawn(move || drain_bounded(s, STDERR_KEEP)));
        let (w, h) = (size.0 as usize, size.1 as usize);
        let mut colors = vec![[0; 3]];
        colors.extend(palette.iter().map(|c| rgb(*c)));
        Ok(Video { child, stdin, stderr, frame: vec![0; w * h * 3], width: w, colors })
    }

    /// Paints the changed pixels of a frame onto the full image.
    fn paint(&mut self, rect: Rect, indexes: &[u8]) {
        let (rw, stride) = (rect.width as usize, self.width * 3);
        for (dy, row) in indexes.chunks_exact(rw).enumerate() {
            let start = (rect.y as usize + dy) * stride + rect.x as usize * 3;
            let Some(out) = self.frame.get_mut(start..start + rw * 3) else { return };
            for (px, &i) in out.chunks_exact_mut(3).zip(row) {
                if i != KEEP {
                    if let Some(c) = self.colors.get(i as usize) {
                        px.copy_from_slice(c);
                    }
                }
            }
        }
    }

    /// Waits for ffmpeg; a failure carries the end of its stderr.
    fn wait(&mut self) -> Result<(), TimelapseError> {
        drop(self.stdin.take());
        let status =
            self.child.wait().map_err(|e| TimelapseError::Ffmpeg { status: e.to_string(), stderr: String::new() })?;
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(TimelapseError::Ffmpeg {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().into(),
        })
    }
}

impl Sink for Video {
    fn frame(&mut self, rect: Rect, indexes: &[u8]) -> Result<(), TimelapseError> {
        self.paint(rect, indexes);
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&self.frame),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        match written {
            Ok(()) => Ok(()),
            // ffmpeg quit (bad option, disk full): its exit status and stderr say why.
            Err(e) => Err(self
                .wait()
                .err()
                .unwrap_or(TimelapseError::Ffmpeg { status: e.to_string(), stderr: String::new() })),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<(), TimelapseError> {
        self.wait()
    }
}

impl Drop for Video {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Unfinished (an error or a stop): the output is being thrown away.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// ffmpeg's arguments before the output path. Odd sides are padded to even (yuv420p needs it),
/// with the empty canvas's color so the pad looks like more canvas.
fn ffmpeg_args(format: Format, (w, h): (u32, u32), fps: u32, pad: u32) -> Vec<String> {
    let mut a: Vec<String> =
        ["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"].map(String::from).into();
    a.extend(["-s".into(), format!("{w}x{h}"), "-r".into(), fps.to_string(), "-i".into(), "-".into()]);
    if w % 2 == 1 || h % 2 == 1 {
        a.extend(["-vf".into(), format!("pad=ceil(iw/2)*2:ceil(ih/2)*2:color=0x{pad:06x}")]);
    }
    let codec: &[&str] = match format {
        Format::Webm => &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-row-mt",
            "1",
            "-b:v",
            "0",
            "-crf",
            "30",
        ],
        // Apng and Gif never reach ffmpeg; H.264 is the fallback.
        _ => &["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-movflags", "+faststart"],
    };
    a.extend(codec.iter().map(|s| s.to_string()));
    let container = if format == Format::Webm { "webm" } else { "mp4" };
    // The output is FILE.partial: the container cannot come from its extension.
    a.extend(["-pix_fmt", "yuv420p", "-f", container].map(String::from));
    a
}

/// Reads `r` to its end, keeping only its last `keep` bytes.
fn drain_bounded(mut r: impl Read, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep * 2);
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => kept.extend_from_slice(&buf[..n]),
        }
        if kept.len() > keep * 2 {
            kept.drain(..kept.len() - keep);
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_bounded_to_its_end() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let kept = drain_bounded(&data[..], 1000);
        assert_eq!(kept, &data[data.len() - 1000..]);
        assert_eq!(drain_bounded(&b"short"[..], 1000), b"short");
    }

    #[test]
    fn pads_odd_sides_only() {
        let odd = ffmpeg_args(Format::Mp4, (5, 4), 30, 0xffffff);
        assert!(odd.iter().any(|a| a == "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=0xffffff"));
        let even = ffmpeg_args(Format::Webm, (6, 4), 30, 0);
        assert!(!even.iter().any(|a| a == "-vf"));
        assert!(even.windows(2).any(|w| w == ["-f", "webm"]));
    }
}
