//! Placements over one blocking WebSocket, as the web client sends them: `{"type":"place",...}`
//! messages on `/ws`, each answered by a `placed` or `error` message echoing its `id`. The
//! placement driver uses it for `--via ws` (one per driver thread).
//!
//! The connection authenticates as the first placement's user (`token=` in the upgrade) and
//! sends `{"type":"auth"}` only when a later placement is another user's, so with no more users
//! than connections every connection is one user, like a browser tab. It receives the server's
//! batch frames like any client and skips them; it answers pings.
//!
//! Bounds: one placement in flight per connection; frames over `MAX_FRAME` bytes end the
//! connection (an error, and the driver reconnects); every read and write has the connect
//! timeout.

use crate::driver::{json_u64_field, Placement};
use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest server frame accepted (a batch of 100 ms at the highest rates is far below this).
const MAX_FRAME: u64 = 16 << 20;

pub struct WsPlacer {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    token: String,
    next_id: u64,
    mask_seed: u64,
}

fn broken(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl WsPlacer {
    /// Opens `/ws?token=...` on `target` as `token`'s user.
    pub fn connect(target: SocketAddr, token: &str, timeout: Duration, seed: u64) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut p = WsPlacer {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(256),
            token: token.to_string(),
            next_id: 0,
            mask_seed: seed,
        };
        let key = ws::client_key(seed, 0);
        ws::write_upgrade_request(&mut p.out, &target.to_string(), &format!("/ws?token={token}"), &key);
        p.stream.write_all(&p.out)?;
        let accept = ws::accept_for(&key);
        loop {
            match ws::parse_upgrade_response(&p.buf, &accept) {
                Ok(Some(n)) => {
                    p.buf.drain(..n);
                    return Ok(p);
                }
                Ok(None) => p.fill()?,
                Err(e) => return Err(broken(format!("WebSocket upgrade refused: {e}"))),
            }
        }
    }

    /// Places (x, y) in `color` as `token`'s user and waits for the answer.
    pub fn place(&mut self, token: &str, x: u64, y: u64, color: u64) -> io::Result<Placement> {
        if token != self.token {
            self.auth(token)?;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.send_text(&format!("{{\"type\":\"place\",\"x\":{x},\"y\":{y},\"color\":{color},\"id\":{id}}}"))?;
        let answer = self.answer_to(id)?;
        if contains(&answer, b"\"type\":\"placed\"") {
            return Ok(match json_u64_field(&answer, "version") {
                Some(v) => Placement::Accepted(v),
                None => Placement::Refused { status: 0, code: "placed_without_version".into(), retry_after_ms: None },
            });
        }
        Ok(Placement::Refused {
            status: 0,
            code: json_str_field(&answer, "code").unwrap_or_else(|| "unknown_answer".into()),
            retry_after_ms: json_u64_field(&answer, "retry_after_ms"),
        })
    }

    fn auth(&mut self, token: &str) -> io::Result<()> {
        self.send_text(&format!("{{\"type\":\"auth\",\"token\":\"{token}\"}}"))?;
        let answer = self.next_text()?;
        if !contains(&answer, b"\"type\":\"authed\"") {
            return Err(broken(format!("auth refused: {}", String::from_utf8_lossy(&answer))));
        }
        self.token = token.to_string();
        Ok(())
    }

    /// The text message whose `id` is `id`; batch frames and other messages are skipped.
    fn answer_to(&mut self, id: u64) -> io::Result<Vec<u8>> {
        loop {
            let text = self.next_text()?;
            if json_u64_field(&text, "id") == Some(id) {
                return Ok(text);
            }
        }
    }

    /// The next text message, answering pings and skipping binary frames on the way.
    fn next_text(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let frame = ws::split_frame(&self.buf, MAX_FRAME).map_err(|e| broken(format!("bad frame: {e}")))?;
            let Some((h, payload, total)) = frame else {
                self.fill()?;
                continue;
            };
            // Batch frames, most of what arrives, are dropped without a copy.
            let payload = match h.opcode {
                OP_BINARY | OP_PONG => None,
                OP_TEXT | OP_PING | OP_CLOSE => Some(payload.to_vec()),
                op => return Err(broken(format!("unexpected opcode {op}"))),
            };
            self.buf.drain(..total);
            let Some(payload) = payload else { continue };
            match h.opcode {
                OP_TEXT => return Ok(payload),
                OP_PING => self.send(OP_PONG, &payload)?,
                _ => {
                    let code = ws::close_code(&payload);
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, format!("server closed with {code}")));
                }
            }
        }
    }

    fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(OP_TEXT, text.as_bytes())
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.mask_seed = ws::splitmix64(self.mask_seed);
        self.out.clear();
        ws::encode_client_frame(opcode, payload, (self.mask_seed as u32).to_le_bytes(), &mut self.out);
        self.stream.write_all(&self.out)
    }

    fn fill(&mut self) -> io::Result<()> {
        crate::http::read_more(&mut self.stream, &mut self.buf)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The string value of `"key":"..."` in a flat JSON object (no escapes in the codes we read).
fn json_str_field(body: &[u8], key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let pos = body.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let end = body[pos..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&body[pos..pos + end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_string_field() {
        let b = br#"{"type":"error","code":"cooldown","message":"x","retry_after_ms":900}"#;
        assert_eq!(json_str_field(b, "code").as_deref(), Some("cooldown"));
        assert_eq!(json_u64_field(b, "retry_after_ms"), Some(900));
        assert_eq!(json_str_field(b, "missing"), None);
        assert!(contains(br#"{"id":3,"type":"placed","version":9}"#, b"\"type\":\"placed\""));
        assert!(!contains(b, b"\"type\":\"placed\""));
    }
}
