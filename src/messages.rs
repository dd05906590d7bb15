//! The messages between the applier and the shards: a connection's id, a shard's inbox
//! (batches and catch-up answers on one FIFO channel), and catch-up requests. Their own module
//! so that the hub and the applier share types without depending on each other.
//!
//! Invariant: a shard's batches and catch-up answers travel on one channel, so a catch-up
//! covering `(since, cut]` is followed by the batch starting at `cut` (see `applier.rs`).

use bytes::Bytes;

/// A connection on a shard: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

pub enum ShardMsg {
    /// A live batch covering `(from, to]`.
    Batch { frame: Bytes, from: u64, to: u64 },
    /// The answer to a catch-up request.
    CatchUp { conn: ConnId, reply: CatchUpReply },
}

pub enum CatchUpReply {
    /// Batch frames covering `(since, cut]`, in order, then live batches follow.
    Frames(Vec<Bytes>),
    /// `since` is older than the window; the oldest `since` still served.
    Reload { oldest_since: u64 },
    /// `since` is newer than anything applied.
    Ahead { version: u64 },
}

pub struct CatchUpReq {
    pub shard: usize,
    pub conn: ConnId,
    pub since: u64,
}
