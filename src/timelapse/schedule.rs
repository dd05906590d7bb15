//! The frame schedule: the cut point of every frame, the point in the log whose canvas it shows.
//!
//! Invariants: frame 0 is the canvas at `from` and the last frame the canvas at `to` (with one
//! frame, just `to`); the cut points in between are evenly spaced in the pace's unit and never
//! decrease, so frames are emitted in order while the log is read once. A frame is due before
//! the first edit past its cut: an edit with a greater version, or a later stamp, than the cut.

use super::args::{ArgsError, Pace, Plan, Point};
use super::Head;

/// A frame's cut point in both units; the one not in use is `u64::MAX`, which no edit passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub version: u64,
    pub ts_ms: u64,
}

impl Cut {
    pub fn at(p: Point) -> Cut {
        match p {
            Point::Version(v) => Cut { version: v, ts_ms: u64::MAX },
            Point::Time(t) => Cut { version: u64::MAX, ts_ms: t },
        }
    }

    /// Whether an edit lies past this cut, so the frame must be taken before applying it.
    #[inline]
    pub fn passed_by(&self, version: u64, ts_ms: u64) -> bool {
        version > self.version || ts_ms > self.ts_ms
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    frames: u32,
    pace: Pace,
    from: Point,
    to: Point,
    head: Head,
    /// Where the evenly spaced cuts start and end, in the pace's unit. The start is provisional
    /// until `start` resolves `from` (a point in the other unit is known only once reached).
    span: (u64, u64),
}

impl Schedule {
    pub fn new(plan: &Plan, head: Head) -> Schedule {
        let end = match (plan.pace, plan.to) {
            (Pace::Time, Point::Time(t)) | (Pace::Edits, Point::Version(t)) => t,
            // Plan accepts the other unit only when it means the head.
            (Pace::Time, Point::Version(_)) => head.last_ts_ms,
            (Pace::Edits, Point::Time(_)) => head.version,
        };
        let mut s =
            Schedule { frames: plan.frames, pace: plan.pace, from: plan.from, to: plan.to, head, span: (0, end) };
        s.span.0 = s.resolve_from(None);
        s
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// The cut of frame `i` (< frames). Interior frames need `start` to have run.
    pub fn cut(&self, i: u32) -> Cut {
        if i + 1 >= self.frames {
            return Cut::at(self.to);
        }
        if i == 0 {
            return Cut::at(self.from);
        }
        let (start, end) = self.span;
        // Rounded to nearest, in u128 so spans of any size cannot overflow.
        let n = (self.frames - 1) as u128;
        let off = ((end - start) as u128 * i as u128 * 2 + n) / (2 * n);
        let value = start + off as u64;
        match self.pace {
            Pace::Time => Cut { version: u64::MAX, ts_ms: value },
            Pace::Edits => Cut { version: value, ts_ms: u64::MAX },
        }
    }

    /// Called once frame 0 (the canvas at `from`) is taken: `last` is the (version, stamp) of the
    /// last edit applied, if any, which fixes `from` in the pace's unit.
    pub fn start(&mut self, last: Option<(u64, u64)>) -> Result<(), ArgsError> {
        let start = self.resolve_from(last);
        if start > self.span.1 {
            return Err(ArgsError::FromNotBeforeTo { from: self.from, to: self.to });
        }
        self.span.0 = start;
        Ok(())
    }

    fn resolve_from(&self, last: Option<(u64, u64)>) -> u64 {
        match (self.pace, self.from) {
            (Pace::Time, Point::Time(t)) | (Pace::Edits, Point::Version(t)) => t,
            (Pace::Time, Point::Version(_)) => last.map_or(self.head.first_ts_ms, |(_, ts)| ts),
            (Pace::Edits, Point::Time(_)) => last.map_or(0, |(v, _)| v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::{Geometry, RPLACE_2017_PALETTE};

    const HEAD: Head = Head { version: 10_000, first_ts_ms: 1_000_000, last_ts_ms: 1_090_000 };

    fn schedule(flags: &str) -> Schedule {
        let args = crate::timelapse::args::parse_line(&format!("--out x.apng {flags}")).unwrap();
        let g = Geometry::new(10, 10, RPLACE_2017_PALETTE.to_vec()).unwrap();
        Schedule::new(&Plan::new(&args, &g, &HEAD).unwrap(), HEAD)
    }

    #[test]
    fn time_pace_spaces_cuts_in_time_and_ends_at_to() {
        // 10 frames over 90 s of log: frame 0 at from, one cut every 10 s, the last at the head.
        let mut s = schedule("--duration 1 --fps 10");
        assert_eq!(s.frames(), 10);
        assert_eq!(s.cut(0), Cut::at(Point::Version(0)));
        s.start(None).unwrap();
        for i in 1..9 {
            assert_eq!(s.cut(i), Cut { version: u64::MAX, ts_ms: 1_000_000 + 10_000 * i as u64 }, "frame {i}");
        }
        assert_eq!(s.cut(9), Cut::at(Point::Version(10_000)));
        // An edit past the head's version is past the last cut; one at the head's time is not.
        assert!(s.cut(9).passed_by(10_001, 1_090_000));
        assert!(!s.cut(9).passed_by(10_000, 2_000_000));
    }

    #[test]
    fn time_pace_from_a_version_starts_at_its_stamp() {
        let mut s = schedule("--duration 1 --fps 4 --from 500 --to t:1090000");
        assert_eq!(s.cut(0), Cut::at(Point::Version(500)));
        s.start(Some((499, 1_030_000))).unwrap();
        let times: Vec<u64> = (1..3).map(|i| s.cut(i).ts_ms).collect();
        assert_eq!(times, [1_050_000, 1_070_000]);
        assert_eq!(s.cut(3), Cut::at(Point::Time(1_090_000)));
    }

    #[test]
    fn edits_pace_spaces_cuts_in_versions() {
        let mut s = schedule("--duration 1 --fps 5 --pace edits --from 2000");
        s.start(Some((1999, 1_010_000))).unwrap();
        let versions: Vec<u64> = (0..5).map(|i| s.cut(i).version).collect();
        assert_eq!(versions, [2000, 4000, 6000, 8000, 10_000]);
        assert!((0..5).all(|i| s.cut(i).ts_ms == u64::MAX));
    }

    #[test]
    fn edits_pace_from_a_time_starts_at_the_last_version_before_it() {
        let mut s = schedule("--duration 1 --fps 3 --pace edits --from t:1050000");
        assert_eq!(s.cut(0), Cut::at(Point::Time(1_050_000)));
        s.start(Some((4000, 1_049_000))).unwrap();
        assert_eq!(s.cut(1).version, 7000);
        assert_eq!(s.cut(2), Cut::at(Point::Version(10_000)));
    }

    #[test]
    fn mixed_units_out_of_order_are_refused_when_reached() {
        let mut s = schedule("--fps 3 --pace edits --from t:1050000 --to 3000");
        assert!(matches!(s.start(Some((4000, 1_049_000))), Err(ArgsError::FromNotBeforeTo { .. })));
    }

    #[test]
    fn one_frame_is_the_canvas_at_to() {
        let s = schedule("--duration 1 --fps 1 --pace edits --to 700");
        assert_eq!(s.frames(), 1);
        assert_eq!(s.cut(0), Cut::at(Point::Version(700)));
    }

    #[test]
    fn cuts_never_decrease_with_more_frames_than_versions() {
        let mut s = schedule("--duration 100 --fps 60 --pace edits --from 9990");
        s.start(None).unwrap();
        let v: Vec<u64> = (0..6000).map(|i| s.cut(i).version).collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((v[0], v[5999]), (9990, 10_000));
    }
}
