//! The chunk format of published checkpoints (`published.rs` puts them on and reads them from
//! a Kafka topic) and their reassembly: outside bytes, so everything here is checked.
//!
//! A checkpoint is cut into chunks of `CHUNK_BYTES` (the last one shorter), one message each.
//! Every chunk starts with a 68-byte header: magic `PCP1`, the publishing node's random id u64,
//! the checkpoint's version u64, the chunk's index u32 and the count u32, the checkpoint's total
//! length u64 and its SHA-256 (32 bytes), little-endian; the chunk's bytes follow.
//!
//! Invariants: a header is taken only if its checkpoint fits `MAX_CHECKPOINT_BYTES`, its count
//! matches its length and its chunk is exactly as long as that index must be, so a set being
//! assembled never holds more than its checkpoint's length; at most `MAX_SETS` sets are in
//! progress (the oldest version goes first; a set is a node, version and hash), and sets older than the best complete one are
//! dropped. A checkpoint comes out only whole and with a matching SHA-256; messages of other
//! kinds, damaged or impossible ones are ignored. Not here: what a checkpoint holds
//! (`checkpoint.rs`) and whether it belongs to this cluster (`Applier::restore`).

use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub use crate::bounds::{CHECKPOINT_CHUNK_BYTES as CHUNK_BYTES, MAX_CHECKPOINT_BYTES};

/// Checkpoints assembled at once: a few nodes publishing, two versions each, is far below it.
pub const MAX_SETS: usize = 64;

const MAGIC: &[u8; 4] = b"PCP1";
const HEADER: usize = 68;

/// One chunk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    node: u64,
    version: u64,
    index: u32,
    count: u32,
    total: u64,
    sha: [u8; 32],
}

impl Head {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(MAGIC);
        h[4..12].copy_from_slice(&self.node.to_le_bytes());
        h[12..20].copy_from_slice(&self.version.to_le_bytes());
        h[20..24].copy_from_slice(&self.index.to_le_bytes());
        h[24..28].copy_from_slice(&self.count.to_le_bytes());
        h[28..36].copy_from_slice(&self.total.to_le_bytes());
        h[36..68].copy_from_slice(&self.sha);
        h
    }

    /// A header that can belong to a checkpoint within the bounds, or None.
    fn decode(b: &[u8]) -> Option<Head> {
        if b.len() < HEADER || &b[0..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let h = Head {
            node: u64_at(4),
            version: u64_at(12),
            index: u32_at(20),
            count: u32_at(24),
            total: u64_at(28),
            sha: b[36..68].try_into().expect("32 bytes"),
        };
        let fits = h.total as usize <= MAX_CHECKPOINT_BYTES
            && h.count as u64 == h.total.div_ceil(CHUNK_BYTES as u64).max(1)
            && h.index < h.count;
        fits.then_some(h)
    }

    /// The length chunk `index` of this checkpoint has.
    fn chunk_len(&self) -> usize {
        let start = self.index as usize * CHUNK_BYTES;
        (self.total as usize).saturating_sub(start).min(CHUNK_BYTES)
    }
}

/// The chunks of `bytes` (a checkpoint at `version`) as messages: `(key, value)`.
pub fn chunks(node: u64, version: u64, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1) as u32;
    (0..count)
        .map(|i| {
            let part =
                &bytes[(i as usize * CHUNK_BYTES).min(bytes.len())..((i as usize + 1) * CHUNK_BYTES).min(bytes.len())];
            let head = Head { node, version, index: i, count, total: bytes.len() as u64, sha };
            let mut v = Vec::with_capacity(HEADER + part.len());
            v.extend_from_slice(&head.encode());
            v.extend_from_slice(part);
            (format!("{node:016x}-{i}"), v)
        })
        .collect()
}

/// A checkpoint being assembled: its header and the chunks seen so far.
type Partial = (Head, Vec<Option<Vec<u8>>>);

/// Assembles checkpoints from messages in topic order; keeps the newest complete one.
#[derive(Default)]
pub struct Assembler {
    /// `(node, version, SHA-256)` → the chunks seen so far. The hash is part of the key so a
    /// damaged chunk under the same node and version starts its own set instead of blocking
    /// the real one.
    sets: HashMap<(u64, u64, [u8; 32]), Partial>,
    best: Option<(u64, Vec<u8>)>,
}

impl Assembler {
    /// Takes one message of the topic (in topic order).
    pub fn add(&mut self, value: &[u8]) {
        let Some(h) = Head::decode(value) else { return };
        if value.len() - HEADER != h.chunk_len() {
            return; // a chunk of another length cannot be this index of this checkpoint
        }
        if self.best.as_ref().is_some_and(|(v, _)| *v >= h.version) {
            return;
        }
        let key = (h.node, h.version, h.sha);
        let entry = self.sets.entry(key).or_insert_with(|| (h, vec![None; h.count as usize]));
        if entry.0.count != h.count || entry.0.total != h.total {
            return; // a different checkpoint under the same hash: not ours to mix
        }
        entry.1[h.index as usize] = Some(value[HEADER..].to_vec());
        if entry.1.iter().all(Option::is_some) {
            let (head, parts) = self.sets.remove(&key).expect("just seen");
            let whole: Vec<u8> = parts.into_iter().flatten().flatten().collect();
            let sha: [u8; 32] = Sha256::digest(&whole).into();
            if whole.len() as u64 == head.total && sha == head.sha {
                self.best = Some((head.version, whole));
                let best = head.version;
                self.sets.retain(|(_, v, _), _| *v > best);
            }
        }
        // Bounded: at most two sets in progress per node are worth keeping; drop the oldest.
        while self.sets.len() > MAX_SETS {
            let oldest = *self.sets.keys().min_by_key(|(_, v, _)| *v).expect("not empty");
            self.sets.remove(&oldest);
        }
    }

    /// The newest complete checkpoint taken so far: `(version, bytes)`.
    pub fn best(&self) -> Option<&(u64, Vec<u8>)> {
        self.best.as_ref()
    }

    pub fn into_best(self) -> Option<(u64, Vec<u8>)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn chunks_reassemble_interleaved_and_the_newest_whole_one_wins() {
        let (a, b) = (bytes(CHUNK_BYTES * 2 + 17, 1), bytes(CHUNK_BYTES + 5, 2));
        let (ca, cb) = (chunks(1, 100, &a), chunks(2, 120, &b));
        assert_eq!((ca.len(), cb.len()), (3, 2));
        let mut asm = Assembler::default();
        // Node 2's newer checkpoint interleaved with node 1's; node 2's second chunk missing.
        asm.add(&ca[0].1);
        asm.add(&cb[0].1);
        asm.add(&ca[1].1);
        asm.add(&ca[2].1);
        assert_eq!(asm.best.as_ref().map(|(v, b)| (*v, b.len())), Some((100, a.len())));
        asm.add(&cb[1].1);
        assert_eq!(asm.best, Some((120, b.clone())));
        // Older ones after it change nothing; damage is refused by the hash.
        asm.add(&ca[0].1);
        assert_eq!(asm.best.as_ref().map(|(v, _)| *v), Some(120));
        let c = chunks(3, 130, &bytes(10, 3));
        let mut bad = c[0].1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        asm.add(&bad);
        assert_eq!(asm.best.as_ref().map(|(v, _)| *v), Some(120));
        // Garbage and impossible headers are ignored.
        asm.add(b"not a chunk");
        let mut huge = c[0].1.clone();
        huge[28..36].copy_from_slice(&(u64::MAX).to_le_bytes());
        asm.add(&huge);
        asm.add(&c[0].1);
        assert_eq!(asm.best.as_ref().map(|(v, b)| (*v, b.len())), Some((130, 10)));
    }

    #[test]
    fn a_chunk_of_the_wrong_length_is_not_taken() {
        let a = bytes(CHUNK_BYTES + 100, 4);
        let c = chunks(5, 200, &a);
        let mut asm = Assembler::default();
        let mut short = c[1].1.clone();
        short.pop();
        let mut long = c[1].1.clone();
        long.push(0);
        for m in [&c[0].1, &short, &long] {
            asm.add(m);
        }
        assert!(asm.best().is_none());
        asm.add(&c[1].1);
        assert_eq!(asm.into_best(), Some((200, a)));
    }

    #[test]
    fn a_damaged_chunk_first_does_not_block_the_real_one() {
        let a = bytes(CHUNK_BYTES + 9, 6);
        let c = chunks(8, 300, &a);
        let mut forged = c[0].1.clone();
        forged[36] ^= 1; // same node, version and lengths; another hash
        let mut asm = Assembler::default();
        for m in [&forged, &c[0].1, &c[1].1] {
            asm.add(m);
        }
        assert_eq!(asm.into_best(), Some((300, a)));
    }
}
