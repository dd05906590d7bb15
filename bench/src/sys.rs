//! Thin, safe wrappers over the Linux system calls the client engine uses: nonblocking TCP
//! sockets bound to a chosen source address, epoll, the monotonic clock, CPU affinity and the
//! open-file rlimit. Errors are plain `io::Error`s; [`crate::error`] turns the ones that mean
//! "a limit was hit" into advice.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// Nanoseconds of CLOCK_MONOTONIC: one clock shared by every process on the host, so send
/// instants recorded by one process can be compared with receive instants in another.
pub fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Where a socket setup step failed (so an errno can be explained in context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Socket,
    Bind,
    Connect,
}

/// Creates a nonblocking TCP socket, binds it to `source` (port chosen by the kernel at connect
/// time, IP_BIND_ADDRESS_NO_PORT, so one source address serves the whole local port range per
/// destination), and starts connecting to `target`. Returns the fd; the connection completes
/// asynchronously (EPOLLOUT, then [`take_socket_error`]).
pub fn start_connect(source: Option<IpAddr>, target: SocketAddr) -> Result<RawFd, (Step, io::Error)> {
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain system call with constant arguments.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| (Step::Socket, e))?;
    let fail = |step, e| {
        // SAFETY: fd is ours and open.
        unsafe { libc::close(fd) };
        Err((step, e))
    };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option pointer and length.
    unsafe {
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const libc::c_void, 4);
    }
    if let Some(src) = source {
        if domain == libc::AF_INET {
            // SAFETY: as above. Failure only costs port-range sharing, so it is ignored.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    4,
                );
            }
        }
        let (ss, len) = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: `ss` holds a valid address of `len` bytes.
        if let Err(e) = cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) }) {
            return fail(Step::Bind, e);
        }
    }
    let (ss, len) = sockaddr(target);
    // SAFETY: as above.
    let r = unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return fail(Step::Connect, e);
        }
    }
    Ok(fd)
}

/// A blocking TCP connection from `source` to `target` (bound the same way as
/// [`start_connect`]), the connect bounded by `timeout`.
pub fn connect_blocking(
    source: IpAddr,
    target: SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let fd = start_connect(Some(source), target).map_err(|(_, e)| e)?;
    // SAFETY: `fd` is a fresh socket owned by nothing else; the stream now owns it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        break;
    }
    take_socket_error(fd)?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The pending error of a socket (SO_ERROR): `Ok(())` once a nonblocking connect succeeded.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    cvt(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut libc::c_void, &mut len)
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// A short name for a socket error, as a key of the report's error maps.
pub fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(n) => format!("errno_{n}"),
        None => e.kind().to_string(),
    }
}

/// `read(2)`; `Ok(0)` is end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `send(2)` with MSG_NOSIGNAL (a closed peer is an error, not a SIGPIPE).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length.
    let r = unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Closes `fd`, optionally with SO_LINGER 0 so the peer sees a reset (an abrupt "network drop").
pub fn close(fd: RawFd, reset: bool) {
    if reset {
        let lg = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: valid fd and option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &lg as *const _ as *const libc::c_void,
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    // SAFETY: the caller owns fd and never uses it again.
    unsafe { libc::close(fd) };
}

pub const EV_IN: u32 = libc::EPOLLIN as u32;
pub const EV_OUT: u32 = libc::EPOLLOUT as u32;
pub const EV_ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;

/// An epoll instance (level-triggered registrations keyed by a `u64`).
pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: key };
        // SAFETY: valid epoll fd and event pointer.
        cvt(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(|_| ())
    }

    pub fn add(&self, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, key)
    }

    pub fn modify(&self, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, key)
    }

    /// Waits up to `timeout_ms` and returns how many entries of `events` were filled.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: events is valid for `len` entries.
        let r = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), events.len() as libc::c_int, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(r as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// An empty epoll event array of `n` entries.
pub fn event_buffer(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

/// The CPUs this process may run on (respects `taskset`).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Pins the calling thread to `cpu` (best effort: returns false if the kernel refused).
pub fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux: per thread; raising the
/// nice value needs no privilege). Returns false if the kernel refused.
pub fn nice_current_thread(nice: i32) -> bool {
    // SAFETY: plain system calls; gettid names the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
    }
}

/// RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    // SAFETY: valid out-pointer.
    unsafe {
        let mut r: libc::rlimit = zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        (r.rlim_cur, r.rlim_max)
    }
}

/// fs.nr_open (the ceiling of any RLIMIT_NOFILE), read once (later reads may fail for lack of
/// file descriptors, which is exactly when it is needed); 0 if unreadable.
pub fn nr_open() -> u64 {
    static NR_OPEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NR_OPEN.get_or_init(|| read_sysctl("/proc/sys/fs/nr_open").and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// Raises the soft open-file limit to the hard limit; returns the new (soft, hard).
pub fn raise_nofile_to_hard() -> (u64, u64) {
    nr_open();
    let (soft, hard) = nofile_limit();
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: valid pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
    nofile_limit()
}

/// This process's CPU time (user + system, all threads) in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: valid out-pointer.
    unsafe {
        let mut ru: libc::rusage = zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Reads a one-line /proc/sys value, trimmed.
pub fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The local port range (net.ipv4.ip_local_port_range) as (low, high).
pub fn local_port_range() -> (u32, u32) {
    read_sysctl("/proc/sys/net/ipv4/ip_local_port_range")
        .and_then(|s| {
            let mut it = s.split(' ').filter_map(|x| x.parse().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}
