//! Progress of a long tool run on standard error: a bar with rate and ETA on a terminal
//! (`indicatif`), otherwise one plain line every few seconds (for logs and CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    next_line: Instant,
}

impl Progress {
    pub fn new(what: &'static str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total.max(1));
            let style = ProgressStyle::with_template(&format!(
                "{what} [{{bar:40}}] {{percent}}% {{human_pos}}/{{human_len}} {unit} {{per_sec}} ETA {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        let now = Instant::now();
        Progress { what, unit, total, bar, started: now, next_line: now + PLAIN_EVERY }
    }

    pub fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            return;
        }
        let now = Instant::now();
        if now < self.next_line {
            return;
        }
        self.next_line = now + PLAIN_EVERY;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 { self.total.saturating_sub(done) as f64 / rate } else { 0.0 };
        eprintln!("{}: {done}/{} {}, {:.0} {}/s, ETA {eta:.0} s", self.what, self.total, self.unit, rate, self.unit);
    }

    pub fn finish(&mut self, done: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprintln!("{}: {done} {} in {secs:.1} s ({:.0} {}/s)", self.what, self.unit, done as f64 / secs, self.unit);
    }
}
