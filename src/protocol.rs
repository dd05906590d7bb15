//! Wire formats of PROTOCOL.md: the packed edit, the batch frame (encoded once, sent to every
//! socket), server text and close frames, and the binary snapshot header.
//!
//! Invariants: a batch frame is a complete, unmasked WebSocket binary frame whose header says
//! exactly which versions `(from, to]` it covers and how many edits follow; `to >= from` and
//! `count <= to - from`.

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Pixel indexes carry 27 bits in the packed edit.
pub const MAX_PIXELS: u64 = 1 << 27;
pub const BATCH_TYPE: u8 = 0x01;
pub const BATCH_HEADER_LEN: usize = 24;
/// The stream message that grows the canvas at a version (PROTOCOL.md, "Resize message").
pub const RESIZE_TYPE: u8 = 0x02;
pub const RESIZE_LEN: usize = 28;
pub const SNAPSHOT_HEADER_LEN: usize = 24;
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"PCS1";
/// Largest client message (after reassembly) the server accepts.
pub const MAX_CLIENT_MESSAGE: usize = 4096;

/// WebSocket close codes placecast uses (PROTOCOL.md, "Close codes").
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const BAD_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A drain: reconnect (elsewhere) after the `reconnect` message's hint, with `since`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Too busy to serve this now; reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const TOO_SLOW: u16 = 4000;
    pub const RELOAD: u16 = 4001;
    /// The client did not answer the server's ping.
    pub const PING_TIMEOUT: u16 = 4002;
}

/// The server's ping: an empty ping frame, the same bytes for every connection.
pub static PING_FRAME: &[u8] = &[0x89, 0x00];

/// Packs a pixel index and color into the 4-byte wire edit.
#[inline]
pub fn pack_edit(index: u32, color: u8) -> u32 {
    debug_assert!((index as u64) < MAX_PIXELS && color < 32);
    (index << 5) | color as u32
}

#[inline]
pub fn unpack_edit(edit: u32) -> (u32, u8) {
    (edit >> 5, (edit & 31) as u8)
}

fn frame_header(opcode: OpCode, len: usize, out: &mut BytesMut) {
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    let mut w = out.writer();
    // Writing into memory cannot fail.
    header.format(len as u64, &mut w).expect("header into memory");
}

/// Length of an unmasked server frame header for a payload of `len` bytes.
pub fn frame_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Encodes the batch covering `(from, to]` with `edits` (packed, log order) as one complete
/// WebSocket binary frame. `stride` >= 4 pads each edit with zeros (for benchmarks).
pub fn encode_batch(from: u64, to: u64, edits: &[u32], stride: u8) -> Bytes {
    assert!(to >= from, "batch versions must not go backwards");
    assert!(edits.len() as u64 <= to - from, "a batch covers at most one edit per version");
    assert!(stride >= 4);
    let payload = BATCH_HEADER_LEN + edits.len() * stride as usize;
    let mut out = BytesMut::with_capacity(frame_header_len(payload) + payload);
    frame_header(OpCode::Data(Data::Binary), payload, &mut out);
    out.put_u8(BATCH_TYPE);
    out.put_u8(stride);
    out.put_u16_le(0);
    out.put_u64_le(from);
    out.put_u64_le(to);
    out.put_u32_le(edits.len() as u32);
    let pad = stride as usize - 4;
    for &e in edits {
        out.put_u32_le(e);
        if pad > 0 {
            out.put_bytes(0, pad);
        }
    }
    out.freeze()
}

/// Encodes the resize message covering `(from, to]` (one version, the resize entry's): from `to`
/// on, the canvas is `width`x`height` and pixel indexes are `y * width + x`. One complete
/// WebSocket binary frame, like a batch, so it travels in the same ring and catch-up.
pub fn encode_resize(from: u64, to: u64, width: u32, height: u32) -> Bytes {
    assert_eq!(to, from + 1, "a resize covers its own version");
    let mut out = BytesMut::with_capacity(2 + RESIZE_LEN);
    frame_header(OpCode::Data(Data::Binary), RESIZE_LEN, &mut out);
    out.put_u8(RESIZE_TYPE);
    out.put_bytes(0, 3);
    out.put_u64_le(from);
    out.put_u64_le(to);
    out.put_u32_le(width);
    out.put_u32_le(height);
    out.freeze()
}

/// A decoded resize message payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeView {
    pub from: u64,
    pub to: u64,
    pub width: u32,
    pub height: u32,
}

impl ResizeView {
    pub fn parse(p: &[u8]) -> Option<ResizeView> {
        if p.len() != RESIZE_LEN || p[0] != RESIZE_TYPE {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let (from, to) = (u64_at(4), u64_at(12));
        (from.checked_add(1) == Some(to)).then(|| ResizeView { from, to, width: u32_at(20), height: u32_at(24) })
    }
}

/// One message of the stream (or of an `/api/v1/edits` body): a batch or a resize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage<'a> {
    Batch(BatchView<'a>),
    Resize(ResizeView),
}

impl<'a> StreamMessage<'a> {
    /// The message at the start of `p` and its length (an `/api/v1/edits` body is several, one
    /// after another).
    pub fn parse_prefix(p: &'a [u8]) -> Result<(StreamMessage<'a>, usize), BatchError> {
        match p.first() {
            Some(&RESIZE_TYPE) => {
                let r = p.get(..RESIZE_LEN).and_then(ResizeView::parse).ok_or(BatchError::Short)?;
                Ok((StreamMessage::Resize(r), RESIZE_LEN))
            }
            _ => {
                if p.len() < BATCH_HEADER_LEN {
                    return Err(BatchError::Short);
                }
                let count = u32::from_le_bytes(p[20..24].try_into().expect("4 bytes")) as usize;
                let len = BATCH_HEADER_LEN.saturating_add(count.saturating_mul(p[1] as usize));
                let b = BatchView::parse(p.get(..len).ok_or(BatchError::Length)?)?;
                Ok((StreamMessage::Batch(b), len))
            }
        }
    }

    /// The versions `(from, to]` it covers.
    pub fn span(&self) -> (u64, u64) {
        match self {
            StreamMessage::Batch(b) => (b.from, b.to),
            StreamMessage::Resize(r) => (r.from, r.to),
        }
    }
}

/// The payload of a server frame (`encode_batch`'s): the frame without its WebSocket header, as
/// `GET /api/v1/edits` serves it.
pub fn batch_payload(frame: &Bytes) -> Bytes {
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.slice(header..)
}

/// A decoded batch payload (the frame's payload, without the WebSocket header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView<'a> {
    pub from: u64,
    pub to: u64,
    pub stride: u8,
    pub count: u32,
    pub edits: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch shorter than its header")]
    Short,
    #[error("not a batch (type {0})")]
    Type(u8),
    #[error("stride {0} < 4")]
    Stride(u8),
    #[error("to < from")]
    Backwards,
    #[error("edit bytes do not match count * stride")]
    Length,
}

impl<'a> BatchView<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, BatchError> {
        if p.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Short);
        }
        if p[0] != BATCH_TYPE {
            return Err(BatchError::Type(p[0]));
        }
        let stride = p[1];
        if stride < 4 {
            return Err(BatchError::Stride(stride));
        }
        let from = u64::from_le_bytes(p[4..12].try_into().unwrap());
        let to = u64::from_le_bytes(p[12..20].try_into().unwrap());
        let count = u32::from_le_bytes(p[20..24].try_into().unwrap());
        if to < from {
            return Err(BatchError::Backwards);
        }
        let edits = &p[BATCH_HEADER_LEN..];
        if edits.len() as u64 != count as u64 * stride as u64 {
            return Err(BatchError::Length);
        }
        Ok(BatchView { from, to, stride, count, edits })
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u8)> + '_ {
        self.edits
            .chunks_exact(self.stride as usize)
            .map(|c| unpack_edit(u32::from_le_bytes(c[..4].try_into().unwrap())))
    }
}

/// A complete text frame carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(frame_header_len(text.len()) + text.len());
    frame_header(OpCode::Data(Data::Text), text.len(), &mut out);
    out.put_slice(text.as_bytes());
    out.freeze()
}

/// A complete close frame. The reason is cut to fit the 125-byte control payload.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut r = reason;
    while r.len() > 123 {
        let mut cut = 123;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    let mut out = BytesMut::with_capacity(4 + r.len());
    frame_header(OpCode::Control(Control::Close), 2 + r.len(), &mut out);
    out.put_u16(code);
    out.put_slice(r.as_bytes());
    out.freeze()
}

/// A complete pong frame echoing `payload` (at most 125 bytes, checked by the parser).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    frame_header(OpCode::Control(Control::Pong), payload.len(), &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// The 24-byte header of the binary snapshot.
pub fn snapshot_header(bpp: u8, palette_len: u8, width: u32, height: u32, version: u64) -> [u8; 24] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[0..4].copy_from_slice(SNAPSHOT_MAGIC);
    h[4] = bpp;
    h[5] = palette_len;
    h[8..12].copy_from_slice(&width.to_le_bytes());
    h[12..16].copy_from_slice(&height.to_le_bytes());
    h[16..24].copy_from_slice(&version.to_le_bytes());
    h
}

/// A parsed snapshot (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    pub width: u32,
    pub height: u32,
    pub version: u64,
    /// One palette index per pixel, unpacked.
    pub pixels: Vec<u8>,
}

pub fn parse_snapshot(b: &[u8]) -> Option<SnapshotView> {
    if b.len() < SNAPSHOT_HEADER_LEN || &b[0..4] != SNAPSHOT_MAGIC {
        return None;
    }
    let bpp = b[4];
    let width = u32::from_le_bytes(b[8..12].try_into().ok()?);
    let height = u32::from_le_bytes(b[12..16].try_into().ok()?);
    let version = u64::from_le_bytes(b[16..24].try_into().ok()?);
    let n = width as usize * height as usize;
    let data = &b[SNAPSHOT_HEADER_LEN..];
    let pixels = match bpp {
        4 if data.len() == n.div_ceil(2) => {
            (0..n).map(|i| if i % 2 == 0 { data[i / 2] >> 4 } else { data[i / 2] & 15 }).collect()
        }
        8 if data.len() == n => data.to_vec(),
        _ => return None,
    };
    Some(SnapshotView { width, height, version, pixels })
}

/// The payload of an unmasked server frame (for clients and tests).
pub fn server_frame_payload(frame: &[u8]) -> &[u8] {
    let hl = match frame[1] & 127 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[hl..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn payload(frame: &Bytes) -> (FrameHeader, Vec<u8>) {
        let mut c = Cursor::new(&frame[..]);
        let (h, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
        let start = c.position() as usize;
        assert_eq!(start + len as usize, frame.len(), "frame is exactly header + payload");
        (h, frame[start..].to_vec())
    }

    #[test]
    fn pack_roundtrip() {
        for (i, c) in [(0u32, 0u8), (999_999, 15), ((1 << 27) - 1, 31)] {
            assert_eq!(unpack_edit(pack_edit(i, c)), (i, c));
        }
    }

    #[test]
    fn batch_roundtrip_compact_and_padded() {
        let edits = [pack_edit(5, 3), pack_edit(70_000, 12)];
        for stride in [4u8, 16] {
            let f = encode_batch(10, 13, &edits, stride);
            let (h, p) = payload(&f);
            assert_eq!(h.opcode, OpCode::Data(Data::Binary));
            assert!(h.mask.is_none() && h.is_final);
            let b = BatchView::parse(&p).unwrap();
            assert_eq!((b.from, b.to, b.count, b.stride), (10, 13, 2, stride));
            assert_eq!(b.iter().collect::<Vec<_>>(), vec![(5, 3), (70_000, 12)]);
        }
    }

    #[test]
    fn large_batch_uses_extended_length() {
        let edits = vec![pack_edit(1, 1); 20_000];
        let f = encode_batch(0, 20_000, &edits, 4);
        let (_, p) = payload(&f);
        assert_eq!(BatchView::parse(&p).unwrap().count, 20_000);
    }

    #[test]
    #[should_panic]
    fn batch_cannot_hold_more_edits_than_versions() {
        encode_batch(0, 1, &[1, 2], 4);
    }

    #[test]
    fn batch_parse_rejects_garbage() {
        assert_eq!(BatchView::parse(&[1, 4]), Err(BatchError::Short));
        let mut p = vec![0u8; 24];
        p[0] = 2;
        assert_eq!(BatchView::parse(&p), Err(BatchError::Type(2)));
        p[0] = 1;
        p[1] = 4;
        p[20] = 1;
        assert_eq!(BatchView::parse(&p), Err(BatchError::Length));
    }

    #[test]
    fn resize_roundtrip_and_a_body_of_several_messages() {
        let f = encode_resize(9, 10, 1500, 1000);
        let (h, p) = payload(&f);
        assert_eq!(h.opcode, OpCode::Data(Data::Binary));
        assert_eq!(ResizeView::parse(&p), Some(ResizeView { from: 9, to: 10, width: 1500, height: 1000 }));
        let mut body = batch_payload(&encode_batch(5, 9, &[pack_edit(3, 1)], 4)).to_vec();
        body.extend_from_slice(&p);
        body.extend_from_slice(&batch_payload(&encode_batch(10, 12, &[pack_edit(1400, 2)], 4)));
        let (mut at, mut spans) = (0, Vec::new());
        while at < body.len() {
            let (m, len) = StreamMessage::parse_prefix(&body[at..]).unwrap();
            spans.push(m.span());
            at += len;
        }
        assert_eq!(spans, vec![(5, 9), (9, 10), (10, 12)]);
        assert!(StreamMessage::parse_prefix(&p[..20]).is_err());
        let mut bad = p.clone();
        bad[12] = 99;
        assert_eq!(ResizeView::parse(&bad), None, "a resize covers exactly one version");
    }

    /// The fuzz target's property (`fuzz/fuzz_targets/wire_formats.rs`) over random bodies made
    /// of message-like pieces: reading never panics and never runs past the bytes.
    #[test]
    fn any_body_reads_without_panic_or_overrun() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut body = Vec::new();
            for _ in 0..(next() % 4) {
                let kind = next() % 3;
                let mut piece = match kind {
                    0 => batch_payload(&encode_batch(5, 9, &[pack_edit(1, 2)], 4)).to_vec(),
                    1 => batch_payload(&encode_resize(9, 10, 3, 4)).to_vec(),
                    _ => (0..next() % 40).map(|_| next() as u8).collect(),
                };
                if next() % 4 == 0 && !piece.is_empty() {
                    let i = (next() as usize) % piece.len();
                    piece[i] = next() as u8;
                }
                body.extend_from_slice(&piece);
            }
            let mut at = 0;
            while at < body.len() {
                match StreamMessage::parse_prefix(&body[at..]) {
                    Ok((m, len)) => {
                        assert!(len > 0 && at + len <= body.len());
                        assert!(m.span().1 >= m.span().0);
                        at += len;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn close_frame_is_valid_and_bounded() {
        let f = close_frame(4000, &"x".repeat(300));
        let (h, p) = payload(&f);
        assert_eq!(h.opcode, OpCode::Control(Control::Close));
        assert!(p.len() <= 125);
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 4000);
    }

    #[test]
    fn snapshot_roundtrip_4bit_odd() {
        let mut b = snapshot_header(4, 16, 3, 1, 7).to_vec();
        b.extend_from_slice(&[0x12, 0x30]);
        let s = parse_snapshot(&b).unwrap();
        assert_eq!((s.width, s.height, s.version), (3, 1, 7));
        assert_eq!(s.pixels, vec![1, 2, 3]);
    }
}
