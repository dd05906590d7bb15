//! A fleet of simulated clients, either in this process ([`LocalFleet`]: engine threads, or the
//! session scenario's day threads), spread over `--procs K` child processes of this same binary
//! ([`ProcFleet`]), which is how one host drives more clients than one process's open-file limit
//! allows, or spread over load agents on other hosts ([`AgentFleet`](crate::coordinator)).
//!
//! Parent and children talk over pipes, one JSON document per line. A child prints
//! `{"progress":…}` every second and `{"result":…}` at the end on stdout; it reads `window V`,
//! `drop MS` and `stop` lines on stdin and stops by itself at its own deadline or when stdin
//! closes (the parent went away). The placement send table is a shared-memory file. An agent
//! serves its share with the same loop ([`serve`]) over its coordinator's connection.

use crate::engine::{self, EngineConfig, FleetResult, Progress, Shared};
use crate::error::{LimitError, LoadError};
use crate::procfs;
use crate::sendtable::SendTable;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clients in this process.
pub struct LocalFleet {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<FleetResult>>,
    rss_before: u64,
    rss_init: u64,
    rss_ready: Option<u64>,
    clients_ready: u64,
}

impl LocalFleet {
    /// Starts `clients` clients with global indices `base..base + clients` on `threads` threads.
    pub fn start(
        cfg: EngineConfig,
        clients: usize,
        base: u64,
        threads: usize,
        ramp: f64,
        cpus: &[usize],
        table: Option<Arc<SendTable>>,
    ) -> Result<Self, LoadError> {
        let rss_before = procfs::sample_self().rss_bytes;
        let shared = Arc::new(Shared::new(threads.max(1), table));
        let handles = engine::spawn(Arc::new(cfg), shared.clone(), clients, base, ramp, cpus)
            .map_err(|e| LoadError::io("spawning client threads", e))?;
        Ok(Self::started(shared, handles, rss_before))
    }

    /// Starts the session scenario's users of `plan` (this process's share) on `threads` threads.
    pub fn start_day(
        cfg: crate::day::DayConfig,
        plan: crate::dayplan::DayPlan,
        threads: usize,
        cpus: &[usize],
        table: Option<Arc<SendTable>>,
    ) -> Result<Self, LoadError> {
        let rss_before = procfs::sample_self().rss_bytes;
        let shared = Arc::new(Shared::new(threads.max(1), table));
        let handles = crate::day::spawn(Arc::new(cfg), shared.clone(), plan, cpus)
            .map_err(|e| LoadError::io("spawning user threads", e))?;
        Ok(Self::started(shared, handles, rss_before))
    }

    /// Waits (bounded) until every thread allocated its state, then lets them go.
    fn started(shared: Arc<Shared>, handles: Vec<JoinHandle<FleetResult>>, rss_before: u64) -> Self {
        let t0 = Instant::now();
        while (shared.inited.load(Ordering::SeqCst) as usize) < handles.len() && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let rss_init = procfs::sample_self().rss_bytes;
        shared.go.store(true, Ordering::SeqCst);
        LocalFleet { shared, handles, rss_before, rss_init, rss_ready: None, clients_ready: 0 }
    }

    pub fn progress(&self) -> Progress {
        let mut p = self.shared.progress();
        p.rss_bytes = procfs::sample_self().rss_bytes;
        p
    }

    /// Records this process's memory once all clients are set up (call when `ramp_done`).
    pub fn note_ready(&mut self) {
        if self.rss_ready.is_none() {
            self.rss_ready = Some(procfs::sample_self().rss_bytes);
            self.clients_ready = self.shared.progress().open;
        }
    }

    pub fn set_window(&self, from_version: u64) {
        self.shared.window_from.store(from_version, Ordering::SeqCst);
    }

    pub fn drop_tracked(&self, delay_ms: u64) {
        self.shared.drop_delay_ms.store(delay_ms, Ordering::SeqCst);
        self.shared.drop_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The limit that stopped the clients, if any.
    pub fn limit(&self) -> Option<LimitError> {
        self.shared.fatal.lock().unwrap().clone()
    }

    /// The error that stopped the clients early, if any.
    pub fn fatal(&self) -> Option<LoadError> {
        if let Some(l) = self.limit() {
            return Some(LoadError::Limit(l));
        }
        if let Some(e) = self.shared.error.lock().unwrap().clone() {
            return Some(LoadError::Clients(e));
        }
        if self.stopped() {
            return Some(LoadError::Clients("stopped early".into()));
        }
        None
    }

    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> FleetResult {
        self.note_ready();
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut r = FleetResult { procs: 1, ..Default::default() };
        for h in self.handles.drain(..) {
            if let Ok(t) = h.join() {
                r.merge(&t);
            }
        }
        r.fatal = self.limit();
        r.rss_before_bytes = self.rss_before;
        r.rss_init_bytes = self.rss_init;
        r.rss_ready_bytes = self.rss_ready.unwrap_or(self.rss_before);
        r.clients_ready = self.clients_ready;
        r
    }
}

#[derive(Default)]
struct ChildState {
    progress: Progress,
    result: Option<FleetResult>,
    error: Option<String>,
    done: bool,
}

struct ChildHandle {
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<ChildState>>,
    reader: Option<JoinHandle<()>>,
}

/// Clients spread over child processes.
pub struct ProcFleet {
    children: Vec<ChildHandle>,
    _table: Option<Arc<SendTable>>,
}

/// The hidden arguments that make a re-executed copy of this binary a fleet child.
pub fn child_args(index: usize, count: usize, table: Option<&PathBuf>) -> Vec<String> {
    let mut v = vec!["--child-index".into(), index.to_string(), "--child-count".into(), count.to_string()];
    if let Some(p) = table {
        v.push("--sendtable".into());
        v.push(p.display().to_string());
    }
    v
}

/// The contiguous share `(base, count)` of `total` clients that child `index` of `count` runs.
pub fn share(total: usize, index: usize, count: usize) -> (u64, usize) {
    let per = total / count;
    let extra = total % count;
    let base = index * per + index.min(extra);
    (base as u64, per + usize::from(index < extra))
}

impl ProcFleet {
    /// Re-executes this binary `procs` times with `args` (the scenario's arguments: this
    /// process's own, or an agent's job) plus the child flags.
    pub fn start(
        procs: usize,
        args: Vec<String>,
        table: Option<Arc<SendTable>>,
        table_path: Option<PathBuf>,
    ) -> Result<Self, LoadError> {
        let exe = std::env::current_exe().map_err(|e| LoadError::io("finding this executable for --procs", e))?;
        let mut children = Vec::with_capacity(procs);
        for i in 0..procs {
            let mut cmd = Command::new(&exe);
            cmd.args(&args).args(child_args(i, procs, table_path.as_ref()));
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let mut f = ProcFleet { children, _table: table };
                    f.kill_all();
                    return Err(LoadError::io(format!("starting child process {i}"), e));
                }
            };
            let stdout = child.stdout.take().expect("piped");
            let stdin = child.stdin.take();
            let state = Arc::new(Mutex::new(ChildState::default()));
            let st = state.clone();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    let mut s = st.lock().unwrap();
                    if let Some(p) = v.get("progress") {
                        if let Ok(p) = serde_json::from_value(p.clone()) {
                            s.progress = p;
                        }
                    } else if let Some(r) = v.get("result") {
                        match serde_json::from_value::<FleetResult>(r.clone()) {
                            Ok(r) => s.result = Some(r),
                            Err(e) => s.error = Some(format!("unreadable result: {e}")),
                        }
                    } else if let Some(e) = v.get("error") {
                        s.error = Some(e.as_str().unwrap_or("?").to_string());
                    }
                }
                st.lock().unwrap().done = true;
            });
            children.push(ChildHandle { child, stdin, state, reader: Some(reader) });
        }
        Ok(ProcFleet { children, _table: table })
    }

    fn send_all(&mut self, line: &str) {
        for c in &mut self.children {
            if let Some(s) = c.stdin.as_mut() {
                let _ = s.write_all(line.as_bytes()).and_then(|_| s.flush());
            }
        }
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for c in &self.children {
            let s = c.state.lock().unwrap();
            p.add(&s.progress);
            if s.progress.threads == 0 {
                // Not heard from yet: its ramp is not done (a placeholder thread).
                p.threads += 1;
            }
        }
        p
    }

    pub fn set_window(&mut self, v: u64) {
        self.send_all(&format!("window {v}\n"));
    }

    pub fn drop_tracked(&mut self, delay_ms: u64) {
        self.send_all(&format!("drop {delay_ms}\n"));
    }

    /// A limit error reported by a child that already stopped, or a child that failed.
    pub fn fatal(&self) -> Option<LoadError> {
        for (i, c) in self.children.iter().enumerate() {
            let s = c.state.lock().unwrap();
            if let Some(f) = s.result.as_ref().and_then(|r| r.fatal.clone()) {
                return Some(LoadError::Limit(f));
            }
            if let Some(e) = &s.error {
                return Some(LoadError::Child(format!("child {i}: {e}")));
            }
            if s.done && s.result.is_none() {
                return Some(LoadError::Child(format!("child {i} exited without a result")));
            }
        }
        None
    }

    pub fn stopped(&self) -> bool {
        self.fatal().is_some()
    }

    fn kill_all(&mut self) {
        for c in &mut self.children {
            // Child::kill signals exactly the process we started, by its PID.
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }

    pub fn stop(mut self) -> Result<FleetResult, LoadError> {
        self.send_all("stop\n");
        for c in &mut self.children {
            c.stdin = None; // EOF also means stop
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !self.children.iter().all(|c| c.state.lock().unwrap().done) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut total = FleetResult::default();
        let mut missing = Vec::new();
        for (i, c) in self.children.iter_mut().enumerate() {
            if !c.state.lock().unwrap().done {
                let _ = c.child.kill();
            }
            let _ = c.child.wait();
            if let Some(h) = c.reader.take() {
                let _ = h.join();
            }
            match c.state.lock().unwrap().result.take() {
                Some(r) => total.merge(&r),
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            return Err(LoadError::Child(format!("no result from child process(es) {missing:?}")));
        }
        Ok(total)
    }
}

impl Drop for ProcFleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            if matches!(c.child.try_wait(), Ok(None)) {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
        }
    }
}

/// Any kind of fleet, behind one interface for the scenarios.
pub enum Fleet {
    Local(LocalFleet),
    Procs(ProcFleet),
    Agents(crate::coordinator::AgentFleet),
}

impl Fleet {
    pub fn progress(&self) -> Progress {
        match self {
            Fleet::Local(f) => f.progress(),
            Fleet::Procs(f) => f.progress(),
            Fleet::Agents(f) => f.progress(),
        }
    }

    pub fn note_ready(&mut self) {
        if let Fleet::Local(f) = self {
            f.note_ready()
        }
    }

    pub fn set_window(&mut self, v: u64) {
        match self {
            Fleet::Local(f) => f.set_window(v),
            Fleet::Procs(f) => f.set_window(v),
            Fleet::Agents(f) => f.set_window(v),
        }
    }

    pub fn drop_tracked(&mut self, delay_ms: u64) {
        match self {
            Fleet::Local(f) => f.drop_tracked(delay_ms),
            Fleet::Procs(f) => f.drop_tracked(delay_ms),
            Fleet::Agents(f) => f.drop_tracked(delay_ms),
        }
    }

    /// The error that stopped the fleet early, if any.
    pub fn fatal(&self) -> Option<LoadError> {
        match self {
            Fleet::Local(f) => f.fatal(),
            Fleet::Procs(f) => f.fatal(),
            Fleet::Agents(f) => f.fatal(),
        }
    }

    pub fn stopped(&self) -> bool {
        match self {
            Fleet::Local(f) => f.stopped(),
            Fleet::Procs(f) => f.stopped(),
            Fleet::Agents(f) => f.fatal().is_some(),
        }
    }

    /// Stops every client and merges what they saw; with agents, also each agent's own figures.
    pub fn stop(self) -> Result<(FleetResult, Vec<crate::coordinator::AgentPart>), LoadError> {
        match self {
            Fleet::Local(f) => Ok((f.stop(), Vec::new())),
            Fleet::Procs(f) => Ok((f.stop()?, Vec::new())),
            Fleet::Agents(f) => f.stop(),
        }
    }
}

/// What a share's controller (a parent's pipe, a coordinator's connection) asks of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Window(u64),
    Drop(u64),
    Stop,
    /// The controller went away or fell silent: stop, saying why.
    Gone(String),
}

/// Capacity of the control queue between a share's reader thread and [`serve`]: controls are
/// a few per run; when it is full the reader waits (the loop drains it every 100 ms).
pub const CONTROL_QUEUE: usize = 64;

/// A controller's text line (the pipes' `window V`, `drop MS`, `stop`) as a control.
pub fn parse_control(line: &str) -> Option<Control> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
        (Some("window"), Some(v)) => Some(Control::Window(v)),
        (Some("drop"), Some(ms)) => Some(Control::Drop(ms)),
        (Some("stop"), _) => Some(Control::Stop),
        _ => None,
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The controller said stop.
    Stopped,
    /// The controller went away (or its reader ended): nobody to report to.
    Gone(String),
    /// The share ended by itself (clients stopped, deadline, SIGINT).
    Early(String),
}

/// Runs a share of a run until its controller says stop or goes away, the fleet stops by
/// itself, `life` has passed, or SIGINT: progress goes to `emit` every second (an `emit` that
/// fails means the controller is gone), controls come from `controls`. Returns the merged
/// result and how it ended.
pub fn serve(
    mut fleet: Fleet,
    controls: &Receiver<Control>,
    mut emit: impl FnMut(&Progress) -> bool,
    life: Duration,
) -> (Result<FleetResult, LoadError>, Ended) {
    let start = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(1);
    let why;
    loop {
        match controls.recv_timeout(Duration::from_millis(100)) {
            Ok(Control::Window(v)) => fleet.set_window(v),
            Ok(Control::Drop(ms)) => fleet.drop_tracked(ms),
            Ok(Control::Stop) => {
                why = Ended::Stopped;
                break;
            }
            Ok(Control::Gone(w)) => {
                why = Ended::Gone(w);
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                why = Ended::Gone("the controller's reader ended".into());
                break;
            }
        }
        let p = fleet.progress();
        if p.ramp_done() {
            fleet.note_ready();
        }
        let end = if fleet.stopped() {
            Some("the clients stopped early".to_string())
        } else if start.elapsed() > life {
            Some(format!("its deadline ({} s) passed", life.as_secs()))
        } else if crate::signals::interrupted() {
            Some("interrupted (SIGINT/SIGTERM)".into())
        } else {
            None
        };
        if end.is_some() || last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            if !emit(&p) {
                why = Ended::Gone("its progress could not be written (the controller went away)".into());
                break;
            }
        }
        if let Some(e) = end {
            why = Ended::Early(e);
            break;
        }
    }
    (fleet.stop().map(|(r, _)| r), why)
}

/// The body of a child process: run this share of clients, report progress as JSON lines,
/// obey `window`/`drop`/`stop` from stdin, print the result. `deadline` bounds its life.
pub fn run_child(fleet: LocalFleet, deadline: Duration) {
    let (tx, rx) = std::sync::mpsc::sync_channel(CONTROL_QUEUE);
    std::thread::spawn(move || read_controls(std::io::stdin().lock(), &tx));
    let out = std::io::stdout();
    let emit = |p: &Progress| {
        let mut o = out.lock();
        writeln!(o, "{}", serde_json::json!({ "progress": p })).and_then(|_| o.flush()).is_ok()
    };
    let (result, _) = serve(Fleet::Local(fleet), &rx, emit, deadline);
    let mut o = out.lock();
    let _ = match result {
        Ok(r) => writeln!(o, "{}", serde_json::json!({ "result": r })),
        Err(e) => writeln!(o, "{}", serde_json::json!({ "error": e.to_string() })),
    };
    let _ = o.flush();
}

/// Turns a parent's text lines into controls; the end of its input means stop.
fn read_controls(input: impl BufRead, tx: &SyncSender<Control>) {
    for line in input.lines() {
        let Ok(line) = line else { break };
        if let Some(c) = parse_control(&line) {
            let stop = c == Control::Stop;
            if tx.send(c).is_err() || stop {
                return;
            }
        }
    }
    let _ = tx.send(Control::Stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_parse_and_eof_means_stop() {
        assert_eq!(parse_control("window 12"), Some(Control::Window(12)));
        assert_eq!(parse_control("drop 500"), Some(Control::Drop(500)));
        assert_eq!(parse_control("stop"), Some(Control::Stop));
        assert_eq!(parse_control("window x"), None);
        let (tx, rx) = std::sync::mpsc::sync_channel(CONTROL_QUEUE);
        read_controls(&b"window 3\nnonsense\n"[..], &tx);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Control::Window(3), Control::Stop]);
    }

    #[test]
    fn shares_cover_everything_once() {
        for (total, k) in [(10, 3), (19_000, 2), (5, 8), (0, 2)] {
            let mut next = 0u64;
            let mut sum = 0;
            for i in 0..k {
                let (b, n) = share(total, i, k);
                assert_eq!(b, next);
                next += n as u64;
                sum += n;
            }
            assert_eq!(sum, total);
        }
    }
}
