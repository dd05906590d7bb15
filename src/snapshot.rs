//! Versioned snapshots of the canvas: the compact binary form (PROTOCOL.md) built by the applier
//! when someone asked since the last cut, and the indexed PNG encoded from it at most once per
//! snapshot, by whichever request needs it first.
//!
//! Invariants: a published snapshot is the canvas at exactly `version`; versions of published
//! snapshots never go backwards; each form is encoded at most once per version, so at most once
//! per batch interval however many clients ask.

use crate::canvas::Canvas;
use crate::protocol::snapshot_header;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

pub struct Snapshot {
    pub version: u64,
    pub width: u32,
    pub height: u32,
    pub bits_per_pixel: u8,
    pub palette: Vec<u32>,
    /// The binary snapshot, header included.
    pub binary: Bytes,
    pub etag: String,
    png: OnceLock<Bytes>,
}

impl Snapshot {
    pub fn build(canvas: &Canvas, version: u64) -> Self {
        let g = &canvas.geometry;
        let bpp = g.bits_per_pixel();
        let px = canvas.pixels();
        let mut out = Vec::with_capacity(24 + if bpp == 4 { px.len().div_ceil(2) } else { px.len() });
        out.extend_from_slice(&snapshot_header(bpp, g.palette.len() as u8, g.width, g.height, version));
        if bpp == 4 {
            let pairs = px.chunks_exact(2);
            let rem = pairs.remainder().first().copied();
            out.extend(pairs.map(|p| (p[0] << 4) | p[1]));
            if let Some(last) = rem {
                out.push(last << 4);
            }
        } else {
            out.extend_from_slice(px);
        }
        Snapshot {
            version,
            width: g.width,
            height: g.height,
            bits_per_pixel: bpp,
            palette: g.palette.clone(),
            binary: Bytes::from(out),
            etag: format!("\"v{version}-{}x{}\"", g.width, g.height),
            png: OnceLock::new(),
        }
    }

    pub fn png_etag(&self) -> String {
        format!("\"v{}-{}x{}-png\"", self.version, self.width, self.height)
    }

    /// The PNG, encoded on first use (call it off the shard's thread: it takes milliseconds).
    pub fn png(&self) -> Bytes {
        self.png.get_or_init(|| self.encode_png()).clone()
    }

    fn encode_png(&self) -> Bytes {
        let (w, h) = (self.width as usize, self.height as usize);
        let data = &self.binary[24..];
        let mut rows = Vec::with_capacity(h * w.div_ceil(2));
        for y in 0..h {
            if self.bits_per_pixel == 8 {
                rows.extend_from_slice(&data[y * w..(y + 1) * w]);
                continue;
            }
            // Rows of the binary form are not byte-aligned when the width is odd; PNG's are.
            let nib = |i: usize| if i.is_multiple_of(2) { data[i / 2] >> 4 } else { data[i / 2] & 15 };
            let base = y * w;
            for x in (0..w).step_by(2) {
                let hi = nib(base + x);
                let lo = if x + 1 < w { nib(base + x + 1) } else { 0 };
                rows.push((hi << 4) | lo);
            }
        }
        let mut png_bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png_bytes, self.width, self.height);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(if self.bits_per_pixel == 4 { png::BitDepth::Four } else { png::BitDepth::Eight });
            let plte: Vec<u8> = self.palette.iter().flat_map(|c| [(c >> 16) as u8, (c >> 8) as u8, *c as u8]).collect();
            enc.set_palette(plte);
            enc.set_compression(png::Compression::Fast);
            enc.add_text_chunk("placecast-version".into(), self.version.to_string()).expect("text chunk");
            let mut w = enc.write_header().expect("png header into memory");
            w.write_image_data(&rows).expect("png data into memory");
        }
        Bytes::from(png_bytes)
    }
}

/// Where the applier publishes snapshots and HTTP handlers pick them up.
#[derive(Default)]
pub struct SnapshotStore {
    current: ArcSwapOption<Snapshot>,
    wanted: AtomicBool,
}

impl SnapshotStore {
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Asks the applier for a snapshot at its next cut.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// The applier: true once per request burst.
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }

    pub fn publish(&self, s: Snapshot) {
        if let Some(old) = self.current.load().as_ref() {
            assert!(old.version <= s.version, "snapshot versions never go backwards");
        }
        self.current.store(Some(Arc::new(s)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::{Geometry, RPLACE_2017_PALETTE};
    use crate::protocol::parse_snapshot;

    #[test]
    fn binary_and_png_agree() {
        let g = Geometry::new(5, 3, RPLACE_2017_PALETTE.to_vec()).unwrap();
        let mut c = Canvas::new(g);
        c.set(0, 15);
        c.set(4, 3);
        c.set(14, 9);
        let s = Snapshot::build(&c, 42);
        let v = parse_snapshot(&s.binary).unwrap();
        assert_eq!(v.version, 42);
        assert_eq!(v.pixels, c.pixels());
        let png = s.png();
        let dec = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.bit_depth), (5, 3, png::BitDepth::Four));
        // Row 0: pixels 15,0,0,0,3 -> 0xF0 0x00 0x30; row 2 last pixel 9.
        assert_eq!(&buf[..3], &[0xF0, 0x00, 0x30]);
        assert_eq!(buf[info.line_size * 2 + 2], 0x90);
    }

    #[test]
    fn eight_bit_for_big_palettes() {
        let g = Geometry::new(4, 4, vec![0; 32]).unwrap();
        let mut c = Canvas::new(g);
        c.set(5, 31);
        let s = Snapshot::build(&c, 1);
        assert_eq!(s.bits_per_pixel, 8);
        assert_eq!(parse_snapshot(&s.binary).unwrap().pixels[5], 31);
        assert!(s.png().len() > 8);
    }
}
