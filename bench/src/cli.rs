//! The command line of `placecast-load`: one subcommand per scenario plus `compare`, with the
//! options every client scenario shares in [`Common`]. Validation of ranges lives here too.

use crate::error::LoadError;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "placecast-load",
    version,
    about = "Load tester for placecast: hold, fanout, place, reconnect, abuse and session scenarios over the real protocol, on this host or over load agents",
    long_about = "Load tester for placecast (and its baseline). Targets loopback only unless an address is \
                  allowed with --allow-target. Every scenario ramps at a bounded rate, runs a bounded time \
                  and stops by itself; progress goes to stderr once a second, the result as one JSON \
                  document to stdout (or --json FILE) plus a table on stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Open N WebSocket clients and keep them idle: connection limits and memory per connection.
    Hold(HoldArgs),
    /// N clients plus a placement driver at R placements/s for D seconds: delivery rate, share of
    /// expected frames delivered, placement-to-receive latency, server CPU per delivered frame.
    Fanout(FanoutArgs),
    /// A storm of placements from many users: accepted and rejected counts, placements/s through
    /// the limiter and the log.
    Place(PlaceArgs),
    /// N clients, M of them tracking the canvas; drop the M mid-run, reconnect them with `since`,
    /// and check every tracked canvas against the server's snapshot.
    Reconnect(ReconnectArgs),
    /// One abuser address minting a fresh session (with the proof of work when asked) per
    /// placement as fast as it can, next to N honest users on other addresses placing once per
    /// cooldown: what the abuser gets through, and whether every honest placement still does.
    Abuse(AbuseArgs),
    /// Compare result files of placecast and the baseline: medians and ratios.
    Compare(CompareArgs),
    /// Write a synthetic r/place-like event as CSV (timestamp,user_hash,x,y,color,version),
    /// deterministic from the seed: the input of `placecast import` and the history benchmarks.
    Trace(TraceArgs),
    /// A compressed day of r/place users (the trace's user and time model): each arrives, gets a
    /// session, fetches the snapshot, connects with `since`, places once per cooldown, idles,
    /// leaves and may come back with `since=<its version>`.
    Session(SessionArgs),
    /// Serve runs for a coordinator on another host (`SCENARIO --agents A,B`): one run at a
    /// time, its share of the clients, progress and result over one TCP connection.
    Agent(AgentArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server address (HTTP and WebSocket share it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,

    /// Allow a non-loopback target (IP or IP:port). Without it only 127.0.0.0/8 and ::1 are used.
    #[arg(long, value_name = "ADDR")]
    pub allow_target: Vec<String>,

    /// Source addresses for the client sockets, as a list and/or ranges
    /// (127.0.0.1-127.0.0.255,127.0.1.1). Each gives one local port range per destination.
    /// "auto": 127.0.0.1-127.0.0.16 for an IPv4 loopback target, ::1 for [::1], the kernel's
    /// choice otherwise.
    #[arg(long, default_value = "auto")]
    pub source_addrs: String,

    /// Client threads per process (default: one per CPU this process may use).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Client processes: re-executes this binary K times and merges their results (more open
    /// files than one process may hold). Only hold, fanout and session; with --agents, on
    /// every agent.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,

    /// Load agents to run the clients instead of this process, HOST:PORT,... (each runs
    /// `placecast-load agent --listen HOST:PORT`; at most 64): the clients are split over them,
    /// they start at one agreed instant, and their results are merged. Only hold, fanout and
    /// session. The placement driver and the server's /proc sampling stay here.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub agents: Vec<String>,

    /// PID of the server when it runs on this machine: its CPU time and RSS are sampled from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Write the JSON result to this file instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Free text recorded in the result (for example "placecast" or "baseline").
    #[arg(long)]
    pub label: Option<String>,

    /// Seconds of the measured phase (hold: idle time; fanout/reconnect: placement time;
    /// place: storm time). 1 to 3600.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,

    /// New connections per second during the ramp (all processes together). 1 to 200000.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,

    /// A connect plus upgrade not done within this many milliseconds counts as failed.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// Do not pin client threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,

    /// Seed for keys, masks and pixel choices (default: random).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Solve the server's proof of work for every session (`--anonymous-sessions proof`)
    /// from the start. Without it the tester switches to proofs at the first 400 proof_required.
    #[arg(long)]
    pub proof: bool,

    /// Largest WebSocket payload accepted from the server, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_payload: u64,

    #[arg(long, hide = true)]
    pub child_index: Option<usize>,
    #[arg(long, hide = true)]
    pub child_count: Option<usize>,
    #[arg(long, hide = true)]
    pub sendtable: Option<PathBuf>,
    /// The clients `share_base..share_base + share_count` of the run are this process group's
    /// (an agent's share; its child processes split it further). Default: all of them.
    #[arg(long, hide = true)]
    pub share_base: Option<u64>,
    #[arg(long, hide = true)]
    pub share_count: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DriverArgs {
    /// Placements per second in total (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Keep-alive HTTP connections (one thread each) for the placements.
    #[arg(long, default_value_t = 16)]
    pub driver_conns: usize,
    /// Anonymous users (tokens from POST /api/v1/session) the placements rotate over.
    #[arg(long, default_value_t = 64)]
    pub users: usize,
    /// How placements are sent: http (POST /api/v1/place on keep-alive connections) or ws
    /// (place messages on WebSocket connections, as the web client sends them; with --users
    /// at most --driver-conns every connection stays one user).
    #[arg(long, value_enum, default_value_t = crate::driver::Via::Http)]
    pub driver_via: crate::driver::Via,
    /// Send the placements (and the session requests) to this address instead of --target,
    /// for example one node of a cluster directly while the clients go through a balancer.
    #[arg(long, value_name = "ADDR")]
    pub place_target: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub driver: DriverArgs,
    /// Clients to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// Record per-edit latency on every K-th client (0: none; default: about 1,000 clients).
    #[arg(long)]
    pub latency_every: Option<u64>,
    /// Milliseconds to wait after the ramp before measuring.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Milliseconds to keep receiving after the last placement (at least 3 batch intervals).
    #[arg(long, default_value_t = 1500)]
    pub drain_ms: u64,
    /// The server's batch interval: the nominal expectation is one frame per client per interval
    /// while placing.
    #[arg(long, default_value_t = 100)]
    pub batch_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct PlaceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users placing (one token each).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Concurrent keep-alive connections (one thread each).
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Placements per second in total; 0 = as fast as the server answers.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How placements are sent: http (POST /api/v1/place) or ws (place messages on one
    /// WebSocket per connection, as the web client sends them; with --users at most --conns
    /// every connection stays one user).
    #[arg(long, value_enum, default_value_t = crate::driver::Via::Http)]
    pub via: crate::driver::Via,
}

#[derive(Args, Debug, Clone)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub driver: DriverArgs,
    /// Clients to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// Clients that track the canvas and are dropped and reconnected with `since`.
    #[arg(long, short = 'm', default_value_t = 100)]
    pub drop: usize,
    /// Milliseconds between the drop and the reconnect (placements go on meanwhile).
    #[arg(long, default_value_t = 500)]
    pub reconnect_delay_ms: u64,
    /// Milliseconds to keep receiving after the last placement.
    #[arg(long, default_value_t = 1500)]
    pub drain_ms: u64,
    /// Instead of dropping the tracked clients, start the server's drain
    /// (POST /api/v1/admin/drain) a third into the run: every client is closed with the
    /// reconnect hint and 1012 and must come back with since (something must answer on the
    /// target afterwards: another node behind the same address, or a restarted server).
    /// The admin token is read from the environment variable PLACECAST_ADMIN_TOKEN (not an
    /// argument: the command line is recorded in the result).
    #[arg(long)]
    pub drain: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AbuseArgs {
    /// Target, duration (the measured phase), seed, --proof, --server-pid, --json ... as for the
    /// other scenarios. --source-addrs gives the HONEST users' addresses ("auto": as many
    /// loopback addresses from 127.0.1.1 on as --honest-per-addr needs).
    #[command(flatten)]
    pub common: Common,
    /// Honest users (one session each, from their own address group).
    #[arg(long, default_value_t = 1000)]
    pub honest: usize,
    /// Honest users per source address ("auto" addresses). Keep users x placements per cooldown
    /// under the server's --placements-per-addr-per-min and users under --sessions-per-min.
    #[arg(long, default_value_t = 4)]
    pub honest_per_addr: usize,
    /// Threads (blocking connections are shared by address) for the honest users.
    #[arg(long, default_value_t = 16)]
    pub honest_threads: usize,
    /// The server's --cooldown in seconds: each honest user places once per cooldown (+ slack).
    /// Default: the cooldown_ms of GET /api/v1/canvas/info.
    #[arg(long)]
    pub cooldown: Option<u64>,
    /// Milliseconds an honest user waits beyond the cooldown (clock and queueing slack).
    #[arg(long, default_value_t = 250)]
    pub honest_slack_ms: u64,
    /// The abuser's source address (loopback targets: an address on 127.0.0.0/8).
    #[arg(long, default_value = "127.0.0.2")]
    pub abuser_addr: std::net::IpAddr,
    /// The abuser's concurrent keep-alive connections (one thread each); 0 = no abuser.
    #[arg(long, default_value_t = 32)]
    pub abuser_conns: usize,
    /// Nice value of the abuser's threads (0 to 19).
    #[arg(long, default_value_t = 0)]
    pub abuser_nice: i32,
    /// Nice value of the honest users' threads (-20 to 19; below 0 needs CAP_SYS_NICE, else it
    /// stays 0 and the report says so): on a shared tester core the honest round trips should
    /// measure the server, not the abuser's solving threads.
    #[arg(long, default_value_t = -5, allow_hyphen_values = true)]
    pub honest_nice: i32,
    /// The abuser waits out retry_after_ms / Retry-After instead of hammering.
    #[arg(long)]
    pub abuser_honor_retry_after: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    /// Target, seed, --procs, --agents, --server-pid, --json ... as for the other scenarios
    /// (`--duration` does not apply: the day lasts --day-seconds).
    #[command(flatten)]
    pub common: Common,
    /// Simulated users, 1 to 10000000 (the trace's user model: a heavy-tailed number of
    /// placements each, sittings along the day).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub users: usize,
    /// Real seconds the 24 hours of the day take (60: a day in a minute), 5 to 86400. The
    /// server's cooldown is real time: the day's own cooldown is it times 86400 / D.
    #[arg(long, default_value_t = 60)]
    pub day_seconds: u64,
    /// Mean placements per user over the day (2017: about 5 a day), 1 to 1000.
    #[arg(long, default_value_t = 5.0)]
    pub placements_per_user: f64,
    /// The day's cooldown in its own seconds when the server has none (`--cooldown 0`).
    #[arg(long, default_value_t = 300)]
    pub day_cooldown_s: u64,
    /// HTTP connections (one thread each) per tester process for sessions and snapshots, 1 to 256.
    #[arg(long, default_value_t = 8)]
    pub http_conns: usize,
    /// Record every edit's latency on every K-th user (0: none; default: about 1,000 users).
    #[arg(long)]
    pub latency_every: Option<u64>,
    /// Milliseconds to keep receiving after the day ends (every user has left by then).
    #[arg(long, default_value_t = 1500)]
    pub drain_ms: u64,
    /// Resolved by the coordinator for every process: the server's cooldown in ms, its canvas
    /// WIDTHxHEIGHTxCOLORS, and the day's start (unix ms).
    #[arg(long, hide = true)]
    pub plan_cooldown_ms: Option<u64>,
    #[arg(long, hide = true)]
    pub plan_canvas: Option<String>,
    #[arg(long, hide = true)]
    pub day_start_ms: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address to wait for a coordinator on (for example 127.0.0.2:7000, or a private interface
    /// of a load host). Port 0 picks a free one; the address is printed on stdout.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Targets this agent may load besides loopback (IP or IP:port). A coordinator cannot widen
    /// it: a job whose target this agent does not allow is refused.
    #[arg(long, value_name = "ADDR")]
    pub allow_target: Vec<String>,
    /// This host's source addresses for the clients (replaces the coordinator's --source-addrs).
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// Client threads per process on this host (replaces the coordinator's --threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Client processes on this host (replaces the coordinator's --procs).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Serve one run, then exit.
    #[arg(long)]
    pub once: bool,
    /// No log lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Result files of placecast runs (medians are taken over them).
    #[arg(long, num_args = 1.., required = true)]
    pub placecast: Vec<PathBuf>,
    /// Result files of baseline runs, same scenario and parameters.
    #[arg(long, num_args = 1.., required = true)]
    pub baseline: Vec<PathBuf>,
    /// Write the comparison JSON here (else stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Edits (rows) to write, 1 to 100000000 (16.5 M in the 2017 event).
    #[arg(long)]
    pub edits: u64,
    /// Seed: the same arguments give the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Canvas width in pixels (width*height at most 2^27).
    #[arg(long, default_value_t = 1000)]
    pub width: u32,
    /// Canvas height in pixels.
    #[arg(long, default_value_t = 1000)]
    pub height: u32,
    /// Palette size, 2 to 32 (colors are 0 to C-1).
    #[arg(long, default_value_t = 16)]
    pub colors: u32,
    /// Least time between two edits of one user, in seconds (1 to 86400).
    #[arg(long, default_value_t = 300)]
    pub cooldown_s: u64,
    /// Length of the event in hours (1 to 720).
    #[arg(long, default_value_t = 72)]
    pub hours: u64,
    /// Start of the event, unix milliseconds (default 2017-04-03T17:00:00Z).
    #[arg(long, default_value_t = crate::trace::DEFAULT_START_MS)]
    pub start_ms: u64,
    /// Distinct users (default: edits / 15, at least 1).
    #[arg(long)]
    pub users: Option<u64>,
    /// Output file; `-` writes to stdout.
    #[arg(long)]
    pub out: PathBuf,
}

impl Common {
    pub fn validate(&self) -> Result<(), LoadError> {
        if !(1..=3600).contains(&self.duration) {
            return Err(LoadError::Args(format!("--duration must be 1 to 3600 seconds, got {}", self.duration)));
        }
        if !(1.0..=200_000.0).contains(&self.ramp) {
            return Err(LoadError::Args(format!("--ramp must be 1 to 200000 connections/s, got {}", self.ramp)));
        }
        if !(1..=256).contains(&self.procs) {
            return Err(LoadError::Args(format!("--procs must be 1 to 256, got {}", self.procs)));
        }
        if self.threads == Some(0) || self.threads.is_some_and(|t| t > 1024) {
            return Err(LoadError::Args("--threads must be 1 to 1024".into()));
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return Err(LoadError::Args("--connect-timeout-ms must be 100 to 600000".into()));
        }
        if self.agents.len() > crate::link::MAX_AGENTS {
            return Err(LoadError::Args(format!(
                "--agents lists {} agents; at most {}",
                self.agents.len(),
                crate::link::MAX_AGENTS
            )));
        }
        crate::addrs::check_target(self.target, &self.allow_target)
    }

    /// The clients this process group runs out of `total`: `(base, count)`.
    pub fn share(&self, total: usize) -> (u64, usize) {
        (self.share_base.unwrap_or(0), self.share_count.unwrap_or(total))
    }

    pub fn is_child(&self) -> bool {
        self.child_index.is_some()
    }
}

/// Largest client count one run accepts (all processes together).
pub const MAX_CLIENTS: usize = 10_000_000;

pub fn check_clients(n: usize) -> Result<(), LoadError> {
    if n == 0 || n > MAX_CLIENTS {
        return Err(LoadError::Args(format!("--clients must be 1 to {MAX_CLIENTS}, got {n}")));
    }
    Ok(())
}

pub fn check_driver(d: &DriverArgs, allowed: &[String]) -> Result<(), LoadError> {
    if let Some(t) = d.place_target {
        crate::addrs::check_target(t, allowed)?;
    }
    if !(0.1..=1_000_000.0).contains(&d.rate) {
        return Err(LoadError::Args(format!("--rate must be 0.1 to 1000000 placements/s, got {}", d.rate)));
    }
    if !(1..=1024).contains(&d.driver_conns) {
        return Err(LoadError::Args("--driver-conns must be 1 to 1024".into()));
    }
    if !(1..=1_000_000).contains(&d.users) {
        return Err(LoadError::Args("--users must be 1 to 1000000".into()));
    }
    Ok(())
}
