//! Published checkpoints: nodes of a cluster put their checkpoint (`checkpoint.rs`: canvas,
//! version, rule state) on a second Kafka topic beside the edit topic, so a node that joins with
//! an empty data directory starts from the newest one and replays only the tail of the edit
//! topic, instead of all of it (ten minutes for 10 million edits on tansu).
//!
//! Format: a checkpoint is cut into chunks, one message each, keyed `<node>-<index>` (so a
//! compacted topic keeps the newest chunk of each index of each node); the chunk format and its
//! reassembly are `checkpoint_chunks.rs`. Reading: the newest `READBACK` messages of the topic
//! (enough for two of the largest checkpoints and many small ones); the newest version whose
//! chunks are all there and whose SHA-256 matches wins.
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
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::checkpoint_chunks::{chunks, Assembler, CHUNK_BYTES, MAX_CHECKPOINT_BYTES};
pub use crate::bounds::PUBLISHED_READBACK as READBACK;

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
    Ok(asm.into_best())
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
