//! Shared by the integration tests that run real processes on loopback: a placecast server
//! (the workspace's binary: `PLACECAST_BIN`, else `placecast` next to this build's
//! `placecast-load`, built with `cargo build -p placecast` once if it is missing), load agents
//! on chosen 127.0.0.0/8 addresses, and coordinator runs bounded in time. Every process is
//! started here and killed by its own PID (`Child::kill`) when its guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// This build's `placecast-load`.
pub fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_placecast-load"))
}

/// The placecast server binary (see the module doc).
pub fn placecast_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("PLACECAST_BIN") {
            return PathBuf::from(p);
        }
        let dir = load_bin().parent().expect("the binary has a directory").to_path_buf();
        let bin = dir.join("placecast");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "placecast"]).current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build -p placecast");
            assert!(st.success(), "cargo build -p placecast failed");
        }
        assert!(bin.exists(), "no placecast binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A fresh directory under the temp dir, removed by the guard.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("placecast-load-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 50 ms until it returns Some; panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A placecast server on 127.0.0.1 with one shard, the per-address limits off, in its own
/// data directory; killed by its PID on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    _dir: TempDir,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = TempDir::new("server");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &addr.to_string(),
            "--shards",
            "1",
            "--data-dir",
            dir.0.to_str().unwrap(),
            "--secret",
            SECRET,
            "--max-conns-per-addr",
            "0",
            "--sessions-per-min",
            "0",
            "--placements-per-addr-per-min",
            "0",
            "--catchups-per-addr-per-min",
            "0",
            "--no-fsync",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(placecast_bin())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting placecast");
        let mut s = Server { addr, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http(addr, "GET", "/healthz").is_ok_and(|(st, _)| st == 200) {
                return s;
            }
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("placecast exited at start ({st}); args {args:?}");
            }
            assert!(Instant::now() < deadline, "placecast did not answer /healthz within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The sum of a metric's samples.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = http(self.addr, "GET", "/metrics").ok()?;
        Some(
            body.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A load agent listening on `ip:0`; its address is read from its first stdout line.
pub struct Agent {
    pub addr: String,
    pub child: Child,
}

impl Agent {
    pub fn start(ip: &str) -> Agent {
        let mut child = Command::new(load_bin())
            .args(["agent", "--listen", &format!("{ip}:0"), "--threads", "1", "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting an agent");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("the agent on {ip} did not say where it listens");
            }
        };
        let addr = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
        assert!(addr.starts_with(ip), "agent line {line:?}");
        Agent { addr, child }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, to this agent's PID only.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `placecast-load ARGS`, killing it (by PID) if it is not done within `secs`.
pub fn run_load(args: &[&str], secs: u64) -> Output {
    let child = Command::new(load_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting placecast-load");
    wait_bounded(child, secs)
}

/// Waits for `child` at most `secs` (killing it by PID past that); its output.
pub fn wait_bounded(mut child: Child, secs: u64) -> Output {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("placecast-load did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// Runs `placecast-load ARGS FILE` (ARGS ending in `--json`), killed past `secs`; checks it
/// succeeded and returns the result it wrote to FILE.
pub fn run_for_result(args: &[&str], json: &Path, secs: u64) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push(json.to_str().expect("a UTF-8 temporary path"));
    let out = run_load(&all, secs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    result(json)
}

/// The JSON result a run wrote to `path`.
pub fn result(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn u(v: &serde_json::Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(|x| x.as_u64()).unwrap_or_else(|| panic!("no number at {ptr}"))
}
