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
    fn parses_colors() {
        assert_eq!(parse_color("#ff0080").unwrap(), 0xff0080);
        assert_eq!(parse_color("00ff00").unwrap(), 0x00ff00);
        assert!(parse_color("#fff").is_err());
        assert!(parse_color("#gg0000").is_err());
    }
}
