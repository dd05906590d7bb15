//! Claims in user tokens, mapped to cooldowns: the sign-in service puts claims in the token
//! (`verified`, `age90`, ...; `token.rs`), and `--claim-cooldown verified=300` gives users whose
//! token carries `verified` a 300 s cooldown instead of the default `--cooldown` (Reddit 2022 gave
//! unverified accounts a longer one). A user's class is the first configured claim (in flag
//! order) their token carries; none gives the default, which the cooldown control entry changes.
//!
//! The class travels in each edit (bits 8..11 of `Edit::aux`), so on a cluster the log-order rule
//! judges every edit with the cooldown of the class it was placed with, the same on every node;
//! every node must be given the same `--claim-cooldown` flags (as the same `--cooldown`).
//!
//! `ClaimTable` remembers, per user key, the class of the last token verified for them, because a
//! WebSocket placement only carries the user's key. Bounded by `MAX_CLAIMED`; a user it cannot
//! hold (or that it swept after `CLAIM_TTL_MS` unseen) places with the default cooldown until
//! their token is verified again (a reconnect): the safe direction when the default is the longer.

pub use crate::bounds::{CLAIM_TTL_MS, MAX_CLAIMED};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use thiserror::Error;

/// Classes a node can be configured with (4 bits of the edit's flags, 0 = the default).
pub const MAX_CLASSES: usize = 8;
/// Claims one token may carry.
pub const MAX_TOKEN_CLAIMS: usize = 8;
/// Where the class sits in `Edit::aux`.
pub const CLASS_SHIFT: u32 = 8;
const CLASS_MASK: u32 = 0xF;
const SHARDS: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("--claim-cooldown {0:?}: expected NAME=SECONDS, NAME 1-32 of [a-z0-9_-], SECONDS at most a year")]
    Bad(String),
    #[error("--claim-cooldown: at most {MAX_CLASSES} claims")]
    TooMany,
    #[error("--claim-cooldown: {0:?} is given twice")]
    Twice(String),
}

pub fn valid_claim(c: &str) -> bool {
    (1..=32).contains(&c.len())
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The configured claim cooldowns, in flag order (class `i + 1` is entry `i`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimCooldowns {
    classes: Vec<(String, u64)>,
}

impl ClaimCooldowns {
    pub fn parse(flags: &[String]) -> Result<Self, ClaimError> {
        if flags.len() > MAX_CLASSES {
            return Err(ClaimError::TooMany);
        }
        let mut classes: Vec<(String, u64)> = Vec::new();
        for f in flags {
            let bad = || ClaimError::Bad(f.clone());
            let (name, secs) = f.split_once('=').ok_or_else(bad)?;
            let secs = crate::token::canonical_u64(secs).filter(|&s| s <= 365 * 24 * 3600).ok_or_else(bad)?;
            if !valid_claim(name) {
                return Err(bad());
            }
            if classes.iter().any(|(n, _)| n == name) {
                return Err(ClaimError::Twice(name.to_string()));
            }
            classes.push((name.to_string(), secs * 1000));
        }
        Ok(ClaimCooldowns { classes })
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The class of a token's claims: the first configured claim it carries (1-based), or 0.
    pub fn class_of(&self, claims: &[String]) -> u8 {
        self.classes.iter().position(|(n, _)| claims.iter().any(|c| c == n)).map_or(0, |i| i as u8 + 1)
    }

    /// The cooldown of `class`; `default_ms` for class 0 (or one this node does not know).
    pub fn cooldown_ms(&self, class: u8, default_ms: u64) -> u64 {
        match class {
            0 => default_ms,
            c => self.classes.get(c as usize - 1).map_or(default_ms, |(_, ms)| *ms),
        }
    }

    /// The longest class cooldown (the limiter keeps entries that long).
    pub fn longest_ms(&self) -> u64 {
        self.classes.iter().map(|(_, ms)| *ms).max().unwrap_or(0)
    }

    /// Each class's cooldown in class order (for the log-order rule).
    pub fn table(&self) -> Vec<u64> {
        self.classes.iter().map(|(_, ms)| *ms).collect()
    }
}

/// The class bits of an edit's flags.
pub fn class_of_edit(aux: u32) -> u8 {
    ((aux >> CLASS_SHIFT) & CLASS_MASK) as u8
}

pub fn edit_flags(class: u8) -> u32 {
    (class as u32 & CLASS_MASK) << CLASS_SHIFT
}

/// User key → (class, last verified ms).
type Shard = FxHashMap<u64, (u8, u64)>;

/// User key → (class, last verified ms), for users whose class is not 0.
pub struct ClaimTable {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
}

impl Default for ClaimTable {
    fn default() -> Self {
        ClaimTable { shards: (0..SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(), len: AtomicUsize::new(0) }
    }
}

impl ClaimTable {
    fn shard(&self, user: u64) -> std::sync::MutexGuard<'_, Shard> {
        let h = user ^ (user >> 29) ^ (user >> 47);
        self.shards[(h as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for `user` of `class` was verified at `now_ms`.
    pub fn note(&self, user: u64, class: u8, now_ms: u64) {
        let mut s = self.shard(user);
        match class {
            0 => {
                if s.remove(&user).is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
            c => {
                if let Some(e) = s.get_mut(&user) {
                    *e = (c, now_ms);
                } else if self.len.load(Ordering::Relaxed) < MAX_CLAIMED {
                    s.insert(user, (c, now_ms));
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn class(&self, user: u64) -> u8 {
        self.shard(user).get(&user).map_or(0, |e| e.0)
    }

    /// Forgets classes not verified for `CLAIM_TTL_MS`.
    pub fn sweep(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.len();
            s.retain(|_, (_, at)| now_ms.saturating_sub(*at) < CLAIM_TTL_MS);
            self.len.fetch_sub(before - s.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_flags_and_claims() {
        let c = ClaimCooldowns::parse(&["verified=300".into(), "age90=60".into()]).unwrap();
        assert_eq!(c.class_of(&["age90".into(), "verified".into()]), 1, "flag order decides");
        assert_eq!(c.class_of(&["age90".into()]), 2);
        assert_eq!(c.class_of(&["other".into()]), 0);
        assert_eq!(
            (c.cooldown_ms(1, 5), c.cooldown_ms(2, 5), c.cooldown_ms(0, 5), c.cooldown_ms(9, 5)),
            (300_000, 60_000, 5, 5)
        );
        assert_eq!(c.longest_ms(), 300_000);
        for bad in ["x", "x=", "X=1", "x=01", "x=99999999999"] {
            assert!(matches!(ClaimCooldowns::parse(&[bad.into()]), Err(ClaimError::Bad(_))), "{bad}");
        }
        assert_eq!(ClaimCooldowns::parse(&["a=1".into(), "a=2".into()]), Err(ClaimError::Twice("a".into())));
        assert_eq!(class_of_edit(edit_flags(2) | 3), 2);

        let t = ClaimTable::default();
        t.note(7, 2, 1_000);
        assert_eq!((t.class(7), t.class(8)), (2, 0));
        t.sweep(1_000 + CLAIM_TTL_MS);
        assert_eq!(t.class(7), 0);
        t.note(7, 1, 0);
        t.note(7, 0, 1);
        assert_eq!(t.class(7), 0);
    }
}
