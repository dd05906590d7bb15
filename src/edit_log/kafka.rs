//! The Kafka edit log: one topic with ONE partition is the cluster's single global order of
//! edits. Every node produces its placements to it and tails all of it.
//!
//! - Message value: the embedded log's 32-byte record (`file::encode`) with its CRC computed for
//!   version 0 (the broker assigns the offset after the record is written); Kafka's own batch CRC
//!   protects it in transit and at rest. When the user's display name is not yet in the user
//!   directory the name's bytes (at most 64) follow the record; every node's tail learns it
//!   (`names.rs`). Messages of 32 bytes (older nodes, or a known name) read as before. The message timestamp is the placement time (`ts_ms`).
//! - Version = offset + 1 (PROTOCOL.md), so version V is offset V - 1.
//! - `append` resolves only after the broker acknowledged the record (idempotent producer,
//!   acks=all) or after `timeout_ms` with an error (the placement then answers 503).
//! - `tail(after)` assigns partition 0 at offset `after` (no consumer group, no commits) and
//!   delivers every offset in order. Invariant: delivered versions are contiguous; an offset the
//!   broker never returns (a gap, e.g. a compacted or transactional offset) is delivered as a
//!   no-op edit so every node still numbers versions identically. A record that does not decode
//!   (a foreign producer) is also delivered as a no-op edit.
//! - While the broker is unreachable the tailer keeps retrying; it resumes at the next offset, so
//!   there is no gap and no duplicate.

use super::file::{decode, encode, RECORD};
/// The longest display name a message carries after its record (the token's rule).
const MAX_NAME_TAIL: usize = 64;
use super::{AppendAck, Committed, CommittedRun, Edit, EditLog, LogError, RunSender};
use crossbeam_channel::Sender;
use futures_channel::oneshot;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An edit that changes no pixel: it lies outside every canvas, so the applier applies it as a
/// no-op (used for offsets that carry no placecast record).
const NO_EDIT: Edit =
    Edit { x: crate::control::CONTROL_X, y: 0, color: crate::control::KIND_VOID, user: 0, ts_ms: 0, ext: 0, aux: 0 };

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    /// How long a placement waits for the broker's acknowledgement (`message.timeout.ms`); the
    /// start-up checks wait for the broker this long too.
    pub timeout_ms: u64,
    /// The producer's `linger.ms` (`--kafka-linger-ms`).
    pub linger_ms: u64,
}

impl KafkaSettings {
    /// The cluster settings of a configuration (`None` on the embedded log).
    pub fn of(args: &crate::config::ServeArgs) -> Option<KafkaSettings> {
        Some(KafkaSettings {
            brokers: args.kafka_brokers.clone()?,
            topic: args.kafka_topic.clone(),
            timeout_ms: args.kafka_timeout_ms,
            linger_ms: args.kafka_linger_ms,
        })
    }
}

/// Routes librdkafka's own logs and errors to `tracing`, at most one error line per 5 s. For a
/// producer, a failed delivery asks for the producer to be replaced (see `KafkaLog::producer`).
struct Ctx {
    last_error: Mutex<Option<Instant>>,
    failed: Option<crossbeam_channel::Sender<()>>,
    timeout_ms: u64,
}

impl Ctx {
    fn new() -> Self {
        Ctx { last_error: Mutex::new(None), failed: None, timeout_ms: 0 }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(facility = fac, "librdkafka: {log_message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *last = Some(Instant::now());
            tracing::warn!("Kafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    /// The log's head when the edit was sent, and where its answer goes.
    type DeliveryOpaque = Box<(u64, oneshot::Sender<Result<u64, LogError>>)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (head_at_send, tx) = *opaque;
        let r = match result {
            // The topic only grows: a new record's version is above every version that existed
            // when it was sent. A retry the broker refused as a duplicate of a record it had
            // already written is reported delivered with a made-up offset (tansu: -1 or 0): the
            // edit is in the topic, at a version this answer cannot tell.
            Ok(m) if m.offset() < 0 || (m.offset() as u64) < head_at_send => Err(LogError::OutcomeUnknown(format!(
                "the broker took the edit but reported offset {} while the log already held {head_at_send} edits",
                m.offset()
            ))),
            Ok(m) => Ok(m.offset() as u64 + 1),
            Err((e, _)) => Err(LogError::Unavailable(match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageTimedOut) => {
                    format!("Kafka did not acknowledge the edit within {} ms; the broker may be down", self.timeout_ms)
                }
                Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
                    "Kafka did not acknowledge the edit; the connection to the broker was reset".to_string()
                }
                _ => format!("Kafka did not acknowledge the edit: {e}"),
            })),
        };
        if r.is_err() {
            if let Some(f) = &self.failed {
                let _ = f.try_send(());
            }
        }
        let _ = tx.send(r);
    }
}

type Prod = ThreadedProducer<Ctx>;

pub struct KafkaLog {
    settings: KafkaSettings,
    /// Replaced after any failed delivery and after a fatal error. A failed delivery (a timeout
    /// while the broker is away) makes librdkafka's idempotent producer bump its epoch when the
    /// broker returns; tansu 0.6 panics on that request and stops serving, so a node never lets
    /// a producer that failed reach the broker again: a fresh producer gets a fresh producer id.
    /// Read by every placement without a lock (`ArcSwap`); swapped by `supervise`.
    producer: Arc<arc_swap::ArcSwap<Prod>>,
    /// The high watermark seen at start, then the last version delivered by the tailer.
    head: Arc<AtomicU64>,
    /// The low watermark at start: the oldest version still in the topic is `low + 1`.
    low: u64,
    /// Where the tail puts the names messages carry (set before `tail`).
    names: Option<Arc<crate::names::Names>>,
}

/// What every client of the cluster's broker is configured with (the edit log's and the
/// published checkpoints' alike).
pub(super) fn base_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("log_level", "4");
    c
}

fn unavailable(s: &KafkaSettings, what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("Kafka at {} ({what}): {e}", s.brokers))
}

fn make_producer(s: &KafkaSettings, failed: &crossbeam_channel::Sender<()>) -> Result<Prod, LogError> {
    base_config(s)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", s.linger_ms.to_string())
        .set("message.timeout.ms", s.timeout_ms.to_string())
        .set("queue.buffering.max.messages", "100000")
        .create_with_context(Ctx { failed: Some(failed.clone()), timeout_ms: s.timeout_ms, ..Ctx::new() })
        .map_err(|e| unavailable(s, "creating the producer", e))
}

/// Replaces the producer after a failed delivery (one replacement per burst of failures), and
/// drops the old one here, off the shards (dropping waits for librdkafka's threads).
fn supervise(
    settings: KafkaSettings,
    slot: std::sync::Weak<arc_swap::ArcSwap<Prod>>,
    failed_tx: crossbeam_channel::Sender<()>,
    failed: crossbeam_channel::Receiver<()>,
) {
    while failed.recv().is_ok() {
        while failed.try_recv().is_ok() {}
        let Some(slot) = slot.upgrade() else { return };
        match make_producer(&settings, &failed_tx) {
            Ok(fresh) => {
                let old = slot.swap(Arc::new(fresh));
                tracing::info!(
                    "a Kafka delivery failed; replaced the producer so it starts afresh when the broker is back"
                );
                // Wait until no shard holds the old one, so the slow drop happens here.
                let mut old = old;
                loop {
                    match Arc::try_unwrap(old) {
                        Ok(p) => break drop(p),
                        Err(o) => old = o,
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
        // Failures reported by the old producer while it was dropped are not the new one's.
        while failed.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn make_consumer(s: &KafkaSettings) -> Result<BaseConsumer<Ctx>, LogError> {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    base_config(s)
        // Required by librdkafka's consumer even though no group is joined (partitions are
        // assigned by hand and nothing is committed); unique so nodes never interfere.
        .set("group.id", format!("placecast-{:016x}", u64::from_le_bytes(id)))
        .set("enable.auto.commit", "false")
        // A fetch is abandoned (and the connection re-made) only after this long. tansu answers a
        // fetch in time proportional to the records after the fetch offset (over a minute for 10
        // million), and an abandoned fetch would be retried from scratch forever. A dead broker
        // is still noticed at once (the connection fails).
        .set("socket.timeout.ms", "300000")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("allow.auto.create.topics", "false")
        // Low log-to-batch latency: the broker answers a fetch as soon as one byte is there,
        // and an empty fetch returns within 10 ms.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        .set("queued.min.messages", "100000")
        // Replaying history: large fetches (a record is ~70 bytes on the wire). tansu computes
        // each fetch over all records from the fetch offset to the end, so fewer, larger fetches
        // replay a long topic much faster there.
        .set("max.partition.fetch.bytes", "33554432")
        .set("fetch.max.bytes", "67108864")
        .set("receive.message.max.bytes", "268435456")
        .create_with_context(Ctx::new())
        .map_err(|e| unavailable(s, "creating the consumer", e))
}

impl KafkaLog {
    /// Connects and checks the topic: it must exist with exactly one partition. Fails with a
    /// plain message (never hangs) when the broker is unreachable within the timeout.
    pub fn connect(settings: KafkaSettings) -> Result<Self, LogError> {
        let s = &settings;
        let timeout = Duration::from_millis(s.timeout_ms.max(1000));
        let probe = make_consumer(s)?;
        let md = probe.fetch_metadata(Some(&s.topic), timeout).map_err(|e| {
            LogError::Unavailable(format!(
                "cannot reach Kafka at {} within {} ms: {e}; check --kafka-brokers",
                s.brokers,
                timeout.as_millis()
            ))
        })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == s.topic) else {
            return Err(LogError::Unavailable(format!("Kafka at {} did not describe topic {:?}", s.brokers, s.topic)));
        };
        match t.error() {
            None => {}
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                return Err(LogError::Unavailable(format!(
                    "topic {:?} does not exist on Kafka at {}; create it with exactly one partition (see KAFKA.md)",
                    s.topic, s.brokers
                )))
            }
            Some(e) => {
                return Err(LogError::Unavailable(format!("topic {:?} on Kafka at {}: {e:?}", s.topic, s.brokers)))
            }
        }
        if t.partitions().is_empty() {
            return Err(LogError::Unavailable(format!(
                "topic {:?} on Kafka at {} has no partitions",
                s.topic, s.brokers
            )));
        }
        if t.partitions().len() != 1 {
            return Err(LogError::Unavailable(format!(
                "topic {:?} has {} partitions; placecast needs exactly one (one partition is one global order of edits)",
                s.topic,
                t.partitions().len()
            )));
        }
        let (low, high) = probe
            .fetch_watermarks(&s.topic, 0, timeout)
            .map_err(|e| unavailable(s, "reading the topic's offsets", e))?;
        let (failed_tx, failed_rx) = crossbeam_channel::bounded(1);
        let producer = Arc::new(arc_swap::ArcSwap::from_pointee(make_producer(s, &failed_tx)?));
        let (weak, set) = (Arc::downgrade(&producer), settings.clone());
        std::thread::Builder::new()
            .name("placecast-kafka-producer".into())
            .spawn(move || supervise(set, weak, failed_tx, failed_rx))
            .map_err(|e| LogError::Io(e.to_string()))?;
        Ok(KafkaLog {
            producer,
            head: Arc::new(AtomicU64::new(high.max(0) as u64)),
            low: low.max(0) as u64,
            settings,
            names: None,
        })
    }

    /// The oldest version the topic still holds minus one: a tail must start at or after it.
    /// The timestamp of version `v` (one fetch; for the offline tools).
    pub fn message_ts(&self, v: u64) -> Result<u64, LogError> {
        let consumer = make_consumer(&self.settings)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.settings.topic, 0, Offset::Offset(v as i64 - 1))
            .map_err(|e| unavailable(&self.settings, "assigning the partition", e))?;
        consumer.assign(&tpl).map_err(|e| unavailable(&self.settings, "assigning the partition", e))?;
        let deadline = Instant::now() + Duration::from_millis(self.settings.timeout_ms.max(1000));
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let edit = m.payload().filter(|p| p.len() >= RECORD).and_then(|p| decode(0, &p[..RECORD]));
                return Ok(edit.map_or(0, |e| e.ts_ms));
            }
        }
        Err(unavailable(&self.settings, "reading one message", "timed out"))
    }

    /// The user directory the tail fills from the names messages carry.
    pub fn set_names(&mut self, names: Arc<crate::names::Names>) {
        self.names = Some(names);
    }

    pub fn oldest_after(&self) -> u64 {
        self.low
    }

    fn producer(&self) -> Result<Arc<Prod>, LogError> {
        let p = self.producer.load_full();
        if let Some((code, reason)) = p.client().fatal_error() {
            tracing::warn!(?code, reason, "the Kafka producer hit a fatal error; it is being replaced");
            if let Some(f) = &p.context().failed {
                let _ = f.try_send(());
            }
            return Err(LogError::Unavailable(format!("the Kafka producer failed: {reason}")));
        }
        Ok(p.clone())
    }
}

impl EditLog for KafkaLog {
    fn append_named(&self, edit: Edit, name: Option<Box<str>>) -> Result<AppendAck, LogError> {
        let name = name.filter(|n| n.len() <= MAX_NAME_TAIL);
        let mut rec = [0u8; RECORD + MAX_NAME_TAIL];
        encode(0, &edit, &mut rec);
        let len = RECORD + name.as_ref().map_or(0, |n| n.len());
        if let Some(n) = &name {
            rec[RECORD..len].copy_from_slice(n.as_bytes());
        }
        let (tx, rx) = oneshot::channel();
        let head = self.head.load(Ordering::Acquire);
        let record = BaseRecord::<(), [u8], _>::with_opaque_to(&self.settings.topic, Box::new((head, tx)))
            .partition(0)
            .payload(&rec[..len])
            .timestamp(edit.ts_ms as i64);
        match self.producer()?.send(record) {
            Ok(()) => Ok(rx),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(LogError::Overloaded),
            Err((e, _)) => Err(LogError::Unavailable(format!("Kafka refused the edit: {e}"))),
        }
    }

    /// Produces the edits in order and waits for every acknowledgement: this blocks (the routes
    /// call it on a blocking thread). A full producer queue is waited out, up to the timeout.
    fn append_many(&self, edits: Vec<Edit>, name: Option<Box<str>>) -> Result<AppendAck, LogError> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.timeout_ms);
        let mut acks = Vec::with_capacity(edits.len());
        let mut name = name;
        for e in edits {
            // The name travels with the first pixel edit (a control entry's `user` is its argument).
            let carried = if e.x == crate::control::CONTROL_X { None } else { name.clone() };
            loop {
                match self.append_named(e, carried.clone()) {
                    Ok(ack) => {
                        acks.push(ack);
                        if carried.is_some() {
                            name = None;
                        }
                        break;
                    }
                    Err(LogError::Overloaded) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        let mut last = Ok(self.head());
        for ack in acks {
            match futures_lite::future::block_on(ack) {
                Ok(Ok(v)) => last = Ok(v),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(LogError::Closed),
            }
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(last);
        Ok(rx)
    }

    fn tail(&self, after: u64, sink: Sender<CommittedRun>) -> Result<(), LogError> {
        let consumer = make_consumer(&self.settings)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.settings.topic, 0, Offset::Offset(after as i64))
            .map_err(|e| unavailable(&self.settings, "assigning the partition", e))?;
        consumer.assign(&tpl).map_err(|e| unavailable(&self.settings, "assigning the partition", e))?;
        let head = self.head.clone();
        let names = self.names.clone();
        std::thread::Builder::new()
            .name("placecast-kafka".into())
            .spawn(move || tail_loop(consumer, after, sink, head, names))
            .map_err(|e| LogError::Io(e.to_string()))?;
        Ok(())
    }

    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn describe(&self) -> String {
        format!("Kafka topic {:?} at {}", self.settings.topic, self.settings.brokers)
    }
}

/// Delivers offsets `after..` as versions `after+1..` until the sink is gone, in runs: what the
/// consumer has in hand goes as one (a poll that waits only while the run is empty), so a
/// replay or a burst wakes the applier once per run and a trickle adds no delay.
fn tail_loop(
    consumer: BaseConsumer<Ctx>,
    after: u64,
    sink: Sender<CommittedRun>,
    head: Arc<AtomicU64>,
    names: Option<Arc<crate::names::Names>>,
) {
    let mut next = after; // the next offset to deliver = the last delivered version
    let mut last_warn: Option<Instant> = None;
    // A guess at what a poll has in hand: it only sizes each run's allocation.
    let mut runs = RunSender::new(&sink, 64);
    loop {
        let wait = if runs.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
        match consumer.poll(wait) {
            None => {}
            Some(Ok(m)) => {
                let offset = m.offset().max(0) as u64;
                if offset < next {
                    continue; // already delivered (cannot happen with an assigned offset)
                }
                while next < offset {
                    tracing::warn!(offset = next, "Kafka returned no record at this offset; it is a no-op version");
                    if runs.push(Committed { version: next + 1, edit: NO_EDIT }).is_err() {
                        return;
                    }
                    next += 1;
                }
                let payload = m.payload().filter(|p| (RECORD..=RECORD + MAX_NAME_TAIL).contains(&p.len()));
                let edit = payload.and_then(|p| decode(0, &p[..RECORD])).unwrap_or_else(|| {
                    tracing::warn!(offset, "a Kafka message is not a placecast edit; it is a no-op version");
                    NO_EDIT
                });
                // The name is learned before the edit is delivered, so a lookup that finds the
                // edit finds its name.
                if let (Some(n), Some(p)) = (&names, payload) {
                    if let Some(name) = crate::names::from_message_tail(&p[RECORD..]) {
                        n.learn(edit.user, name);
                    }
                }
                if runs.push(Committed { version: offset + 1, edit }).is_err() {
                    return;
                }
                next = offset + 1;
                if runs.is_empty() {
                    head.fetch_max(next, Ordering::AcqRel); // a full run just went
                }
                continue; // take what else the consumer has in hand into the same run
            }
            Some(Err(e)) => {
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    last_warn = Some(Instant::now());
                    tracing::warn!(error = %e, at_version = next, "tailing Kafka failed; retrying");
                }
                if deliver_in_hand(&mut runs, &head, next).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        // The poll came back empty: what is in hand goes now.
        if deliver_in_hand(&mut runs, &head, next).is_err() {
            return;
        }
    }
}

/// Sends the open run and moves the log's head to what was delivered.
fn deliver_in_hand(runs: &mut RunSender, head: &AtomicU64, next: u64) -> Result<(), super::SinkClosed> {
    runs.flush()?;
    head.fetch_max(next, Ordering::AcqRel);
    Ok(())
}
