//! The load tester's errors. [`LimitError`] is the important one: every way of running out of a
//! host resource (file descriptors, local ports, socket memory) names the limit that was hit and
//! the setting that raises it, so a run stops with advice instead of hanging or spinning.

use crate::sys::Step;
use std::io;
use std::net::IpAddr;
use thiserror::Error;

/// A host limit that stopped the run.
#[derive(Debug, Error, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "limit", rename_all = "snake_case")]
pub enum LimitError {
    #[error(
        "per-process open-file limit reached (EMFILE) with {open} client sockets open: RLIMIT_NOFILE is \
         {soft} (hard {hard}). Raise it with `ulimit -n N` / `nofile` in /etc/security/limits.d \
         (kernel-tuning/99-placecast-limits.conf; above {nr_open} also raise fs.nr_open), or spread \
         the clients over several processes with --procs K"
    )]
    ProcessFiles { open: usize, soft: u64, hard: u64, nr_open: u64 },
    #[error(
        "system-wide open-file limit reached (ENFILE) with {open} client sockets open: raise fs.file-max \
         (sysctl -w fs.file-max=N; kernel-tuning/99-placecast.conf)"
    )]
    SystemFiles { open: usize },
    #[error(
        "no free local port for source address {source_addr} (EADDRNOTAVAIL/EADDRINUSE) with {open} client \
         sockets open: each source address gives at most {ports} ports per destination \
         (net.ipv4.ip_local_port_range = {low} {high}). Widen the range (sysctl -w \
         net.ipv4.ip_local_port_range=\"1024 65535\") or add source addresses with \
         --source-addrs 127.0.0.1-127.0.0.255"
    )]
    Ports { source_addr: String, open: usize, ports: u32, low: u32, high: u32 },
    #[error(
        "the kernel refused socket memory (ENOMEM/ENOBUFS) with {open} client sockets open: raise \
         net.ipv4.tcp_mem / net.core.rmem_default / net.core.wmem_default limits \
         (kernel-tuning/99-placecast.conf) or add RAM"
    )]
    Memory { open: usize },
    #[error(
        "this run needs {needed} file descriptors in one process but RLIMIT_NOFILE's hard limit is {hard}: \
         use --procs {procs} (or more), or raise the hard limit (`nofile` in /etc/security/limits.d, \
         fs.nr_open)"
    )]
    PlanFiles { needed: u64, hard: u64, procs: usize },
    #[error(
        "this run puts {per_addr} connections on one source address but net.ipv4.ip_local_port_range \
         ({low} {high}) gives only {ports} ports per destination: add source addresses \
         (--source-addrs 127.0.0.1-127.0.0.{suggest}) or widen the port range"
    )]
    PlanPorts { per_addr: usize, ports: u32, low: u32, high: u32, suggest: usize },
}

/// Turns a socket setup failure into a [`LimitError`] when it means a limit was hit.
pub fn classify(step: Step, err: &io::Error, source: Option<IpAddr>, open: usize) -> Option<LimitError> {
    let code = err.raw_os_error()?;
    match code {
        libc::EMFILE => {
            let (soft, hard) = crate::sys::nofile_limit();
            let nr_open = crate::sys::nr_open();
            Some(LimitError::ProcessFiles { open, soft, hard, nr_open })
        }
        libc::ENFILE => Some(LimitError::SystemFiles { open }),
        libc::EADDRNOTAVAIL | libc::EADDRINUSE if step != Step::Socket => {
            let (low, high) = crate::sys::local_port_range();
            Some(LimitError::Ports {
                source_addr: source.map(|a| a.to_string()).unwrap_or_else(|| "(kernel's choice)".into()),
                open,
                ports: high.saturating_sub(low) + 1,
                low,
                high,
            })
        }
        libc::ENOMEM | libc::ENOBUFS => Some(LimitError::Memory { open }),
        _ => None,
    }
}

/// Every way a run can fail.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{0}")]
    Limit(#[from] LimitError),
    #[error(
        "refusing target {0}: only loopback (127.0.0.0/8, ::1) is allowed unless it is given explicitly \
         with --allow-target {0}"
    )]
    TargetNotAllowed(String),
    #[error("bad argument: {0}")]
    Args(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("HTTP {what}: {detail}")]
    Http { what: String, detail: String },
    #[error("server: {0}")]
    Server(String),
    #[error("child process: {0}")]
    Child(String),
    /// A load agent failed, refused or went away; the message names it.
    #[error("{0}")]
    Agent(String),
    #[error("client threads: {0}")]
    Clients(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Trace(#[from] crate::trace::TraceError),
}

impl LoadError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        LoadError::Io { what: what.into(), source }
    }

    /// The process exit code for this error: 3 for a host limit, 2 for bad arguments, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            LoadError::Limit(_) => 3,
            LoadError::Args(_) | LoadError::TargetNotAllowed(_) => 2,
            LoadError::Trace(e) => e.exit_code(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_limits() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let l = classify(Step::Socket, &e, None, 10).unwrap();
        assert!(l.to_string().contains("ulimit -n"));
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let l = classify(Step::Connect, &e, Some("127.0.0.1".parse().unwrap()), 10).unwrap();
        assert!(l.to_string().contains("ip_local_port_range"));
        assert!(l.to_string().contains("--source-addrs"));
        let e = io::Error::from_raw_os_error(libc::ENFILE);
        assert!(classify(Step::Socket, &e, None, 1).unwrap().to_string().contains("fs.file-max"));
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(classify(Step::Connect, &e, None, 1).is_none());
    }
}
