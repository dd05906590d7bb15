//! Progress on stderr: an `indicatif` bar on a terminal, otherwise one plain line every
//! `PLAIN_EVERY` (a log file or journal gets a steady, greppable trace, not control codes).
//!
//! The position is the log version reached out of the last version the render needs, so the ETA
//! follows the edits still to read, which is where the time goes.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Progress {
    mode: Mode,
    started: Instant,
    frames: u32,
    /// The version at which the render is complete, for the fraction done.
    target: u64,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Plain { last: Instant },
}

/// Where the render is.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tick {
    pub frame: u32,
    pub edits: u64,
    pub version: u64,
}

impl Progress {
    /// `shown`: false for tests and callers that report on their own.
    pub fn new(shown: bool, frames: u32, target: u64) -> Progress {
        let started = Instant::now();
        let mode = match shown {
            false => Mode::Hidden,
            true if std::io::stderr().is_terminal() => Mode::Bar(bar(target)),
            true => Mode::Plain { last: started },
        };
        Progress { mode, started, frames, target: target.max(1) }
    }

    pub fn update(&mut self, t: Tick) {
        match &mut self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => {
                b.set_position(t.version.min(self.target));
                b.set_message(format!("frame {}/{}, {}", t.frame, self.frames, rate(t.edits, self.started)));
            }
            Mode::Plain { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.line(t));
                }
            }
        }
    }

    fn line(&self, t: Tick) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = (t.version.min(self.target) as f64 / self.target as f64).max(1e-9);
        let eta = elapsed * (1.0 - done) / done;
        format!(
            "timelapse: frame {}/{}, {} edits, {}, ETA {:.0} s",
            t.frame,
            self.frames,
            human(t.edits as f64),
            rate(t.edits, self.started),
            eta
        )
    }

    pub fn finish(&mut self) {
        if let Mode::Bar(b) = &self.mode {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error or a stop: leave the bar where it stopped, above the error message.
        if let Mode::Bar(b) = &self.mode {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}

fn bar(target: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("timelapse {wide_bar} {percent:>3}% {msg}, ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(target.max(1)), ProgressDrawTarget::stderr()).with_style(style)
}

fn rate(edits: u64, since: Instant) -> String {
    let secs = since.elapsed().as_secs_f64().max(1e-3);
    format!("{} edits/s", human(edits as f64 / secs))
}

/// 1234567 -> "1.2M".
fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line() {
        assert_eq!(human(1_234_567.0), "1.2M");
        assert_eq!(human(999.0), "999");
        assert_eq!(human(3.4e9), "3.4G");
        let p = Progress::new(false, 1800, 1000);
        let line = p.line(Tick { frame: 120, edits: 1_200_000, version: 500 });
        assert!(line.starts_with("timelapse: frame 120/1800, 1.2M edits, "), "{line}");
        assert!(line.contains(" edits/s, ETA "), "{line}");
    }
}
