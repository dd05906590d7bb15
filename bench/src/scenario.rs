//! The scenarios, each a bounded sequence of phases (plan, ramp, settle, measure, drain, stop)
//! over a client [`Fleet`] (this process, `--procs` children or `--agents` on other hosts), the
//! placement [`driver`] and /proc samples of the server, ending in one [`Report`]; the session
//! scenario's compressed day. Also the pre-flight plan that refuses a run which cannot fit the
//! open-file or port limits before it opens a single socket. The placement driver and the
//! server's /proc sampling always stay in this (the coordinating) process.

use crate::batch;
use crate::cli::{self, AbuseArgs, Cmd, Common, FanoutArgs, HoldArgs, PlaceArgs, ReconnectArgs, SessionArgs};
use crate::coordinator::{self, AgentFleet};
use crate::driver::{self, DriverConfig, DriverCounters, DriverReport};
use crate::engine::{EngineConfig, FleetResult, Progress};
use crate::error::{LimitError, LoadError};
use crate::fleet::{Fleet, LocalFleet, ProcFleet};
use crate::http::{self, CanvasInfo};
use crate::link;
use crate::procfs::{self, ProcSample};
use crate::report::*;
use crate::sendtable::{self, SendTable};
use crate::share::{self, Share};
use crate::signals;
use crate::sys;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings derived from the common options.
pub(crate) struct Ctx {
    pub(crate) common: Common,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) threads: usize,
    pub(crate) cpus: Vec<usize>,
    pub(crate) seed: u64,
}

impl Ctx {
    pub(crate) fn new(common: &Common) -> Result<Self, LoadError> {
        common.validate()?;
        let sources = crate::addrs::parse_sources_for(&common.source_addrs, common.target)?;
        crate::addrs::check_sources(&sources, common.target)?;
        let allowed = sys::allowed_cpus();
        let threads = common.threads.unwrap_or(allowed.len().max(1));
        let cpus = if common.no_pin { Vec::new() } else { allowed };
        let seed = common.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) ^ sys::now_ns()
        });
        Ok(Ctx { common: common.clone(), sources, threads, cpus, seed })
    }

    pub(crate) fn engine(&self, since: Option<u64>, latency_every: u64, track_below: u64) -> EngineConfig {
        EngineConfig {
            target: self.common.target,
            sources: self.sources.clone(),
            seed: self.seed,
            connect_timeout_ms: self.common.connect_timeout_ms,
            max_payload: self.common.max_payload,
            latency_every,
            since,
            track_below,
            max_pending: ((self.common.ramp / self.threads as f64) as usize).clamp(64, 4096),
            close_politely: true,
        }
    }

    fn report(&self, scenario: &str, params: serde_json::Value) -> Report {
        Report {
            tool: format!("placecast-load {}", env!("CARGO_PKG_VERSION")),
            scenario: scenario.into(),
            label: self.common.label.clone(),
            command: std::env::args().collect(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            target: self.common.target.to_string(),
            loadavg: vec![loadavg()],
            machine: Some(procfs::machine()),
            params,
            ..Default::default()
        }
    }

    fn server(&self) -> ProcSample {
        self.common.server_pid.and_then(procfs::sample).unwrap_or_default()
    }
}

/// The CPUs process `pid` may run on (Cpus_allowed_list of /proc/PID/status).
fn server_cpus(pid: u32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let Some(list) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else { return Vec::new() };
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Refuses a run that cannot fit the open-file or port limits, before any socket is opened;
/// returns warnings for a run that fits but is close to a limit.
pub(crate) fn plan(ctx: &Ctx, clients: usize, extra_fds: u64) -> Result<Vec<String>, LimitError> {
    let (_, hard) = sys::raise_nofile_to_hard();
    let procs = ctx.common.procs.max(1);
    let per_proc = clients.div_ceil(procs) as u64 + extra_fds + 32;
    if per_proc > hard {
        let usable = hard.saturating_sub(extra_fds + 32).max(1);
        return Err(LimitError::PlanFiles { needed: per_proc, hard, procs: clients.div_ceil(usable as usize) });
    }
    let (low, high) = sys::local_port_range();
    let ports = high.saturating_sub(low) + 1;
    let per_addr = clients.div_ceil(ctx.sources.len().max(1));
    let suggest = clients.div_ceil(ports as usize / 2).clamp(2, 255);
    if per_addr as u64 > ports as u64 {
        return Err(LimitError::PlanPorts { per_addr, ports, low, high, suggest });
    }
    let mut warnings = Vec::new();
    if per_addr as u64 > ports as u64 / 2 {
        // Measured here: past about half the range on one address, connects stall for seconds
        // (Linux gives connect() one parity of ports first; the rest collide with TIME_WAIT).
        warnings.push(format!(
            "{per_addr} connections per source address use more than half of the {ports} local ports; \
             connects may stall: add source addresses (--source-addrs 127.0.0.1-127.0.0.{suggest})"
        ));
    }
    Ok(warnings)
}

/// Prints a progress line once a second.
struct Ticker {
    start: Instant,
    last: Instant,
    prev: Progress,
    quiet: bool,
    pid: Option<u32>,
    prev_srv: Option<ProcSample>,
}

impl Ticker {
    fn new(common: &Common) -> Self {
        Ticker {
            start: Instant::now(),
            last: Instant::now(),
            prev: Progress::default(),
            quiet: common.quiet,
            pid: common.server_pid,
            prev_srv: common.server_pid.and_then(procfs::sample),
        }
    }

    fn tick(&mut self, p: Progress, placed: Option<&DriverCounters>) {
        let dt = self.last.elapsed().as_secs_f64();
        if dt < 1.0 {
            return;
        }
        self.last = Instant::now();
        let srv = self.pid.and_then(procfs::sample);
        let server = match (srv, self.prev_srv) {
            (Some(a), Some(b)) if a.at_ns > b.at_ns => {
                Some((a.cpu_us.saturating_sub(b.cpu_us) as f64 / ((a.at_ns - b.at_ns) as f64 / 1000.0), a.rss_bytes))
            }
            _ => None,
        };
        self.prev_srv = srv;
        let placed = placed.map(|c| (c.accepted.load(Ordering::Relaxed), c.rejected.load(Ordering::Relaxed)));
        if !self.quiet {
            eprintln!("{}", progress_line(self.start.elapsed().as_secs_f64(), &p, &self.prev, dt, server, placed));
        }
        self.prev = p;
    }
}

/// Sleeps `d` in small steps, ticking, and returns early with the fleet's error or on SIGINT.
fn wait(fleet: &Fleet, t: &mut Ticker, d: Duration, placed: Option<&DriverCounters>) -> Result<(), LoadError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
        t.tick(fleet.progress(), placed);
        if let Some(e) = fleet.fatal() {
            return Err(e);
        }
        if signals::interrupted() {
            return Err(LoadError::Timeout("interrupted (SIGINT/SIGTERM)".into()));
        }
    }
    Ok(())
}

/// Waits until every client is connected or failed, bounded by the ramp time plus slack.
fn wait_ready(
    fleet: &mut Fleet,
    t: &mut Ticker,
    clients: usize,
    common: &Common,
    warnings: &mut Vec<String>,
) -> Result<(), LoadError> {
    let bound = Duration::from_secs_f64(clients as f64 / common.ramp)
        + Duration::from_millis(common.connect_timeout_ms)
        + Duration::from_secs(30);
    let end = Instant::now() + bound;
    loop {
        let p = fleet.progress();
        t.tick(p, None);
        if p.ramp_done() {
            break;
        }
        if let Some(e) = fleet.fatal() {
            return Err(e);
        }
        if signals::interrupted() {
            return Err(LoadError::Timeout("interrupted (SIGINT/SIGTERM)".into()));
        }
        if Instant::now() > end {
            warnings.push(format!(
                "ramp not finished after {:.0} s: {} of {} clients open",
                bound.as_secs_f64(),
                p.open,
                clients
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.note_ready();
    Ok(())
}

/// The arguments of this run for agents and child processes, with the seed resolved (so every
/// process derives the same keys and, for a session, the same day).
fn run_args(ctx: &Ctx) -> Vec<String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    link::set_arg(&mut args, "--seed", ctx.seed);
    args
}

fn start_fleet(
    ctx: &Ctx,
    clients: usize,
    cfg: EngineConfig,
    table: Option<Arc<SendTable>>,
    table_path: Option<std::path::PathBuf>,
) -> Result<Fleet, LoadError> {
    if !ctx.common.agents.is_empty() {
        let tap = table.as_ref().and_then(|t| t.tap());
        let args = coordinator::job_args(run_args(ctx));
        Ok(Fleet::Agents(AgentFleet::start(&ctx.common.agents, args, clients, tap)?))
    } else if ctx.common.procs > 1 {
        Ok(Fleet::Procs(ProcFleet::start(ctx.common.procs, run_args(ctx), table, table_path)?))
    } else {
        Ok(Fleet::Local(LocalFleet::start(cfg, clients, 0, ctx.threads, ctx.common.ramp, &ctx.cpus, table)?))
    }
}

/// The send table: anonymous in one process (and with agents: it feeds their forwarder), a
/// shared file with child processes.
fn make_table(ctx: &Ctx) -> Result<(Arc<SendTable>, Option<std::path::PathBuf>), LoadError> {
    if ctx.common.procs > 1 && ctx.common.agents.is_empty() {
        let p = sendtable::temp_path();
        let t = SendTable::create_file(&p, sendtable::DEFAULT_SLOTS)
            .map_err(|e| LoadError::io(format!("creating {}", p.display()), e))?;
        Ok((Arc::new(t), Some(p)))
    } else {
        Ok((
            Arc::new(
                SendTable::anonymous(sendtable::DEFAULT_SLOTS)
                    .map_err(|e| LoadError::io("mapping the send table", e))?,
            ),
            None,
        ))
    }
}

/// Records an error in the report's outcome.
fn fail(report: &mut Report, e: &LoadError) {
    report.outcome.ok = false;
    report.outcome.error = Some(e.to_string());
    if let LoadError::Limit(l) = e {
        report.outcome.limit = Some(l.clone());
    }
}

fn tester_report(f: &FleetResult, procs: usize) -> TesterReport {
    let ready = f.clients_ready.max(1);
    TesterReport {
        procs: f.procs.max(procs as u64),
        threads: f.threads,
        rss_before_bytes: f.rss_before_bytes,
        rss_init_bytes: f.rss_init_bytes,
        rss_ready_bytes: f.rss_ready_bytes,
        rss_per_client_bytes: (f.clients_ready > 0)
            .then(|| f.rss_ready_bytes.saturating_sub(f.rss_init_bytes) as f64 / ready as f64),
        rss_per_client_with_fixed_bytes: (f.clients_ready > 0)
            .then(|| f.rss_ready_bytes.saturating_sub(f.rss_before_bytes) as f64 / ready as f64),
        window_cpu_us: 0,
        window_cores_used: 0.0,
    }
}

/// The client plan of this process, or none when agents run the clients (each checks its own
/// share and reports its warnings).
fn local_plan(ctx: &Ctx, clients: usize, extra_fds: u64) -> Result<Vec<String>, LimitError> {
    if ctx.common.agents.is_empty() {
        plan(ctx, clients, extra_fds)
    } else {
        Ok(Vec::new())
    }
}

/// Refuses --agents for the scenarios that do not split over agents.
fn no_agents(common: &Common, scenario: &str) -> Result<(), LoadError> {
    if common.agents.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Args(format!("--agents applies to hold, fanout and session, not {scenario}")))
    }
}

/// Warnings the agents gave when they got their shares.
/// Stops the clients and books what a run over agents adds: each agent's own figures and its
/// warnings, named.
fn stop_fleet(fleet: Fleet, report: &mut Report, warnings: &mut Vec<String>) -> Result<FleetResult, LoadError> {
    let (result, parts) = fleet.stop()?;
    warnings.extend(parts.iter().flat_map(|p| p.warnings.iter().map(move |w| format!("agent {}: {w}", p.agent))));
    report.agents = parts;
    Ok(result)
}

pub fn hold(a: &HoldArgs) -> Result<Report, LoadError> {
    cli::check_clients(a.clients)?;
    let ctx = Ctx::new(&a.common)?;
    let mut report = ctx.report(
        "hold",
        serde_json::json!({
            "clients": a.clients, "duration_s": a.common.duration, "ramp_per_s": a.common.ramp,
            "threads_per_proc": ctx.threads, "procs": a.common.procs, "source_addrs": ctx.sources.len(),
            "agents": a.common.agents,
        }),
    );
    let mut warnings = local_plan(&ctx, a.clients, 16)?;
    let info = http::canvas_info(a.common.target)?;
    let before = ctx.server();
    let kernel_before = procfs::kernel_mem();
    let mut kernel_ready = kernel_before;
    let mut t = Ticker::new(&a.common);
    let mut fleet = start_fleet(&ctx, a.clients, ctx.engine(None, 0, 0), None, None)?;
    let mut ready = ProcSample::default();
    let (mut w0, mut w1) = (ProcSample::default(), ProcSample::default());
    let run = (|| {
        wait_ready(&mut fleet, &mut t, a.clients, &a.common, &mut warnings)?;
        // Let the server settle its allocations before reading its memory.
        wait(&fleet, &mut t, Duration::from_millis(500), None)?;
        ready = ctx.server();
        kernel_ready = procfs::kernel_mem();
        w0 = ready;
        wait(&fleet, &mut t, Duration::from_secs(a.common.duration), None)?;
        w1 = ctx.server();
        Ok::<(), LoadError>(())
    })();
    let result = stop_fleet(fleet, &mut report, &mut warnings)?;
    let end = ctx.server();
    if let Err(e) = &run {
        fail(&mut report, e);
    } else {
        report.outcome.ok = result.fatal.is_none()
            && result.clients_ready == a.clients as u64
            && result.counts.unexpected_disconnects == 0;
        if !report.outcome.ok && report.outcome.error.is_none() {
            report.outcome.error = Some(format!(
                "{} of {} clients connected, {} unexpected disconnects",
                result.clients_ready, a.clients, result.counts.unexpected_disconnects
            ));
        }
    }
    if let Some(f) = &result.fatal {
        fail(&mut report, &LoadError::Limit(f.clone()));
    }
    report.outcome.warnings = warnings;
    if let Some(pid) = a.common.server_pid {
        let mut s = ServerReport::from_samples(pid, before, ready, w0, w1, end);
        if result.clients_ready > 0 && ready.rss_bytes > 0 {
            s.rss_per_connection_bytes =
                Some(ready.rss_bytes.saturating_sub(before.rss_bytes) as f64 / result.clients_ready as f64);
            s.rss_total_per_connection_bytes = Some(ready.rss_bytes as f64 / result.clients_ready as f64);
        }
        report.server = Some(s);
    }
    report.params["edit_stride"] = info.edit_stride.into();
    report.tester = Some(tester_report(&result, a.common.procs));
    report.clients = Some(ClientsReport::from_fleet(a.clients as u64, &result));
    report.drain = DrainReport::from_fleet(&result);
    report.kernel = Some(KernelReport {
        before: kernel_before,
        ready: kernel_ready,
        slab_per_connection_bytes: (result.clients_ready > 0).then(|| {
            kernel_ready.slab_bytes.saturating_sub(kernel_before.slab_bytes) as f64 / result.clients_ready as f64
        }),
    });
    Ok(report)
}

fn driver_config(ctx: &Ctx, d: &crate::cli::DriverArgs, info: &CanvasInfo) -> DriverConfig {
    DriverConfig {
        target: d.place_target.unwrap_or(ctx.common.target),
        rate: d.rate,
        duration: Duration::from_secs(ctx.common.duration),
        conns: d.driver_conns,
        width: info.width,
        height: info.height,
        palette_len: info.palette_len,
        seed: ctx.seed,
        via: d.driver_via,
    }
}

/// Runs the driver on its own thread while the main thread ticks; returns its report.
fn drive_while_ticking(
    fleet: &Fleet,
    t: &mut Ticker,
    cfg: DriverConfig,
    tokens: Arc<Vec<String>>,
    table: Arc<SendTable>,
    mut at: impl FnMut(Duration, &Fleet),
) -> Result<DriverReport, LoadError> {
    let counters = Arc::new(DriverCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let (counters, stop) = (counters.clone(), stop.clone());
        std::thread::spawn(move || driver::run(&cfg, tokens, Some(table), counters, stop))
    };
    let start = Instant::now();
    let mut err = None;
    while !h.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        t.tick(fleet.progress(), Some(&counters));
        at(start.elapsed(), fleet);
        if err.is_none() {
            if let Some(e) = fleet.fatal() {
                err = Some(e);
                stop.store(true, Ordering::SeqCst);
            } else if signals::interrupted() {
                err = Some(LoadError::Timeout("interrupted (SIGINT/SIGTERM)".into()));
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    let rep = h.join().map_err(|_| LoadError::Server("the placement driver panicked".into()))?;
    match err {
        Some(e) => Err(e),
        None => Ok(rep),
    }
}

pub fn fanout(a: &FanoutArgs) -> Result<Report, LoadError> {
    cli::check_clients(a.clients)?;
    cli::check_driver(&a.driver, &a.common.allow_target)?;
    let ctx = Ctx::new(&a.common)?;
    let latency_every = a.latency_every.unwrap_or((a.clients as u64 / 1000).max(1));
    let mut report = ctx.report(
        "fanout",
        serde_json::json!({
            "clients": a.clients, "rate_per_s": a.driver.rate, "duration_s": a.common.duration,
            "ramp_per_s": a.common.ramp, "driver_conns": a.driver.driver_conns, "users": a.driver.users,
            "threads_per_proc": ctx.threads, "procs": a.common.procs, "source_addrs": ctx.sources.len(),
            "latency_every": latency_every, "settle_ms": a.settle_ms, "drain_ms": a.drain_ms, "batch_ms": a.batch_ms,
            "agents": a.common.agents,
        }),
    );
    report.outcome.warnings = local_plan(&ctx, a.clients, a.driver.driver_conns as u64 + 16)?;
    let info = http::canvas_info(a.common.target)?;
    report.params["edit_stride"] = info.edit_stride.into();
    report.params["server_cooldown_ms"] = info.cooldown_ms.into();
    if info.cooldown_ms > 0 {
        report.outcome.warnings.push(format!(
            "the server's cooldown is {} ms: with {} users most placements will be refused (run it with --cooldown 0)",
            info.cooldown_ms, a.driver.users
        ));
    }
    let tokens = Arc::new(driver::obtain_tokens(
        a.driver.place_target.unwrap_or(a.common.target),
        a.driver.users,
        8,
        a.common.proof,
    )?);
    let (table, table_path) = make_table(&ctx)?;
    let before = ctx.server();
    let mut t = Ticker::new(&a.common);
    let mut fleet = start_fleet(&ctx, a.clients, ctx.engine(None, latency_every, 0), Some(table.clone()), table_path)?;
    let mut warnings = std::mem::take(&mut report.outcome.warnings);
    let mut ready = ProcSample::default();
    let (mut w0, mut w1) = (ProcSample::default(), ProcSample::default());
    let (mut v0, mut clients_in_window) = (0u64, 0u64);
    let mut drv: Option<DriverReport> = None;
    let (mut self_cpu, mut self_wall_ns) = (0u64, 0u64);
    let (mut cpus0, mut cpus1) = (Vec::new(), Vec::new());
    let run = (|| {
        wait_ready(&mut fleet, &mut t, a.clients, &a.common, &mut warnings)?;
        wait(&fleet, &mut t, Duration::from_millis(a.settle_ms), None)?;
        ready = ctx.server();
        v0 = http::canvas_info(a.common.target)?.version;
        fleet.set_window(v0);
        // Give child processes (and agents) a moment to read the window before the first placement.
        let remote = a.common.procs > 1 || !a.common.agents.is_empty();
        std::thread::sleep(Duration::from_millis(if remote { 100 } else { 0 }));
        clients_in_window = fleet.progress().open;
        w0 = ctx.server();
        cpus0 = procfs::cpu_times();
        let c0 = sys::self_cpu_us();
        let n0 = sys::now_ns();
        drv = Some(drive_while_ticking(
            &fleet,
            &mut t,
            driver_config(&ctx, &a.driver, &info),
            tokens.clone(),
            table.clone(),
            |_, _| {},
        )?);
        wait(&fleet, &mut t, Duration::from_millis(a.drain_ms), None)?;
        w1 = ctx.server();
        cpus1 = procfs::cpu_times();
        self_cpu = sys::self_cpu_us() - c0;
        self_wall_ns = sys::now_ns() - n0;
        Ok::<(), LoadError>(())
    })();
    let result = stop_fleet(fleet, &mut report, &mut warnings)?;
    if table.tap_dropped() > 0 {
        warnings.push(format!(
            "{} send instants were not forwarded to the agents (queue full): those versions are untimed there",
            table.tap_dropped()
        ));
    }
    let end = ctx.server();
    if let Err(e) = &run {
        fail(&mut report, e);
    }
    if let Some(f) = &result.fatal {
        fail(&mut report, &LoadError::Limit(f.clone()));
    }
    let d = drv.unwrap_or_default();
    let v1 = d.last_version.unwrap_or(v0).max(result.batches.last().map(|b| b.0).unwrap_or(v0));
    let delivery =
        DeliveryReport::compute(&result, v0, v1, clients_in_window, d.elapsed_s, info.edit_stride, a.batch_ms);
    if run.is_ok() && result.fatal.is_none() {
        report.outcome.ok = d.accepted > 0 && result.clients_ready == a.clients as u64;
        if d.accepted == 0 {
            report.outcome.error = Some(format!("no placement was accepted: {:?}", d.rejected));
        } else if result.clients_ready != a.clients as u64 {
            report.outcome.error = Some(format!("only {} of {} clients connected", result.clients_ready, a.clients));
        }
    }
    if d.accepted as f64 / d.elapsed_s.max(1e-9) < 0.9 * a.driver.rate {
        warnings.push(format!(
            "the driver placed {:.0}/s, below the requested {:.0}/s (server answers too slow for --driver-conns {}?)",
            d.accepted_per_s, a.driver.rate, a.driver.driver_conns
        ));
    }
    report.outcome.warnings = warnings;
    if let Some(pid) = a.common.server_pid {
        let mut s = ServerReport::from_samples(pid, before, ready, w0, w1, end);
        if result.clients_ready > 0 {
            s.rss_per_connection_bytes =
                Some(ready.rss_bytes.saturating_sub(before.rss_bytes) as f64 / result.clients_ready as f64);
            s.rss_total_per_connection_bytes = Some(ready.rss_bytes as f64 / result.clients_ready as f64);
        }
        s.cpus = procfs::cpu_use(&cpus0, &cpus1);
        let server_cpus = server_cpus(pid);
        if delivery.frames_delivered > 0 && !server_cpus.is_empty() && server_cpus.len() < s.cpus.len() {
            let busy: u64 = s.cpus.iter().filter(|c| server_cpus.contains(&c.cpu)).map(|c| c.busy_us).sum();
            s.server_cores_busy_us_per_delivered_frame = Some(busy as f64 / delivery.frames_delivered as f64);
        }
        if delivery.frames_delivered > 0 {
            s.cpu_us_per_delivered_frame = Some(s.window_cpu_us as f64 / delivery.frames_delivered as f64);
            s.frames_per_cpu_second =
                (s.window_cpu_us > 0).then(|| delivery.frames_delivered as f64 / (s.window_cpu_us as f64 / 1e6));
        }
        report.server = Some(s);
    }
    let mut tester = tester_report(&result, a.common.procs);
    tester.window_cpu_us = self_cpu;
    tester.window_cores_used = if self_wall_ns > 0 { self_cpu as f64 * 1e3 / self_wall_ns as f64 } else { 0.0 };
    report.tester = Some(tester);
    report.clients = Some(ClientsReport::from_fleet(a.clients as u64, &result));
    report.drain = DrainReport::from_fleet(&result);
    report.latency = Some(LatencyReport::from_fleet(&result, latency_every));
    report.delivery = Some(delivery);
    report.placements = Some(d);
    Ok(report)
}

pub fn place(a: &PlaceArgs) -> Result<Report, LoadError> {
    no_agents(&a.common, "place")?;
    if a.common.procs > 1 {
        return Err(LoadError::Args("--procs applies to hold, fanout and session only".into()));
    }
    if !(1..=1024).contains(&a.conns) || !(1..=1_000_000).contains(&a.users) || a.rate < 0.0 {
        return Err(LoadError::Args("--conns must be 1 to 1024, --users 1 to 1000000, --rate >= 0".into()));
    }
    let ctx = Ctx::new(&a.common)?;
    let mut report = ctx.report(
        "place",
        serde_json::json!({"users": a.users, "conns": a.conns, "rate_per_s": a.rate, "duration_s": a.common.duration, "via": a.via}),
    );
    let info = http::canvas_info(a.common.target)?;
    report.params["server_cooldown_ms"] = info.cooldown_ms.into();
    let tokens = Arc::new(driver::obtain_tokens(a.common.target, a.users, a.conns.min(16), a.common.proof)?);
    let cfg = DriverConfig {
        target: a.common.target,
        rate: a.rate,
        duration: Duration::from_secs(a.common.duration),
        conns: a.conns,
        width: info.width,
        height: info.height,
        palette_len: info.palette_len,
        seed: ctx.seed,
        via: a.via,
    };
    let counters = Arc::new(DriverCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w0 = ctx.server();
    let h = {
        let (counters, stop, tokens) = (counters.clone(), stop.clone(), tokens.clone());
        std::thread::spawn(move || driver::run(&cfg, tokens, None, counters, stop))
    };
    let start = Instant::now();
    let mut last = Instant::now();
    let mut prev = 0u64;
    while !h.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if signals::interrupted() {
            stop.store(true, Ordering::SeqCst);
        }
        if last.elapsed() >= Duration::from_secs(1) && !a.common.quiet {
            let acc = counters.accepted.load(Ordering::Relaxed);
            let rej = counters.rejected.load(Ordering::Relaxed);
            eprintln!(
                "[{:6.1}s] accepted {acc} ({:.0}/s) rejected {rej} errors {} version {}",
                start.elapsed().as_secs_f64(),
                (acc - prev) as f64 / last.elapsed().as_secs_f64(),
                counters.errors.load(Ordering::Relaxed),
                counters.last_version.load(Ordering::Relaxed)
            );
            prev = acc;
            last = Instant::now();
        }
    }
    let d = h.join().map_err(|_| LoadError::Server("the placement driver panicked".into()))?;
    let w1 = ctx.server();
    report.outcome.ok = d.sent > 0 && d.transport_errors == 0 && !signals::interrupted();
    if !report.outcome.ok {
        report.outcome.error = Some(format!("{} transport errors, {} sent", d.transport_errors, d.sent));
    }
    if let Some(pid) = a.common.server_pid {
        let mut s = ServerReport::from_samples(pid, w0, w0, w0, w1, w1);
        if d.accepted > 0 {
            s.cpu_us_per_accepted_placement = Some(s.window_cpu_us as f64 / d.accepted as f64);
        }
        report.server = Some(s);
    }
    report.placements = Some(d);
    Ok(report)
}

/// `POST /api/v1/admin/drain`; returns the answer's status and body.
fn admin_drain(target: std::net::SocketAddr, token: &str) -> Result<String, LoadError> {
    let mut c = http::HttpConn::connect(target, Duration::from_secs(10))
        .map_err(|e| LoadError::io("connecting for POST /api/v1/admin/drain", e))?;
    let auth = format!("Bearer {token}");
    let r = c
        .request("POST", "/api/v1/admin/drain", &[("Authorization", &auth)], b"")
        .map_err(|e| LoadError::io("POST /api/v1/admin/drain", e))?;
    if r.status != 202 && r.status != 200 {
        return Err(LoadError::Http {
            what: "POST /api/v1/admin/drain".into(),
            detail: format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
        });
    }
    Ok(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
}

fn snapshot(target: std::net::SocketAddr) -> Result<batch::Snapshot, LoadError> {
    let r = http::fetch(target, "GET", "/api/v1/canvas", b"")?;
    if r.status != 200 {
        return Err(LoadError::Http { what: "GET /api/v1/canvas".into(), detail: format!("status {}", r.status) });
    }
    let s = batch::decode_snapshot(&r.body)
        .map_err(|e| LoadError::Http { what: "GET /api/v1/canvas".into(), detail: e.to_string() })?;
    if let Some(v) = r.header("x-canvas-version").and_then(|v| v.parse::<u64>().ok()) {
        if v != s.version {
            return Err(LoadError::Server(format!(
                "X-Canvas-Version {v} differs from the snapshot's version {}",
                s.version
            )));
        }
    }
    Ok(s)
}

pub fn reconnect(a: &ReconnectArgs) -> Result<Report, LoadError> {
    cli::check_clients(a.clients)?;
    cli::check_driver(&a.driver, &a.common.allow_target)?;
    no_agents(&a.common, "reconnect")?;
    if a.common.procs > 1 {
        return Err(LoadError::Args("--procs applies to hold, fanout and session only".into()));
    }
    if a.drop == 0 || a.drop > a.clients || a.drop > 100_000 {
        return Err(LoadError::Args(format!("--drop must be 1 to min(--clients, 100000), got {}", a.drop)));
    }
    if a.reconnect_delay_ms > 60_000 {
        return Err(LoadError::Args("--reconnect-delay-ms must be at most 60000".into()));
    }
    let ctx = Ctx::new(&a.common)?;
    let latency_every = (a.clients as u64 / 1000).max(1);
    let mut report = ctx.report(
        "reconnect",
        serde_json::json!({
            "clients": a.clients, "drop": a.drop, "rate_per_s": a.driver.rate, "duration_s": a.common.duration,
            "reconnect_delay_ms": a.reconnect_delay_ms, "ramp_per_s": a.common.ramp, "threads": ctx.threads,
            "drain": a.drain,
        }),
    );
    let plan_warnings = plan(&ctx, a.clients, a.driver.driver_conns as u64 + 16)?;
    let info = http::canvas_info(a.common.target)?;
    report.params["edit_stride"] = info.edit_stride.into();
    let base = snapshot(a.common.target)?;
    let tokens = Arc::new(driver::obtain_tokens(
        a.driver.place_target.unwrap_or(a.common.target),
        a.driver.users,
        8,
        a.common.proof,
    )?);
    let (table, _) = make_table(&ctx)?;
    let mut t = Ticker::new(&a.common);
    let mut fleet = start_fleet(
        &ctx,
        a.clients,
        ctx.engine(Some(base.version), latency_every, a.drop as u64),
        Some(table.clone()),
        None,
    )?;
    let mut warnings = plan_warnings;
    let drain_token = if a.drain {
        Some(std::env::var("PLACECAST_ADMIN_TOKEN").map_err(|_| {
            LoadError::Args("--drain needs the admin token in the environment variable PLACECAST_ADMIN_TOKEN".into())
        })?)
    } else {
        None
    };
    let mut drain_answer: Option<std::thread::JoinHandle<Result<String, LoadError>>> = None;
    let mut drv = None;
    let mut snap = None;
    let mut clients_in_window = 0;
    let run = (|| {
        wait_ready(&mut fleet, &mut t, a.clients, &a.common, &mut warnings)?;
        fleet.set_window(base.version);
        clients_in_window = fleet.progress().open;
        let drop_at = Duration::from_secs_f64(a.common.duration as f64 / 3.0);
        let mut dropped = false;
        let target = a.common.target;
        let delay = a.reconnect_delay_ms;
        drv = Some(drive_while_ticking(
            &fleet,
            &mut t,
            driver_config(&ctx, &a.driver, &info),
            tokens.clone(),
            table.clone(),
            |el, f| {
                if !dropped && el >= drop_at {
                    dropped = true;
                    if let Some(tok) = drain_token.clone() {
                        drain_answer = Some(std::thread::spawn(move || admin_drain(target, &tok)));
                    } else if let Fleet::Local(l) = f {
                        l.drop_tracked(delay);
                    }
                }
            },
        )?);
        wait(&fleet, &mut t, Duration::from_millis(a.drain_ms.max(delay + 500)), None)?;
        if let Some(h) = drain_answer.take() {
            match h.join() {
                Ok(Ok(ans)) => warnings.push(format!("POST /api/v1/admin/drain: {ans}")),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(LoadError::Server("the drain request thread panicked".into())),
            }
        }
        // Every dropped client should be back; wait for it (bounded).
        let end = Instant::now() + Duration::from_millis(a.common.connect_timeout_ms);
        while fleet.progress().open < clients_in_window && Instant::now() < end {
            wait(&fleet, &mut t, Duration::from_millis(100), None)?;
        }
        let last = drv.as_ref().and_then(|d: &DriverReport| d.last_version).unwrap_or(base.version);
        // The snapshot must be at least at the last placed version (it may be cached up to 1 s).
        for _ in 0..10 {
            let s = snapshot(a.common.target)?;
            let ok = s.version >= last;
            snap = Some(s);
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Let the clients receive everything up to the snapshot's version.
        wait(&fleet, &mut t, Duration::from_millis(500), None)?;
        Ok::<(), LoadError>(())
    })();
    let (result, _) = fleet.stop()?;
    if let Err(e) = &run {
        fail(&mut report, e);
    }
    if let Some(f) = &result.fatal {
        fail(&mut report, &LoadError::Limit(f.clone()));
    }
    let d = drv.unwrap_or_default();
    let mut rc = ReconnectReport {
        base_version: base.version,
        tracked: result.tracks.len() as u64,
        dropped: result.counts.dropped,
        reconnected: result.counts.reconnected,
        ..Default::default()
    };
    if let Some(s) = &snap {
        rc.snapshot_version = s.version;
        for tr in &result.tracks {
            rc.tracked_gaps += tr.gaps as u64;
            rc.tracked_open_at_end += u64::from(tr.open);
            if tr.version != s.version {
                rc.canvases_different += 1;
                continue;
            }
            rc.tracked_at_snapshot_version += 1;
            let mut px = base.pixels.clone();
            for &e in &tr.edits {
                let (i, c) = batch::unpack(e);
                if let Some(p) = px.get_mut(i as usize) {
                    *p = c;
                }
            }
            let diff = px.iter().zip(&s.pixels).filter(|(a, b)| a != b).count() as u64
                + px.len().abs_diff(s.pixels.len()) as u64;
            if diff == 0 {
                rc.canvases_equal += 1;
            } else {
                rc.canvases_different += 1;
                rc.pixels_different += diff;
            }
        }
    }
    let drain = DrainReport::from_fleet(&result);
    let came_back = if a.drain {
        drain.as_ref().is_some_and(|d| d.not_live_at_end == 0 && d.gaps_after_reconnect == 0 && d.live_again > 0)
    } else {
        rc.dropped == rc.tracked && rc.reconnected == rc.dropped
    };
    rc.ok = snap.is_some()
        && rc.tracked == a.drop as u64
        && rc.canvases_equal == rc.tracked
        && came_back
        && result.counts.gaps == 0
        && result.counts.duplicates == 0;
    if run.is_ok() && result.fatal.is_none() {
        report.outcome.ok = rc.ok;
        if !rc.ok {
            report.outcome.error = Some(format!(
                "catch-up check failed: {} of {} tracked canvases equal the snapshot at version {}; gaps {}, duplicates {}, dropped {}, reconnected {}",
                rc.canvases_equal, rc.tracked, rc.snapshot_version, result.counts.gaps, result.counts.duplicates, rc.dropped, rc.reconnected
            ));
        }
    }
    report.outcome.warnings = warnings;
    let to = result.batches.last().map(|b| b.0).unwrap_or(base.version);
    report.delivery =
        Some(DeliveryReport::compute(&result, base.version, to, clients_in_window, d.elapsed_s, info.edit_stride, 100));
    report.tester = Some(tester_report(&result, 1));
    report.clients = Some(ClientsReport::from_fleet(a.clients as u64, &result));
    report.drain = drain;
    report.latency = Some(LatencyReport::from_fleet(&result, latency_every));
    report.placements = Some(d);
    report.reconnect = Some(rc);
    Ok(report)
}

pub fn abuse(a: &AbuseArgs) -> Result<Report, LoadError> {
    use crate::abuse::{self, AbuseConfig, AbuseCounters};
    use crate::session::Sessions;
    no_agents(&a.common, "abuse")?;
    if a.common.procs > 1 {
        return Err(LoadError::Args("--procs applies to hold, fanout and session only".into()));
    }
    if !(1..=100_000).contains(&a.honest) {
        return Err(LoadError::Args(format!("--honest must be 1 to 100000, got {}", a.honest)));
    }
    if !(1..=10_000).contains(&a.honest_per_addr) || !(1..=1024).contains(&a.honest_threads) {
        return Err(LoadError::Args("--honest-per-addr must be 1 to 10000 and --honest-threads 1 to 1024".into()));
    }
    if a.abuser_conns > 4096
        || !(0..=19).contains(&a.abuser_nice)
        || !(-20..=19).contains(&a.honest_nice)
        || a.honest_slack_ms > 60_000
    {
        return Err(LoadError::Args(
            "--abuser-conns must be at most 4096, --abuser-nice 0 to 19, --honest-nice -20 to 19, \
             --honest-slack-ms at most 60000"
                .into(),
        ));
    }
    let ctx = Ctx::new(&a.common)?;
    let abuser = (a.abuser_conns > 0).then_some(a.abuser_addr);
    if let Some(ip) = abuser {
        crate::addrs::check_sources(&[ip], a.common.target)?;
    }
    let honest_sources = if a.common.source_addrs.trim() == "auto" {
        if !(a.common.target.is_ipv4() && a.common.target.ip().is_loopback()) {
            return Err(LoadError::Args(
                "--source-addrs auto picks honest addresses on 127.0.0.0/8 only; give them with --source-addrs".into(),
            ));
        }
        abuse::auto_honest_sources(a.honest.div_ceil(a.honest_per_addr), abuser)
    } else {
        ctx.sources.clone()
    };
    if honest_sources.is_empty() {
        return Err(LoadError::Args("no honest source addresses".into()));
    }
    if abuser.is_some_and(|ip| honest_sources.contains(&ip)) {
        return Err(LoadError::Args(format!(
            "the abuser's address {} is also an honest address in --source-addrs",
            a.abuser_addr
        )));
    }
    let used_addrs = honest_sources.len().min(a.honest);
    let (_, hard) = sys::raise_nofile_to_hard();
    let fds = (used_addrs + a.abuser_conns + 64) as u64;
    if fds > hard {
        return Err(LoadError::Limit(crate::error::LimitError::PlanFiles { needed: fds, hard, procs: 1 }));
    }
    let info = http::canvas_info(a.common.target)?;
    let cooldown_ms = match a.cooldown {
        Some(s) => s.saturating_mul(1000),
        None => info.cooldown_ms,
    };
    if !(1000..=86_400_000).contains(&cooldown_ms) {
        return Err(LoadError::Args(format!(
            "the cooldown must be 1 to 86400 s (--cooldown S, or the server's cooldown_ms), got {cooldown_ms} ms"
        )));
    }
    let mut warnings = Vec::new();
    if info.cooldown_ms != 0 && info.cooldown_ms != cooldown_ms {
        warnings.push(format!(
            "--cooldown {} s differs from the server's cooldown_ms {}: honest users may be refused `cooldown`",
            cooldown_ms / 1000,
            info.cooldown_ms
        ));
    }
    let per_addr = a.honest.div_ceil(honest_sources.len());
    let period_ms = cooldown_ms + a.honest_slack_ms;
    let per_addr_per_min = per_addr as f64 * 60_000.0 / period_ms as f64;
    if per_addr_per_min > 60.0 || per_addr > 20 {
        warnings.push(format!(
            "{per_addr} honest users per address ({per_addr_per_min:.0} placements/min, {per_addr} sessions) exceed the \
             server's default --placements-per-addr-per-min 60 / --sessions-per-min 20: lower --honest-per-addr"
        ));
    }
    let mut report = ctx.report(
        "abuse",
        serde_json::json!({
            "honest": a.honest, "honest_per_addr": per_addr, "honest_source_addrs": used_addrs,
            "honest_threads": a.honest_threads, "cooldown_ms": cooldown_ms, "honest_period_ms": period_ms,
            "abuser_addr": abuser.map(|i| i.to_string()), "abuser_conns": a.abuser_conns, "abuser_nice": a.abuser_nice, "honest_nice": a.honest_nice,
            "abuser_honor_retry_after": a.abuser_honor_retry_after, "duration_s": a.common.duration,
            "proof_flag": a.common.proof, "server_cooldown_ms": info.cooldown_ms,
        }),
    );
    let cfg = AbuseConfig {
        target: a.common.target,
        duration: Duration::from_secs(a.common.duration),
        cooldown_ms,
        slack_ms: a.honest_slack_ms,
        honest: a.honest,
        honest_sources,
        honest_threads: a.honest_threads,
        abuser,
        abuser_conns: a.abuser_conns,
        abuser_nice: a.abuser_nice,
        honest_nice: a.honest_nice,
        honor_retry_after: a.abuser_honor_retry_after,
        proof: a.common.proof,
        width: info.width,
        height: info.height,
        palette_len: info.palette_len,
        seed: ctx.seed,
    };
    let counters = Arc::new(AbuseCounters::default());
    let honest_sessions = Arc::new(Sessions::new(cfg.proof));
    let quiet = a.common.quiet;
    let t_setup = Instant::now();
    let mut last = Instant::now();
    let honest = abuse::setup_honest(&cfg, &honest_sessions, &counters, || {
        if !quiet && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "[setup {:5.1}s] honest sessions {}/{}{}",
                t_setup.elapsed().as_secs_f64(),
                counters.honest_sessions.load(Ordering::Relaxed),
                cfg.honest,
                if honest_sessions.proof() { " (proof of work)" } else { "" }
            );
        }
    })?;
    let setup_s = t_setup.elapsed().as_secs_f64();
    let abuser_sessions = Arc::new(Sessions::new(cfg.proof || honest_sessions.proof()));
    let stop = Arc::new(AtomicBool::new(false));
    let w0 = ctx.server();
    let (t0, mut last, mut prev) = (Instant::now(), Instant::now(), (0u64, 0u64));
    let stop2 = stop.clone();
    let c2 = counters.clone();
    let mut rep = abuse::run(&cfg, honest, abuser_sessions, counters.clone(), stop, || {
        if signals::interrupted() {
            stop2.store(true, Ordering::SeqCst);
        }
        let dt = last.elapsed().as_secs_f64();
        if quiet || dt < 1.0 {
            return;
        }
        last = Instant::now();
        let l = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        let (att, placed) = (l(&c2.abuser_attempts), l(&c2.abuser_placed));
        eprintln!(
            "[{:6.1}s] abuser attempts {att} ({:.0}/s) sessions {} placed {placed} ({:.0}/s) | honest sent {} accepted {} not accepted {}",
            t0.elapsed().as_secs_f64(),
            (att - prev.0) as f64 / dt,
            l(&c2.abuser_sessions),
            (placed - prev.1) as f64 / dt,
            l(&c2.honest_attempted),
            l(&c2.honest_accepted),
            l(&c2.honest_refused),
        );
        prev = (att, placed);
    });
    let w1 = ctx.server();
    rep.honest.setup_s = setup_s;
    rep.honest.setup_proof = honest_sessions.proof();
    let h = &rep.honest;
    report.outcome.ok = h.all_accepted && !signals::interrupted();
    if !report.outcome.ok {
        report.outcome.error = Some(if signals::interrupted() {
            "interrupted (SIGINT/SIGTERM)".into()
        } else {
            format!(
                "honest placements: {} sent, {} accepted; refused {:?}, {} transport errors",
                h.attempted, h.accepted, h.refused, h.transport_errors
            )
        });
    }
    if let Some(ab) = &rep.abuser {
        if ab.attempts == 0 {
            warnings.push("the abuser made no attempt (could it connect from its address?)".into());
        }
    }
    report.outcome.warnings = warnings;
    if let Some(pid) = a.common.server_pid {
        let mut s = ServerReport::from_samples(pid, w0, w0, w0, w1, w1);
        let accepted = h.accepted + rep.abuser.as_ref().map_or(0, |x| x.placements_accepted);
        if accepted > 0 {
            s.cpu_us_per_accepted_placement = Some(s.window_cpu_us as f64 / accepted as f64);
        }
        report.server = Some(s);
    }
    report.abuse = Some(rep);
    Ok(report)
}

/// The session scenario: a compressed day of r/place users (see [`crate::day`] and
/// [`crate::dayplan`]), in this process, `--procs` children or `--agents`.
pub fn session(a: &SessionArgs) -> Result<Report, LoadError> {
    share::check_session(a)?;
    let ctx = Ctx::new(&a.common)?;
    let info = http::canvas_info(a.common.target)?;
    // Resolve once what every process must agree on: the seed, the server's cooldown and canvas.
    let canvas = format!("{}x{}x{}", info.width, info.height, info.palette_len);
    let mut resolved = a.clone();
    resolved.common.seed = Some(ctx.seed);
    resolved.plan_cooldown_ms = Some(info.cooldown_ms);
    resolved.plan_canvas = Some(canvas.clone());
    let params = share::plan_params(&resolved)?;
    let mut args = run_args(&ctx);
    link::set_arg(&mut args, "--plan-cooldown-ms", info.cooldown_ms);
    link::set_arg(&mut args, "--plan-canvas", &canvas);
    let latency_every = share::latency_every(a.latency_every, a.users);
    let mut report = ctx.report(
        "session",
        serde_json::json!({
            "users": a.users, "day_seconds": a.day_seconds, "compression": params.factor(),
            "placements_per_user": a.placements_per_user, "placements_planned": params.edits(),
            "server_cooldown_ms": info.cooldown_ms, "day_cooldown_s": params.trace_cooldown_s(),
            "canvas": canvas, "http_conns": a.http_conns, "threads_per_proc": ctx.threads,
            "procs": a.common.procs, "agents": a.common.agents, "source_addrs": ctx.sources.len(),
            "latency_every": latency_every, "seed": ctx.seed, "edit_stride": info.edit_stride,
        }),
    );
    let mut warnings = Vec::new();
    if info.cooldown_ms == 0 {
        warnings.push(format!(
            "the server has no cooldown: the day paces users at --day-cooldown-s {} s of its own time",
            a.day_cooldown_s
        ));
    }
    let before = ctx.server();
    let mut t = Ticker::new(&a.common);
    let (mut fleet, day_start) = if !a.common.agents.is_empty() {
        let f = AgentFleet::start(&a.common.agents, coordinator::job_args(args), a.users, None)?;
        let start = f.start_unix_ms;
        (Fleet::Agents(f), start + share::DAY_LEAD_MS)
    } else {
        let s = Share::prepare(&Cmd::Session(resolved.clone()), args)?;
        warnings.extend(s.warnings.iter().cloned());
        let (table, path) = if s.procs > 1 {
            let p = sendtable::temp_path();
            let t = SendTable::create_file(&p, sendtable::DEFAULT_SLOTS)
                .map_err(|e| LoadError::io(format!("creating {}", p.display()), e))?;
            (Arc::new(t), Some(p))
        } else {
            let t = SendTable::anonymous(sendtable::DEFAULT_SLOTS)
                .map_err(|e| LoadError::io("mapping the send table", e))?;
            (Arc::new(t), None)
        };
        let start = link::unix_ms();
        (s.start(start, Some(table), path)?, start + share::DAY_LEAD_MS)
    };
    let day_end = day_start + a.day_seconds * 1000;
    let (mut w0, mut w1) = (ProcSample::default(), ProcSample::default());
    let mut connected_max = 0u64;
    let run = (|| {
        let until = |ms: u64| Duration::from_millis(ms.saturating_sub(link::unix_ms()));
        wait(&fleet, &mut t, until(day_start), None)?;
        w0 = ctx.server();
        let end = Instant::now() + until(day_end);
        while Instant::now() < end {
            wait(&fleet, &mut t, Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())), None)?;
            connected_max = connected_max.max(fleet.progress().open);
        }
        w1 = ctx.server();
        wait(&fleet, &mut t, Duration::from_millis(a.drain_ms), None)?;
        Ok::<(), LoadError>(())
    })();
    fleet.note_ready();
    let result = stop_fleet(fleet, &mut report, &mut warnings)?;
    let end = ctx.server();
    if let Err(e) = &run {
        fail(&mut report, e);
    }
    if let Some(f) = &result.fatal {
        fail(&mut report, &LoadError::Limit(f.clone()));
    }
    let day = result.day.clone().unwrap_or_default();
    let s = SessionReport::compute(&day, &result, a.day_seconds, connected_max, day_start);
    if run.is_ok() && result.fatal.is_none() {
        let c = &result.counts;
        report.outcome.ok = day.placements_accepted > 0 && c.gaps == 0 && c.duplicates == 0 && day.catch_up_gaps == 0;
        if !report.outcome.ok {
            report.outcome.error = Some(format!(
                "{} placements accepted of {} sent; {} gaps, {} duplicates, {} catch-ups that did not start at their version",
                day.placements_accepted, day.placements_sent, c.gaps, c.duplicates, day.catch_up_gaps
            ));
        }
    }
    let refused: u64 = day.placements_refused.values().sum();
    if refused > 0 {
        warnings.push(format!("{refused} placements refused: {:?}", day.placements_refused));
    }
    report.outcome.warnings = warnings;
    if let Some(pid) = a.common.server_pid {
        let mut srv = ServerReport::from_samples(pid, before, w0, w0, w1, end);
        if day.placements_accepted > 0 {
            srv.cpu_us_per_accepted_placement = Some(srv.window_cpu_us as f64 / day.placements_accepted as f64);
        }
        if result.counts.frames > 0 {
            srv.cpu_us_per_delivered_frame = Some(srv.window_cpu_us as f64 / result.counts.frames as f64);
        }
        report.server = Some(srv);
    }
    report.tester = Some(tester_report(&result, a.common.procs));
    let mut clients = ClientsReport::from_fleet(a.users as u64, &result);
    // Users come and go over the day: "ready" is whoever arrived at least once.
    clients.connected_at_ready = day.users_arrived;
    report.clients = Some(clients);
    report.latency = Some(LatencyReport::from_fleet(&result, latency_every));
    report.drain = DrainReport::from_fleet(&result);
    report.session = Some(s);
    Ok(report)
}
