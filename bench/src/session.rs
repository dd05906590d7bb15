//! Anonymous sessions (`POST /api/v1/session`), with the proof of work when the server asks for
//! one: the placement driver's token supply and the abuse scenario's session minting share it.
//!
//! A [`Sessions`] starts in plain mode (empty body) unless told `--proof`; the first
//! `400 proof_required` switches it (and every thread sharing it) to proof mode:
//! `GET /api/v1/session/challenge`, [`pow::solve_until`], then the POST with
//! `{"challenge","nonce"}`. A solved challenge the server refused for a reason that does not use
//! it up (429 rate limits, 503) is kept and presented again on the next attempt; one it rejected
//! (`bad_proof`, `challenge_expired`, `challenge_used`) or accepted is dropped.

use crate::http::{Requester, Response};
use crate::pow::{self, Challenge};
use crate::sys::now_ns;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A challenge already solved, not yet presented successfully.
#[derive(Debug, Clone)]
pub struct Solved {
    pub challenge: Challenge,
    pub nonce: u64,
}

/// The outcome of one attempt at a session.
#[derive(Debug)]
pub enum Minted {
    Token(String),
    /// Refused by the server: HTTP status, `error.code` (or `status_NNN`), retry hint.
    Refused {
        status: u16,
        code: String,
        retry_after_ms: Option<u64>,
    },
    /// Given up because `stop` was set while solving.
    Stopped,
}

/// Proof-of-work costs, summed over threads.
#[derive(Default, Debug)]
pub struct SolveCounters {
    pub challenges: AtomicU64,
    pub solves: AtomicU64,
    pub solve_ns: AtomicU64,
    pub hashes: AtomicU64,
}

/// Session minting shared by threads: whether proofs are needed, and what they cost.
#[derive(Default, Debug)]
pub struct Sessions {
    proof: AtomicBool,
    pub counters: SolveCounters,
}

const TOKEN_WHAT: &str = "POST /api/v1/session";

impl Sessions {
    pub fn new(proof: bool) -> Self {
        Sessions { proof: AtomicBool::new(proof), counters: SolveCounters::default() }
    }

    /// Whether session requests carry a proof (told so, or learned from a `proof_required`).
    pub fn proof(&self) -> bool {
        self.proof.load(Ordering::Relaxed)
    }

    /// One attempt at a session on `conn`. `held` keeps a solved challenge across attempts.
    /// Errors are transport failures (the caller reconnects).
    pub fn mint(
        &self,
        conn: &mut impl Requester,
        held: &mut Option<Solved>,
        stop: Option<&AtomicBool>,
    ) -> io::Result<Minted> {
        for _ in 0..2 {
            let proof = self.proof();
            let body = if proof {
                if held.as_ref().is_none_or(|h| !h.challenge.fresh(pow::unix_ms(), 5_000)) {
                    *held = None;
                    let r = conn.send("GET", "/api/v1/session/challenge", &[], b"")?;
                    self.counters.challenges.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 {
                        return Ok(refused(&r));
                    }
                    let c = Challenge::parse(&r.body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let t0 = now_ns();
                    let Some(nonce) = pow::solve_until(&c.challenge, c.difficulty, u64::MAX, stop) else {
                        return Ok(Minted::Stopped);
                    };
                    self.counters.solves.fetch_add(1, Ordering::Relaxed);
                    self.counters.solve_ns.fetch_add(now_ns() - t0, Ordering::Relaxed);
                    self.counters.hashes.fetch_add(nonce + 1, Ordering::Relaxed);
                    *held = Some(Solved { challenge: c, nonce });
                }
                let h = held.as_ref().expect("set above");
                h.challenge.session_body(h.nonce)
            } else {
                String::new()
            };
            let r = conn.send("POST", "/api/v1/session", &[], body.as_bytes())?;
            if r.status == 200 {
                *held = None;
                let tok = r.json().ok().and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string));
                return match tok {
                    Some(t) => Ok(Minted::Token(t)),
                    None => Ok(Minted::Refused { status: 200, code: "200_without_token".into(), retry_after_ms: None }),
                };
            }
            let out = refused(&r);
            if let Minted::Refused { code, .. } = &out {
                match code.as_str() {
                    "proof_required" if !proof => {
                        self.proof.store(true, Ordering::Relaxed);
                        continue;
                    }
                    "bad_proof" | "challenge_expired" | "challenge_used" | "proof_required" => *held = None,
                    _ => {}
                }
            }
            return Ok(out);
        }
        Ok(Minted::Refused { status: 400, code: "proof_required".into(), retry_after_ms: None })
    }

    /// A token or an error: for setup, where every session must succeed.
    pub fn token(&self, conn: &mut impl Requester) -> Result<String, crate::error::LoadError> {
        let mut held = None;
        match self.mint(conn, &mut held, None).map_err(|e| crate::error::LoadError::io(TOKEN_WHAT, e))? {
            Minted::Token(t) => Ok(t),
            Minted::Refused { status, code, .. } => Err(crate::error::LoadError::Http {
                what: TOKEN_WHAT.into(),
                detail: format!("status {status} {code}{}", advice(&code)),
            }),
            Minted::Stopped => Err(crate::error::LoadError::Timeout("stopped while solving a proof of work".into())),
        }
    }
}

fn refused(r: &Response) -> Minted {
    Minted::Refused { status: r.status, code: r.error_code(), retry_after_ms: r.retry_after_ms() }
}

/// What to change when setup cannot get its sessions.
pub fn advice(code: &str) -> &'static str {
    match code {
        "session_rate_limited" => {
            ": the server limits sessions per address; run it with --sessions-per-min 0 for load tests, \
             or spread the tester's addresses (abuse scenario: --honest-per-addr)"
        }
        "too_many_connections_from_address" => ": run the server with --max-conns-per-addr 0 for load tests",
        "anonymous_sessions_off" => ": the server runs with --anonymous-sessions off; use on or proof",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpConn;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A scripted server: answers each request in order with the given (status, body), checks the
    /// request line and body of each.
    fn serve(script: Vec<(&'static str, u16, String)>) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for (line, status, body) in script {
                // Read one request (head + Content-Length body).
                let req = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                            buf.drain(..end + 4 + len);
                            break (head, body);
                        }
                    }
                    let mut tmp = [0u8; 4096];
                    let n = s.read(&mut tmp).unwrap();
                    assert!(n > 0, "client went away");
                    buf.extend_from_slice(&tmp[..n]);
                };
                assert!(req.0.starts_with(line), "expected {line}, got {}", req.0);
                seen.push(req.1);
                let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                s.write_all(resp.as_bytes()).unwrap();
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn learns_proof_mode_and_solves() {
        let ch = r#"{"challenge":"placecast-test","difficulty":12,"expires_at_ms":0,"algorithm":"sha256-leading-zero-bits"}"#;
        let (addr, h) = serve(vec![
            ("POST /api/v1/session", 400, r#"{"error":{"code":"proof_required","message":"m"}}"#.into()),
            ("GET /api/v1/session/challenge", 200, ch.into()),
            (
                "POST /api/v1/session",
                429,
                r#"{"error":{"code":"session_rate_limited","message":"m","retry_after_ms":250}}"#.into(),
            ),
            // The held proof is presented again, without a new challenge.
            ("POST /api/v1/session", 200, r#"{"token":"tok","user":"u","expires_at":1}"#.into()),
        ]);
        let s = Sessions::new(false);
        let mut c = HttpConn::connect(addr, Duration::from_secs(5)).unwrap();
        let mut held = None;
        match s.mint(&mut c, &mut held, None).unwrap() {
            Minted::Refused { status: 429, code, retry_after_ms: Some(250) } => {
                assert_eq!(code, "session_rate_limited")
            }
            m => panic!("{m:?}"),
        }
        assert!(s.proof());
        assert_eq!(held.as_ref().map(|h| h.nonce), Some(7100));
        match s.mint(&mut c, &mut held, None).unwrap() {
            Minted::Token(t) => assert_eq!(t, "tok"),
            m => panic!("{m:?}"),
        }
        assert!(held.is_none());
        let bodies = h.join().unwrap();
        assert_eq!(bodies[0], "");
        let b: serde_json::Value = serde_json::from_str(&bodies[2]).unwrap();
        assert_eq!(b, serde_json::json!({"challenge": "placecast-test", "nonce": "7100"}));
        assert_eq!(bodies[3], bodies[2]);
        assert_eq!(s.counters.solves.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.hashes.load(Ordering::Relaxed), 7101);
    }

    #[test]
    fn a_used_challenge_is_dropped() {
        let ch = r#"{"challenge":"abc","difficulty":8}"#;
        let (addr, h) = serve(vec![
            ("GET /api/v1/session/challenge", 200, ch.into()),
            ("POST /api/v1/session", 409, r#"{"error":{"code":"challenge_used","message":"m"}}"#.into()),
        ]);
        let s = Sessions::new(true);
        let mut c = HttpConn::connect(addr, Duration::from_secs(5)).unwrap();
        let mut held = None;
        assert!(matches!(s.mint(&mut c, &mut held, None).unwrap(), Minted::Refused { status: 409, .. }));
        assert!(held.is_none());
        h.join().unwrap();
    }
}
