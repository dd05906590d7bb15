//! Reading a whole log for the offline tools (`export`, `timelapse`): the embedded log's file
//! (read-only and without its lock, so it works while a server is running: the file only grows,
//! and a record being written is simply not read yet) or the Kafka topic (a tail from its
//! beginning up to the end it had when the tool started).
//!
//! Invariant: a tool sees the edits the applier would apply, judged the same way: on Kafka the
//! log-order rule (`log_rule.rs`: the configured `--cooldown` until a cooldown entry, and the
//! switches of the control entries) decides which edits changed a pixel; an edit outside the
//! canvas, or a control entry, never does.

use crate::canvas::Geometry;
use crate::config::Config;
use crate::edit_log::file::{decode, GROUP, LOG_FILE, RECORD};
use crate::edit_log::{Committed, Edit};
use crate::log_rule::LogRule;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// One version as a tool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub edit: Edit,
    /// Whether the applier changes the pixel for it.
    pub applied: bool,
}

/// The log's extent when the tool starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Versions `(first, head]` are in the log.
    pub first: u64,
    pub head: u64,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
}

/// What a scan of the embedded log's file finds before reading it for real.
struct Scan {
    head: u64,
    /// The canvas as the log's resize entries leave it at `head`.
    geometry: Geometry,
}

/// Every version of the configured log up to its head at start, in order.
pub struct LogReader {
    pub extent: Extent,
    source: Source,
    next: u64,
    /// The canvas at the version being read (resize entries grow it).
    geometry: Geometry,
    /// The canvas at the log's head, when known without reading the log twice (the embedded
    /// file, scanned at open); the configured one on Kafka.
    pub final_geometry: Geometry,
    rule: Option<LogRule>,
    /// The first edit of a Kafka topic, read to learn its time before iterating.
    peeked: Option<Committed>,
    /// Keeps the Kafka log (its producer and consumer handles) alive while reading.
    _log: Option<Box<dyn std::any::Any>>,
}

enum Source {
    File(BufReader<File>),
    /// A Kafka tail's runs, and what is left of the run in hand.
    Channel(crossbeam_channel::Receiver<crate::edit_log::CommittedRun>, std::vec::IntoIter<Committed>),
}

impl LogReader {
    pub fn open(config: &Config) -> Result<LogReader, String> {
        let args = &config.args;
        #[cfg(feature = "kafka")]
        if args.kafka_brokers.is_some() {
            return Self::open_kafka(config);
        }
        let path = args.data_dir.join(LOG_FILE);
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes = file.metadata().map_err(|e| e.to_string())?.len();
        let Scan { head, geometry: final_geometry } = valid_records(&file, bytes / RECORD as u64, &config.geometry)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        (&file).seek(SeekFrom::Start(0)).map_err(|e| format!("{}: {e}", path.display()))?;
        let ts = |v: u64| -> u64 {
            let mut rec = [0u8; RECORD];
            file.read_exact_at(&mut rec, (v - 1) * RECORD as u64)
                .ok()
                .and_then(|()| decode(v, &rec))
                .map_or(0, |e| e.ts_ms)
        };
        let extent = Extent {
            first: 0,
            head,
            first_ts_ms: if head > 0 { ts(1) } else { 0 },
            last_ts_ms: if head > 0 { ts(head) } else { 0 },
        };
        Ok(LogReader {
            extent,
            source: Source::File(BufReader::with_capacity(1 << 20, file)),
            next: 1,
            geometry: config.geometry.clone(),
            final_geometry,
            rule: None,
            peeked: None,
            _log: None,
        })
    }

    #[cfg(feature = "kafka")]
    fn open_kafka(config: &Config) -> Result<LogReader, String> {
        use crate::edit_log::kafka::{KafkaLog, KafkaSettings};
        use crate::edit_log::EditLog;
        let args = &config.args;
        let settings = KafkaSettings::of(args).ok_or("no --kafka-brokers")?;
        let k = KafkaLog::connect(settings).map_err(|e| e.to_string())?;
        let (first, head) = (k.oldest_after(), k.head());
        // The last message is one fetch; the first comes with the tail itself (on tansu a fetch
        // from far back costs time proportional to what follows it).
        let last_ts_ms = if head > first { k.message_ts(head).map_err(|e| e.to_string())? } else { 0 };
        let (tx, rx) = crossbeam_channel::bounded(crate::bounds::EDIT_RUNS_QUEUE);
        k.tail(first, tx).map_err(|e| e.to_string())?;
        let mut reader =
            LogReader {
                extent: Extent { first, head, first_ts_ms: 0, last_ts_ms },
                source: Source::Channel(rx, Vec::new().into_iter()),
                next: first + 1,
                geometry: config.geometry.clone(),
                final_geometry: config.geometry.clone(),
                rule: Some(LogRule::new(args.cooldown * 1000).with_classes(
                    crate::claims::ClaimCooldowns::parse(&args.claim_cooldown).unwrap_or_default().table(),
                )),
                peeked: None,
                _log: Some(Box::new(k)),
            };
        if head > first {
            let c = reader.receive()?;
            reader.extent.first_ts_ms = c.edit.ts_ms;
            reader.peeked = Some(c);
        }
        Ok(reader)
    }

    fn receive(&mut self) -> Result<Committed, String> {
        let v = self.next;
        if let Some(c) = self.peeked.take() {
            return Ok(c);
        }
        match &mut self.source {
            Source::File(r) => {
                let mut rec = [0u8; RECORD];
                r.read_exact(&mut rec).map_err(|e| format!("reading version {v}: {e}"))?;
                let edit = decode(v, &rec).ok_or_else(|| format!("version {v} changed while reading"))?;
                Ok(Committed { version: v, edit })
            }
            Source::Channel(rx, run) => loop {
                if let Some(c) = run.next() {
                    return Ok(c);
                }
                *run = rx.recv().map_err(|_| "the Kafka tail stopped".to_string())?.into_iter();
            },
        }
    }

    fn judge(&mut self, c: Committed) -> Applied {
        let e = c.edit;
        if let Some(g) = crate::control::resize_of(&e).and_then(|(w, h)| self.geometry.grown(w, h)) {
            self.geometry = g;
        }
        let inside = self.geometry.index(e.x as i64, e.y as i64).is_some() && self.geometry.valid_color(e.color as i64);
        // A control entry changes no pixel (x = CONTROL_X is outside every canvas); on a shared
        // log it changes the rule, as in the applier. The embedded writer logged only edits its
        // switches allowed, so there the rule is not needed.
        if let (Some(r), crate::control::Entry::Control(ctl)) = (&mut self.rule, crate::control::classify(&e)) {
            r.control(&ctl);
        }
        let applied = inside && self.rule.as_mut().is_none_or(|r| r.judge(&e).is_ok());
        if let Some(r) = &mut self.rule {
            r.after(c.version);
        }
        Applied { version: c.version, edit: e, applied }
    }
}

/// The number of leading valid records of an embedded log file of `records` records, and the
/// canvas its resize entries leave: a bad run at the very end (at most one group) is a write in
/// progress or a torn tail; anything else is damage the operator must see.
fn valid_records(file: &File, records: u64, configured: &Geometry) -> std::io::Result<Scan> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut rec = [0u8; RECORD];
    let mut geometry = configured.clone();
    for v in 1..=records {
        r.read_exact(&mut rec)?;
        let Some(e) = decode(v, &rec) else {
            if records - v < GROUP as u64 {
                return Ok(Scan { head: v - 1, geometry });
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record {v} is damaged; see `placecast log verify`"),
            ));
        };
        if let Some(g) = crate::control::resize_of(&e).and_then(|(w, h)| geometry.grown(w, h)) {
            geometry = g;
        }
    }
    Ok(Scan { head: records, geometry })
}

impl Iterator for LogReader {
    type Item = Result<Applied, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.extent.head {
            return None;
        }
        let c = match self.receive() {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        self.next += 1;
        Some(Ok(self.judge(c)))
    }
}
