//! Reading WebSocket frames from nonblocking client sockets, shared by the two client engines
//! ([`engine`](crate::engine)'s fanout/hold clients and [`day`](crate::day)'s session users).
//!
//! It owns the read loop ([`read_ready`]): level-triggered reads into the thread's shared
//! receive buffer, or, while a frame (or the upgrade answer) straddles reads, straight into that
//! connection's carry, sized for the frame; the split into frames; and what every client does
//! the same way with a frame: masked server frames end the connection, fragmented ones are
//! counted and skipped, pings are answered, binary frames are decoded as batches (or resizes).
//! What differs between the engines is behind [`Clients`]: the upgrade answer, text messages,
//! close frames, batches and how a connection ends. A thread's buffers and random state for all
//! its connections are a [`Wire`].
//!
//! Invariants: a carry is `Some` only while it holds the unconsumed, non-empty start of a frame
//! of a connection that still reads; the shared receive buffer is taken out of the engine only
//! while one read is processed and is back before the connection is ended or the loop returns;
//! nothing is allocated per frame (a carry is allocated when a frame straddles reads, grown for
//! that frame and shrunk once it is far larger than what it holds).

use crate::batch::{self, BatchHeader};
use crate::engine::Counts;
use crate::sys;
use crate::ws::{self, FrameHeader};
use std::collections::BTreeMap;
use std::io;

/// The thread's receive buffer (the size of one read).
const RBUF: usize = 64 * 1024;
/// The least a read into a carry asks for.
const CARRY_READ: usize = 16 * 1024;
/// A carry with more capacity than this holding less than [`CARRY_KEEP`] bytes is shrunk.
const CARRY_SHRINK_ABOVE: usize = 256 * 1024;
const CARRY_KEEP: usize = 64 * 1024;

/// Where a connection is, as far as reading goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The upgrade request is out (or going out); the 101 is awaited.
    Handshake,
    Open,
    /// Ended, or not connected: nothing more is read.
    Gone,
}

/// The ends of a connection the shared reader finds; each engine's own end type holds them.
#[derive(Debug)]
pub enum Stop {
    Eof,
    Error(io::Error),
    Protocol(&'static str),
}

/// A client engine's connections as the reader sees them (`i` is the connection's index).
pub trait Clients {
    /// Why a connection ended.
    type End: From<Stop>;
    fn fd(&self, i: usize) -> i32;
    fn phase(&self, i: usize) -> Phase;
    /// The connection's carry (see the module's invariants).
    #[allow(clippy::box_collection)]
    fn carry(&mut self, i: usize) -> &mut Option<Box<Vec<u8>>>;
    fn wire(&mut self) -> &mut Wire;
    fn counts(&mut self) -> &mut Counts;
    fn disconnect_reasons(&mut self) -> &mut BTreeMap<String, u64>;
    /// In [`Phase::Handshake`]: checks the upgrade answer at the front of `data`. `Ok(Some(n))`:
    /// it took `n` bytes and the connection is open; `Ok(None)`: not complete yet.
    fn upgrade(&mut self, i: usize, data: &[u8]) -> Result<Option<usize>, Self::End>;
    /// A batch (or resize) frame received at `now` (ns).
    fn batch(&mut self, i: usize, b: &BatchHeader, payload: &[u8], now: u64);
    /// A text message (already counted in `text_messages`).
    fn text(&mut self, i: usize, payload: &[u8]);
    /// A close frame: why the connection ends.
    fn close(&mut self, i: usize, payload: &[u8]) -> Self::End;
    /// Ends the connection.
    fn hang_up(&mut self, i: usize, why: Self::End);
}

/// What a thread's connections share: the receive buffer, the buffer frames are built in, and
/// the random state for masking keys and jitter.
pub struct Wire {
    /// Taken out while one read is processed (see the module's invariants).
    rbuf: Vec<u8>,
    /// Whatever the thread writes to a socket is built here (cleared before each use).
    pub scratch: Vec<u8>,
    rng: u64,
    /// Largest frame payload accepted (bounds a carry).
    pub max_payload: u64,
}

impl Wire {
    pub fn new(max_payload: u64, seed: u64) -> Self {
        Wire { rbuf: vec![0u8; RBUF], scratch: Vec::with_capacity(512), rng: ws::splitmix64(seed), max_payload }
    }

    /// A random number in `0..n` (0 if `n` is 0).
    pub fn jitter(&mut self, n: u64) -> u64 {
        self.rng = ws::splitmix64(self.rng);
        if n == 0 {
            0
        } else {
            self.rng % n
        }
    }

    /// Builds a client frame with a fresh masking key in [`Wire::scratch`] and sends it to `fd`
    /// (one `send`; returns the bytes written, which may be fewer than the frame's).
    pub fn send_frame(&mut self, fd: i32, opcode: u8, payload: &[u8]) -> io::Result<usize> {
        self.rng = ws::splitmix64(self.rng);
        let mut key = [0u8; 4];
        key.copy_from_slice(&self.rng.to_le_bytes()[..4]);
        self.scratch.clear();
        ws::encode_client_frame(opcode, payload, key, &mut self.scratch);
        sys::send(fd, &self.scratch)
    }
}

/// Reads what connection `i` has (until the socket would block or a read comes back short) and
/// hands its complete frames to the engine; ends the connection on end of file, a read error or
/// what a frame calls for.
pub fn read_ready<C: Clients>(c: &mut C, i: usize) {
    let now = sys::now_ns();
    loop {
        let fd = c.fd(i);
        if let Some(mut carry) = c.carry(i).take() {
            // A frame straddles reads: read straight into the carry, sized for the frame.
            let want = frame_need(&carry, c.wire().max_payload).max(CARRY_READ);
            carry.reserve(want);
            let len = carry.len();
            let cap = carry.capacity();
            // SAFETY: `len..cap` is the Vec's spare capacity, inside its allocation (`reserve`
            // made it at least CARRY_READ bytes); read() only writes into it, and only the `n`
            // bytes it reports are marked initialized below.
            let spare = unsafe { std::slice::from_raw_parts_mut(carry.as_mut_ptr().add(len), cap - len) };
            match sys::read(fd, spare) {
                Ok(0) => return c.hang_up(i, Stop::Eof.into()),
                Ok(n) => {
                    // SAFETY: read() initialized n bytes past len, and len + n <= cap.
                    unsafe { carry.set_len(len + n) };
                    match process(c, i, &carry, now) {
                        Ok(used) => {
                            if c.phase(i) == Phase::Gone {
                                return;
                            }
                            carry.drain(..used);
                            if !carry.is_empty() {
                                if carry.capacity() > CARRY_SHRINK_ABOVE && carry.len() < CARRY_KEEP {
                                    carry.shrink_to_fit();
                                }
                                *c.carry(i) = Some(carry);
                            }
                        }
                        Err(end) => return c.hang_up(i, end),
                    }
                    if n < cap - len {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *c.carry(i) = Some(carry);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => *c.carry(i) = Some(carry),
                Err(e) => return c.hang_up(i, Stop::Error(e).into()),
            }
        } else {
            let mut buf = std::mem::take(&mut c.wire().rbuf);
            let outcome = match sys::read(fd, &mut buf) {
                Ok(0) => Err(Stop::Eof.into()),
                Ok(n) => match process(c, i, &buf[..n], now) {
                    Ok(used) => {
                        if used < n && c.phase(i) != Phase::Gone {
                            *c.carry(i) = Some(Box::new(buf[used..n].to_vec()));
                        }
                        Ok(n == buf.len())
                    }
                    Err(end) => Err(end),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                Err(e) => Err(Stop::Error(e).into()),
            };
            c.wire().rbuf = buf;
            match outcome {
                Ok(true) if c.phase(i) != Phase::Gone => continue,
                Ok(_) => return,
                Err(end) => return c.hang_up(i, end),
            }
        }
    }
}

/// Consumes the upgrade answer (in [`Phase::Handshake`]) and the complete frames at the front of
/// `data`; returns the bytes used.
fn process<C: Clients>(c: &mut C, i: usize, data: &[u8], now: u64) -> Result<usize, C::End> {
    let mut pos = 0;
    if c.phase(i) == Phase::Handshake {
        match c.upgrade(i, data)? {
            Some(n) => pos = n,
            None => return Ok(0),
        }
    }
    let max_payload = c.wire().max_payload;
    while pos < data.len() {
        match ws::split_frame(&data[pos..], max_payload) {
            Ok(Some((h, payload, total))) => {
                on_frame(c, i, &h, payload, now)?;
                pos += total;
            }
            Ok(None) => break,
            Err(e) => {
                c.counts().protocol_errors += 1;
                *c.disconnect_reasons().entry(format!("bad frame: {e}")).or_default() += 1;
                return Err(Stop::Protocol("bad_frame").into());
            }
        }
    }
    Ok(pos)
}

fn on_frame<C: Clients>(c: &mut C, i: usize, h: &FrameHeader, payload: &[u8], now: u64) -> Result<(), C::End> {
    if h.masked {
        c.counts().protocol_errors += 1;
        return Err(Stop::Protocol("masked_server_frame").into());
    }
    if !h.fin || h.opcode == ws::OP_CONTINUATION {
        // Neither server fragments its messages; count and skip rather than reassemble.
        c.counts().fragmented_frames += 1;
        return Ok(());
    }
    match h.opcode {
        ws::OP_BINARY => match batch::decode_batch(payload) {
            Ok(b) => c.batch(i, &b, payload, now),
            Err(_) => match batch::decode_resize(payload) {
                Some(r) => c.batch(i, &r, payload, now),
                None => c.counts().bad_batches += 1,
            },
        },
        ws::OP_TEXT => {
            c.counts().text_messages += 1;
            c.text(i, payload);
        }
        ws::OP_PING => {
            let fd = c.fd(i);
            let _ = c.wire().send_frame(fd, ws::OP_PONG, payload);
            c.counts().pongs_sent += 1;
        }
        ws::OP_CLOSE => return Err(c.close(i, payload)),
        _ => {}
    }
    Ok(())
}

/// Bytes still needed to complete the frame at the front of `buf` (0 if unknown yet).
fn frame_need(buf: &[u8], max_payload: u64) -> usize {
    match ws::parse_header(buf, max_payload) {
        Ok(Some(h)) => h.frame_len().saturating_sub(buf.len()),
        _ => 0,
    }
}
