//! placecast's binary payloads (PROTOCOL.md): the batch message (decode for the load tester,
//! encode for the baseline) and the `PCS1` canvas snapshot (decode, expanded to one byte per
//! pixel for the catch-up check).
//!
//! Pure functions over byte slices; malformed input is an error, never a panic.

use thiserror::Error;

/// Type byte of a batch message.
pub const BATCH_TYPE: u8 = 0x01;
/// Bytes before the first edit of a batch.
pub const BATCH_HEADER_LEN: usize = 24;
/// Bytes before the pixels of a snapshot.
pub const SNAPSHOT_HEADER_LEN: usize = 24;

/// The header of a batch message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes per edit (at least 4; bytes past the first 4 are padding).
    pub stride: u8,
    /// The version before this batch.
    pub from: u64,
    /// The version after this batch.
    pub to: u64,
    /// Edits that follow.
    pub count: u32,
}

#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum BatchError {
    #[error("batch shorter than its 24-byte header ({0} bytes)")]
    Short(usize),
    #[error("type byte {0:#x} is not a batch (0x01)")]
    Type(u8),
    #[error("stride {0} is below 4")]
    Stride(u8),
    #[error("to ({to}) is below from ({from})")]
    Range { from: u64, to: u64 },
    #[error("count {count} exceeds the {span} versions the batch covers")]
    Count { count: u32, span: u64 },
    #[error("payload is {got} bytes, header says {want}")]
    Length { got: usize, want: u64 },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Decodes and validates a batch message's header against the payload's length.
pub fn decode_batch(payload: &[u8]) -> Result<BatchHeader, BatchError> {
    if payload.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Short(payload.len()));
    }
    if payload[0] != BATCH_TYPE {
        return Err(BatchError::Type(payload[0]));
    }
    let stride = payload[1];
    if stride < 4 {
        return Err(BatchError::Stride(stride));
    }
    let from = u64_at(payload, 4);
    let to = u64_at(payload, 12);
    let count = u32_at(payload, 20);
    if to < from {
        return Err(BatchError::Range { from, to });
    }
    if count as u64 > to - from {
        return Err(BatchError::Count { count, span: to - from });
    }
    let want = BATCH_HEADER_LEN as u64 + count as u64 * stride as u64;
    if payload.len() as u64 != want {
        return Err(BatchError::Length { got: payload.len(), want });
    }
    Ok(BatchHeader { stride, from, to, count })
}

/// Type byte of a resize message: the canvas grows at version `to` (PROTOCOL.md).
pub const RESIZE_TYPE: u8 = 0x02;
/// A resize message's whole payload.
pub const RESIZE_LEN: usize = 28;

/// A resize message as a batch of no edits covering its one version (the load tester only
/// follows versions; its clients do not keep the canvas).
pub fn decode_resize(payload: &[u8]) -> Option<BatchHeader> {
    if payload.len() != RESIZE_LEN || payload[0] != RESIZE_TYPE {
        return None;
    }
    let (from, to) = (u64_at(payload, 4), u64_at(payload, 12));
    (to == from.wrapping_add(1)).then_some(BatchHeader { stride: 4, from, to, count: 0 })
}

/// The packed edits of a batch whose header `h` was decoded from `payload`, in log order.
pub fn edits<'a>(payload: &'a [u8], h: &BatchHeader) -> impl Iterator<Item = u32> + 'a {
    let stride = h.stride as usize;
    payload[BATCH_HEADER_LEN..]
        .chunks_exact(stride)
        .take(h.count as usize)
        .map(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]))
}

/// Packs pixel `index` and `color` into a wire edit.
pub fn pack(index: u32, color: u8) -> u32 {
    (index << 5) | (color as u32 & 31)
}

/// Splits a wire edit into (pixel index, color).
pub fn unpack(edit: u32) -> (u32, u8) {
    (edit >> 5, (edit & 31) as u8)
}

/// Encodes a batch message covering `(from, to]` with `edits`, each padded to `stride` bytes.
pub fn encode_batch(from: u64, to: u64, edits: &[u32], stride: u8, out: &mut Vec<u8>) {
    let stride = stride.max(4);
    out.reserve(BATCH_HEADER_LEN + edits.len() * stride as usize);
    out.push(BATCH_TYPE);
    out.push(stride);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(&(edits.len() as u32).to_le_bytes());
    let pad = stride as usize - 4;
    for e in edits {
        out.extend_from_slice(&e.to_le_bytes());
        out.extend(std::iter::repeat_n(0u8, pad));
    }
}

/// A decoded `PCS1` snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub width: u32,
    pub height: u32,
    pub version: u64,
    /// One palette index per pixel, row-major (4-bit snapshots are expanded).
    pub pixels: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum SnapshotError {
    #[error("snapshot shorter than its header")]
    Short,
    #[error("bad magic (not PCS1)")]
    Magic,
    #[error("unsupported bits per pixel {0}")]
    Bpp(u8),
    #[error("canvas {0}x{1} is too large")]
    TooLarge(u32, u32),
    #[error("pixel data is {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
}

/// Decodes a `PCS1` snapshot (PROTOCOL.md, "Binary snapshot").
pub fn decode_snapshot(b: &[u8]) -> Result<Snapshot, SnapshotError> {
    if b.len() < SNAPSHOT_HEADER_LEN {
        return Err(SnapshotError::Short);
    }
    if &b[0..4] != b"PCS1" {
        return Err(SnapshotError::Magic);
    }
    let bpp = b[4];
    let width = u32_at(b, 8);
    let height = u32_at(b, 12);
    let version = u64_at(b, 16);
    let pixels_n = width as u64 * height as u64;
    if pixels_n > 1 << 27 {
        return Err(SnapshotError::TooLarge(width, height));
    }
    let n = pixels_n as usize;
    let data = &b[SNAPSHOT_HEADER_LEN..];
    let pixels = match bpp {
        8 => {
            if data.len() != n {
                return Err(SnapshotError::Length { got: data.len(), want: n });
            }
            data.to_vec()
        }
        4 => {
            let want = n.div_ceil(2);
            if data.len() != want {
                return Err(SnapshotError::Length { got: data.len(), want });
            }
            let mut px = Vec::with_capacity(n);
            for (i, byte) in data.iter().enumerate() {
                px.push(byte >> 4);
                if 2 * i + 1 < n {
                    px.push(byte & 0x0F);
                }
            }
            px
        }
        other => return Err(SnapshotError::Bpp(other)),
    };
    Ok(Snapshot { width, height, version, pixels })
}

/// Encodes an 8-bit `PCS1` snapshot (the baseline's `GET /api/v1/canvas`).
pub fn encode_snapshot(width: u32, height: u32, palette_len: u8, version: u64, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + pixels.len());
    out.extend_from_slice(b"PCS1");
    out.push(8);
    out.push(palette_len);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(pixels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_compact_and_padded() {
        for stride in [4u8, 16] {
            let edits = [pack(0, 3), pack(999_999, 31), pack(12345, 0)];
            let mut out = Vec::new();
            encode_batch(10, 14, &edits, stride, &mut out);
            assert_eq!(out.len(), 24 + 3 * stride as usize);
            let h = decode_batch(&out).unwrap();
            assert_eq!(h, BatchHeader { stride, from: 10, to: 14, count: 3 });
            let got: Vec<u32> = super::edits(&out, &h).collect();
            assert_eq!(got, edits);
            assert_eq!(unpack(got[1]), (999_999, 31));
        }
    }

    #[test]
    fn empty_catch_up_batch_is_valid() {
        let mut out = Vec::new();
        encode_batch(7, 7, &[], 4, &mut out);
        assert_eq!(decode_batch(&out).unwrap().count, 0);
    }

    #[test]
    fn batch_errors() {
        let mut ok = Vec::new();
        encode_batch(1, 3, &[1, 2], 4, &mut ok);
        assert_eq!(decode_batch(&ok[..10]), Err(BatchError::Short(10)));
        let mut b = ok.clone();
        b[0] = 2;
        assert_eq!(decode_batch(&b), Err(BatchError::Type(2)));
        let mut r = vec![RESIZE_TYPE, 0, 0, 0];
        r.extend_from_slice(&9u64.to_le_bytes());
        r.extend_from_slice(&10u64.to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        assert_eq!(decode_resize(&r), Some(BatchHeader { stride: 4, from: 9, to: 10, count: 0 }));
        assert_eq!(decode_resize(&r[..27]), None);
        let mut b = ok.clone();
        b[1] = 3;
        assert_eq!(decode_batch(&b), Err(BatchError::Stride(3)));
        let mut b = ok.clone();
        b[12] = 0; // to = 0 < from = 1
        assert_eq!(decode_batch(&b), Err(BatchError::Range { from: 1, to: 0 }));
        let mut b = ok.clone();
        b[20] = 3; // count 3 > span 2
        assert_eq!(decode_batch(&b), Err(BatchError::Count { count: 3, span: 2 }));
        let mut b = ok.clone();
        b.push(0);
        assert_eq!(decode_batch(&b), Err(BatchError::Length { got: 33, want: 32 }));
    }

    #[test]
    fn snapshot_8_and_4_bit() {
        let px = vec![1u8, 2, 3, 4, 5];
        let s = encode_snapshot(5, 1, 16, 42, &px);
        let d = decode_snapshot(&s).unwrap();
        assert_eq!((d.width, d.height, d.version), (5, 1, 42));
        assert_eq!(d.pixels, px);

        let mut s4 = s[..24].to_vec();
        s4[4] = 4;
        s4.extend_from_slice(&[0x12, 0x34, 0x50]);
        assert_eq!(decode_snapshot(&s4).unwrap().pixels, px);
        s4.push(0);
        assert!(matches!(decode_snapshot(&s4), Err(SnapshotError::Length { .. })));
        assert_eq!(decode_snapshot(b"PCS2"), Err(SnapshotError::Short));
    }
}
