//! Reading /proc: a process's CPU time (utime + stime of all its threads, /proc/PID/stat) and
//! resident memory (VmRSS, /proc/PID/status), and a description of the machine (cores, kernel,
//! CPU model) for the record.

use serde::Serialize;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct ProcSample {
    /// CLOCK_MONOTONIC when taken.
    pub at_ns: u64,
    /// utime + stime in microseconds (resolution: one clock tick, usually 10 ms).
    pub cpu_us: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

/// Samples process `pid`; `None` if it does not exist (any more) or /proc is unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        at_ns: crate::sys::now_ns(),
        cpu_us: parse_stat_cpu_us(&stat, clock_ticks())?,
        rss_bytes: parse_vmrss(&status)?,
    })
}

/// Samples this process.
pub fn sample_self() -> ProcSample {
    sample(std::process::id()).unwrap_or_default()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime from a /proc/PID/stat line, in microseconds. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu_us(stat: &str, ticks_per_s: u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / ticks_per_s.max(1))
}

/// VmRSS from /proc/PID/status, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Cumulative time of one CPU from /proc/stat, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct CpuTimes {
    pub cpu: usize,
    /// user + nice + system + irq + softirq + steal.
    pub busy_us: u64,
    pub softirq_us: u64,
    pub total_us: u64,
}

/// Every CPU's cumulative times (the `cpuN` lines of /proc/stat).
pub fn cpu_times() -> Vec<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let us = 1_000_000 / clock_ticks().max(1);
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(|b| b.is_ascii_digit()))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let cpu = it.next()?[3..].parse().ok()?;
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            let total = busy + get(3) + get(4);
            Some(CpuTimes { cpu, busy_us: busy * us, softirq_us: get(6) * us, total_us: total * us })
        })
        .collect()
}

/// Per-CPU use between two [`cpu_times`] samples.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct CpuUse {
    pub cpu: usize,
    /// Share of the interval the CPU was busy (0 to 1), and the softirq part of it.
    pub busy: f64,
    pub softirq: f64,
    pub busy_us: u64,
}

pub fn cpu_use(a: &[CpuTimes], b: &[CpuTimes]) -> Vec<CpuUse> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let total = y.total_us.saturating_sub(x.total_us).max(1) as f64;
            let busy_us = y.busy_us.saturating_sub(x.busy_us);
            CpuUse {
                cpu: x.cpu,
                busy: busy_us as f64 / total,
                softirq: y.softirq_us.saturating_sub(x.softirq_us) as f64 / total,
                busy_us,
            }
        })
        .collect()
}

/// Host-wide kernel memory: slab (socket structures live there) and TCP buffer pages.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct KernelMem {
    pub slab_bytes: u64,
    /// `mem` of the TCP line of /proc/net/sockstat, in bytes (buffers in use).
    pub tcp_buffer_bytes: u64,
    pub tcp_sockets: u64,
}

pub fn kernel_mem() -> KernelMem {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_bytes = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let field = |name: &str| {
        let mut it = tcp.split_whitespace();
        while let Some(w) = it.next() {
            if w == name {
                return it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        0
    };
    KernelMem { slab_bytes, tcp_buffer_bytes: field("mem") * 4096, tcp_sockets: field("alloc") }
}

/// What the machine is, for the record.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    pub ip_local_port_range: String,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_bytes = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let (nofile_soft, nofile_hard) = crate::sys::nofile_limit();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: crate::sys::read_sysctl("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpu_model,
        mem_total_bytes,
        ip_local_port_range: crate::sys::read_sysctl("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default(),
        nofile_soft,
        nofile_hard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_cpu_us(stat, 100), Some(3_000_000));
    }

    #[test]
    fn parses_vmrss() {
        assert_eq!(parse_vmrss("Name:\tx\nVmRSS:\t   2048 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn samples_self() {
        let s = sample_self();
        assert!(s.rss_bytes > 0);
    }
}
