//! A fuzz entry point: [`parse_server_bytes`] runs the client's whole receive path (upgrade
//! answer, frame split, batch decode, edit unpacking) over arbitrary bytes as a pure function.
//! It must never panic; a cargo-fuzz target or a property test can call it directly.

use crate::{batch, ws};

/// What [`parse_server_bytes`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub head_len: Option<usize>,
    pub frames: usize,
    pub batches: usize,
    pub edits: usize,
    pub error: Option<String>,
}

/// Parses `data` as a server's byte stream: if `expect_101` an upgrade answer first (for the
/// key of client 0 with seed 0), then WebSocket frames, decoding binary ones as batches.
pub fn parse_server_bytes(data: &[u8], expect_101: bool) -> Parsed {
    let mut p = Parsed::default();
    let mut pos = 0;
    if expect_101 {
        let accept = ws::accept_for(&ws::client_key(0, 0));
        match ws::parse_upgrade_response(data, &accept) {
            Ok(Some(n)) => {
                p.head_len = Some(n);
                pos = n;
            }
            Ok(None) => return p,
            Err(e) => {
                p.error = Some(e.to_string());
                return p;
            }
        }
    }
    while pos < data.len() {
        match ws::split_frame(&data[pos..], 1 << 26) {
            Ok(Some((h, payload, total))) => {
                p.frames += 1;
                if h.opcode == ws::OP_BINARY {
                    if let Ok(b) = batch::decode_batch(payload) {
                        p.batches += 1;
                        p.edits += batch::edits(payload, &b).map(batch::unpack).count();
                    }
                }
                pos += total;
            }
            Ok(None) => break,
            Err(e) => {
                p.error = Some(e.to_string());
                break;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 1u64;
        for round in 0..3000 {
            let len = (round * 7) % 300;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x = ws::splitmix64(x);
                v.push(x as u8);
            }
            // Bias some inputs towards valid frame starts.
            if round % 3 == 0 && !v.is_empty() {
                v[0] = 0x82;
            }
            let _ = parse_server_bytes(&v, round % 5 == 0);
        }
    }

    #[test]
    fn parses_a_stream_of_batches() {
        let mut stream = Vec::new();
        for k in 0..3u64 {
            let mut b = Vec::new();
            batch::encode_batch(k * 2, k * 2 + 2, &[batch::pack(1, 1), batch::pack(2, 2)], 16, &mut b);
            stream.push(0x82);
            stream.push(b.len() as u8);
            stream.extend_from_slice(&b);
        }
        let p = parse_server_bytes(&stream, false);
        assert_eq!((p.frames, p.batches, p.edits, p.error), (3, 3, 6, None));
    }
}
