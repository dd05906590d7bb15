//! The table from edit version to the instant its placement was sent, written by the placement
//! driver and read by every client thread when a batch arrives (placement-to-receive latency).
//!
//! It is a fixed ring of `slots` entries (version mod slots) in shared memory: anonymous for one
//! process, a file under /dev/shm when `--procs` child processes read what the parent's driver
//! writes. Each slot is (version + 1, send instant in CLOCK_MONOTONIC ns), written with a
//! seqlock-style protocol so a reader never pairs a version with another version's instant.
//!
//! Load agents on other hosts cannot map it: a tap ([`SendTable::tap`]) hands every recorded
//! (version, instant) to a bounded queue ([`TAP_QUEUE`]) that the coordinator forwards to its
//! agents; when the queue is full the entry is not forwarded (counted in
//! [`SendTable::tap_dropped`]) and the agents count that version's receptions as untimed.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::OnceLock;

/// Recorded instants waiting for the coordinator's forwarder.
pub const TAP_QUEUE: usize = 65_536;

/// Default number of slots: 2^18 versions (262 s of history at 1,000 placements/s), 4 MiB.
pub const DEFAULT_SLOTS: usize = 1 << 18;

pub struct SendTable {
    ptr: *mut AtomicU64,
    slots: usize,
    bytes: usize,
    /// The backing file, removed on drop by the process that created it.
    owned_path: Option<PathBuf>,
    tap: OnceLock<SyncSender<(u64, u64)>>,
    tap_dropped: AtomicU64,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for SendTable {}
unsafe impl Sync for SendTable {}

impl SendTable {
    /// A table private to this process (and its threads).
    pub fn anonymous(slots: usize) -> io::Result<Self> {
        Self::mmap(slots, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)
    }

    /// Creates the file-backed table at `path` (removed again when this value is dropped).
    pub fn create_file(path: &Path, slots: usize) -> io::Result<Self> {
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        f.set_len((slots * 16) as u64)?;
        let mut t = Self::map(&f, slots)?;
        t.owned_path = Some(path.to_path_buf());
        Ok(t)
    }

    /// Opens a table another process created with [`SendTable::create_file`].
    pub fn open_file(path: &Path) -> io::Result<Self> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let slots = (f.metadata()?.len() / 16) as usize;
        if slots == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty send table"));
        }
        Self::map(&f, slots)
    }

    fn map(f: &std::fs::File, slots: usize) -> io::Result<Self> {
        Self::mmap(slots, libc::MAP_SHARED, f.as_raw_fd())
    }

    /// A shared read-write mapping of `slots` entries: anonymous (`fd` -1) or of a file of
    /// exactly that size.
    fn mmap(slots: usize, flags: i32, fd: i32) -> io::Result<Self> {
        let bytes = slots * 16;
        // SAFETY: a fresh shared mapping, checked for failure below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SendTable {
            ptr: p as *mut AtomicU64,
            slots,
            bytes,
            owned_path: None,
            tap: OnceLock::new(),
            tap_dropped: AtomicU64::new(0),
        })
    }

    fn slot(&self, version: u64) -> (&AtomicU64, &AtomicU64) {
        let i = (version % self.slots as u64) as usize * 2;
        // SAFETY: i + 1 < 2 * slots, inside the mapping, which lives as long as self.
        unsafe { (&*self.ptr.add(i), &*self.ptr.add(i + 1)) }
    }

    /// Records that the placement which became `version` was sent at `sent_ns`.
    pub fn record(&self, version: u64, sent_ns: u64) {
        let (tag, ns) = self.slot(version);
        tag.store(0, Ordering::Release);
        ns.store(sent_ns, Ordering::Release);
        tag.store(version + 1, Ordering::Release);
        if let Some(t) = self.tap.get() {
            if t.try_send((version, sent_ns)).is_err() {
                self.tap_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// From now on every recorded (version, instant) is also offered to the returned queue
    /// (once per table; a second call returns None).
    pub fn tap(&self) -> Option<Receiver<(u64, u64)>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(TAP_QUEUE);
        self.tap.set(tx).ok()?;
        Some(rx)
    }

    /// Recorded instants the tap's queue had no room for.
    pub fn tap_dropped(&self) -> u64 {
        self.tap_dropped.load(Ordering::Relaxed)
    }

    /// The send instant of `version`, if the driver recorded it and it is still in the ring.
    #[inline]
    pub fn lookup(&self, version: u64) -> Option<u64> {
        let (tag, ns) = self.slot(version);
        if tag.load(Ordering::Acquire) != version + 1 {
            return None;
        }
        let t = ns.load(Ordering::Acquire);
        if tag.load(Ordering::Acquire) != version + 1 {
            return None;
        }
        Some(t)
    }
}

impl Drop for SendTable {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.bytes) };
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A fresh path for a file-backed table: /dev/shm if present, else the temp directory.
pub fn temp_path() -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("placecast-load-{}-{}.sendtable", std::process::id(), crate::sys::now_ns()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_wraps() {
        let t = SendTable::anonymous(8).unwrap();
        assert_eq!(t.lookup(5), None);
        t.record(5, 123);
        assert_eq!(t.lookup(5), Some(123));
        t.record(13, 456); // same slot as 5
        assert_eq!(t.lookup(5), None);
        assert_eq!(t.lookup(13), Some(456));
    }

    #[test]
    fn the_tap_sees_every_record_or_counts_it() {
        let t = SendTable::anonymous(8).unwrap();
        let rx = t.tap().unwrap();
        assert!(t.tap().is_none());
        t.record(1, 10);
        t.record(2, 20);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [(1, 10), (2, 20)]);
        assert_eq!(t.tap_dropped(), 0);
    }

    #[test]
    fn file_backed_is_shared() {
        let p = temp_path();
        let a = SendTable::create_file(&p, 16).unwrap();
        let b = SendTable::open_file(&p).unwrap();
        a.record(3, 99);
        assert_eq!(b.lookup(3), Some(99));
        drop(b);
        drop(a);
        assert!(!p.exists());
    }
}
