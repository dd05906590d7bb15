//! The WebSocket wire format as a lean client needs it (RFC 6455): the upgrade request and the
//! check of the server's `101` answer, the parser of (unmasked) server frames and the encoder of
//! (masked) client frames.
//!
//! Everything here is a pure function over byte slices: no I/O, no allocation except into a
//! caller's `Vec`, so it can be unit-tested and fuzzed directly (see [`crate::fuzz`]).

use thiserror::Error;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    /// Set when the frame carries a masking key (a server must not send one).
    pub masked: bool,
    pub mask: [u8; 4],
    /// Bytes of header (2 to 14).
    pub header_len: usize,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Header plus payload, in bytes (saturating: lengths past `usize` are rejected earlier).
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len as usize
    }
}

#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum FrameError {
    #[error("reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    BadOpcode(u8),
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControl,
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

/// Parses one frame header from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. `max_payload` bounds the payload length so a corrupt
/// length can never make the caller allocate without bound.
pub fn parse_header(buf: &[u8], max_payload: u64) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(FrameError::BadOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    let len7 = (b1 & 0x7F) as u64;
    let (payload_len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n, 2),
    };
    if opcode >= 0x8 && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    if payload_len > max_payload {
        return Err(FrameError::TooLarge(payload_len));
    }
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        mask.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    Ok(Some(FrameHeader { fin, opcode, masked, mask, header_len: pos, payload_len }))
}

/// A complete frame at the front of a buffer: header, payload, bytes taken.
pub type Frame<'a> = (FrameHeader, &'a [u8], usize);

/// Splits one complete frame off the front of `buf`: its header, its payload (still masked if
/// the frame was masked) and the total bytes it takes. `Ok(None)`: the frame is incomplete.
pub fn split_frame(buf: &[u8], max_payload: u64) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(h) = parse_header(buf, max_payload)? else { return Ok(None) };
    let total = h.frame_len();
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((h, &buf[h.header_len..total], total)))
}

/// XORs `data` with the 4-byte masking key (RFC 6455 section 5.3), starting at key offset 0.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one final, masked client frame with `opcode` and `payload` to `out`.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0F));
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// The payload of a close frame with `code` (no reason text).
pub fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

/// The status code of a close frame's payload, 1005 ("no status") when it has none.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Standard base64 (with padding) of `data`.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { ALPHABET[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { ALPHABET[n as usize & 63] as char } else { '=' });
    }
    out
}

/// The `Sec-WebSocket-Key` of client `index` in a run seeded with `seed`: 16 pseudo-random
/// bytes, base64. Deriving it (rather than storing it) keeps per-client state small: the
/// expected accept value is recomputed when the answer arrives.
pub fn client_key(seed: u64, index: u64) -> String {
    let a = splitmix64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let b = splitmix64(a ^ 0xD1B5_4A32_D192_ED03);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_le_bytes());
    raw[8..].copy_from_slice(&b.to_le_bytes());
    base64_encode(&raw)
}

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    // SHA-1 of key + GUID, base64: tungstenite's implementation of RFC 6455 section 4.2.2.
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// SplitMix64: a fast, well-mixed 64-bit generator step (used for keys, masks and coordinates).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends the HTTP/1.1 upgrade request for `path_and_query` (for example `/ws?since=12`).
pub fn write_upgrade_request(out: &mut Vec<u8>, host: &str, path_and_query: &str, key: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
}

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum HandshakeError {
    #[error("server answered HTTP {0} instead of 101")]
    Status(u16),
    #[error("malformed HTTP answer to the upgrade")]
    Malformed,
    #[error("101 answer without the right Upgrade/Connection headers")]
    MissingUpgrade,
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    #[error("HTTP answer head larger than {0} bytes")]
    TooLarge(usize),
}

/// Largest answer head accepted for the upgrade.
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// Checks the server's answer to the upgrade. `Ok(Some(n))`: a valid `101` whose head takes the
/// first `n` bytes (frames may follow); `Ok(None)`: the head is incomplete.
pub fn parse_upgrade_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(HandshakeError::TooLarge(MAX_RESPONSE_HEAD));
            }
            return Ok(None);
        }
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept_ok = false;
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = v.eq_ignore_ascii_case("websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = v == expected_accept;
        }
    }
    if !upgrade || !connection {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !accept_ok {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(n))
}

/// The delay hint of a drain's `{"type":"reconnect","after_ms":A,"jitter_ms":J}` text message:
/// (A, J) in milliseconds (a missing field is 0); None for any other message.
pub fn parse_reconnect_hint(payload: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v.get("type")?.as_str()? != "reconnect" {
        return None;
    }
    let ms = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Some((ms("after_ms"), ms("jitter_ms")))
}

/// The retry hint at the end of a close frame's reason (`... retry_after_ms=N`, the 1013 of
/// PROTOCOL.md), in milliseconds; None without one.
pub fn close_retry_after_ms(payload: &[u8]) -> Option<u64> {
    let reason = std::str::from_utf8(payload.get(2..)?).ok()?.trim_end();
    let (_, n) = reason.rsplit_once("retry_after_ms=")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

/// A refused upgrade worth retrying: HTTP 429 or 503 with a retry hint. Returns the status and
/// the delay in milliseconds: the JSON body's `"retry_after_ms"` when the whole body is in `buf`
/// (it is exact), else the `Retry-After` header (delta seconds; an HTTP date is ignored). None
/// for any other answer, or a 429/503 without a hint.
pub fn refusal_retry_after_ms(buf: &[u8]) -> Option<(u16, u64)> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let code = resp.code?;
    if code != 429 && code != 503 {
        return None;
    }
    let (mut header_ms, mut len) = (None, None);
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("retry-after") {
            header_ms = v.parse::<u64>().ok().map(|s| s.saturating_mul(1000));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            len = v.parse::<usize>().ok();
        }
    }
    let body_ms = len
        .and_then(|l| buf.get(head..head.checked_add(l)?))
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
        .and_then(|v| v.get("retry_after_ms").or_else(|| v.get("error")?.get("retry_after_ms"))?.as_u64());
    Some((code, body_ms.or(header_ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_hints() {
        assert_eq!(parse_reconnect_hint(br#"{"type":"reconnect","after_ms":250,"jitter_ms":5000}"#), Some((250, 5000)));
        assert_eq!(parse_reconnect_hint(br#"{"type":"reconnect"}"#), Some((0, 0)));
        assert_eq!(parse_reconnect_hint(br#"{"type":"reload","oldest_since":3}"#), None);
        assert_eq!(parse_reconnect_hint(b"not json"), None);
        assert_eq!(parse_reconnect_hint(br#"{"type":"reconnect","after_ms":-1}"#), Some((0, 0)));
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 0xFFFF {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn close_retry_hints() {
        let close = |code: u16, reason: &str| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason.as_bytes());
            p
        };
        assert_eq!(close_retry_after_ms(&close(1013, "busy catching others up; retry_after_ms=1000")), Some(1000));
        assert_eq!(close_retry_after_ms(&close(1013, "retry_after_ms=250 ")), Some(250));
        assert_eq!(close_retry_after_ms(&close(1013, "busy")), None);
        assert_eq!(close_retry_after_ms(&close(1013, "retry_after_ms=")), None);
        assert_eq!(close_retry_after_ms(&close(1013, "retry_after_ms=12x")), None);
        assert_eq!(close_retry_after_ms(&close(1013, "retry_after_ms=-5")), None);
        assert_eq!(close_retry_after_ms(&close(1013, "retry_after_ms=99999999999999999999999")), None);
        assert_eq!(close_retry_after_ms(&[0x03, 0xf5]), None);
        assert_eq!(close_retry_after_ms(&[]), None);
        assert_eq!(close_retry_after_ms(&[0x03, 0xf5, 0xff, 0xfe]), None); // not UTF-8
    }

    #[test]
    fn refusal_retry_hints() {
        // The catch-up rate limit (PROTOCOL.md): the body's exact milliseconds win over the header.
        let body = r#"{"error":{"code":"catch_up_rate_limited","message":"m","retry_after_ms":2345}}"#;
        let r429 = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 3\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(refusal_retry_after_ms(r429.as_bytes()), Some((429, 2345)));
        // Only the head so far: the header's seconds.
        let head = r429.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(refusal_retry_after_ms(&r429.as_bytes()[..head + 5]), Some((429, 3000)));
        // A draining node: 503 draining, Retry-After: 1, no retry_after_ms in the body.
        let body = r#"{"error":{"code":"draining","message":"this node is draining"}}"#;
        let r503 = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(refusal_retry_after_ms(r503.as_bytes()), Some((503, 1000)));
        // A top-level retry_after_ms (the placement answers' shape) counts too.
        let r = "HTTP/1.1 429 x\r\nContent-Length: 22\r\n\r\n{\"retry_after_ms\":700}";
        assert_eq!(refusal_retry_after_ms(r.as_bytes()), Some((429, 700)));
        // No hint, another status, an HTTP date, an incomplete head: nothing to follow.
        assert_eq!(refusal_retry_after_ms(b"HTTP/1.1 503 x\r\nContent-Length: 0\r\n\r\n"), None);
        assert_eq!(refusal_retry_after_ms(b"HTTP/1.1 400 x\r\nRetry-After: 1\r\n\r\n"), None);
        assert_eq!(
            refusal_retry_after_ms(b"HTTP/1.1 503 x\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"),
            None
        );
        assert_eq!(refusal_retry_after_ms(b"HTTP/1.1 503 x\r\nRetry-After: 1\r\n"), None);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn client_keys_are_16_bytes_and_distinct() {
        let a = client_key(7, 1);
        let b = client_key(7, 2);
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="));
        assert_ne!(a, b);
        assert_eq!(a, client_key(7, 1));
    }

    #[test]
    fn parses_all_three_length_forms() {
        for n in [0usize, 5, 125, 126, 1000, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = server_frame(OP_BINARY, &payload);
            let (h, p, total) = split_frame(&f, 1 << 20).unwrap().unwrap();
            assert!(h.fin && !h.masked && h.opcode == OP_BINARY);
            assert_eq!(p, &payload[..]);
            assert_eq!(total, f.len());
            // Every strict prefix is incomplete, never an error.
            for cut in [0, 1, h.header_len - 1, h.header_len, f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(split_frame(&f[..cut], 1 << 20).unwrap(), None, "n={n} cut={cut}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(parse_header(&[0xC2, 0], 100), Err(FrameError::ReservedBits));
        assert_eq!(parse_header(&[0x83, 0], 100), Err(FrameError::BadOpcode(3)));
        assert_eq!(parse_header(&[0x09, 0], 100), Err(FrameError::BadControl)); // fragmented ping
        assert_eq!(parse_header(&[0x89, 126, 0, 200], 1000), Err(FrameError::BadControl));
        assert_eq!(parse_header(&[0x82, 126, 1, 0], 100), Err(FrameError::TooLarge(256)));
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        let mask = [1, 2, 3, 4];
        for n in [0usize, 3, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut out = Vec::new();
            encode_client_frame(OP_TEXT, &payload, mask, &mut out);
            let (h, p, total) = split_frame(&out, 1 << 20).unwrap().unwrap();
            assert!(h.masked && h.fin);
            assert_eq!(h.mask, mask);
            assert_eq!(total, out.len());
            let mut p = p.to_vec();
            apply_mask(&mut p, h.mask);
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn close_frame_code() {
        let mut out = Vec::new();
        encode_client_frame(OP_CLOSE, &close_payload(1000), [9, 9, 9, 9], &mut out);
        let (h, p, _) = split_frame(&out, 125).unwrap().unwrap();
        let mut p = p.to_vec();
        apply_mask(&mut p, h.mask);
        assert_eq!(close_code(&p), 1000);
        assert_eq!(close_code(&[]), 1005);
    }

    #[test]
    fn upgrade_response_checks() {
        let key = client_key(1, 1);
        let accept = accept_for(&key);
        let mut req = Vec::new();
        write_upgrade_request(&mut req, "127.0.0.1:8080", "/ws?since=5", &key);
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /ws?since=5 HTTP/1.1\r\n"));
        assert!(req.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));

        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n\u{81}hi"
        );
        let head = ok.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(parse_upgrade_response(ok.as_bytes(), &accept), Ok(Some(head)));
        assert_eq!(parse_upgrade_response(&ok.as_bytes()[..20], &accept), Ok(None));
        assert_eq!(parse_upgrade_response(ok.as_bytes(), "wrong"), Err(HandshakeError::BadAccept));
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_upgrade_response(busy, &accept), Err(HandshakeError::Status(503)));
        assert_eq!(parse_upgrade_response(b"garbage\r\n\r\n", &accept), Err(HandshakeError::Malformed));
    }
}
