//! WebSocket pieces the shards need without a per-connection buffer: the handshake answer, and a
//! parser of client frames over a borrowed byte slice (tungstenite's frame header codec; the
//! payload is unmasked in place).
//!
//! Invariants: a frame is returned only when complete; a client data frame longer than
//! `MAX_CLIENT_MESSAGE` is refused from its header alone, before its payload is buffered, so a
//! connection never holds more than one small frame of carry-over.

use crate::protocol::{close, MAX_CLIENT_MESSAGE};
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Why a connection must be closed, as a close code and a reason for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub const fn reason(code: u16, reason: &'static str) -> CloseReason {
    CloseReason { code, reason }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close,
}

/// A complete client frame: its kind, whether it ends a message, where its (unmasked) payload
/// lies in the buffer, and how many bytes it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: Kind,
    pub fin: bool,
    pub payload: std::ops::Range<usize>,
    pub len: usize,
}

/// Parses the next client frame at the start of `buf`. `Ok(None)`: incomplete, wait for more.
pub fn next_frame(buf: &mut [u8]) -> Result<Option<RawFrame>, CloseReason> {
    let mut cur = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(_) => return Err(reason(close::PROTOCOL_ERROR, "malformed frame header")),
    };
    let start = cur.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(reason(close::PROTOCOL_ERROR, "reserved bits set (no extensions were negotiated)"));
    }
    let Some(mask) = header.mask else {
        return Err(reason(close::PROTOCOL_ERROR, "client frames must be masked"));
    };
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Data(Data::Continue) => Kind::Continuation,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Control(Control::Close) => Kind::Close,
        _ => return Err(reason(close::PROTOCOL_ERROR, "reserved opcode")),
    };
    let control = matches!(kind, Kind::Ping | Kind::Pong | Kind::Close);
    if control && (!header.is_final || len > 125) {
        return Err(reason(close::PROTOCOL_ERROR, "control frames must be final and at most 125 bytes"));
    }
    if len > MAX_CLIENT_MESSAGE as u64 {
        return Err(reason(close::TOO_BIG, "message over 4096 bytes"));
    }
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    // A four-byte XOR is all masking is; tungstenite keeps its helper private.
    for (i, b) in buf[start..end].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(RawFrame { kind, fin: header.is_final, payload: start..end, len: end }))
}

/// The close code a client's close frame carried (1005 "no status" when it had none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Whether a client's close frame payload is valid (RFC 6455 7.4): empty, or a code a peer
/// may send (1000-1003, 1007-1014, 3000-4999) and a UTF-8 reason. One byte is never valid.
pub fn valid_close(payload: &[u8]) -> bool {
    if payload.is_empty() {
        return true;
    }
    if payload.len() < 2 {
        return false;
    }
    let code = close_code(payload);
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    allowed && std::str::from_utf8(&payload[2..]).is_ok()
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn parses_and_unmasks() {
        let mut f = client_frame(1, true, b"{\"type\":\"place\"}");
        f.extend_from_slice(&client_frame(9, true, b"hi"));
        let a = next_frame(&mut f).unwrap().unwrap();
        assert_eq!(a.kind, Kind::Text);
        assert_eq!(&f[a.payload.clone()], b"{\"type\":\"place\"}");
        let rest = &mut f[a.len..];
        let b = next_frame(rest).unwrap().unwrap();
        assert_eq!((b.kind, &rest[b.payload.clone()]), (Kind::Ping, &b"hi"[..]));
    }

    #[test]
    fn incomplete_waits() {
        let f = client_frame(1, true, b"hello world");
        for cut in 0..f.len() {
            let mut part = f[..cut].to_vec();
            assert_eq!(next_frame(&mut part), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_bad_frames() {
        let mut unmasked = vec![0x81, 2, b'h', b'i'];
        assert_eq!(next_frame(&mut unmasked).unwrap_err().code, close::PROTOCOL_ERROR);
        let mut rsv = client_frame(1, true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(next_frame(&mut rsv).unwrap_err().code, close::PROTOCOL_ERROR);
        let mut reserved_op = client_frame(3, true, b"x");
        assert_eq!(next_frame(&mut reserved_op).unwrap_err().code, close::PROTOCOL_ERROR);
        let mut frag_ping = client_frame(9, false, b"x");
        assert_eq!(next_frame(&mut frag_ping).unwrap_err().code, close::PROTOCOL_ERROR);
        // Too big is refused from the header alone: only 14 bytes present.
        let big = client_frame(1, true, &vec![b'a'; 70_000]);
        let mut head = big[..14].to_vec();
        assert_eq!(next_frame(&mut head).unwrap_err().code, close::TOO_BIG);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(&[0x03, 0xE8, b'x']), 1000);
        assert_eq!(close_code(&[]), 1005);
    }
}

#[cfg(test)]
mod fuzz_smoke {
    //! What fuzz/fuzz_targets/ws_frame.rs checks, over pseudo-random and mutated inputs, so the
    //! stable toolchain runs it too.
    use super::*;

    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut seed = 0x9E3779B97F4A7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = tests::client_frame(1, true, br#"{"type":"place","x":1,"y":2,"color":3}"#);
        for _ in 0..20_000 {
            let mut buf = if rnd() % 2 == 0 {
                let mut v = valid.clone();
                for _ in 0..(rnd() % 4) {
                    let i = (rnd() as usize) % v.len();
                    v[i] = rnd() as u8;
                }
                v.truncate(1 + (rnd() as usize) % v.len());
                v
            } else {
                (0..(rnd() % 64)).map(|_| rnd() as u8).collect()
            };
            let len = buf.len();
            let mut pos = 0;
            while pos < len {
                match next_frame(&mut buf[pos..]) {
                    Ok(Some(f)) => {
                        assert!(f.len > 0 && pos + f.len <= len && f.payload.end <= f.len);
                        pos += f.len;
                    }
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert!(valid_close(b""));
        assert!(valid_close(&[0x03, 0xe8]));
        assert!(valid_close(&[0x0f, 0xa0, b'o', b'k']));
        for bad in [
            &[0x03][..],
            &[0x03, 0xe7],
            &[0x03, 0xed],
            &[0x03, 0xee],
            &[0x0b, 0xb7],
            &[0x13, 0x88],
            &[0x03, 0xe8, 0xff],
        ] {
            assert!(!valid_close(bad), "{bad:?}");
        }
    }
}
