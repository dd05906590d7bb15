//! User tokens: `<user>.<expires>.<sig>` (v1), or `<user>.<expires>.<claims>.<sig>` (v2, claims
//! a comma-separated list such as `verified,age90`, `claims.rs`), signed with HMAC-SHA256 over a
//! shared secret, so any service holding the secret (an operator's sign-in service) can mint them.
//! v1 signs `placecast-v1.<user>.<expires>`, v2 `placecast-v2.<user>.<expires>.<claims>`.
//!
//! Invariants: a token verifies only if its signature matches (constant-time compare) and it has
//! not expired; the limiter key of a user is a stable 64-bit hash of the user id, the same on
//! every node.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not of the form user.expires.signature")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("user ids are 1-64 characters of A-Z a-z 0-9 _ -")]
    BadUser,
    #[error("claims are 1-8 comma-separated names of 1-32 characters of a-z 0-9 _ -")]
    BadClaims,
}

impl TokenError {
    /// The machine code of PROTOCOL.md.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired_token",
            _ => "bad_token",
        }
    }
}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The limiter key (FNV-1a of the name, never 0).
    pub id: u64,
    /// Unix seconds after which the token is no longer valid; 0 = never.
    pub expires: u64,
    /// What the sign-in service vouches for (v2 tokens; empty for v1).
    pub claims: Vec<String>,
}

/// One canonical spelling per number: decimal digits, no sign, no leading zero (but "0"), at
/// most 20 digits. Two spellings of one token would be two tokens to every cache and log.
pub fn canonical_u64(s: &str) -> Option<u64> {
    let ok =
        !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

pub fn valid_user(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// FNV-1a 64: stable across nodes and versions, unlike std's randomly keyed hasher.
pub fn user_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
}

pub struct Signer {
    mac: HmacSha256,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Signer { mac: HmacSha256::new_from_slice(secret).expect("HMAC takes any key length") }
    }

    fn sign(&self, user: &str, expires: u64, claims: Option<&str>) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(if claims.is_some() { b"placecast-v2." } else { b"placecast-v1." });
        m.update(user.as_bytes());
        m.update(b".");
        m.update(expires.to_string().as_bytes());
        if let Some(c) = claims {
            m.update(b".");
            m.update(c.as_bytes());
        }
        m
    }

    pub fn mint(&self, user: &str, expires: u64) -> Result<String, TokenError> {
        self.mint_with_claims(user, expires, &[])
    }

    /// A v2 token carrying `claims` (a v1 token when there are none).
    pub fn mint_with_claims(&self, user: &str, expires: u64, claims: &[String]) -> Result<String, TokenError> {
        if !valid_user(user) {
            return Err(TokenError::BadUser);
        }
        if claims.is_empty() {
            let sig = URL_SAFE_NO_PAD.encode(self.sign(user, expires, None).finalize().into_bytes());
            return Ok(format!("{user}.{expires}.{sig}"));
        }
        let list = claims.join(",");
        if parse_claims(&list).is_none() {
            return Err(TokenError::BadClaims);
        }
        let sig = URL_SAFE_NO_PAD.encode(self.sign(user, expires, Some(&list)).finalize().into_bytes());
        Ok(format!("{user}.{expires}.{list}.{sig}"))
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<User, TokenError> {
        let parts: Vec<&str> = token.splitn(5, '.').collect();
        let (user, exp, claims, sig) = match parts[..] {
            [u, e, s] => (u, e, None, s),
            [u, e, c, s] => (u, e, Some(c), s),
            _ => return Err(TokenError::Malformed),
        };
        if !valid_user(user) {
            return Err(TokenError::Malformed);
        }
        let expires = canonical_u64(exp).ok_or(TokenError::Malformed)?;
        let list = match claims {
            None => Vec::new(),
            Some(c) => parse_claims(c).ok_or(TokenError::Malformed)?,
        };
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        self.sign(user, expires, claims).verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        if expires != 0 && expires <= now_s {
            return Err(TokenError::Expired);
        }
        Ok(User { name: user.to_string(), id: user_key(user), expires, claims: list })
    }
}

/// `a,b,c`: 1-8 valid claims, one spelling each (no empty item, no repeat).
fn parse_claims(s: &str) -> Option<Vec<String>> {
    let list: Vec<String> = s.split(',').map(str::to_string).collect();
    let ok = (1..=crate::claims::MAX_TOKEN_CLAIMS).contains(&list.len())
        && list.iter().all(|c| crate::claims::valid_claim(c))
        && list.iter().enumerate().all(|(i, c)| !list[..i].contains(c));
    ok.then_some(list)
}

/// A fresh anonymous user id: "anon-" and 16 random hex digits.
pub fn anonymous_user() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    format!("anon-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let s = Signer::new(b"0123456789abcdef");
        let t = s.mint("alice", 0).unwrap();
        let u = s.verify(&t, 1_000).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.id, user_key("alice"));
    }

    #[test]
    fn rejects_forgery_expiry_and_garbage() {
        let s = Signer::new(b"0123456789abcdef");
        let other = Signer::new(b"another-secret-123");
        let forged = other.mint("alice", 0).unwrap();
        assert_eq!(s.verify(&forged, 0), Err(TokenError::BadSignature));
        let t = s.mint("bob", 100).unwrap();
        assert_eq!(s.verify(&t, 100), Err(TokenError::Expired));
        assert!(s.verify(&t, 99).is_ok());
        // Changing the user keeps the signature but breaks it.
        let tampered = t.replacen("bob", "eve", 1);
        assert_eq!(s.verify(&tampered, 0), Err(TokenError::BadSignature));
        for g in ["", "a.b", "a.1.!!!", "a.x.sig", "a b.0.c", "a.0.c.d", "a.0.c.d.e"] {
            assert!(s.verify(g, 0).is_err(), "{g}");
        }
        assert_eq!(s.mint("bad user", 0), Err(TokenError::BadUser));
    }

    #[test]
    fn claims_are_signed_and_a_v1_token_has_none() {
        let s = Signer::new(b"0123456789abcdef");
        let claims = vec!["verified".to_string(), "age90".to_string()];
        let t = s.mint_with_claims("alice", 0, &claims).unwrap();
        assert!(t.starts_with("alice.0.verified,age90."), "{t}");
        assert_eq!(s.verify(&t, 0).unwrap().claims, claims);
        assert!(s.verify(&s.mint("alice", 0).unwrap(), 0).unwrap().claims.is_empty());
        // Adding, dropping or changing a claim breaks the signature; bad lists are malformed.
        let added = t.replacen("verified,age90", "verified,age90,mod", 1);
        assert_eq!(s.verify(&added, 0), Err(TokenError::BadSignature));
        let v1_sig = t.rsplit('.').next().unwrap();
        assert_eq!(s.verify(&format!("alice.0.{v1_sig}"), 0), Err(TokenError::BadSignature));
        for bad in ["alice.0.,x.sig", "alice.0.A.sig", "alice.0.a,a.sig", "alice.0.a.b.c"] {
            assert_eq!(s.verify(bad, 0), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(s.mint_with_claims("a", 0, &["Bad".into()]), Err(TokenError::BadClaims));
    }

    /// The `user_token` fuzz target's property over a deterministic sample of inputs.
    #[test]
    fn fuzz_property_on_generated_inputs() {
        let s = Signer::new(b"fuzz-secret-0123456789abcdefghijklmnop");
        let alphabet = b"aZ09_-.,|=+/ \xff";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let text: String =
                (0..len).map(|i| alphabet[((x >> (i % 60)) as usize + i) % alphabet.len()] as char).collect();
            assert!(s.verify(&text, 0).is_err(), "{text:?} verified");
            let mut parts = text.split('|');
            let user = parts.next().unwrap_or("");
            let claims: Vec<String> = parts.map(str::to_string).collect();
            if let Ok(t) = s.mint_with_claims(user, 0, &claims) {
                let u = s.verify(&t, 0).unwrap();
                assert_eq!((u.name.as_str(), u.claims), (user, claims));
            }
        }
    }

    #[test]
    fn anonymous_users_are_valid_and_distinct() {
        let a = anonymous_user();
        assert!(valid_user(&a));
        assert_ne!(a, anonymous_user());
    }

    #[test]
    fn one_spelling_per_token() {
        let s = Signer::new(b"0123456789abcdef0123456789abcdef");
        let t = s.mint("alice", 5_000_000_000).unwrap();
        assert_eq!(s.verify(&t, 1).unwrap().expires, 5_000_000_000);
        let (user, rest) = t.split_once('.').unwrap();
        for other in [format!("{user}.+{rest}"), format!("{user}.0{rest}"), format!(" {t}"), format!("{t} ")] {
            assert_eq!(s.verify(&other, 1), Err(TokenError::Malformed), "{other}");
        }
        assert_eq!(canonical_u64("0"), Some(0));
        assert_eq!(canonical_u64("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "00", "+1", "-1", "1 ", "99999999999999999999", "1e3"] {
            assert_eq!(canonical_u64(bad), None, "{bad:?}");
        }
    }
}
