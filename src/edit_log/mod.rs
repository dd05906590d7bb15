//! The edit log: one ordered, durable sequence of edits. A version is a position in it.
//!
//! Backends: `file` (embedded, the single-node default) and `kafka` (cargo feature `kafka`: one
//! topic with one partition shared by a cluster of nodes). Every backend promises:
//! - `append` resolves to `Ok(version)` only once the edit is durable;
//! - `tail(after, sink)` delivers every durable edit with version > `after`, in order, each
//!   exactly once, with contiguous versions, and keeps delivering new ones. It delivers them in
//!   runs ([`CommittedRun`], at most [`TAIL_RUN`] edits): the embedded log sends a group commit
//!   as one message, so the applier wakes once per group, not once per edit (at a 5-edit group
//!   that was 4 extra wakes of the applier and 4 preemptions of the writer, measured with
//!   `/proc/PID/task/*/status`).
//!
//! The applier is the only tailer in a process; placements on every shard append.

pub mod checkpoint_chunks;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod published;
pub mod tool;

use crossbeam_channel::Sender;
use futures_channel::oneshot;
use thiserror::Error;

/// One placement as it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    pub x: u16,
    pub y: u16,
    pub color: u8,
    /// The limiter key of the user who placed it (see `token::user_key`).
    pub user: u64,
    /// Wall-clock milliseconds when the placement was accepted.
    pub ts_ms: u64,
    /// Record bytes 5..8 (a 24-bit value): a control entry's high argument bits (`control.rs`);
    /// zero for an edit and in format 1 logs.
    pub ext: u32,
    /// Record bytes 24..28: for a control entry its actor (`control.rs`; 0 = the `--admin-token`
    /// operator), for an edit its flags (`control::EDIT_BY_MODERATOR`). Zero in format 1 logs.
    pub aux: u32,
}

/// An edit with its position in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub version: u64,
    pub edit: Edit,
}

pub use crate::bounds::TAIL_RUN;

/// What a tail sends: 1 to [`TAIL_RUN`] committed edits with contiguous versions, in order.
pub type CommittedRun = Vec<Committed>;

/// Cuts what a tail delivers into runs of at most [`TAIL_RUN`] and sends each when it is full
/// or flushed. Dropping it without `flush` loses the open run, so every sender flushes at the
/// end of what it has in hand (a group commit, a poll that came back empty).
pub struct RunSender<'a> {
    sink: &'a Sender<CommittedRun>,
    run: CommittedRun,
    /// Edits the caller still expects to push: sizes each run's one allocation.
    expected: usize,
}

/// The tail's receiver is gone (the process is stopping).
#[derive(Debug)]
pub struct SinkClosed;

impl<'a> RunSender<'a> {
    /// `expected`: how many edits the caller will push, or a guess (it only sizes each run's
    /// allocation: a run is allocated once, when its first edit comes, never when it goes).
    pub fn new(sink: &'a Sender<CommittedRun>, expected: usize) -> Self {
        RunSender { sink, run: Vec::new(), expected }
    }

    pub fn push(&mut self, c: Committed) -> Result<(), SinkClosed> {
        debug_assert!(self.run.last().is_none_or(|l| l.version + 1 == c.version), "runs are contiguous");
        if self.run.capacity() == 0 {
            self.run.reserve_exact(self.expected.clamp(1, TAIL_RUN));
        }
        self.expected = self.expected.saturating_sub(1);
        self.run.push(c);
        if self.run.len() >= TAIL_RUN {
            return self.flush();
        }
        Ok(())
    }

    /// Sends the open run, if any (blocks while the sink is full: back-pressure).
    pub fn flush(&mut self) -> Result<(), SinkClosed> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.sink.send(std::mem::take(&mut self.run)).map_err(|_| SinkClosed)
    }

    pub fn is_empty(&self) -> bool {
        self.run.is_empty()
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    #[error("the edit log is overloaded; try again shortly")]
    Overloaded,
    #[error("the edit log cannot write: {0}")]
    Io(String),
    #[error("the edit log is shut down")]
    Closed,
    #[error("the edit log is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unavailable(String),
    /// The log may hold the edit but did not say at which version (a retried produce that the
    /// broker refused as a duplicate of one it had written).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The embedded log's writer refused the edit: the switches at its position refuse it.
    #[error("{0}")]
    Refused(crate::control::Refusal),
}

/// Resolves to the edit's version once it is durable.
pub type AppendAck = oneshot::Receiver<Result<u64, LogError>>;

pub trait EditLog: Send + Sync + 'static {
    /// Queues `edit` for appending. An immediate error means it was not queued.
    fn append(&self, edit: Edit) -> Result<AppendAck, LogError> {
        self.append_named(edit, None)
    }
    /// As `append`, carrying the user's display name when the directory (`names.rs`) does not
    /// have it yet: the log makes it durable with the edit (the embedded log writes it to the
    /// directory before the group's fdatasync; Kafka carries it in the message).
    fn append_named(&self, edit: Edit, name: Option<Box<str>>) -> Result<AppendAck, LogError>;
    /// Appends `edits` (a region change: its control entry, then its pixel edits) and resolves to
    /// the last one's version once every one is durable. The embedded log writes them
    /// contiguously; a shared log in order, other nodes' edits possibly between them. `name` is
    /// the display name of the edits' user, as in `append_named`. Not atomic across a crash: a
    /// failure can leave a first part logged (the caller is told it failed).
    fn append_many(&self, edits: Vec<Edit>, name: Option<Box<str>>) -> Result<AppendAck, LogError>;
    /// Starts delivering committed edits with version > `after` to `sink`, in order, in runs.
    fn tail(&self, after: u64, sink: Sender<CommittedRun>) -> Result<(), LogError>;
    /// The version of the last durable edit.
    fn head(&self) -> u64;
    /// One line for logs and /healthz.
    fn describe(&self) -> String;
    /// The switches at the log's head, once the applier has replayed it: a log that orders
    /// appends itself (the embedded one) refuses what they refuse, in log order, from then on.
    /// A shared log leaves that to the log-order rule (`verdict.rs`).
    fn set_switches(&self, _switches: crate::control::Switches) -> Result<(), LogError> {
        Ok(())
    }
    /// Whether the log takes edits now (`/readyz`); the error says why not.
    fn writable(&self) -> Result<(), String> {
        Ok(())
    }
}
