//! Keyframes: the whole canvas at every multiple of `--keyframe-every` versions, so the canvas at
//! any version is one keyframe plus a bounded replay (`HistoryReader::canvas_at`).
//!
//! File `kf-<version, 12 digits>.bin`: magic `PCK1`, version u64, width u32, height u32, the
//! length of the raw pixels u32, their crc32 u32 (little-endian), then the pixels (one palette
//! index per byte) compressed with deflate (miniz_oxide, level 1: a canvas is mostly runs).
//! Written to a temporary name and renamed, never fsynced (derived data): a keyframe that does
//! not read back whole is skipped and an earlier one is used.
//!
//! One thread (`placecast-keyframes`) compresses and writes them, off the applier's thread; it
//! takes a copy of the canvas over a channel of `QUEUE` (full: the applier waits, which happens
//! only while replaying a long log faster than keyframes compress).

use super::HistoryReader;
use crate::canvas::{Canvas, Geometry};
use crossbeam_channel::{bounded, Sender};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"PCK1";
const HEAD: usize = 28;
/// Canvas copies waiting to be written (1 MB each at 1000x1000).
const QUEUE: usize = 4;

fn name(version: u64) -> String {
    format!("kf-{version:012}.bin")
}

fn parse_name(n: &str) -> Option<u64> {
    let digits = n.strip_prefix("kf-")?.strip_suffix(".bin")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

pub fn encode(version: u64, width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let packed = miniz_oxide::deflate::compress_to_vec(pixels, 1);
    let mut out = Vec::with_capacity(HEAD + packed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&(pixels.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(pixels).to_le_bytes());
    out.extend_from_slice(&packed);
    out
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Decodes a keyframe file for `version` of a canvas of `g` (the size the history says the canvas
/// had at `version`: a keyframe of another size is of another log).
pub fn decode(b: &[u8], version: u64, g: &Geometry) -> io::Result<Canvas> {
    if b.len() < HEAD || &b[0..4] != MAGIC {
        return Err(bad("not a keyframe"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")) != version {
        return Err(bad("keyframe of another version"));
    }
    if (u32_at(12), u32_at(16)) != (g.width, g.height) || u32_at(20) as usize != g.pixels() {
        return Err(bad("keyframe of another canvas size"));
    }
    let pixels = miniz_oxide::inflate::decompress_to_vec_with_limit(&b[HEAD..], g.pixels())
        .map_err(|e| bad(&format!("keyframe does not inflate: {e:?}")))?;
    if pixels.len() != g.pixels() || crc32fast::hash(&pixels) != u32_at(24) {
        return Err(bad("keyframe checksum mismatch"));
    }
    Canvas::from_pixels(g.clone(), pixels).ok_or_else(|| bad("keyframe colors outside the palette"))
}

pub fn read(dir: &Path, version: u64, g: &Geometry) -> io::Result<Canvas> {
    decode(&std::fs::read(dir.join(name(version)))?, version, g)
}

/// Keyframes in `dir` for versions in `(base, end]`; others (beyond a cut history) are removed.
pub fn list(dir: &Path, base: u64, end: u64) -> io::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(v) = file.to_str().and_then(parse_name) else { continue };
        if v > base && v <= end {
            out.insert(v);
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(out)
}

pub fn remove_all(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        if n.to_str().is_some_and(|n| n.starts_with("kf-")) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Bytes the keyframes take on disk.
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("kf-")))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The keyframe writer thread's handle.
pub struct Keyframer {
    tx: Sender<(u64, u32, u32, Vec<u8>)>,
}

impl Keyframer {
    pub fn start(dir: PathBuf, reader: Arc<HistoryReader>) -> io::Result<Keyframer> {
        let (tx, rx) = bounded::<(u64, u32, u32, Vec<u8>)>(QUEUE);
        std::thread::Builder::new().name("placecast-keyframes".into()).spawn(move || {
            for (v, width, height, pixels) in rx {
                let tmp = dir.join(format!(".{}.tmp", name(v)));
                let result = std::fs::write(&tmp, encode(v, width, height, &pixels))
                    .and_then(|()| std::fs::rename(&tmp, dir.join(name(v))));
                match result {
                    Ok(()) => reader.add_keyframe(v),
                    Err(e) => tracing::warn!(version = v, error = %e, "writing a keyframe failed; the canvas at nearby versions replays more"),
                }
            }
        })?;
        Ok(Keyframer { tx })
    }

    /// Queues the canvas at `version` (a copy).
    pub fn write(&self, version: u64, canvas: &Canvas) {
        // The thread ends only with the process; a send error would mean it died, and the
        // panic hook has aborted by then.
        let g = &canvas.geometry;
        let _ = self.tx.send((version, g.width, g.height, canvas.pixels().to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::RPLACE_2017_PALETTE;

    #[test]
    fn round_trip_and_refusals() {
        let g = Geometry::new(7, 5, RPLACE_2017_PALETTE.to_vec()).unwrap();
        let mut c = Canvas::new(g.clone());
        c.set(3, 5);
        c.set(34, 15);
        let b = encode(42, 7, 5, c.pixels());
        assert_eq!(decode(&b, 42, &g).unwrap().pixels(), c.pixels());
        assert!(decode(&b, 43, &g).is_err());
        let mut flipped = b.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(decode(&flipped, 42, &g).is_err());
        assert!(decode(&b[..10], 42, &g).is_err());
        let other = Geometry::new(5, 7, RPLACE_2017_PALETTE.to_vec()).unwrap();
        assert!(decode(&b, 42, &other).is_err());
        assert_eq!(parse_name(&name(65536)), Some(65536));
        assert_eq!(parse_name("kf-x.bin"), None);
    }
}
