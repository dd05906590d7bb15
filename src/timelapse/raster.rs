//! The region being filmed, as palette indexes, and the difference between frames.
//!
//! Only the region is kept: the canvas outside it never reaches a frame. Applying an edit is a
//! bounds test, a store and a bounding-box update (a few ns). Taking a frame compares the dirty
//! box against the frame before and yields the tight rectangle of pixels that changed, scaled,
//! as *frame indexes*: 0 means "unchanged, keep what is shown" (transparent in APNG and GIF) and
//! `c + 1` means palette color `c`. Zero for the common case pays twice: an encoder needs no
//! separate mask, and PNG's fast deflate codes runs of zeros almost for free.
//!
//! Invariants: `shown` is the region as of the last frame taken; the dirty box covers every pixel
//! set since then; the first frame is the whole region with no zero index in it.

/// A rectangle of the output (already scaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The frame index that means "keep the pixel shown".
pub(crate) const KEEP: u8 = 0;

pub(crate) struct Raster {
    /// The region's origin in the canvas, and its size.
    x0: u32,
    y0: u32,
    width: u32,
    height: u32,
    scale: u32,
    pixels: Vec<u8>,
    shown: Vec<u8>,
    /// Inclusive bounds of what changed since the last frame; empty when `min_x > max_x`.
    min_x: u32,
    min_y: u32,
    max_x: u32,
    max_y: u32,
    first: bool,
}

impl Raster {
    /// A region of a canvas whose every pixel is `initial` (the empty canvas's color).
    pub fn new(x0: u32, y0: u32, width: u32, height: u32, scale: u32, initial: u8) -> Raster {
        let n = width as usize * height as usize;
        let mut r = Raster {
            x0,
            y0,
            width,
            height,
            scale,
            pixels: vec![initial; n],
            shown: vec![initial; n],
            min_x: 0,
            min_y: 0,
            max_x: 0,
            max_y: 0,
            first: true,
        };
        r.clear_dirty();
        r
    }

    /// Applies an edit at canvas coordinates; edits outside the region change nothing shown.
    #[inline]
    pub fn set(&mut self, x: u16, y: u16, color: u8) {
        // Wrapping: a coordinate left of (or above) the region becomes huge and fails the test.
        let rx = (x as u32).wrapping_sub(self.x0);
        let ry = (y as u32).wrapping_sub(self.y0);
        if rx >= self.width || ry >= self.height {
            return;
        }
        if let Some(p) = self.pixels.get_mut(ry as usize * self.width as usize + rx as usize) {
            *p = color;
        }
        self.min_x = self.min_x.min(rx);
        self.max_x = self.max_x.max(rx);
        self.min_y = self.min_y.min(ry);
        self.max_y = self.max_y.max(ry);
    }

    /// The region's pixels now (palette indexes, row-major).
    #[cfg(test)]
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    fn clear_dirty(&mut self) {
        (self.min_x, self.min_y, self.max_x, self.max_y) = (u32::MAX, u32::MAX, 0, 0);
    }

    /// Takes a frame: fills `out` with the frame indexes of the rectangle that changed since the
    /// last frame (the whole region the first time) and returns it; None when nothing changed.
    pub fn take_frame(&mut self, out: &mut Vec<u8>) -> Option<Rect> {
        out.clear();
        let full = self.first;
        let (x0, y0, x1, y1) = if full { (0, 0, self.width - 1, self.height - 1) } else { self.changed_box()? };
        self.first = false;
        self.clear_dirty();
        let w = (x1 - x0 + 1) as usize;
        let k = self.scale as usize;
        out.reserve(w * k * (y1 - y0 + 1) as usize * k);
        for y in y0..=y1 {
            let start = y as usize * self.width as usize + x0 as usize;
            let (cur, old) = (&self.pixels[start..start + w], &mut self.shown[start..start + w]);
            let row_start = out.len();
            if full {
                out.extend(cur.iter().map(|&c| c + 1));
            } else {
                out.extend(cur.iter().zip(old.iter()).map(|(&c, &o)| if c != o { c + 1 } else { KEEP }));
            }
            old.copy_from_slice(cur);
            if k > 1 {
                scale_row(out, row_start, w, k);
            }
        }
        let (x, y, height) = (x0 * self.scale, y0 * self.scale, (y1 - y0 + 1) * self.scale);
        Some(Rect { x, y, width: w as u32 * self.scale, height })
    }

    /// The tight box of pixels that differ from the last frame, within the dirty box.
    fn changed_box(&self) -> Option<(u32, u32, u32, u32)> {
        if self.min_x > self.max_x {
            return None;
        }
        let (x0, x1) = (self.min_x as usize, self.max_x as usize);
        let (mut bx0, mut bx1, mut by0, mut by1) = (usize::MAX, 0, usize::MAX, 0);
        for y in self.min_y as usize..=self.max_y as usize {
            let start = y * self.width as usize;
            let cur = &self.pixels[start + x0..=start + x1];
            let old = &self.shown[start + x0..=start + x1];
            // Most rows of a busy box still match in full: one memcmp settles them.
            if cur == old {
                continue;
            }
            let first = cur.iter().zip(old).position(|(a, b)| a != b).unwrap_or(0);
            let last = cur.iter().zip(old).rposition(|(a, b)| a != b).unwrap_or(first);
            (bx0, bx1) = (bx0.min(x0 + first), bx1.max(x0 + last));
            (by0, by1) = (by0.min(y), y);
        }
        (by0 != usize::MAX).then_some((bx0 as u32, by0 as u32, bx1 as u32, by1 as u32))
    }
}

/// Widens the `w` entries at `out[row_start..]` (the row's end) `k` times, then repeats the
/// widened row `k - 1` more times below it.
fn scale_row(out: &mut Vec<u8>, row_start: usize, w: usize, k: usize) {
    out.resize(row_start + w * k, KEEP);
    let row = &mut out[row_start..];
    // Backwards, so each entry is read before a wider one overwrites it (i * k >= i).
    for i in (0..w).rev() {
        let v = row[i];
        row[i * k..(i + 1) * k].fill(v);
    }
    for _ in 1..k {
        out.extend_from_within(row_start..row_start + w * k);
    }
}
