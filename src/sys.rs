//! Small safe wrappers over the Linux system calls the server makes directly (the hub's sockets
//! and epoll, descriptor limits, CPU affinity). Every `unsafe` of the server's own I/O lives
//! here, each with its SAFETY line; callers get `io::Result`s.
//!
//! Invariant: a wrapper never takes ownership of a descriptor unless it says so; `close` is the
//! only call that ends one, and callers call it exactly once per descriptor they own.
//! Not here: io_uring submission (`hub/send.rs`, through the `io-uring` crate, whose one unsafe
//! `push` keeps its own SAFETY line there: the buffer must outlive the submission).

use std::io;
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A new descriptor for the same socket; the caller owns it.
pub fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: dup reads no memory; an invalid fd is an EBADF error.
    cvt(unsafe { libc::dup(fd) })
}

/// Ends the caller's descriptor. Errors are ignored: after close(2) the descriptor is gone
/// either way (retrying on EINTR could close a descriptor another thread just got).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and stops using it here.
    unsafe { libc::close(fd) };
}

/// `send(2)` with MSG_DONTWAIT | MSG_NOSIGNAL: never blocks, never raises SIGPIPE.
pub fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// `recv(2)` with MSG_DONTWAIT; `Ok(0)` is the peer's EOF.
pub fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// Half-closes the sending side (our FIN after the close frame).
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: no memory is passed; errors (already closed by the peer) do not matter here.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// An integer socket option; failures are ignored (options are tuning, not correctness).
pub fn set_opt(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: `value` lives across the call and its size is passed.
    unsafe { libc::setsockopt(fd, level, name, (&value as *const i32).cast(), std::mem::size_of::<i32>() as u32) };
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL reads and writes no memory.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(|_| ())
}

/// One epoll instance, closed on drop.
pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no memory is passed.
        Ok(Epoll { fd: cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })? })
    }

    /// Watches `fd` for `events`, reporting `key` with them.
    pub fn add(&self, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: key };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
    }

    /// The descriptor, for a readiness wait on the executor's ring (`shard::tick_loop`); it
    /// stays owned here.
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Ready events without waiting; how many of `out` were filled.
    pub fn poll(&self, out: &mut [libc::epoll_event]) -> usize {
        let max = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: `out` is valid and writable for `max` events.
        let n = unsafe { libc::epoll_wait(self.fd, out.as_mut_ptr(), max, 0) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `l` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    if l.rlim_cur < l.rlim_max {
        let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
        // SAFETY: `want` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            l.rlim_cur = l.rlim_max;
        }
    }
    l.rlim_cur
}

/// The CPUs this process may run on, in order (empty if the kernel will not say).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if !ok {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET only reads `set`, with an index below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_pair_round_trip_and_eof() {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid out-array of two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        let (a, b) = (fds[0], fds[1]);
        set_nonblocking(b).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv_nonblocking(b, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let ep = Epoll::new().unwrap();
        ep.add(b, libc::EPOLLIN as u32, 42).unwrap();
        assert_eq!(send_nonblocking(a, b"hi").unwrap(), 2);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(ep.poll(&mut evs), 1);
        assert_eq!({ evs[0].u64 }, 42);
        assert_eq!(recv_nonblocking(b, &mut buf).unwrap(), 2);
        let d = dup(a).unwrap();
        close(a);
        shutdown_write(d);
        assert_eq!(recv_nonblocking(b, &mut buf).unwrap(), 0, "EOF after the dup's half-close");
        close(d);
        close(b);
        assert!(!allowed_cpus().is_empty());
        assert!(raise_fd_limit() >= 16);
    }
}
