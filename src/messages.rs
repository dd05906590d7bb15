//! The messages between the applier and the shards: a connection's id, a shard's inbox
//! (batches and catch-up answers on one FIFO channel), and catch-up requests. Their own module
//! so that the hub and the applier share types without depending on each other.
//!
//! Invariant: a shard's batches and catch-up answers travel on one channel, so a catch-up
//! covering `(since, cut]` is followed by the batch starting at `cut` (see `applier.rs`).

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Tells a shard's tick task that its inbox has something, so it need not poll the channel on a
/// timer: the applier sends, then wakes (a glommio task woken from another thread costs one
/// eventfd write). At most one wake is pending; a wake before the task waits is not lost.
#[derive(Default)]
pub struct ShardWake {
    pending: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl ShardWake {
    pub fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once a wake came since the last one was taken.
    pub fn woken(&self) -> Woken<'_> {
        Woken(self)
    }
}

pub struct Woken<'a>(&'a ShardWake);

impl Future for Woken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let w = self.0;
        if w.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        w.waker.register(cx.waker());
        // A wake between the swap and the register would be missed without this second look.
        match w.pending.swap(false, Ordering::AcqRel) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

/// Asks the applier to take its queue of committed edits now, not at its next interval
/// (`bounds::APPLY_EVERY`): a shard about to answer a read that must see what the log already
/// acknowledged (`read_your_writes`). One ask can be pending; asking again meanwhile is a no-op.
pub struct TakeNow {
    tx: crossbeam_channel::Sender<()>,
    rx: crossbeam_channel::Receiver<()>,
}

impl Default for TakeNow {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        TakeNow { tx, rx }
    }
}

impl TakeNow {
    pub fn ask(&self) {
        // Full: an ask is already pending, and it covers this one.
        let _ = self.tx.try_send(());
    }

    /// What the applier's loop listens on.
    pub fn asks(&self) -> crossbeam_channel::Receiver<()> {
        self.rx.clone()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_before_the_wait_is_kept_and_taken_once() {
        let w = ShardWake::default();
        w.wake();
        futures_lite::future::block_on(w.woken());
        let again = futures_lite::future::block_on(futures_lite::future::or(
            async {
                w.woken().await;
                true
            },
            async { false },
        ));
        assert!(!again, "taken once");
        let w = std::sync::Arc::new(w);
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            w2.wake();
        });
        futures_lite::future::block_on(w.woken());
        t.join().unwrap();
    }
}
