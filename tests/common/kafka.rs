//! The Kafka test harness: a tansu broker on a free loopback port with its own sqlite file, and
//! placecast nodes with their own data directories, each killed by its PID when dropped.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOPIC: &str = "edits";

/// The tansu binary, or a failure that says how to install it (never a silent skip).
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("the Kafka tests need the tansu broker: install it with `cargo install tansu --locked --features libsql` (or scripts/install-tansu.sh)")
    })
}

/// A tansu broker on 127.0.0.1, storing in a sqlite file in its own temporary directory.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    pub fn start() -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = Broker { port: free_port(), child: None, dir: tmp.path().to_path_buf(), _tmp: Some(tmp) };
        b.restart();
        let out = Command::new(tansu_bin())
            .args(["topic", "create", TOPIC, "--partitions", "1", "--broker", &b.url()])
            .output()
            .expect("run tansu topic create");
        assert!(out.status.success(), "tansu topic create failed: {}", String::from_utf8_lossy(&out.stderr));
        b
    }

    /// Creates another topic of one partition (the checkpoint topic, say).
    pub fn create_topic(&self, name: &str) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name, "--partitions", "1", "--broker", &self.url()])
            .output()
            .expect("run tansu topic create");
        assert!(out.status.success(), "tansu topic create {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A broker on storage that already holds the topic (kept by the caller).
    pub fn start_existing(dir: &Path) -> Broker {
        let mut b = Broker { port: free_port(), child: None, dir: dir.to_path_buf(), _tmp: None };
        b.restart();
        b
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(tansu_bin())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &self.url(),
                "--advertised-listener-url",
                &self.url(),
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {} within 15 s", self.addr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL, by PID
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node's own data directory, kept across restarts.
pub struct Node {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra: Vec<String>,
}

impl Node {
    pub fn start(broker: &Broker, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec!["--kafka-brokers".into(), broker.addr(), "--kafka-topic".into(), TOPIC.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Node { server: None, dir: tempfile::tempdir().unwrap(), port: free_port(), extra: args };
        n.restart();
        n
    }

    pub fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.server = Some(Server::start_in(self.dir.path(), self.port, &extra));
    }

    pub fn s(&self) -> &Server {
        self.server.as_ref().expect("node running")
    }

    pub fn version(&self) -> u64 {
        self.s().http("GET", "/healthz", &[], b"").json()["version"].as_u64().unwrap()
    }
}

/// Waits until every node serves a snapshot at the same version, at least `at_least`, for two
/// polls in a row; returns the snapshots.
pub fn converged(nodes: &[&Node], at_least: u64) -> Vec<placecast::protocol::SnapshotView> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stable = 0;
    loop {
        let snaps: Vec<_> = nodes.iter().map(|n| n.s().snapshot()).collect();
        let v = snaps[0].version;
        if v >= at_least && snaps.iter().all(|s| s.version == v) {
            stable += 1;
            if stable == 2 {
                return snaps;
            }
        } else {
            stable = 0;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge: versions {:?}, want >= {at_least}",
            snaps.iter().map(|s| s.version).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn place_json(addr: std::net::SocketAddr, token: &str, x: u32, y: u32, c: u8) -> HttpResponse {
    let body = format!("{{\"x\":{x},\"y\":{y},\"color\":{c}}}");
    let auth = format!("Bearer {token}");
    try_http(addr, "POST", "/api/v1/place", &[("Authorization", &auth)], body.as_bytes()).expect("placement answered")
}
