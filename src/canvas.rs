//! The canvas: dimensions, palette, and one byte per pixel (the palette index).
//!
//! Invariants: every pixel holds an index < palette length; a pixel index is `y * width + x`
//! and fits the packed edit (`protocol::MAX_PIXELS`).

use thiserror::Error;

/// r/place 2017's sixteen colors; index 0 (white) is the empty canvas.
pub const RPLACE_2017_PALETTE: [u32; 16] = [
    0xFFFFFF, 0xE4E4E4, 0x888888, 0x222222, 0xFFA7D1, 0xE50000, 0xE59500, 0xA06A42, 0xE5D900, 0x94E044, 0x02BE01,
    0x00D3DD, 0x0083C7, 0x0000EA, 0xCF6EE4, 0x820080,
];

/// Largest palette the packed edit can carry (5 color bits).
pub const MAX_COLORS: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("width and height must be at least 1")]
    Empty,
    #[error("{width}x{height} has {pixels} pixels; the packed edit carries at most {max}")]
    TooLarge { width: u32, height: u32, pixels: u64, max: u64 },
    #[error("width and height must each be at most 65535")]
    SideTooLong,
    #[error("the palette needs between 2 and {MAX_COLORS} colors, got {0}")]
    PaletteSize(usize),
    #[error("bad palette color {0:?}: expected #rrggbb")]
    PaletteColor(String),
}

/// The shape of a canvas: what every edit is validated against.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub palette: Vec<u32>,
}

impl Geometry {
    pub fn new(width: u32, height: u32, palette: Vec<u32>) -> Result<Self, GeometryError> {
        if width == 0 || height == 0 {
            return Err(GeometryError::Empty);
        }
        if width > 65535 || height > 65535 {
            return Err(GeometryError::SideTooLong);
        }
        let pixels = width as u64 * height as u64;
        if pixels > crate::protocol::MAX_PIXELS {
            return Err(GeometryError::TooLarge { width, height, pixels, max: crate::protocol::MAX_PIXELS });
        }
        if palette.len() < 2 || palette.len() > MAX_COLORS {
            return Err(GeometryError::PaletteSize(palette.len()));
        }
        Ok(Geometry { width, height, palette })
    }

    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// The pixel index of (x, y), or None when outside the canvas.
    pub fn index(&self, x: i64, y: i64) -> Option<u32> {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return None;
        }
        Some((y as u32) * self.width + x as u32)
    }

    pub fn valid_color(&self, color: i64) -> bool {
        color >= 0 && (color as usize) < self.palette.len()
    }

    /// Bits per pixel of the compact snapshot: 4 when the palette fits in a nibble.
    pub fn bits_per_pixel(&self) -> u8 {
        if self.palette.len() <= 16 {
            4
        } else {
            8
        }
    }

    pub fn palette_hex(&self) -> Vec<String> {
        self.palette.iter().map(|c| format!("#{c:06x}")).collect()
    }

    /// The geometry a resize to `width`x`height` leaves, by the one rule every node and tool
    /// applies to resize entries in log order: each side grows to the larger of its size and the
    /// asked one (a canvas never shrinks, so two resizes racing on a cluster still compose), and
    /// the result must stay within `MAX_GROWN_PIXELS` and 65535 per side. `None` when it changes
    /// nothing or would exceed the bounds (the entry is then a no-op).
    pub fn grown(&self, width: u32, height: u32) -> Option<Geometry> {
        let (w, h) = (self.width.max(width), self.height.max(height));
        if (w, h) == (self.width, self.height) || w as u64 * h as u64 > crate::bounds::MAX_GROWN_PIXELS {
            return None;
        }
        Geometry::new(w, h, self.palette.clone()).ok()
    }
}

/// The canvas's geometry as the shards read it while the applier may grow it: the palette is
/// fixed, the size is one atomic (width in the high 32 bits), published by the applier after
/// it applied a resize entry. The size only grows, so a placement admitted against an older
/// size is inside every later one.
pub struct LiveGeometry {
    palette: Vec<u32>,
    size: std::sync::atomic::AtomicU64,
}

impl LiveGeometry {
    pub fn new(g: &Geometry) -> Self {
        LiveGeometry {
            palette: g.palette.clone(),
            size: std::sync::atomic::AtomicU64::new(pack_size(g.width, g.height)),
        }
    }

    /// `(width, height)` now.
    pub fn size(&self) -> (u32, u32) {
        let s = self.size.load(std::sync::atomic::Ordering::Acquire);
        ((s >> 32) as u32, s as u32)
    }

    pub fn publish(&self, g: &Geometry) {
        self.size.store(pack_size(g.width, g.height), std::sync::atomic::Ordering::Release);
    }

    /// The geometry now (copies the palette: not for the placement path).
    pub fn get(&self) -> Geometry {
        let (width, height) = self.size();
        Geometry { width, height, palette: self.palette.clone() }
    }

    /// The pixel index of (x, y) at the current size, or None when outside.
    pub fn index(&self, x: i64, y: i64) -> Option<u32> {
        let (w, h) = self.size();
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            return None;
        }
        Some((y as u32) * w + x as u32)
    }

    pub fn valid_color(&self, color: i64) -> bool {
        color >= 0 && (color as usize) < self.palette.len()
    }

    pub fn palette(&self) -> &[u32] {
        &self.palette
    }

    pub fn palette_hex(&self) -> Vec<String> {
        self.palette.iter().map(|c| format!("#{c:06x}")).collect()
    }
}

fn pack_size(w: u32, h: u32) -> u64 {
    (w as u64) << 32 | h as u64
}

/// Parses "#rrggbb" (the leading '#' optional).
pub fn parse_color(s: &str) -> Result<u32, GeometryError> {
    let t = s.trim().trim_start_matches('#');
    if t.len() != 6 {
        return Err(GeometryError::PaletteColor(s.to_string()));
    }
    u32::from_str_radix(t, 16).map_err(|_| GeometryError::PaletteColor(s.to_string()))
}

/// The pixels themselves, owned by the applier thread alone.
pub struct Canvas {
    pub geometry: Geometry,
    pixels: Vec<u8>,
}

impl Canvas {
    pub fn new(geometry: Geometry) -> Self {
        let n = geometry.pixels();
        Canvas { geometry, pixels: vec![0; n] }
    }

    /// A canvas with the given pixels, if there is one per pixel and each is in the palette.
    pub fn from_pixels(geometry: Geometry, pixels: Vec<u8>) -> Option<Self> {
        let ok = pixels.len() == geometry.pixels() && pixels.iter().all(|&c| (c as usize) < geometry.palette.len());
        ok.then_some(Canvas { geometry, pixels })
    }

    /// Sets one pixel. The caller validated index and color when the edit entered the log.
    pub fn set(&mut self, index: u32, color: u8) {
        debug_assert!((color as usize) < self.geometry.palette.len());
        self.pixels[index as usize] = color;
    }

    pub fn get(&self, index: u32) -> u8 {
        self.pixels[index as usize]
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The canvas grown to `g` (at least as large on each side, the same palette): rows keep
    /// their pixels at the same (x, y), new pixels are color 0, the empty canvas.
    pub fn grow(&mut self, g: Geometry) {
        assert!(g.width >= self.geometry.width && g.height >= self.geometry.height, "a canvas only grows");
        let (old_w, new_w) = (self.geometry.width as usize, g.width as usize);
        let mut pixels = vec![0u8; g.pixels()];
        for (y, row) in self.pixels.chunks_exact(old_w).enumerate() {
            pixels[y * new_w..y * new_w + old_w].copy_from_slice(row);
        }
        self.pixels = pixels;
        self.geometry = g;
    }

    /// The color at (x, y), or 0 (the empty canvas) outside it: what a pixel that did not exist
    /// yet at some version looks like.
    pub fn color_at(&self, x: u32, y: u32) -> u8 {
        if x >= self.geometry.width || y >= self.geometry.height {
            return 0;
        }
        self.pixels[(y * self.geometry.width + x) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_limits() {
        let pal = RPLACE_2017_PALETTE.to_vec();
        assert!(Geometry::new(1000, 1000, pal.clone()).is_ok());
        assert!(Geometry::new(4000, 4000, vec![0; 32]).is_ok());
        assert_eq!(Geometry::new(0, 5, pal.clone()).unwrap_err(), GeometryError::Empty);
        assert!(matches!(Geometry::new(20000, 20000, pal.clone()), Err(GeometryError::TooLarge { .. })));
        assert!(matches!(Geometry::new(10, 10, vec![0; 33]), Err(GeometryError::PaletteSize(33))));
    }

    #[test]
    fn index_and_color_validation() {
        let g = Geometry::new(10, 5, RPLACE_2017_PALETTE.to_vec()).unwrap();
        assert_eq!(g.index(3, 2), Some(23));
        assert_eq!(g.index(10, 0), None);
        assert_eq!(g.index(0, 5), None);
        assert_eq!(g.index(-1, 0), None);
        assert!(g.valid_color(15));
        assert!(!g.valid_color(16));
        assert!(!g.valid_color(-1));
        assert_eq!(g.bits_per_pixel(), 4);
    }

    #[test]
    fn grows_keeping_every_pixel_at_its_place() {
        let g = Geometry::new(3, 2, RPLACE_2017_PALETTE.to_vec()).unwrap();
        let mut c = Canvas::new(g.clone());
        c.set(g.index(2, 1).unwrap(), 5);
        c.set(g.index(0, 0).unwrap(), 7);
        let bigger = g.grown(5, 1).unwrap();
        assert_eq!((bigger.width, bigger.height), (5, 2), "a side asked smaller keeps its size");
        c.grow(bigger.clone());
        assert_eq!((c.color_at(2, 1), c.color_at(0, 0), c.color_at(4, 1), c.color_at(9, 9)), (5, 7, 0, 0));
        assert_eq!(c.get(bigger.index(2, 1).unwrap()), 5);
        assert!(bigger.grown(5, 2).is_none(), "no change: a no-op");
        assert!(bigger.grown(4097, 4096).is_none(), "past MAX_GROWN_PIXELS: a no-op");
        assert_eq!(bigger.grown(4096, 4096).map(|g| g.pixels()), Some(1 << 24));
        let live = LiveGeometry::new(&g);
        assert_eq!((live.size(), live.index(3, 0)), ((3, 2), None));
        live.publish(&bigger);
        assert_eq!((live.size(), live.index(3, 0), live.get().pixels()), ((5, 2), Some(3), 10));
    }

    #[test]
    fn parses_colors() {
        assert_eq!(parse_color("#ff0080").unwrap(), 0xff0080);
        assert_eq!(parse_color("00ff00").unwrap(), 0x00ff00);
        assert!(parse_color("#fff").is_err());
        assert!(parse_color("#gg0000").is_err());
    }
}
