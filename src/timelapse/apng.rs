//! Animated PNG output with the `png` crate: indexed color (the canvas palette behind a
//! transparent "keep" entry), fast compression, one frame per cut, each frame only the rectangle
//! that changed, blended Over the one before so unchanged pixels inside it cost a zero byte.
//!
//! Invariants: the first frame is the whole image (APNG requires the first frame to match the
//! header); every frame is delayed 1/fps s exactly; the frame count declared up front is the
//! number written (the renderer writes a 1x1 "keep" frame when nothing changed).

use super::encode::{frame_palette, Sink};
use super::raster::Rect;
use super::TimelapseError;
use png::{BitDepth, BlendOp, ColorType, Compression, DisposeOp, Filter};
use std::fs::File;
use std::io::BufWriter;

pub(crate) struct Apng {
    writer: png::Writer<BufWriter<File>>,
    four_bit: bool,
    /// The frame's rows packed two pixels a byte, when `four_bit`.
    packed: Vec<u8>,
    /// Filter for the frames after the first: see `Apng::create`.
    later_filter: Filter,
}

impl Apng {
    pub fn create(
        file: File,
        size: (u32, u32),
        palette: &[u32],
        frames: u32,
        fps: u32,
        scale: u32,
    ) -> Result<Apng, TimelapseError> {
        let plte = frame_palette(palette);
        let four_bit = plte.len() / 3 <= 16;
        let mut enc = png::Encoder::new(BufWriter::with_capacity(1 << 20, file), size.0, size.1);
        enc.set_color(ColorType::Indexed);
        enc.set_depth(if four_bit { BitDepth::Four } else { BitDepth::Eight });
        enc.set_palette(plte);
        // Only the keep slot is transparent; entries past the tRNS chunk are opaque.
        enc.set_trns(vec![0u8]);
        enc.set_compression(Compression::Fast);
        enc.set_animated(frames, 0)?;
        // fps <= 60 (Plan), so it fits the u16 denominator.
        enc.set_frame_delay(1, fps as u16)?;
        enc.set_blend_op(BlendOp::Over)?;
        enc.set_dispose_op(DisposeOp::None)?;
        // The first frame (often a flat canvas) gains from filtering; the later ones are mostly
        // zeros with scattered colors, which no filter improves, unless scaling repeats each row
        // (then "Up" zeroes the copies).
        enc.set_filter(Filter::Adaptive);
        let later_filter = if scale > 1 { Filter::Adaptive } else { Filter::NoFilter };
        let writer = enc.write_header()?;
        Ok(Apng { writer, four_bit, packed: Vec::new(), later_filter })
    }
}

impl Sink for Apng {
    fn frame(&mut self, rect: Rect, indexes: &[u8]) -> Result<(), TimelapseError> {
        // Position before size: each setter checks the frame against the image with the other's
        // current value, so move to the origin first.
        self.writer.reset_frame_position()?;
        self.writer.set_frame_dimension(rect.width, rect.height)?;
        self.writer.set_frame_position(rect.x, rect.y)?;
        if self.four_bit {
            pack_nibbles(indexes, rect.width as usize, &mut self.packed);
            self.writer.write_image_data(&self.packed)?;
        } else {
            self.writer.write_image_data(indexes)?;
        }
        self.writer.set_filter(self.later_filter);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), TimelapseError> {
        // Writes IEND and flushes the buffered file.
        self.writer.finish()?;
        Ok(())
    }
}

/// Packs rows of `width` 4-bit indexes into PNG's layout: high nibble first, each row padded to
/// a whole byte.
fn pack_nibbles(indexes: &[u8], width: usize, out: &mut Vec<u8>) {
    out.clear();
    for row in indexes.chunks_exact(width) {
        let pairs = row.chunks_exact(2);
        let last = pairs.remainder().first().map(|v| v << 4);
        out.extend(pairs.map(|p| (p[0] << 4) | p[1]));
        out.extend(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_odd_rows_padded() {
        let mut out = Vec::new();
        pack_nibbles(&[1, 2, 3, 4, 5, 6], 3, &mut out);
        assert_eq!(out, [0x12, 0x30, 0x45, 0x60]);
        pack_nibbles(&[1, 2, 3, 4], 2, &mut out);
        assert_eq!(out, [0x12, 0x34]);
    }
}
