//! The line protocol between a coordinator (`SCENARIO --agents A,B`) and its agents
//! (`placecast-load agent --listen ADDR`): the messages, the bounded line reader and writer, the
//! job's arguments, and the clock conversion for send instants that cross hosts.
//!
//! One TCP connection per agent, one JSON document per line, the design of the `--procs` pipes
//! ([`crate::fleet`]) over the network:
//!
//! ```text
//! coordinator                                  agent
//!   {"job":{args, base, count, ...}}   ──▶      parse the arguments, check the plan and limits
//!                                      ◀──      {"ready":{...}}  or  {"error":"..."} and close
//!   (every agent ready)
//!   {"start":{"at_unix_ms":S}}         ──▶      sleep until S (wall clock), start its clients
//!   {"window":V} {"drop":MS}           ──▶      as the pipes' `window V` / `drop MS`
//!   {"sent":[[version,unix_ns],...]}   ──▶      placement send instants, into its send table
//!   {"ping":N} every second            ──▶      (feeds the agent's silence watchdog)
//!                                      ◀──      {"progress":{...}} every second
//!   {"stop":{}}                        ──▶
//!                                      ◀──      {"result":{...}} and close
//! ```
//!
//! Invariants and bounds: a line is at most [`MAX_LINE`] bytes (longer: the connection fails,
//! nothing is allocated past the bound); every read and write has a timeout; either side that
//! hears nothing for [`SILENCE`] treats the other as gone (the coordinator fails the run naming
//! the agent, the agent stops its clients). Start instants are wall-clock (CLOCK_REALTIME)
//! milliseconds, so agents on other hosts must be NTP-synced: their start, and the
//! placement-to-receive latency they measure against the coordinator's send instants, are off
//! by the hosts' clock offset (on one host: none).

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::Duration;

/// Version of this protocol; a job of another version is refused.
pub const PROTO: u32 = 1;
/// Most agents one coordinator drives.
pub const MAX_AGENTS: usize = 64;
/// Longest line either side accepts (a result with every window batch and histogram bucket is
/// far below it: about 100 KB for a 60 s fanout).
pub const MAX_LINE: usize = 32 << 20;
/// Connecting to an agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From the job to `ready` (an agent of a session run builds its day plan first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The agreed start is this far after the last agent answered ready: enough for the start
/// message to reach every agent (a LAN round trip is well under a millisecond).
pub const START_LEAD: Duration = Duration::from_millis(1000);
/// Most an agent accepts between now and the start instant it is given (clocks far apart).
pub const MAX_START_AHEAD: Duration = Duration::from_secs(60);
/// Either side that hears nothing for this long treats the other as gone.
pub const SILENCE: Duration = Duration::from_secs(10);
/// The coordinator pings every agent this often (the agent's progress is as frequent).
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A write that does not complete in this long fails the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket read timeout: how often the readers look at the clock and at stop flags.
pub const READ_TICK: Duration = Duration::from_millis(250);
/// Send instants per `sent` line.
pub const MAX_SENT_PER_LINE: usize = 4096;
/// After `stop`, how long the coordinator waits for every result.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The share of a run one agent is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub proto: u32,
    /// `placecast-load <version>` of the coordinator (an agent of another version refuses).
    pub tool: String,
    /// The scenario's arguments as the coordinator was given them (after the program name),
    /// without `--agents`, `--json` and `--server-pid`, with the coordinator's resolved values
    /// (seed, and for a session the server's cooldown and canvas and the day's start).
    pub args: Vec<String>,
    /// This agent is `index` of `agents`.
    pub index: usize,
    pub agents: usize,
    /// Its clients: global indices `base .. base + count`.
    pub base: u64,
    pub count: usize,
}

/// An agent's answer to a job it can run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Ready {
    pub host: String,
    pub pid: u32,
    pub clients: usize,
    pub procs: usize,
    pub threads: usize,
    /// The open-file hard limit per process on the agent's host.
    pub nofile_hard: u64,
    pub warnings: Vec<String>,
}

/// Coordinator to agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ToAgent {
    Job(Job),
    Start {
        at_unix_ms: u64,
    },
    Window(u64),
    Drop(u64),
    /// (version, wall-clock ns the placement was sent).
    Sent(Vec<(u64, u64)>),
    Ping(u64),
    Stop {},
}

/// Agent to coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromAgent {
    Ready(Ready),
    Progress(crate::engine::Progress),
    Result(Box<crate::engine::FleetResult>),
    Error(String),
}

/// What a bounded read produced.
#[derive(Debug)]
pub enum Line {
    /// One line, without its newline.
    Msg(Vec<u8>),
    /// Nothing complete within the socket's read timeout (a partial line is kept).
    Idle,
    /// The other side closed the connection.
    Eof,
}

/// Reads lines of at most [`MAX_LINE`] bytes (or `max`), keeping a partial line across read
/// timeouts.
pub struct LineReader<R: Read> {
    inner: BufReader<R>,
    pending: Vec<u8>,
    max: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, MAX_LINE)
    }

    pub fn with_max(inner: R, max: usize) -> Self {
        LineReader { inner: BufReader::with_capacity(64 * 1024, inner), pending: Vec::new(), max }
    }

    /// The next line. Errors: transport failures, a line longer than the bound, a connection
    /// closed in the middle of a line.
    pub fn read_line(&mut self) -> io::Result<Line> {
        loop {
            let room = (self.max + 1).saturating_sub(self.pending.len()) as u64;
            match (&mut self.inner).take(room).read_until(b'\n', &mut self.pending) {
                Ok(0) if self.pending.is_empty() => return Ok(Line::Eof),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a line",
                    ))
                }
                Ok(_) => {
                    if self.pending.last() == Some(&b'\n') {
                        let mut line = std::mem::take(&mut self.pending);
                        line.pop();
                        return Ok(Line::Msg(line));
                    }
                    if self.pending.len() > self.max {
                        self.pending = Vec::new();
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a line longer than {} bytes", self.max),
                        ));
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(Line::Idle)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes one message as a line (the caller serializes writers, for example with a mutex).
pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Parses one line as `T`, with a short excerpt of a line that is not one.
pub fn parse<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, String> {
    serde_json::from_slice(line).map_err(|e| {
        let text = String::from_utf8_lossy(&line[..line.len().min(120)]);
        format!("unreadable message ({e}): {text}")
    })
}

/// Wall-clock milliseconds and nanoseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    unix_ns() / 1_000_000
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, taken now: `mono + offset` is wall-clock.
/// Send instants cross hosts as wall-clock and become each host's monotonic clock again.
pub fn realtime_offset_ns() -> i128 {
    // The smaller of a few readings brackets the pair tightly (no preemption in between).
    let mut best: Option<(u64, i128)> = None;
    for _ in 0..5 {
        let a = crate::sys::now_ns();
        let r = unix_ns();
        let b = crate::sys::now_ns();
        let off = r as i128 - (a / 2 + b / 2) as i128;
        if best.is_none_or(|(w, _)| b - a < w) {
            best = Some((b - a, off));
        }
    }
    best.map(|(_, o)| o).unwrap_or(0)
}

/// Removes every `--name VALUE` and `--name=VALUE` from `args`.
pub fn strip_arg(args: &mut Vec<String>, name: &str) {
    let eq = format!("{name}=");
    let mut out = Vec::with_capacity(args.len());
    let mut it = std::mem::take(args).into_iter();
    while let Some(a) = it.next() {
        if a == name {
            let _ = it.next();
        } else if !a.starts_with(&eq) {
            out.push(a);
        }
    }
    *args = out;
}

/// Removes every flag `--name` (no value) from `args`.
pub fn strip_flag(args: &mut Vec<String>, name: &str) {
    args.retain(|a| a != name);
}

/// Sets `--name VALUE` in `args`, replacing any earlier occurrence.
pub fn set_arg(args: &mut Vec<String>, name: &str, value: impl ToString) {
    strip_arg(args, name);
    args.push(name.to_string());
    args.push(value.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_survive_timeouts() {
        let data = b"{\"ping\":1}\nabc".to_vec();
        let mut r = LineReader::with_max(&data[..], 64);
        assert!(matches!(r.read_line().unwrap(), Line::Msg(l) if l == b"{\"ping\":1}"));
        // A connection closed mid-line is an error, not a message.
        assert!(r.read_line().is_err());
        let long = [b'x'; 100];
        let mut r = LineReader::with_max(&long[..], 64);
        let e = r.read_line().unwrap_err();
        assert!(e.to_string().contains("longer than 64"), "{e}");
        let mut r = LineReader::with_max(&b""[..], 64);
        assert!(matches!(r.read_line().unwrap(), Line::Eof));
    }

    #[test]
    fn messages_round_trip() {
        let job = ToAgent::Job(Job {
            proto: PROTO,
            tool: "t".into(),
            args: vec!["hold".into(), "-n".into(), "10".into()],
            index: 1,
            agents: 2,
            base: 5,
            count: 5,
        });
        for m in
            [job, ToAgent::Start { at_unix_ms: 7 }, ToAgent::Window(3), ToAgent::Sent(vec![(1, 2)]), ToAgent::Stop {}]
        {
            let mut buf = Vec::new();
            write_msg(&mut buf, &m).unwrap();
            assert_eq!(buf.last(), Some(&b'\n'));
            assert_eq!(parse::<ToAgent>(&buf[..buf.len() - 1]).unwrap(), m);
        }
        assert_eq!(serde_json::to_string(&ToAgent::Window(3)).unwrap(), r#"{"window":3}"#);
        let e = parse::<ToAgent>(b"{\"nonsense\":1}").unwrap_err();
        assert!(e.contains("unreadable"), "{e}");
    }

    #[test]
    fn arguments_are_replaced_not_duplicated() {
        let mut a: Vec<String> = ["fanout", "--agents", "a,b", "--seed=4", "--json", "x", "--quiet", "--seed", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        strip_arg(&mut a, "--agents");
        strip_arg(&mut a, "--json");
        set_arg(&mut a, "--seed", 9);
        strip_flag(&mut a, "--quiet");
        assert_eq!(a, ["fanout", "--seed", "9"]);
    }

    #[test]
    fn realtime_offset_is_stable() {
        let (a, b) = (realtime_offset_ns(), realtime_offset_ns());
        assert!((a - b).abs() < 5_000_000, "{a} {b}");
    }
}
