//! The proof of work the server's `--anonymous-sessions proof` mode asks for before it hands out
//! an anonymous session: `GET /api/v1/session/challenge` gives a challenge and a difficulty; the
//! client finds the smallest decimal nonce (0, 1, 2, ...) such that
//! SHA-256(challenge "." nonce) starts with `difficulty` zero bits (most significant bit of byte
//! 0 first) and sends `{"challenge","nonce"}` to `POST /api/v1/session`.
//!
//! The solver hashes the `challenge "."` prefix once and only the nonce digits per try (one
//! SHA-256 compression for challenges under ~40 bytes), formatting digits into a stack buffer:
//! no allocation per try. It is what an abuser's script would run: the load tester measures what
//! the server's proof costs such a script, so a slow solver would flatter the server.

use crate::error::LoadError;
use crate::http::HttpConn;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest difficulty a solve is attempted for (the server allows 8 to 32).
pub const MAX_DIFFICULTY: u32 = 40;

/// Zero bits at the start of `hash`, most significant bit of byte 0 first.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for b in hash {
        if *b != 0 {
            return n + b.leading_zeros();
        }
        n += 8;
    }
    n
}

/// SHA-256 of `challenge "." nonce` (ASCII bytes).
pub fn proof_hash(challenge: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(b".");
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// Writes `n` in decimal at the end of `buf`; returns where the digits start.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// The smallest nonce solving `challenge` at `difficulty` bits.
pub fn solve(challenge: &str, difficulty: u32) -> u64 {
    solve_until(challenge, difficulty, u64::MAX, None).expect("an unbounded search always ends with a nonce")
}

/// [`solve`] giving up after `max_tries` nonces or once `stop` is set (checked every 4096 tries).
/// Returns the nonce, or None when it gave up.
pub fn solve_until(challenge: &str, difficulty: u32, max_tries: u64, stop: Option<&AtomicBool>) -> Option<u64> {
    let difficulty = difficulty.min(256);
    let mut prefix = Sha256::new();
    prefix.update(challenge.as_bytes());
    prefix.update(b".");
    // Whole bytes that must be zero, then the mask of the next byte's high bits.
    let (full, rest) = ((difficulty / 8) as usize, difficulty % 8);
    let mask: u8 = if rest == 0 { 0 } else { 0xffu8 << (8 - rest) };
    let mut buf = [0u8; 20];
    let mut n = 0u64;
    while n < max_tries {
        if n & 4095 == 0 && stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return None;
        }
        let at = decimal(n, &mut buf);
        let h: [u8; 32] = prefix.clone().chain_update(&buf[at..]).finalize().into();
        if h[..full].iter().all(|b| *b == 0) && (mask == 0 || h[full] & mask == 0) {
            return Some(n);
        }
        n = n.checked_add(1)?;
    }
    None
}

/// A challenge from `GET /api/v1/session/challenge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub challenge: String,
    pub difficulty: u32,
    pub expires_at_ms: u64,
    pub algorithm: String,
}

/// The algorithm this solver implements (the `algorithm` field of a challenge).
pub const ALGORITHM: &str = "sha256-leading-zero-bits";

impl Challenge {
    /// Parses the JSON body of a challenge answer.
    pub fn parse(body: &[u8]) -> Result<Challenge, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("challenge answer is not JSON: {e}"))?;
        let challenge = v
            .get("challenge")
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty() && c.is_ascii())
            .ok_or("challenge answer without an ASCII \"challenge\"")?
            .to_string();
        let difficulty = v
            .get("difficulty")
            .and_then(|d| d.as_u64())
            .filter(|d| *d <= MAX_DIFFICULTY as u64)
            .ok_or(format!("challenge answer without a \"difficulty\" of at most {MAX_DIFFICULTY}"))?
            as u32;
        let algorithm = v.get("algorithm").and_then(|a| a.as_str()).unwrap_or(ALGORITHM).to_string();
        if algorithm != ALGORITHM {
            return Err(format!("unknown proof algorithm {algorithm:?} (this tester solves {ALGORITHM})"));
        }
        let expires_at_ms = v.get("expires_at_ms").and_then(|e| e.as_u64()).unwrap_or(0);
        Ok(Challenge { challenge, difficulty, expires_at_ms, algorithm })
    }

    /// The body of `POST /api/v1/session` that presents `nonce` for this challenge.
    pub fn session_body(&self, nonce: u64) -> String {
        serde_json::json!({"challenge": self.challenge, "nonce": nonce.to_string()}).to_string()
    }

    /// Whether the challenge is still valid at `now_ms` (Unix ms), with `margin_ms` to spare.
    /// A challenge without an expiry is taken as valid.
    pub fn fresh(&self, now_ms: u64, margin_ms: u64) -> bool {
        self.expires_at_ms == 0 || now_ms + margin_ms < self.expires_at_ms
    }
}

/// Fetches a challenge on `conn`.
pub fn fetch_challenge(conn: &mut HttpConn) -> Result<Challenge, LoadError> {
    const WHAT: &str = "GET /api/v1/session/challenge";
    let r = conn.request("GET", "/api/v1/session/challenge", &[], b"").map_err(|e| LoadError::io(WHAT, e))?;
    if r.status != 200 {
        return Err(LoadError::Http {
            what: WHAT.into(),
            detail: format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body[..r.body.len().min(300)])),
        });
    }
    Challenge::parse(&r.body).map_err(|detail| LoadError::Http { what: WHAT.into(), detail })
}

/// Unix time in milliseconds (challenges expire in wall-clock time).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // sha256(b"abc.0") = 20b699b1... (python3 hashlib); "placecast-test" needs nonce 7100
        // for 12 zero bits (digest 000b23ce...), the same answers the server's tests use.
        assert_eq!(proof_hash("abc", "0")[..4], [0x20, 0xb6, 0x99, 0xb1]);
        assert_eq!(proof_hash("placecast-test", "7100")[..4], [0x00, 0x0b, 0x23, 0xce]);
        assert_eq!(solve("placecast-test", 12), 7100);
        assert_eq!(leading_zero_bits(&proof_hash("placecast-test", "7100")), 12);
    }

    #[test]
    fn solver_agrees_with_the_plain_definition() {
        for (c, d) in [("x", 0), ("x", 1), ("abc", 5), ("p1.123.8.99.ff", 8), ("placecast-test", 10)] {
            let plain = (0u64..).find(|n| leading_zero_bits(&proof_hash(c, &n.to_string())) >= d).unwrap();
            assert_eq!(solve(c, d), plain, "{c} {d}");
        }
        // Difficulty 0: every hash qualifies, the smallest nonce is 0.
        assert_eq!(solve("anything", 0), 0);
    }

    #[test]
    fn bounded_and_stoppable() {
        assert_eq!(solve_until("placecast-test", 12, 7100, None), None);
        assert_eq!(solve_until("placecast-test", 12, 7101, None), Some(7100));
        let stop = AtomicBool::new(true);
        assert_eq!(solve_until("placecast-test", 12, u64::MAX, Some(&stop)), None);
    }

    /// `cargo test --release -p placecast-load pow::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn speed() {
        let t = std::time::Instant::now();
        let mut hashes = 0;
        for i in 0..8 {
            hashes += solve(&format!("p1.1700000000000.20.{i}.0123456789abcdef0123456789abcdef"), 20) + 1;
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "8 solves at 20 bits: {hashes} hashes in {s:.2} s = {:.2} M hashes/s, {:.0} ms per solve",
            hashes as f64 / s / 1e6,
            s * 1000.0 / 8.0
        );
    }

    #[test]
    fn leading_zero_bits_msb_first() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x10]), 19);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01, 0xff]), 7);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        for n in [0u64, 7, 10, 7100, u64::MAX] {
            let at = decimal(n, &mut b);
            assert_eq!(std::str::from_utf8(&b[at..]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            br#"{"challenge":"p1.5.20.7.ab","difficulty":20,"expires_at_ms":1000,"algorithm":"sha256-leading-zero-bits"}"#,
        )
        .unwrap();
        assert_eq!((c.challenge.as_str(), c.difficulty, c.expires_at_ms), ("p1.5.20.7.ab", 20, 1000));
        assert!(c.fresh(500, 100) && !c.fresh(950, 100));
        let body: serde_json::Value = serde_json::from_str(&c.session_body(42)).unwrap();
        assert_eq!(body, serde_json::json!({"challenge": "p1.5.20.7.ab", "nonce": "42"}));
        assert!(Challenge::parse(br#"{"difficulty":20}"#).is_err());
        assert!(Challenge::parse(br#"{"challenge":"a","difficulty":99}"#).is_err());
        assert!(Challenge::parse(br#"{"challenge":"a","difficulty":8,"algorithm":"md5"}"#).is_err());
        assert!(Challenge::parse(b"nope").is_err());
        // Optional fields.
        let c = Challenge::parse(br#"{"challenge":"a","difficulty":8}"#).unwrap();
        assert!(c.fresh(u64::MAX - 1, 0));
    }
}
