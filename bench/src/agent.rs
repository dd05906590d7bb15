//! `placecast-load agent --listen ADDR`: a load host's server for coordinators
//! (`SCENARIO --agents A,B,...`, protocol in [`crate::link`]). It waits for a coordinator, takes
//! its job (the scenario's arguments and this agent's share of the clients), prepares the share
//! ([`Share::prepare`]: this host's limits, a session's day plan), answers ready, starts its
//! clients at the agreed wall-clock instant, streams progress, obeys window/drop/stop, records
//! forwarded send instants in its own send table, and returns its result.
//!
//! Invariants: one run at a time (a coordinator arriving while one is served gets an `error`
//! line saying who holds the agent, and is closed); a run ends when its coordinator says stop,
//! closes its connection or is silent for [`link::SILENCE`], or at the share's own life bound,
//! and the agent then stops its clients by itself and waits for the next coordinator (or exits
//! with `--once`). Safety: the job's target must pass this agent's own `--allow-target`
//! (loopback only by default), whatever the coordinator allowed; this agent's `--source-addrs`,
//! `--threads` and `--procs` replace the coordinator's.

use crate::cli::{AgentArgs, Cli};
use crate::error::LoadError;
use crate::fleet::{self, Control};
use crate::link::{self, FromAgent, Line, LineReader, Ready, ToAgent};
use crate::sendtable::{self, SendTable};
use crate::share::Share;
use clap::Parser;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a coordinator has to send its job after connecting.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ready agent waits for the start (the coordinator waits for the slowest agent).
const START_TIMEOUT: Duration = Duration::from_secs(link::READY_TIMEOUT.as_secs() + 30);

/// Who holds the agent, for the refusal of a second coordinator.
type Busy = Arc<Mutex<Option<String>>>;

/// Runs the agent until SIGINT/SIGTERM (or after one run with `--once`).
pub fn run(a: &AgentArgs) -> Result<(), LoadError> {
    let listener = TcpListener::bind(a.listen).map_err(|e| LoadError::io(format!("listening on {}", a.listen), e))?;
    let local = listener.local_addr().map_err(|e| LoadError::io("reading the listening address", e))?;
    listener.set_nonblocking(true).map_err(|e| LoadError::io("setting the listener nonblocking", e))?;
    {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "placecast-load agent listening on {local}");
        let _ = o.flush();
    }
    // From here on the agent is known by the address it listens on.
    let a = &AgentArgs { listen: local, ..a.clone() };
    let busy: Busy = Arc::new(Mutex::new(None));
    let mut serving: Option<std::thread::JoinHandle<()>> = None;
    let mut served = 0u64;
    loop {
        if crate::signals::interrupted() {
            log(a, "interrupted: stopping");
            break;
        }
        if serving.as_ref().is_some_and(|h| h.is_finished()) {
            let _ = serving.take().map(|h| h.join());
            if a.once && served > 0 {
                break;
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let holder = busy.lock().unwrap().clone();
                if let Some(h) = holder {
                    refuse(
                        stream,
                        &format!("busy: this agent ({local}) is running a share for {h}; it serves one run at a time"),
                    );
                    log(a, &format!("refused {peer}: busy with {h}"));
                    continue;
                }
                *busy.lock().unwrap() = Some(format!("coordinator {peer} (since unix {} s)", link::unix_ms() / 1000));
                served += 1;
                let (a2, busy2) = (a.clone(), busy.clone());
                serving = Some(std::thread::spawn(move || {
                    match serve_run(&a2, stream, peer) {
                        Ok(msg) => log(&a2, &format!("run for {peer} ended: {msg}")),
                        Err(e) => log(&a2, &format!("run for {peer} failed: {e}")),
                    }
                    *busy2.lock().unwrap() = None;
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                log(a, &format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    if let Some(h) = serving {
        let _ = h.join();
    }
    Ok(())
}

fn log(a: &AgentArgs, msg: &str) {
    if !a.quiet {
        eprintln!("[agent {}] {msg}", a.listen);
    }
}

fn refuse(stream: TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut w = stream;
    let _ = link::write_msg(&mut w, &FromAgent::Error(why.to_string()));
    let _ = w.shutdown(std::net::Shutdown::Both);
}

/// The job's arguments as this agent runs them: its own overrides and its share's range.
pub fn agent_args(a: &AgentArgs, job: &link::Job) -> Vec<String> {
    let mut args = crate::coordinator::job_args(job.args.clone());
    if let Some(s) = &a.source_addrs {
        link::set_arg(&mut args, "--source-addrs", s);
    }
    if let Some(t) = a.threads {
        link::set_arg(&mut args, "--threads", t);
    }
    if let Some(p) = a.procs {
        link::set_arg(&mut args, "--procs", p);
    }
    link::set_arg(&mut args, "--share-base", job.base);
    link::set_arg(&mut args, "--share-count", job.count);
    args
}

/// Serves one coordinator's run; returns how it ended.
fn serve_run(a: &AgentArgs, stream: TcpStream, peer: SocketAddr) -> Result<String, String> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(link::READ_TICK)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(link::WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
    let mut reader = LineReader::new(stream);
    let fail = |w: &Arc<Mutex<TcpStream>>, e: String| {
        let _ = link::write_msg(&mut *w.lock().unwrap(), &FromAgent::Error(e.clone()));
        Err(e)
    };
    // The job.
    let job = match wait_for(&mut reader, JOB_TIMEOUT, |m| matches!(m, ToAgent::Job(_)))? {
        ToAgent::Job(j) => j,
        _ => unreachable!("wait_for returns what it was asked for"),
    };
    if job.proto != link::PROTO || job.tool != crate::coordinator::tool() {
        return fail(
            &writer,
            format!(
                "version mismatch: the coordinator is {} (protocol {}), this agent {} (protocol {})",
                job.tool,
                job.proto,
                crate::coordinator::tool(),
                link::PROTO
            ),
        );
    }
    let args = agent_args(a, &job);
    let cli = match Cli::try_parse_from(std::iter::once("placecast-load".to_string()).chain(args.iter().cloned())) {
        Ok(c) => c,
        Err(e) => return fail(&writer, format!("bad job arguments: {}", e.to_string().trim())),
    };
    let common = match &cli.cmd {
        crate::cli::Cmd::Hold(x) => &x.common,
        crate::cli::Cmd::Fanout(x) => &x.common,
        crate::cli::Cmd::Session(x) => &x.common,
        _ => return fail(&writer, "only hold, fanout and session run on agents".into()),
    };
    if let Err(e) = crate::addrs::check_target(common.target, &a.allow_target) {
        return fail(&writer, format!("this agent's policy: {e}"));
    }
    crate::sys::raise_nofile_to_hard();
    let share = match Share::prepare(&cli.cmd, args) {
        Ok(s) => s,
        Err(e) => return fail(&writer, e.to_string()),
    };
    log(
        a,
        &format!(
            "job from {peer}: {} clients {}..{} of agent {} of {}, {} procs x {} threads",
            share.scenario,
            share.base,
            share.base + share.count as u64,
            job.index + 1,
            job.agents,
            share.procs,
            share.threads
        ),
    );
    let ready = Ready {
        host: hostname(),
        pid: std::process::id(),
        clients: share.count,
        procs: share.procs,
        threads: share.threads,
        nofile_hard: crate::sys::nofile_limit().1,
        warnings: share.warnings.clone(),
    };
    if let Err(e) = link::write_msg(&mut *writer.lock().unwrap(), &FromAgent::Ready(ready)) {
        return Err(format!("cannot answer ready: {e}"));
    }
    // The start.
    let at = match wait_for(&mut reader, START_TIMEOUT, |m| matches!(m, ToAgent::Start { .. }))? {
        ToAgent::Start { at_unix_ms } => at_unix_ms,
        _ => unreachable!("wait_for returns what it was asked for"),
    };
    let now = link::unix_ms();
    if at > now + link::MAX_START_AHEAD.as_millis() as u64 {
        return fail(
            &writer,
            format!("the start is {} s ahead of this host's clock: are the hosts' clocks synced?", (at - now) / 1000),
        );
    }
    if now > at + 5_000 {
        let _ = link::write_msg(
            &mut *writer.lock().unwrap(),
            &FromAgent::Error(format!("warning: the start reached this agent {} ms late (clock offset?)", now - at)),
        );
    }
    std::thread::sleep(Duration::from_millis(at.saturating_sub(now)));
    // A file-backed table when the share runs as child processes, so they all read it.
    let (table, table_path) = if share.procs > 1 {
        let p = sendtable::temp_path();
        match SendTable::create_file(&p, sendtable::DEFAULT_SLOTS) {
            Ok(t) => (Arc::new(t), Some(p)),
            Err(e) => return fail(&writer, format!("creating {}: {e}", p.display())),
        }
    } else {
        match SendTable::anonymous(sendtable::DEFAULT_SLOTS) {
            Ok(t) => (Arc::new(t), None),
            Err(e) => return fail(&writer, format!("mapping the send table: {e}")),
        }
    };
    let life = share.life;
    let fleet = match share.start(at, Some(table.clone()), table_path) {
        Ok(f) => f,
        Err(e) => return fail(&writer, e.to_string()),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(fleet::CONTROL_QUEUE);
    let reading = std::thread::spawn(move || read_controls(reader, &tx, &table));
    let w2 = writer.clone();
    let emit =
        move |p: &crate::engine::Progress| link::write_msg(&mut *w2.lock().unwrap(), &FromAgent::Progress(*p)).is_ok();
    let (result, ended) = fleet::serve(fleet, &rx, emit, life);
    let mut w = writer.lock().unwrap();
    if !matches!(ended, fleet::Ended::Gone(_)) {
        if let fleet::Ended::Early(why) = &ended {
            let _ = link::write_msg(&mut *w, &FromAgent::Error(format!("stopped early: {why}")));
        }
        let _ = match &result {
            Ok(r) => link::write_msg(&mut *w, &FromAgent::Result(Box::new(r.clone()))),
            Err(e) => link::write_msg(&mut *w, &FromAgent::Error(e.to_string())),
        };
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
    drop(w);
    drop(rx);
    let _ = reading.join();
    let n = result.as_ref().map(|r| r.counts.connected).unwrap_or(0);
    Ok(match ended {
        fleet::Ended::Stopped => format!("stopped by its coordinator ({n} connections made)"),
        fleet::Ended::Gone(w) | fleet::Ended::Early(w) => format!("{w}; its clients stopped ({n} connections made)"),
    })
}

/// Reads lines until one `want`s, within `timeout`; pings are skipped.
fn wait_for(
    r: &mut LineReader<TcpStream>,
    timeout: Duration,
    want: impl Fn(&ToAgent) -> bool,
) -> Result<ToAgent, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match r.read_line().map_err(|e| format!("reading from the coordinator: {e}"))? {
            Line::Msg(l) => {
                let m = link::parse::<ToAgent>(&l)?;
                if want(&m) {
                    return Ok(m);
                }
                if matches!(m, ToAgent::Stop {}) {
                    return Err("the coordinator stopped the run before it started".into());
                }
            }
            Line::Eof => return Err("the coordinator closed the connection".into()),
            Line::Idle => {}
        }
        if Instant::now() > deadline {
            return Err(format!("nothing from the coordinator for {} s", timeout.as_secs()));
        }
    }
}

/// The coordinator's messages during the run, as controls; send instants into the table.
fn read_controls(mut r: LineReader<TcpStream>, tx: &SyncSender<Control>, table: &SendTable) {
    let offset = link::realtime_offset_ns();
    let mut heard = Instant::now();
    let gone = loop {
        let line = match r.read_line() {
            Ok(Line::Msg(l)) => l,
            Ok(Line::Eof) => break "the coordinator closed its connection".to_string(),
            Ok(Line::Idle) => {
                if heard.elapsed() > link::SILENCE {
                    break format!("the coordinator was silent for {} s", link::SILENCE.as_secs());
                }
                continue;
            }
            Err(e) => break format!("the coordinator's connection failed: {e}"),
        };
        heard = Instant::now();
        let c = match link::parse::<ToAgent>(&line) {
            Ok(ToAgent::Window(v)) => Control::Window(v),
            Ok(ToAgent::Drop(ms)) => Control::Drop(ms),
            Ok(ToAgent::Stop {}) => Control::Stop,
            Ok(ToAgent::Sent(v)) => {
                for (version, unix_ns) in v {
                    table.record(version, (unix_ns as i128 - offset).max(0) as u64);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => break format!("the coordinator sent {e}"),
        };
        let stop = c == Control::Stop;
        if tx.send(c).is_err() || stop {
            return;
        }
    };
    let _ = tx.send(Control::Gone(gone));
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(extra: &[&str]) -> AgentArgs {
        let mut v = vec!["placecast-load", "agent", "--listen", "127.0.0.1:0"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().cmd {
            crate::cli::Cmd::Agent(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_agent_s_own_settings_win() {
        let a = agent(&["--source-addrs", "10.0.0.1-10.0.0.9", "--procs", "2"]);
        let job = link::Job {
            proto: link::PROTO,
            tool: crate::coordinator::tool(),
            args: ["fanout", "-n", "100", "--source-addrs", "auto", "--json", "x", "--procs", "4"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            index: 1,
            agents: 2,
            base: 50,
            count: 50,
        };
        let args = agent_args(&a, &job);
        assert_eq!(
            args,
            [
                "fanout",
                "-n",
                "100",
                "--source-addrs",
                "10.0.0.1-10.0.0.9",
                "--procs",
                "2",
                "--share-base",
                "50",
                "--share-count",
                "50"
            ]
        );
    }

    /// An agent on loopback refuses a second coordinator while it serves the first, and a job
    /// for a target its policy does not allow.
    #[test]
    fn one_run_at_a_time_and_its_own_policy() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let a = agent(&["--quiet", "--once"]);
        let a = AgentArgs { listen: addr, ..a };
        std::thread::spawn(move || run(&a));
        let connect = || {
            let t0 = Instant::now();
            loop {
                if let Ok(s) = TcpStream::connect(addr) {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    return s;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "the agent did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let first = connect();
        // The first holds the agent (it has not sent its job yet); the second is refused.
        std::thread::sleep(Duration::from_millis(200));
        let second = connect();
        let mut r = LineReader::new(second);
        let Line::Msg(l) = r.read_line().unwrap() else { panic!("no refusal") };
        match link::parse::<FromAgent>(&l).unwrap() {
            FromAgent::Error(e) => assert!(e.contains("busy") && e.contains("one run at a time"), "{e}"),
            m => panic!("{m:?}"),
        }
        // A job for a non-loopback target: refused by this agent's own policy.
        let job = link::Job {
            proto: link::PROTO,
            tool: crate::coordinator::tool(),
            args: ["hold", "--target", "192.0.2.1:80", "--allow-target", "192.0.2.1", "-n", "5"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            index: 0,
            agents: 1,
            base: 0,
            count: 5,
        };
        let mut w = first.try_clone().unwrap();
        link::write_msg(&mut w, &ToAgent::Job(job)).unwrap();
        let mut r = LineReader::new(first);
        let Line::Msg(l) = r.read_line().unwrap() else { panic!("no answer") };
        match link::parse::<FromAgent>(&l).unwrap() {
            FromAgent::Error(e) => assert!(e.contains("policy") && e.contains("192.0.2.1"), "{e}"),
            m => panic!("{m:?}"),
        }
    }
}
