//! The coordinator's side of a run spread over load agents (`SCENARIO --agents A,B,...`,
//! protocol in [`crate::link`]): connect to every agent, give each its share of the clients,
//! start them all at one agreed wall-clock instant once every one answered ready, forward
//! window/drop controls and the placement driver's send instants, sum their progress, and at
//! the end merge their results exactly (counts summed, histograms bucket by bucket).
//!
//! Invariants: the shares partition the clients (`fleet::share`, contiguous global indices);
//! the run starts only if every agent answered ready within [`READY_TIMEOUT`], else every
//! agent's connection is closed (which stops it) and the error names the ones that failed; an
//! agent that closes its connection, reports an error or falls silent for [`SILENCE`] mid-run
//! fails the run with a message naming it ([`AgentFleet::fatal`]); threads: one reader per
//! agent, one pinger, one forwarder, all ending with the fleet.

use crate::engine::{FleetResult, Progress};
use crate::error::LoadError;
use crate::fleet;
use crate::hist::{LatencyHist, LatencySummary};
use crate::link::{self, FromAgent, Job, Line, LineReader, Ready, ToAgent};
use serde::Serialize;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use link::{MAX_SENT_PER_LINE, PING_EVERY, READY_TIMEOUT, RESULT_TIMEOUT, SILENCE, START_LEAD, WRITE_TIMEOUT};

/// One agent's own figures, next to the merged ones in the report.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct AgentPart {
    pub agent: String,
    pub host: String,
    pub pid: u32,
    /// Its clients: global indices `base .. base + clients`.
    pub base: u64,
    pub clients: usize,
    pub procs: u64,
    pub threads: u64,
    pub clients_ready: u64,
    pub connected: u64,
    pub frames: u64,
    pub window_frames: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub unexpected_disconnects: u64,
    /// Samples in its histograms (the merged ones hold exactly their sums).
    pub edit_latency_count: u64,
    pub frame_latency_count: u64,
    pub connect_latency_count: u64,
    pub frame_latency: LatencySummary,
    pub rss_ready_bytes: u64,
    pub warnings: Vec<String>,
}

impl AgentPart {
    fn new(agent: &str, ready: &Ready, job: &Job, r: &FleetResult) -> Self {
        AgentPart {
            agent: agent.to_string(),
            host: ready.host.clone(),
            pid: ready.pid,
            base: job.base,
            clients: job.count,
            procs: r.procs,
            threads: r.threads,
            clients_ready: r.clients_ready,
            connected: r.counts.connected,
            frames: r.counts.frames,
            window_frames: r.counts.window_frames,
            gaps: r.counts.gaps,
            duplicates: r.counts.duplicates,
            unexpected_disconnects: r.counts.unexpected_disconnects,
            edit_latency_count: LatencyHist::import(&r.edit_latency).len(),
            frame_latency_count: LatencyHist::import(&r.frame_latency).len(),
            connect_latency_count: LatencyHist::import(&r.connect_latency).len(),
            frame_latency: LatencyHist::import(&r.frame_latency).summary(),
            rss_ready_bytes: r.rss_ready_bytes,
            warnings: ready.warnings.clone(),
        }
    }
}

#[derive(Default)]
struct AgentState {
    progress: Progress,
    result: Option<FleetResult>,
    error: Option<String>,
    done: bool,
}

/// What a helper thread needs of an agent: its name, its writer, its state.
type Link = (String, Arc<Mutex<TcpStream>>, Arc<Mutex<AgentState>>);

struct Agent {
    name: String,
    job: Job,
    ready: Ready,
    writer: Arc<Mutex<TcpStream>>,
    state: Arc<Mutex<AgentState>>,
    reader: Option<JoinHandle<()>>,
}

/// Clients run by agents.
pub struct AgentFleet {
    agents: Vec<Agent>,
    stop: Arc<AtomicBool>,
    helpers: Vec<JoinHandle<()>>,
    /// The agreed start, wall-clock ms.
    pub start_unix_ms: u64,
}

/// The arguments an agent gets: this process's, without what only the coordinator does.
pub fn job_args(mut args: Vec<String>) -> Vec<String> {
    for a in ["--agents", "--json", "--server-pid", "--child-index", "--child-count", "--sendtable"] {
        link::strip_arg(&mut args, a);
    }
    args
}

/// Connects, sends the job, and waits for `ready`.
fn prepare(name: &str, job: &Job) -> Result<(TcpStream, LineReader<TcpStream>, Ready), String> {
    let addrs: Vec<_> = name.to_socket_addrs().map_err(|e| format!("cannot resolve it: {e}"))?.collect();
    let addr = addrs.first().ok_or("it resolves to no address")?;
    let stream =
        TcpStream::connect_timeout(addr, link::CONNECT_TIMEOUT).map_err(|e| format!("cannot connect to it: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(link::READ_TICK)).map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    link::write_msg(&mut w, &ToAgent::Job(job.clone())).map_err(|e| format!("cannot send it the job: {e}"))?;
    let mut r = LineReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match r.read_line().map_err(|e| format!("reading its answer: {e}"))? {
            Line::Msg(l) => match link::parse::<FromAgent>(&l)? {
                FromAgent::Ready(ready) => return Ok((stream, r, ready)),
                FromAgent::Error(e) => return Err(format!("refused the job: {e}")),
                _ => {}
            },
            Line::Eof => return Err("closed the connection before answering ready".into()),
            Line::Idle => {}
        }
        if Instant::now() > deadline {
            return Err(format!("not ready within {} s", READY_TIMEOUT.as_secs()));
        }
    }
}

/// Reads one agent's lines until it closes, fails or falls silent.
fn read_agent(mut r: LineReader<TcpStream>, state: Arc<Mutex<AgentState>>, stop: Arc<AtomicBool>) {
    let mut heard = Instant::now();
    let outcome: Option<String> = loop {
        match r.read_line() {
            Ok(Line::Msg(l)) => {
                heard = Instant::now();
                match link::parse::<FromAgent>(&l) {
                    Ok(FromAgent::Progress(p)) => state.lock().unwrap().progress = p,
                    Ok(FromAgent::Result(res)) => state.lock().unwrap().result = Some(*res),
                    Ok(FromAgent::Error(e)) => {
                        let mut s = state.lock().unwrap();
                        if s.error.is_none() {
                            s.error = Some(e);
                        }
                    }
                    Ok(FromAgent::Ready(_)) => {}
                    Err(e) => break Some(e),
                }
            }
            Ok(Line::Eof) => {
                let s = state.lock().unwrap();
                break (s.result.is_none()).then(|| {
                    if stop.load(Ordering::SeqCst) {
                        "closed the connection without a result".to_string()
                    } else {
                        "went away mid-run (its connection closed)".to_string()
                    }
                });
            }
            Ok(Line::Idle) => {
                if heard.elapsed() > SILENCE {
                    break Some(format!("silent for {} s (no progress, no result)", SILENCE.as_secs()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                let s = state.lock().unwrap();
                break s.result.is_none().then(|| format!("went away mid-run (its connection was reset: {e})"));
            }
            Err(e) => break Some(format!("its connection failed: {e}")),
        }
    };
    let mut s = state.lock().unwrap();
    if let Some(e) = outcome {
        if s.error.is_none() {
            s.error = Some(e);
        }
    }
    s.done = true;
}

fn send(w: &Mutex<TcpStream>, msg: &ToAgent) -> std::io::Result<()> {
    link::write_msg(&mut *w.lock().unwrap(), msg)
}

impl AgentFleet {
    /// Gives every agent of `names` its share of `total` clients with `args` (see
    /// [`job_args`]), waits until all are ready, and starts them at one instant. `sent`: the
    /// driver's send instants to forward (fanout).
    pub fn start(
        names: &[String],
        args: Vec<String>,
        total: usize,
        sent: Option<Receiver<(u64, u64)>>,
    ) -> Result<Self, LoadError> {
        if names.is_empty() || names.len() > link::MAX_AGENTS {
            return Err(LoadError::Args(format!("--agents must list 1 to {} agents", link::MAX_AGENTS)));
        }
        let jobs: Vec<Job> = (0..names.len())
            .map(|i| {
                let (base, count) = fleet::share(total, i, names.len());
                Job { proto: link::PROTO, tool: tool(), args: args.clone(), index: i, agents: names.len(), base, count }
            })
            .collect();
        let prepared: Vec<Result<_, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = names.iter().zip(&jobs).map(|(n, j)| s.spawn(move || prepare(n, j))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("preparing it panicked".into()))).collect()
        });
        let failed: Vec<String> = names
            .iter()
            .zip(&prepared)
            .filter_map(|(n, p)| p.as_ref().err().map(|e| format!("agent {n}: {e}")))
            .collect();
        if !failed.is_empty() {
            // Dropping the others' connections stops them (their coordinator went away).
            return Err(LoadError::Agent(failed.join("; ")));
        }
        let start_unix_ms = link::unix_ms() + START_LEAD.as_millis() as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let mut agents = Vec::with_capacity(names.len());
        for ((name, job), p) in names.iter().zip(jobs).zip(prepared) {
            let (stream, reader, ready) = p.expect("checked above");
            let writer = Arc::new(Mutex::new(stream));
            send(&writer, &ToAgent::Start { at_unix_ms: start_unix_ms })
                .map_err(|e| LoadError::Agent(format!("agent {name}: cannot send it the start: {e}")))?;
            let state = Arc::new(Mutex::new(AgentState::default()));
            let (st, stp) = (state.clone(), stop.clone());
            let reader = std::thread::Builder::new()
                .name("agent-reader".into())
                .spawn(move || read_agent(reader, st, stp))
                .map_err(|e| LoadError::io("starting an agent reader", e))?;
            agents.push(Agent { name: name.clone(), job, ready, writer, state, reader: Some(reader) });
        }
        let mut f = AgentFleet { agents, stop, helpers: Vec::new(), start_unix_ms };
        f.start_pinger()?;
        if let Some(rx) = sent {
            f.start_forwarder(rx)?;
        }
        Ok(f)
    }

    fn links(&self) -> Vec<Link> {
        self.agents.iter().map(|a| (a.name.clone(), a.writer.clone(), a.state.clone())).collect()
    }

    /// Pings every agent once a second (its silence watchdog), noting agents it cannot write to.
    fn start_pinger(&mut self) -> Result<(), LoadError> {
        let (links, stop) = (self.links(), self.stop.clone());
        let h = std::thread::Builder::new()
            .name("agent-pinger".into())
            .spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    for (_, w, st) in &links {
                        if st.lock().unwrap().done {
                            continue;
                        }
                        if let Err(e) = send(w, &ToAgent::Ping(n)) {
                            let mut s = st.lock().unwrap();
                            if s.error.is_none() {
                                s.error = Some(format!("cannot write to it: {e}"));
                            }
                        }
                    }
                    let t0 = Instant::now();
                    while t0.elapsed() < PING_EVERY && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| LoadError::io("starting the agent pinger", e))?;
        self.helpers.push(h);
        Ok(())
    }

    /// Forwards the driver's send instants (monotonic here, wall clock on the wire), at most
    /// [`MAX_SENT_PER_LINE`] per line, as soon as they come (10 ms batching).
    fn start_forwarder(&mut self, rx: Receiver<(u64, u64)>) -> Result<(), LoadError> {
        let (links, stop) = (self.links(), self.stop.clone());
        let h = std::thread::Builder::new()
            .name("agent-sent".into())
            .spawn(move || {
                let offset = link::realtime_offset_ns();
                let mut batch = Vec::with_capacity(MAX_SENT_PER_LINE);
                loop {
                    match rx.recv_timeout(Duration::from_millis(10)) {
                        Ok((v, mono)) => batch.push((v, (mono as i128 + offset).max(0) as u64)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    while batch.len() < MAX_SENT_PER_LINE {
                        match rx.try_recv() {
                            Ok((v, mono)) => batch.push((v, (mono as i128 + offset).max(0) as u64)),
                            Err(_) => break,
                        }
                    }
                    if !batch.is_empty() {
                        let msg = ToAgent::Sent(std::mem::take(&mut batch));
                        for (_, w, st) in &links {
                            if !st.lock().unwrap().done {
                                let _ = send(w, &msg);
                            }
                        }
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            })
            .map_err(|e| LoadError::io("starting the send-instant forwarder", e))?;
        self.helpers.push(h);
        Ok(())
    }

    fn send_all(&self, msg: &ToAgent) {
        for a in &self.agents {
            if !a.state.lock().unwrap().done {
                if let Err(e) = send(&a.writer, msg) {
                    let mut s = a.state.lock().unwrap();
                    if s.error.is_none() {
                        s.error = Some(format!("cannot write to it: {e}"));
                    }
                }
            }
        }
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for a in &self.agents {
            let s = a.state.lock().unwrap();
            p.add(&s.progress);
            if s.progress.threads == 0 {
                // Not heard from yet: its ramp is not done (a placeholder thread).
                p.threads += 1;
            }
        }
        p
    }

    pub fn set_window(&self, v: u64) {
        self.send_all(&ToAgent::Window(v));
    }

    pub fn drop_tracked(&self, delay_ms: u64) {
        self.send_all(&ToAgent::Drop(delay_ms));
    }

    /// The first agent that failed, named; or a host limit one of them hit.
    pub fn fatal(&self) -> Option<LoadError> {
        for a in &self.agents {
            let s = a.state.lock().unwrap();
            if let Some(l) = s.result.as_ref().and_then(|r| r.fatal.clone()) {
                return Some(LoadError::Agent(format!("agent {}: {l}", self.describe(a))));
            }
            if let Some(e) = &s.error {
                return Some(LoadError::Agent(format!("agent {}: {e}", self.describe(a))));
            }
            if s.done && s.result.is_none() {
                return Some(LoadError::Agent(format!("agent {}: ended without a result", self.describe(a))));
            }
        }
        None
    }

    fn describe(&self, a: &Agent) -> String {
        format!(
            "{} ({} pid {}, clients {}..{})",
            a.name,
            a.ready.host,
            a.ready.pid,
            a.job.base,
            a.job.base + a.job.count as u64
        )
    }

    /// Tells every agent to stop, waits (bounded) for every result and merges them.
    pub fn stop(mut self) -> Result<(FleetResult, Vec<AgentPart>), LoadError> {
        self.send_all(&ToAgent::Stop {});
        let deadline = Instant::now() + RESULT_TIMEOUT;
        while Instant::now() < deadline && !self.agents.iter().all(|a| a.state.lock().unwrap().done) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        for a in &self.agents {
            // Unblocks a reader still waiting (its agent did not finish in time).
            let _ = a.writer.lock().unwrap().shutdown(std::net::Shutdown::Both);
        }
        for a in &mut self.agents {
            if let Some(h) = a.reader.take() {
                let _ = h.join();
            }
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
        let mut total = FleetResult::default();
        let mut parts = Vec::new();
        let mut missing = Vec::new();
        for a in &self.agents {
            let mut s = a.state.lock().unwrap();
            match s.result.take() {
                Some(r) => {
                    parts.push(AgentPart::new(&a.name, &a.ready, &a.job, &r));
                    total.merge(&r);
                }
                None => missing.push(format!(
                    "agent {}: {}",
                    self.describe(a),
                    s.error.clone().unwrap_or_else(|| format!("no result within {} s", RESULT_TIMEOUT.as_secs()))
                )),
            }
        }
        if !missing.is_empty() {
            return Err(LoadError::Agent(format!("{} (their clients' results are lost)", missing.join("; "))));
        }
        Ok((total, parts))
    }
}

impl Drop for AgentFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for a in &self.agents {
            let _ = a.writer.lock().unwrap().shutdown(std::net::Shutdown::Both);
        }
    }
}

/// This tester's name and version (agents must run the same).
pub fn tool() -> String {
    format!("placecast-load {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn job_arguments_drop_what_stays_here() {
        let args: Vec<String> = ["hold", "-n", "10", "--agents", "a:1,b:2", "--server-pid", "7", "--json=x", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(job_args(args), ["hold", "-n", "10", "--quiet"]);
    }

    /// A fake agent: answers ready, then progress, then closes without a result.
    fn fake_agent(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = LineReader::new(s.try_clone().unwrap());
            let mut w = s;
            let _ = r.read_line();
            use std::io::Write;
            let _ = w.write_all(answer.as_bytes());
            let _ = r.read_line(); // start
            let _ = w.write_all(b"{\"progress\":{\"target\":5,\"started\":5,\"open\":5,\"connecting\":0,\"failed\":0,\"disconnects\":0,\"frames\":0,\"edits\":0,\"gaps\":0,\"dups\":0,\"ramp_done_threads\":1,\"threads\":1,\"rss_bytes\":0}}\n");
            std::thread::sleep(Duration::from_millis(200));
        });
        addr
    }

    #[test]
    fn an_agent_that_goes_away_is_named() {
        let a = fake_agent("{\"ready\":{\"host\":\"h\",\"pid\":1,\"clients\":5,\"procs\":1,\"threads\":1,\"nofile_hard\":1,\"warnings\":[]}}\n");
        let f = AgentFleet::start(std::slice::from_ref(&a), vec!["hold".into()], 5, None).unwrap();
        let t0 = Instant::now();
        let e = loop {
            if let Some(e) = f.fatal() {
                break e;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no failure noticed");
            std::thread::sleep(Duration::from_millis(20));
        };
        let msg = e.to_string();
        assert!(msg.contains(&a) && msg.contains("went away mid-run"), "{msg}");
        assert_eq!(f.progress().open, 5);
        let e = f.stop().unwrap_err().to_string();
        assert!(e.contains(&a) && e.contains("lost"), "{e}");
    }

    #[test]
    fn a_refusal_is_named() {
        let a = fake_agent("{\"error\":\"busy: serving 10.0.0.1:5000\"}\n");
        let e = AgentFleet::start(std::slice::from_ref(&a), vec!["hold".into()], 5, None).err().unwrap().to_string();
        assert!(e.contains(&a) && e.contains("refused the job: busy"), "{e}");
    }
}
