//! GIF output with the `gif` crate: one global palette (a transparent "keep" entry, then the
//! canvas palette), each frame only the rectangle that changed, kept under the next one
//! (disposal Keep) so unchanged pixels inside it are transparent.
//!
//! GIF delays are whole centiseconds, so most frame rates cannot be kept frame by frame: delays
//! alternate (30 fps is 3, 3, 4 cs) so the average is exact, and no delay is under 2 cs, which
//! browsers would stretch to 10 cs. Above 50 fps that floor sets the real rate (`real_fps`).
//!
//! Invariants: frame `i` ends at `round(100 (i + 1) / fps)` cs (floored as above); the first
//! frame covers the whole image.

use super::encode::{frame_palette, Sink};
use super::raster::Rect;
use super::TimelapseError;
use gif::{DisposalMethod, Encoder, Frame, Repeat};
use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;

/// The shortest delay browsers honor.
const MIN_DELAY_CS: u64 = 2;

pub(crate) struct Gif {
    encoder: Encoder<BufWriter<File>>,
    fps: u32,
    index: u32,
}

impl Gif {
    pub fn create(file: File, size: (u32, u32), palette: &[u32], fps: u32) -> Result<Gif, TimelapseError> {
        // Sides are at most 8192 (Plan), within GIF's u16.
        let (w, h) = (size.0 as u16, size.1 as u16);
        let mut encoder = Encoder::new(BufWriter::with_capacity(1 << 20, file), w, h, &frame_palette(palette))?;
        encoder.set_repeat(Repeat::Infinite)?;
        Ok(Gif { encoder, fps, index: 0 })
    }
}

impl Sink for Gif {
    fn frame(&mut self, rect: Rect, indexes: &[u8]) -> Result<(), TimelapseError> {
        let frame = Frame {
            delay: delay_cs(self.index, self.fps),
            dispose: DisposalMethod::Keep,
            transparent: Some(super::raster::KEEP),
            left: rect.x as u16,
            top: rect.y as u16,
            width: rect.width as u16,
            height: rect.height as u16,
            buffer: Cow::Borrowed(indexes),
            ..Frame::default()
        };
        self.encoder.write_frame(&frame)?;
        self.index += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), TimelapseError> {
        let mut file = self.encoder.into_inner()?;
        std::io::Write::flush(&mut file).map_err(gif::EncodingError::from)?;
        Ok(())
    }
}

/// When frame `i` ends, in centiseconds from the start, before the 2 cs floor.
fn end_cs(i: u64, fps: u64) -> u64 {
    (200 * i + fps) / (2 * fps)
}

/// The delay of frame `i`, in centiseconds.
pub(crate) fn delay_cs(i: u32, fps: u32) -> u16 {
    let (i, fps) = (i as u64, fps as u64);
    // At most 100 cs (fps >= 1), so it fits a u16.
    (end_cs(i + 1, fps) - end_cs(i, fps)).max(MIN_DELAY_CS) as u16
}

/// The frame rate a viewer really plays: frames over the summed delays.
pub(crate) fn real_fps(frames: u32, fps: u32) -> f64 {
    let total: u64 = (0..frames).map(|i| delay_cs(i, fps) as u64).sum();
    frames as f64 * 100.0 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_average_to_the_frame_rate() {
        let d: Vec<u16> = (0..6).map(|i| delay_cs(i, 30)).collect();
        assert_eq!(d, [3, 4, 3, 3, 4, 3]);
        assert_eq!(real_fps(30, 30), 30.0);
        assert_eq!(real_fps(1800, 30), 30.0);
        assert!((0..100).all(|i| delay_cs(i, 25) == 4));
        assert!((0..100).all(|i| delay_cs(i, 1) == 100));
        // 24 fps: 4.1666 cs a frame, exact over a second.
        assert_eq!(real_fps(24, 24), 24.0);
        // Above 50 fps the 2 cs floor wins.
        assert_eq!(real_fps(60, 60), 50.0);
        assert_eq!(real_fps(50, 50), 50.0);
    }
}
