//! What every output format is fed: frames as changed rectangles of frame indexes (see
//! `raster`), and the palette those indexes name. APNG and GIF write them as they come; the
//! video formats paint them onto a full RGB frame for ffmpeg.
//!
//! Invariants: frame index 0 is "keep what is shown" (transparent), index `c + 1` is palette
//! color `c`; the first frame an encoder gets covers the whole output and has no index 0.

use super::raster::Rect;
use super::TimelapseError;

pub(crate) trait Sink {
    /// Encodes the next frame: `indexes` are the frame indexes of `rect`, row by row.
    fn frame(&mut self, rect: Rect, indexes: &[u8]) -> Result<(), TimelapseError>;
    /// Completes the file (trailer, flush, the encoder's exit).
    fn finish(self: Box<Self>) -> Result<(), TimelapseError>;
}

/// The palette of frame indexes as RGB triples: the "keep" slot (black, never shown), then the
/// canvas palette.
pub(crate) fn frame_palette(palette: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    out.extend(palette.iter().flat_map(|c| rgb(*c)));
    out
}

pub(crate) fn rgb(c: u32) -> [u8; 3] {
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}
