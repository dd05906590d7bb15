//! Published checkpoints: nodes of a cluster put their checkpoint (`checkpoint.rs`: canvas,
//! version, rule state) on a second Kafka topic beside the edit topic, so a node that joins with
//! an empty data directory starts from the newest one and replays only the tail of the edit
//! topic, instead of all of it (ten minutes for 10 million edits on tansu).
//!
//! Format: a checkpoint is cut into chunks of at most `CHUNK_BYTES`, one message each, keyed
//! `<node>-<index>` (so a compacted topic keeps the newest chunk of each index of each node).
//! Every chunk starts with a 68-byte header: magic `PCP1`, the publishing node's random id u64,
//! the checkpoint's version u64, the chunk's index u32 and the count u32, the checkpoint's total
//! length u64 and its SHA-256 (32 bytes), little-endian; the chunk's bytes follow.
//!
//! Reading: the newest `READBACK` messages of the topic (enough for two of the largest
//! checkpoints and many small ones); the newest version whose chunks are all there and whose
//! SHA-256 matches wins. Chunks of different nodes may interleave: they are grouped by node and
//! version. Memory while reading is bounded by `MAX_CHECKPOINT_BYTES` per set kept, and sets
//! older than the best complete one are dropped.
//!
//! Invariants: a published checkpoint is only ever used whole and verified; a node that cannot
//! read the topic (missing, broker away) starts as before, from the edit topic. Publishing is
//! best effort, on its own thread, reading the node's own `checkpoint.bin` (atomic renames: it
//! is always a whole file), and never blocks the applier. Not here: the checks that a checkpoint
//! belongs to this cluster and configuration (`Applier::restore`).

use super::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::bounds::{CHECKPOINT_CHUNK_BYTES as CHUNK_BYTES, MAX_CHECKPOINT_BYTES, PUBLISHED_READBACK as READBACK};

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
}

/// The chunks of `bytes` (a checkpoint at `version`) as messages: `(key, value)`.
fn chunks(node: u64, version: u64, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
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
struct Assembler {
    /// `(node, version)` → the chunks seen so far.
    sets: HashMap<(u64, u64), Partial>,
    best: Option<(u64, Vec<u8>)>,
}

impl Assembler {
    fn add(&mut self, value: &[u8]) {
        let Some(h) = Head::decode(value) else { return };
        if self.best.as_ref().is_some_and(|(v, _)| *v >= h.version) {
            return;
        }
        let key = (h.node, h.version);
        let entry = self.sets.entry(key).or_insert_with(|| (h, vec![None; h.count as usize]));
        if entry.0.count != h.count || entry.0.sha != h.sha || entry.0.total != h.total {
            return; // a different checkpoint under the same node and version: not ours to mix
        }
        entry.1[h.index as usize] = Some(value[HEADER..].to_vec());
        if entry.1.iter().all(Option::is_some) {
            let (head, parts) = self.sets.remove(&key).expect("just seen");
            let whole: Vec<u8> = parts.into_iter().flatten().flatten().collect();
            let sha: [u8; 32] = Sha256::digest(&whole).into();
            if whole.len() as u64 == head.total && sha == head.sha {
                self.best = Some((head.version, whole));
                let best = head.version;
                self.sets.retain(|(_, v), _| *v > best);
            }
        }
        // Bounded: at most two sets in progress per node are worth keeping; drop the oldest.
        while self.sets.len() > 64 {
            let oldest = *self.sets.keys().min_by_key(|(_, v)| *v).expect("not empty");
            self.sets.remove(&oldest);
        }
    }
}

fn consumer(s: &KafkaSettings) -> Result<BaseConsumer, String> {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    super::kafka::base_config(s)
        .set("group.id", format!("placecast-cp-{:016x}", u64::from_le_bytes(id)))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "10")
        .set("max.partition.fetch.bytes", "33554432")
        .set("fetch.max.bytes", "67108864")
        .set("receive.message.max.bytes", "268435456")
        .create()
        .map_err(|e| format!("creating a consumer: {e}"))
}

/// The newest whole checkpoint on `topic` as `(version, bytes)`, None when there is none (or
/// the topic does not exist). Waits at most the settings' timeout for each step.
pub fn fetch_newest(s: &KafkaSettings, topic: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
    let timeout = Duration::from_millis(s.timeout_ms.max(1000));
    let c = consumer(s)?;
    let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| format!("reading the metadata of {topic:?}: {e}"))?;
    let exists = md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Ok(None);
    }
    let (low, high) =
        c.fetch_watermarks(topic, 0, timeout).map_err(|e| format!("reading the offsets of {topic:?}: {e}"))?;
    if high <= low {
        return Ok(None);
    }
    let from = low.max(high - READBACK as i64);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from)).map_err(|e| e.to_string())?;
    c.assign(&tpl).map_err(|e| format!("assigning {topic:?}: {e}"))?;
    let mut asm = Assembler::default();
    let mut next = from;
    // Each poll answers within the fetch wait; the whole read is bounded by a deadline that
    // grows with what is read (a slow broker still gets `timeout` per message batch).
    let mut deadline = Instant::now() + timeout;
    while next < high {
        if Instant::now() >= deadline {
            return Err(format!("reading {topic:?} timed out at offset {next} of {high}"));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if let Some(p) = m.payload() {
                    asm.add(p);
                }
                deadline = Instant::now() + timeout;
            }
            Some(Err(e)) => return Err(format!("reading {topic:?}: {e}")),
            None => {}
        }
    }
    Ok(asm.best)
}

/// Puts one checkpoint on `topic` and waits until the broker has every chunk.
pub fn publish(s: &KafkaSettings, topic: &str, node: u64, version: u64, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_CHECKPOINT_BYTES {
        return Err(format!("the checkpoint is {} bytes; at most {MAX_CHECKPOINT_BYTES} are published", bytes.len()));
    }
    let p: BaseProducer = super::kafka::base_config(s)
        .set("acks", "all")
        .set("message.max.bytes", (CHUNK_BYTES + 4096).to_string())
        .set("message.timeout.ms", s.timeout_ms.to_string())
        .create()
        .map_err(|e| format!("creating a producer: {e}"))?;
    for (key, value) in chunks(node, version, bytes) {
        let mut record = BaseRecord::to(topic).partition(0).key(&key).payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                        return Err(format!("producing to {topic:?}: {e}"));
                    }
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_millis(s.timeout_ms)).map_err(|e| format!("waiting for {topic:?}: {e}"))?;
    Ok(())
}

/// Starts the thread that publishes the node's `checkpoint.bin` every `every` when its version
/// moved. Failures are logged (at most one line a minute) and retried at the next turn.
pub fn spawn_publisher(s: KafkaSettings, topic: String, data_dir: PathBuf, every: Duration) -> std::io::Result<()> {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    let node = u64::from_le_bytes(id);
    std::thread::Builder::new().name("placecast-publish".into()).spawn(move || {
        let (mut last, mut last_warn) = (0u64, None::<Instant>);
        loop {
            std::thread::sleep(every);
            let path = crate::checkpoint::path_in(&data_dir);
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Some(cp) = crate::checkpoint::Checkpoint::decode(&bytes) else { continue };
            if cp.version <= last {
                continue;
            }
            let started = Instant::now();
            match publish(&s, &topic, node, cp.version, &bytes) {
                Ok(()) => {
                    last = cp.version;
                    tracing::info!(version = cp.version, bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, topic, "checkpoint published");
                }
                Err(e) if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) => {
                    last_warn = Some(Instant::now());
                    tracing::warn!(error = %e, topic, "publishing the checkpoint failed; a joining node replays more of the edit topic");
                }
                Err(_) => {}
            }
        }
    })?;
    Ok(())
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
}
