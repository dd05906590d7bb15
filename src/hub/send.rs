//! The hub's send path: a batch written to every connection waiting for it (one io_uring
//! submission per slice of `SLICE` sockets, or one `send()` each), the per-connection pump of
//! queued frames, and what happens to a socket that is full (blocked) or too far behind (4000).
//! When batches were cut while a pass ran (overload), each connection the pass reaches gets all
//! of them in one `sendmsg` (`MERGE_FRAMES` at most): one call per connection per pass, whatever
//! the backlog, which is what lets a client see every batch as its own frame under overload.
//!
//! Invariants: a frame in flight is never interleaved with another (`out` finishes first); a
//! connection gets batches in sequence order, each once; no send ever blocks (`MSG_DONTWAIT`);
//! an io_uring slice's frame outlives its submission (completions are all reaped before the
//! slice returns). Not here: reading, or what client messages mean (`messages.rs`).

use super::{Cursor, Hub, State, MERGE_FRAMES, SLICE};
use crate::metrics::add;
use crate::protocol::close;
use crate::sys;
use bytes::Bytes;
use io_uring::{opcode, types, IoUring};

impl Hub {
    /// Writes the cursor's batch to the next `SLICE` connections waiting for exactly it; a batch
    /// done, closes or retries the connections it left blocked and moves to the next one.
    pub(super) fn broadcast_slice(&mut self) {
        let Some(Cursor { seq, slot }) = self.cursor else { return };
        let end = match self.uring.is_some() {
            true => self.broadcast_uring(seq, slot),
            false => self.broadcast_syscall(seq, slot),
        };
        if end < self.conns.len() {
            self.cursor = Some(Cursor { seq, slot: end });
            return;
        }
        let arrived = self.ring[(seq - self.first_seq) as usize].arrived;
        self.stats().fanout.record(arrived.elapsed());
        self.check_blocked();
        self.cursor = (seq + 1 < self.head_seq()).then_some(Cursor { seq: seq + 1, slot: 0 });
    }

    /// Whether `slot` takes batch `seq` in the bulk path. A connection behind it (possible only
    /// after the shard itself fell behind) is pumped instead, which also closes it if it lagged
    /// out of the ring.
    pub(super) fn ready_for(&mut self, slot: usize, seq: u64) -> bool {
        let c = &self.conns[slot];
        if c.state != State::Live || c.blocked || c.out.is_some() || c.queued() {
            return false;
        }
        if c.next_seq < seq {
            self.pump(slot);
            return false;
        }
        c.next_seq == seq
    }

    /// Returns the slot to continue from.
    pub(super) fn broadcast_syscall(&mut self, seq: u64, from: usize) -> usize {
        let mut sent = 0;
        for slot in from..self.conns.len() {
            if sent == SLICE {
                return slot;
            }
            if self.ready_for(slot, seq) {
                self.pump(slot);
                sent += 1;
            }
        }
        self.conns.len()
    }

    /// Submits one ring-full of sends (at most `SLICE`) of batch `seq` to the connections waiting
    /// for exactly it; returns the slot to continue from. When later batches were cut while the
    /// pass ran (the shard is behind), each of those connections gets them too, in the same
    /// `sendmsg` (at most `MERGE_FRAMES` frames, one iovec each): a client behind is brought up to
    /// date in one call instead of one pass per batch.
    pub(super) fn broadcast_uring(&mut self, seq: u64, from: usize) -> usize {
        let mut uring = self.uring.take().expect("uring mode");
        let cap = (uring.params().sq_entries() as usize).min(SLICE);
        // The frames of this slice: batch `seq` and those after it, up to `MERGE_FRAMES`. They
        // are clones held here (no allocation: a fixed array of reference-counted handles), so
        // they outlive every send that points at them.
        let at = (seq - self.first_seq) as usize;
        let count = (self.ring.len() - at).min(MERGE_FRAMES);
        let frames: [Bytes; MERGE_FRAMES] =
            std::array::from_fn(|i| if i < count { self.ring[at + i].frame.clone() } else { Bytes::new() });
        let frames = &frames[..count];
        let frame = &frames[0];
        let iov: [libc::iovec; MERGE_FRAMES] = std::array::from_fn(|i| libc::iovec {
            iov_base: frames.get(i).map_or(std::ptr::null_mut(), |f| f.as_ptr() as *mut libc::c_void),
            iov_len: frames.get(i).map_or(0, |f| f.len()),
        });
        // SAFETY: msghdr is a plain C struct; all-zero is its empty value (no name, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = count as _;
        let mut queued = 0usize;
        let mut end = self.conns.len();
        for slot in from..self.conns.len() {
            if queued == cap {
                end = slot;
                break;
            }
            if !self.ready_for(slot, seq) {
                continue;
            }
            let fd = types::Fd(self.conns[slot].fd);
            let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            let sqe = match count {
                1 => opcode::Send::new(fd, frame.as_ptr(), frame.len() as u32).flags(flags).build(),
                _ => opcode::SendMsg::new(fd, &msg).flags(flags as u32).build(),
            };
            // SAFETY: `frames`, `iov` and `msg` outlive the submission: we wait for every
            // completion below, before they go out of scope.
            unsafe {
                uring.submission().push(&sqe.user_data(slot as u64)).expect("queue has room: at most cap entries")
            };
            queued += 1;
        }
        if queued > 0 {
            self.flush_uring(&mut uring, queued, seq, frames);
        }
        self.uring = Some(uring);
        end
    }

    pub(super) fn flush_uring(&mut self, uring: &mut IoUring, n: usize, seq: u64, frames: &[Bytes]) {
        // MSG_DONTWAIT makes every send complete at once (EAGAIN instead of waiting), so this
        // never blocks on a slow socket. A submission interrupted or short of kernel resources
        // is retried; any other failure leaves sends whose buffers the kernel may still read,
        // so the process must stop (systemd restarts it) rather than go on without this shard.
        let mut tries = 0;
        while let Err(e) = uring.submit_and_wait(n) {
            let transient = matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY));
            tries += 1;
            if !transient || tries > 1000 {
                tracing::error!(error = %e, shard = self.shard, "io_uring_enter failed; stopping the process");
                std::process::abort();
            }
        }
        add(&self.stats().send_syscalls, 1);
        let (mut done, mut frames_sent, mut bytes) = (0usize, 0u64, 0u64);
        // `uring` is out of `self` while a slice is in flight, so completions can be booked
        // straight from the queue, with no per-slice buffer.
        for cqe in uring.completion() {
            done += 1;
            let (sent, whole) = self.after_send(cqe.user_data() as usize, seq, frames, cqe.result());
            bytes += sent;
            frames_sent += whole;
        }
        assert_eq!(done, n, "every submitted send completes before the batch moves on");
        // Counted once per slice, not once per socket.
        add(&self.stats().frames_sent, frames_sent);
        add(&self.stats().bytes_sent, bytes);
        if frames.len() > 1 {
            add(&self.stats().merged_sends, n as u64);
        }
    }

    /// Books one bulk send of `frames` (batches `seq..`) to `slot`: the connection moves past
    /// every whole frame written, and a frame written in part becomes its `out` (the rest goes
    /// by `pump` once the socket has room). Returns the bytes and the whole frames written.
    pub(super) fn after_send(&mut self, slot: usize, seq: u64, frames: &[Bytes], res: i32) -> (u64, u64) {
        if res < 0 {
            match -res {
                libc::EAGAIN => self.mark_blocked(slot),
                libc::EINTR => self.pump(slot),
                _ => self.drop_conn(slot),
            }
            return (0, 0);
        }
        let (mut left, mut whole) = (res as usize, 0);
        while whole < frames.len() && left >= frames[whole].len() {
            left -= frames[whole].len();
            whole += 1;
        }
        let c = &mut self.conns[slot];
        c.next_seq = seq + whole as u64;
        if let Some(part) = frames.get(whole) {
            // `left` bytes of this frame are on the socket: the socket is full.
            c.out = Some(part.clone());
            c.out_off = left as u32;
            c.next_seq += 1;
            self.mark_blocked(slot);
        }
        (res as u64, whole as u64)
    }

    pub(super) fn mark_blocked(&mut self, slot: usize) {
        if !self.conns[slot].blocked {
            self.conns[slot].blocked = true;
            let id = self.id(slot);
            self.blocked.push(id);
        }
    }

    /// Closes blocked connections that fell out of the ring; retries the rest (cheap insurance
    /// against a missed edge).
    pub(super) fn check_blocked(&mut self) {
        let list = std::mem::take(&mut self.blocked);
        for id in list {
            let Some(slot) = self.get(id) else { continue };
            if !self.conns[slot].blocked {
                continue;
            }
            let c = &self.conns[slot];
            if c.state == State::Live && c.next_seq < self.first_seq {
                self.lagged(slot);
            } else {
                self.conns[slot].blocked = false;
                self.pump(slot);
            }
        }
    }

    pub(super) fn lagged(&mut self, slot: usize) {
        add(&self.stats().closed_slow, 1);
        let msg = format!("too slow: more than {} batches behind; reconnect with since", self.max_lag);
        tracing::debug!(shard = self.shard, slot, "closing a client that stopped reading");
        self.close_frame_then(slot, close::TOO_SLOW, &msg);
    }

    /// Writes what this connection has pending, in order, until done or the socket is full.
    pub(super) fn pump(&mut self, slot: usize) {
        loop {
            let head = self.head_seq();
            let first = self.first_seq;
            let c = &mut self.conns[slot];
            if c.state == State::Free || c.blocked {
                return;
            }
            if c.out.is_none() {
                let next = c.extra.as_mut().and_then(|e| e.queue.pop_front());
                if let Some(f) = next {
                    c.out = Some(f);
                    c.out_off = 0;
                } else if c.state == State::Live && c.next_seq < head {
                    if c.next_seq < first {
                        self.lagged(slot);
                        return;
                    }
                    c.out = Some(self.ring[(c.next_seq - first) as usize].frame.clone());
                    c.out_off = 0;
                    c.next_seq += 1;
                } else {
                    break;
                }
            }
            let c = &mut self.conns[slot];
            let out = c.out.as_ref().expect("set above");
            let rest = &out[c.out_off as usize..];
            let sent = sys::send_nonblocking(c.fd, rest);
            if self.uring.is_none() {
                add(&self.shared.shard_stats[self.stats_idx].send_syscalls, 1);
            }
            let n = match sent {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.mark_blocked(slot);
                    return;
                }
                Err(_) => {
                    self.drop_conn(slot);
                    return;
                }
            };
            let stats = &self.shared.shard_stats[self.stats_idx];
            add(&stats.bytes_sent, n as u64);
            if n == rest.len() {
                c.out = None;
                c.out_off = 0;
                add(&stats.frames_sent, 1);
            } else {
                c.out_off += n as u32;
                self.mark_blocked(slot);
                return;
            }
        }
        self.after_drain(slot);
    }

    /// Everything is written: a closing connection half-closes; others drop spare state.
    pub(super) fn after_drain(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        match c.state {
            State::Closing => {
                let e = c.extra();
                if !e.shut_write {
                    e.shut_write = true;
                    sys::shutdown_write(c.fd);
                }
            }
            State::Live
                if c.extra.as_ref().is_some_and(|e| e.queue.is_empty() && e.carry.is_empty() && !e.in_message) =>
            {
                c.extra = None;
            }
            _ => {}
        }
    }
}
