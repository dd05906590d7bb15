//! Proof of work for anonymous sessions (`--anonymous-sessions proof`): a hashcash-style
//! challenge, so that minting a million sessions costs a script real CPU while one person's
//! browser spends a second.
//!
//! A challenge is `p1.<expires_ms>.<difficulty>.<nonce hex>.<mac>`: stateless and signed with
//! the token secret (domain-separated), so any node behind the balancer verifies it. A solution
//! is a decimal nonce `n` (1-20 digits, canonical: no leading zeros) such that
//! SHA-256(challenge "." n) starts with `difficulty` zero bits. Expected work: 2^difficulty
//! hashes (20 bits: ~1M, about 0.3 s in a native loop, 1-3 s in a browser worker).
//!
//! Invariants: a challenge is accepted once per node (the used set); the used set is bounded
//! (`MAX_USED`, ~64 B per entry: 64 MB at the cap) and swept of expired challenges; when full,
//! new sessions answer 503 rather than accept replays. Across nodes a challenge may be used
//! once per node: that bounds a replay to N sessions per solved challenge, and the per-address
//! session rate (`admission.rs`) still applies.
//! Not here: the session token itself (`token.rs`) or the address rate.

use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

pub use crate::bounds::{CHALLENGE_TTL_MS, MAX_USED_CHALLENGES as MAX_USED};
pub const MIN_DIFFICULTY: u8 = 8;
pub const MAX_DIFFICULTY: u8 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// POST /api/v1/session hands out anonymous tokens (rate-limited per address).
    On,
    /// No anonymous sessions: a sign-in service mints the tokens.
    Off,
    /// Anonymous sessions need a proof of work.
    Proof,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProofError {
    #[error("this server needs a proof of work for a session: GET /api/v1/session/challenge, solve it, and POST {{\"challenge\",\"nonce\"}}")]
    Required,
    #[error("the proof does not solve the challenge (or the challenge is not this server's)")]
    Bad,
    #[error("the challenge expired; get a new one")]
    Expired,
    #[error("the challenge was already used; get a new one")]
    Used,
    #[error("the server is remembering too many challenges; try again shortly")]
    Busy,
}

impl ProofError {
    pub fn status(&self) -> u16 {
        match self {
            ProofError::Used => 409,
            ProofError::Busy => 503,
            _ => 400,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProofError::Required => "proof_required",
            ProofError::Bad => "bad_proof",
            ProofError::Expired => "challenge_expired",
            ProofError::Used => "challenge_used",
            ProofError::Busy => "server_busy",
        }
    }
}

/// The live session policy: mode and difficulty (admin API).
pub struct SessionPolicy {
    mode: AtomicU8,
    difficulty: AtomicU8,
}

impl SessionPolicy {
    pub fn new(mode: SessionMode, difficulty: u8) -> Self {
        SessionPolicy { mode: AtomicU8::new(mode as u8), difficulty: AtomicU8::new(difficulty) }
    }

    pub fn mode(&self) -> SessionMode {
        match self.mode.load(Ordering::Relaxed) {
            x if x == SessionMode::Off as u8 => SessionMode::Off,
            x if x == SessionMode::Proof as u8 => SessionMode::Proof,
            _ => SessionMode::On,
        }
    }

    pub fn difficulty(&self) -> u8 {
        self.difficulty.load(Ordering::Relaxed)
    }

    pub fn set(&self, mode: SessionMode, difficulty: u8) {
        assert!((MIN_DIFFICULTY..=MAX_DIFFICULTY).contains(&difficulty), "validated by the caller");
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.difficulty.store(difficulty, Ordering::Relaxed);
    }
}

pub struct Proofs {
    mac: HmacSha256,
    used: Mutex<FxHashMap<u64, u64>>,
    max_used: usize,
}

/// A challenge handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub text: String,
    pub difficulty: u8,
    pub expires_at_ms: u64,
}

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

/// SHA-256 of `challenge "." nonce`.
pub fn proof_hash(challenge: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(b".");
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// Solves a challenge by brute force (the load tester and tests do this; clients have their own).
pub fn solve(challenge: &str, difficulty: u8) -> u64 {
    (0u64..).find(|n| leading_zero_bits(&proof_hash(challenge, &n.to_string())) >= difficulty as u32).expect("found")
}

fn canonical_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= 20
        && nonce.bytes().all(|b| b.is_ascii_digit())
        && (nonce == "0" || !nonce.starts_with('0'))
        && nonce.parse::<u64>().is_ok()
}

impl Proofs {
    pub fn new(secret: &[u8]) -> Self {
        Self::with_capacity(secret, MAX_USED)
    }

    pub fn with_capacity(secret: &[u8], max_used: usize) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"placecast-pow-v1.");
        Proofs { mac, used: Mutex::new(FxHashMap::default()), max_used }
    }

    fn sign(&self, body: &str) -> String {
        let mut m = self.mac.clone();
        m.update(body.as_bytes());
        let tag = m.finalize().into_bytes();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn challenge(&self, difficulty: u8, now_ms: u64) -> Challenge {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS random source");
        let expires = now_ms + CHALLENGE_TTL_MS;
        let body = format!("p1.{expires}.{difficulty}.{}", u64::from_le_bytes(r));
        let text = format!("{body}.{}", self.sign(&body));
        Challenge { text, difficulty, expires_at_ms: expires }
    }

    /// Checks a solution and marks its challenge used.
    pub fn redeem(&self, challenge: &str, nonce: &str, now_ms: u64) -> Result<(), ProofError> {
        let (body, tag) = challenge.rsplit_once('.').ok_or(ProofError::Bad)?;
        let mut parts = body.split('.');
        let (Some("p1"), Some(exp), Some(diff), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProofError::Bad);
        };
        let mut m = self.mac.clone();
        m.update(body.as_bytes());
        let tag = parse_hex::<16>(tag).ok_or(ProofError::Bad)?;
        m.verify_truncated_left(&tag).map_err(|_| ProofError::Bad)?;
        // Signed by us, so these parse; still, never assert on client bytes.
        let (Ok(expires), Ok(difficulty), Ok(id)) = (exp.parse::<u64>(), diff.parse::<u8>(), id.parse::<u64>()) else {
            return Err(ProofError::Bad);
        };
        if expires <= now_ms {
            return Err(ProofError::Expired);
        }
        if !canonical_nonce(nonce) || leading_zero_bits(&proof_hash(challenge, nonce)) < difficulty as u32 {
            return Err(ProofError::Bad);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(&id) {
            return Err(ProofError::Used);
        }
        if used.len() >= self.max_used {
            used.retain(|_, exp| *exp > now_ms);
            if used.len() >= self.max_used {
                return Err(ProofError::Busy);
            }
        }
        used.insert(id, expires);
        Ok(())
    }

    /// Forgets used challenges that expired (they would be refused as expired anyway).
    pub fn sweep(&self, now_ms: u64) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, exp| *exp > now_ms);
    }
}

/// `N` bytes from exactly `2N` hex digits.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // Checked with python3's hashlib: sha256(b"abc.0") = 20b699b1...; the smallest nonce
        // giving "placecast-test" 12 zero bits is 7100 (digest 000b23ce...).
        assert_eq!(proof_hash("abc", "0")[..4], [0x20, 0xb6, 0x99, 0xb1]);
        assert_eq!(proof_hash("placecast-test", "7100")[..4], [0x00, 0x0b, 0x23, 0xce]);
        assert_eq!(solve("placecast-test", 12), 7100);
        assert_eq!(leading_zero_bits(&proof_hash("placecast-test", "7100")), 12);
        assert_eq!(leading_zero_bits(&[0, 0, 0x10]), 19);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }

    #[test]
    fn solve_redeem_once() {
        let p = Proofs::new(b"0123456789abcdef0123456789abcdef");
        let now = 1_000_000;
        let c = p.challenge(12, now);
        let n = solve(&c.text, 12).to_string();
        assert_eq!(p.redeem(&c.text, &n, now + 10), Ok(()));
        assert_eq!(p.redeem(&c.text, &n, now + 10), Err(ProofError::Used));
        let c2 = p.challenge(12, now);
        let n2 = solve(&c2.text, 12);
        assert_eq!(p.redeem(&c2.text, &n2.to_string(), now + CHALLENGE_TTL_MS), Err(ProofError::Expired));
        // Non-canonical spellings of the same nonce are refused.
        let c3 = p.challenge(12, now);
        let n3 = solve(&c3.text, 12);
        assert_eq!(p.redeem(&c3.text, &format!("0{n3}"), now), Err(ProofError::Bad));
        assert_eq!(p.redeem(&c3.text, &format!("+{n3}"), now), Err(ProofError::Bad));
        assert_eq!(p.redeem(&c3.text, &n3.to_string(), now), Ok(()));
    }

    #[test]
    fn forged_or_altered_challenges_are_refused() {
        let p = Proofs::new(b"0123456789abcdef0123456789abcdef");
        let other = Proofs::new(b"another-secret-another-secret-xx");
        let now = 5_000;
        let c = other.challenge(8, now);
        let n = solve(&c.text, 8).to_string();
        assert_eq!(p.redeem(&c.text, &n, now), Err(ProofError::Bad));
        // Lowering the difficulty in the text breaks the signature.
        let mine = p.challenge(16, now);
        let easier = mine.text.replacen(".16.", ".8.", 1);
        let n = solve(&easier, 8).to_string();
        assert_eq!(p.redeem(&easier, &n, now), Err(ProofError::Bad));
        for junk in ["", "p1", "p1.1.2.3.zz", "x.1.8.1.00000000000000000000000000000000"] {
            assert_eq!(p.redeem(junk, "1", now), Err(ProofError::Bad), "{junk}");
        }
    }

    #[test]
    fn the_used_set_is_bounded() {
        let p = Proofs::with_capacity(b"0123456789abcdef0123456789abcdef", 2);
        let now = 1_000;
        for _ in 0..2 {
            let c = p.challenge(8, now);
            p.redeem(&c.text, &solve(&c.text, 8).to_string(), now).unwrap();
        }
        let c = p.challenge(8, now);
        assert_eq!(p.redeem(&c.text, &solve(&c.text, 8).to_string(), now), Err(ProofError::Busy));
        p.sweep(now + CHALLENGE_TTL_MS + 1);
        let c = p.challenge(8, now + CHALLENGE_TTL_MS + 1);
        assert_eq!(p.redeem(&c.text, &solve(&c.text, 8).to_string(), now + CHALLENGE_TTL_MS + 2), Ok(()));
    }
}
