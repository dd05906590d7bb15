//! The table from edit version to the instant its placement was sent, written by the placement
//! driver and read by every client thread when a batch arrives (placement-to-receive latency).
//!
//! It is a fixed ring of `slots` entries (version mod slots) in shared memory: anonymous for one
//! process, a file under /dev/shm when `--procs` child processes read what the parent's driver
//! writes. Each slot is (version + 1, send instant in CLOCK_MONOTONIC ns), written with a
//! seqlock-style protocol so a reader never pairs a version with another version's instant.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default number of slots: 2^18 versions (262 s of history at 1,000 placements/s), 4 MiB.
pub const DEFAULT_SLOTS: usize = 1 << 18;

pub struct SendTable {
    ptr: *mut AtomicU64,
    slots: usize,
    bytes: usize,
    /// The backing file, removed on drop by the process that created it.
    owned_path: Option<PathBuf>,
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
        Ok(SendTable { ptr: p as *mut AtomicU64, slots, bytes, owned_path: None })
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
