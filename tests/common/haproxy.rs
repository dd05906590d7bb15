//! The edge test harness: a real HAProxy (Debian's /usr/sbin/haproxy, `mode tcp`) on a free
//! loopback port in front of placecast nodes, sending them the PROXY protocol; placecast nodes
//! started with exactly the edge flags a test gives (no harness defaults to collide with); and
//! clients that connect from chosen loopback source addresses (Linux routes all of 127.0.0.0/8
//! to `lo`), so one machine plays many client addresses.
//!
//! Addresses: HAProxy connects to the nodes from `PROXY_SRC` (127.0.0.10, its `source`), so a
//! node trusts `PROXY_SRC/32` and the harness's own direct requests from 127.0.0.1 stay plain
//! untrusted clients (served without a header). HAProxy is killed by its PID when dropped.

use super::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The source address HAProxy uses towards the nodes: the one proxy the nodes trust.
pub const PROXY_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
/// `--trusted-proxies` for nodes behind [`Haproxy`].
pub const TRUSTED: &str = "127.0.0.10/32";
/// A 32-byte-plus token secret shared by every node a test starts (a cluster needs one).
pub const SECRET: &str = "edge-test-secret-0123456789abcdef-0123";
/// A 32-byte-plus admin token.
pub const ADMIN_TOKEN: &str = "edge-admin-token-0123456789abcdef-0123";

pub fn haproxy_bin() -> PathBuf {
    let p = std::env::var_os("HAPROXY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    assert!(p.is_file(), "the edge tests need HAProxy at {} (apt-get install haproxy, or set HAPROXY)", p.display());
    p
}

/// Starts a placecast node with 2 shards, the shared secret and exactly `flags` (the caller
/// passes every limit flag it wants; see [`NO_LIMITS`]), and waits for /healthz.
pub fn start_node(flags: &[&str]) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = Server::spawn(tmp.path(), port, base_args(tmp.path(), port, SECRET, flags));
    s._tmp = Some(tmp);
    s
}

/// Which PROXY protocol version HAProxy sends to the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

pub struct Haproxy {
    /// The frontend clients connect to.
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    /// The backend's server names, in the order of the nodes given.
    pub names: Vec<String>,
}

impl Haproxy {
    /// HAProxy in `mode tcp` balancing `nodes` (round robin), health-checking GET /readyz every
    /// 200 ms (one failure marks a node down, one success up), sending the PROXY protocol to
    /// the nodes and on the checks.
    pub fn start(nodes: &[SocketAddr], proxy: SendProxy) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let send = match proxy {
            SendProxy::V1 => "send-proxy",
            SendProxy::V2 => "send-proxy-v2",
        };
        let names: Vec<String> = (0..nodes.len()).map(|i| format!("node{i}")).collect();
        let servers: String = nodes.iter().zip(&names).map(|(a, n)| format!("    server {n} {a} check\n")).collect();
        let sock = dir.path().join("admin.sock");
        let cfg = format!(
            "global
    maxconn 4000
    stats socket {sock} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 2s
frontend edge
    bind {addr}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host placecast
    http-check expect status 200
    default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1 source {PROXY_SRC} {send} check-send-proxy
{servers}",
            sock = sock.display()
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(haproxy_bin())
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let mut h = Haproxy { addr, child, dir, names };
        let deadline = Instant::now() + Duration::from_secs(15);
        // Listening once the stats socket answers (no probe through the frontend: that would be a
        // session sent to a node, skewing `sessions_sent`).
        while !(h.dir.path().join("admin.sock").exists() && h.try_command("show info").contains("Pid:")) {
            if let Some(status) = h.child.try_wait().unwrap() {
                panic!("haproxy exited at start ({status}): {}", h.log());
            }
            assert!(Instant::now() < deadline, "haproxy did not listen on {addr} within 15 s: {}", h.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// One command on the stats socket; the whole answer.
    pub fn command(&self, cmd: &str) -> String {
        self.try_command_io(cmd).unwrap_or_else(|e| panic!("haproxy stats socket, {cmd:?}: {e}"))
    }

    fn try_command(&self, cmd: &str) -> String {
        self.try_command_io(cmd).unwrap_or_default()
    }

    fn try_command_io(&self, cmd: &str) -> std::io::Result<String> {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(self.dir.path().join("admin.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// `show stat` for the backend's servers: name -> the CSV fields by their header names.
    pub fn servers(&self) -> Vec<std::collections::HashMap<String, String>> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<String> =
            lines.next().unwrap_or("").trim_start_matches("# ").split(',').map(str::to_string).collect();
        lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_string))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|row| row.get("pxname").map(String::as_str) == Some("nodes"))
            .filter(|row| row.get("svname").is_some_and(|n| self.names.contains(n)))
            .collect()
    }

    /// name status check_status stot scur, per node: for failure messages.
    pub fn summary(&self) -> String {
        self.servers()
            .iter()
            .map(|r| {
                format!("{} {} {} stot={} scur={}", r["svname"], r["status"], r["check_status"], r["stot"], r["scur"])
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn field(&self, node: usize, field: &str) -> String {
        self.servers()
            .into_iter()
            .find(|r| r["svname"] == self.names[node])
            .and_then(|r| r.get(field).cloned())
            .unwrap_or_default()
    }

    /// The node's state as HAProxy sees it ("UP", "DOWN", ...) and its last check's result.
    pub fn status(&self, node: usize) -> (String, String) {
        (self.field(node, "status"), self.field(node, "check_status"))
    }

    /// Sessions HAProxy has sent to the node so far.
    pub fn sessions_sent(&self, node: usize) -> u64 {
        self.field(node, "stot").parse().unwrap_or(0)
    }

    /// Waits until the node's health check has passed (L7OK) and HAProxy has it UP.
    pub fn wait_up(&self, node: usize) {
        self.wait_status(node, |st, chk| st == "UP" && chk.starts_with("L7OK"), "UP after a passed check");
    }

    pub fn wait_all_up(&self) {
        for i in 0..self.names.len() {
            self.wait_up(i);
        }
    }

    pub fn wait_down(&self, node: usize) {
        self.wait_status(node, |st, _| st.starts_with("DOWN"), "DOWN");
    }

    fn wait_status(&self, node: usize, ok: impl Fn(&str, &str) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, chk) = self.status(node);
            if ok(&st, &chk) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not mark {} {what} within 30 s: status {st:?}, check {chk:?}\n{}",
                self.names[node],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL, by PID
        let _ = self.child.wait();
    }
}

/// The loopback address 127.0.0.`n`.
pub fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A TCP connection to `dst` from the source address `src` (any port).
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    s.connect(&dst.into())?;
    Ok(s.into())
}

/// Sends `raw` from `src` and returns every byte the server sent before closing (an error if
/// the connection was reset before anything arrived).
pub fn exchange_from(src: Ipv4Addr, dst: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = connect_from(src, dst)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(raw)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// An HTTP request (`Connection: close`), optionally preceded by `prefix` (a PROXY header).
pub fn request_bytes(prefix: &[u8], method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = prefix.to_vec();
    raw.extend_from_slice(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: placecast\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for (k, v) in headers {
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// An HTTP request from `src` to `dst` (HAProxy's frontend or a node).
pub fn http_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let out = exchange_from(src, dst, &request_bytes(b"", method, path, headers, body))?;
    parse_response(&out)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&out))))
}

/// A WebSocket from `src` through `dst`: the handshake and the hello, or why not.
pub fn try_ws_from(src: Ipv4Addr, dst: SocketAddr, query: &str) -> Result<Ws, String> {
    let stream = connect_from(src, dst).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("ws://{dst}/ws{query}");
    let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake: {e}"))?;
    let mut w = Ws { ws, hello: serde_json::Value::Null };
    match w.next() {
        Got::Text(v) if v["type"] == "hello" => {
            w.hello = v;
            Ok(w)
        }
        other => Err(format!("expected hello, got {other:?}")),
    }
}

pub fn ws_from(src: Ipv4Addr, dst: SocketAddr, query: &str) -> Ws {
    try_ws_from(src, dst, query).unwrap_or_else(|e| panic!("WebSocket from {src} through {dst}: {e}"))
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) claiming `src` -> `dst`.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("IPv4 only") };
    let mut b = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12]);
    b.extend_from_slice(&s.octets());
    b.extend_from_slice(&d.octets());
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    b
}
