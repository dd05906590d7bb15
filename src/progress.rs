//! Progress of a long offline run (export, import, timelapse) on standard error: an `indicatif`
//! bar with rate and ETA on a terminal, otherwise one plain line every `PLAIN_EVERY` (a log file
//! or the journal gets a steady, greppable trace, not control codes).
//!
//! It owns only the display: callers say how far they are (`set`, with an optional detail such
//! as the frame) and when they are done. An error or a stop leaves the bar where it stopped,
//! above the error message.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: u64,
    mode: Mode,
    started: Instant,
    next_line: Instant,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Plain,
}

impl Progress {
    /// Shown on standard error: a bar on a terminal, plain lines otherwise.
    pub fn new(what: &'static str, total: u64, unit: &'static str) -> Self {
        let mode = match std::io::stderr().is_terminal() {
            true => Mode::Bar(bar(what, total, unit)),
            false => Mode::Plain,
        };
        Self::with_mode(what, total, unit, mode)
    }

    /// Shows nothing (tests, and callers that report on their own).
    pub fn hidden(what: &'static str, total: u64, unit: &'static str) -> Self {
        Self::with_mode(what, total, unit, Mode::Hidden)
    }

    fn with_mode(what: &'static str, total: u64, unit: &'static str, mode: Mode) -> Self {
        let now = Instant::now();
        Progress { what, unit, total, mode, started: now, next_line: now + PLAIN_EVERY }
    }

    pub fn set(&mut self, done: u64) {
        self.set_detail(done, String::new);
    }

    /// `set`, with a detail shown after the rate (made only when it is shown).
    pub fn set_detail(&mut self, done: u64, detail: impl FnOnce() -> String) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => {
                b.set_position(done);
                b.set_message(detail());
            }
            Mode::Plain => {
                let now = Instant::now();
                if now >= self.next_line {
                    self.next_line = now + PLAIN_EVERY;
                    eprintln!("{}", self.line(done, &detail()));
                }
            }
        }
    }

    fn line(&self, done: u64, detail: &str) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 { self.total.saturating_sub(done) as f64 / rate } else { 0.0 };
        let (what, unit) = (self.what, self.unit);
        let sep = if detail.is_empty() { "" } else { ", " };
        format!("{what}: {done}/{} {unit}, {} {unit}/s, ETA {eta:.0} s{sep}{detail}", self.total, human(rate))
    }

    /// Clears the bar and prints what was done, in how long.
    pub fn finish(&mut self, done: u64) {
        let shown = !matches!(self.mode, Mode::Hidden);
        self.clear();
        if shown {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let (what, unit) = (self.what, self.unit);
            eprintln!("{what}: {done} {unit} in {secs:.1} s ({} {unit}/s)", human(done as f64 / secs));
        }
    }

    /// Clears the bar, printing nothing (the caller prints its own summary).
    pub fn clear(&mut self) {
        if let Mode::Bar(b) = std::mem::replace(&mut self.mode, Mode::Hidden) {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Mode::Bar(b) = &self.mode {
            b.abandon();
        }
    }
}

fn bar(what: &str, total: u64, unit: &str) -> ProgressBar {
    let b = ProgressBar::new(total.max(1));
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{bar:40}}] {{percent}}% {{human_pos}}/{{human_len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    b.set_style(style);
    b
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
        let p = Progress::hidden("timelapse", 1000, "versions");
        let line = p.line(500, "frame 120/1800");
        assert!(line.starts_with("timelapse: 500/1000 versions, "), "{line}");
        assert!(line.contains(" versions/s, ETA ") && line.ends_with(" s, frame 120/1800"), "{line}");
        assert!(!p.line(1, "").ends_with(", "));
    }
}
