//! Test harness: starts the real `placecast` binary on a free loopback port and talks to it with
//! plain sockets (HTTP) and tungstenite (WebSocket). Every server is killed by its own PID when
//! the test ends.
#![allow(dead_code)]

pub mod haproxy;
#[cfg(feature = "kafka")]
pub mod kafka;

use placecast::protocol::{parse_snapshot, BatchView, SnapshotView};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub _tmp: Option<tempfile::TempDir>,
}

/// The binary under test: this build's, or `PLACECAST_BIN` (benchmarks point it at a release
/// build while the test itself is a debug build).
pub fn bin() -> String {
    std::env::var("PLACECAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_placecast").to_string())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The token secret every harness-started node shares (32 bytes and more).
pub const TEST_SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// The per-address limits off: every test client is 127.0.0.1, so a test about one limit turns
/// only that one on (a later flag wins).
pub const NO_LIMITS: [&str; 6] =
    ["--max-conns-per-addr", "0", "--sessions-per-min", "0", "--placements-per-addr-per-min", "0"];

/// `serve` on 127.0.0.1:`port` in `dir` with 2 shards and `secret`, then `flags`, as is.
pub fn base_args(dir: &Path, port: u16, secret: &str, flags: &[&str]) -> Vec<String> {
    let listen = format!("127.0.0.1:{port}");
    let data = dir.to_str().unwrap();
    let head = ["serve", "--listen", &listen, "--shards", "2", "--data-dir", data, "--secret", secret];
    head.iter().chain(flags).map(|s| s.to_string()).collect()
}

/// The harness's usual node: `base_args` with the test secret, the per-address limits off and a
/// short drain (SIGTERM-based tests stay quick), then `extra` (a later flag wins).
pub fn serve_args(dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let defaults = NO_LIMITS.iter().copied().chain(["--drain-grace-ms", "100", "--drain-spread-s", "1"]);
    let flags: Vec<&str> = defaults.chain(extra.iter().copied()).collect();
    base_args(dir, port, TEST_SECRET, &flags)
}

/// Polls `f` every 20 ms until it returns Some; fails after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// Starts a server with 2 shards and `extra` flags on a fresh data directory.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, free_port(), extra);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path, port: u16, extra: &[&str]) -> Server {
        Server::spawn(dir, port, serve_args(dir, port, extra))
    }

    /// Runs `placecast <args>` (which must listen on 127.0.0.1:`port`) and waits until it
    /// answers /healthz.
    pub fn spawn(dir: &Path, port: u16, args: Vec<String>) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(bin())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start placecast");
        let mut s = Server { addr, child, dir: dir.to_path_buf(), args, _tmp: None };
        s.wait_ready();
        s
    }

    /// Waits until the server answers /healthz; fails at once if it exited.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if try_http(self.addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("placecast exited at start ({status}); args {:?}", self.args);
            }
            assert!(Instant::now() < deadline, "placecast did not answer /healthz within 30 s; args {:?}", self.args);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL, by PID
        let _ = self.child.wait();
    }

    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        try_http(self.addr, method, path, headers, body).expect("http request")
    }

    pub fn session(&self) -> String {
        let r = self.http("POST", "/api/v1/session", &[], b"");
        assert_eq!(r.status, 200);
        r.json()["token"].as_str().unwrap().to_string()
    }

    pub fn place(&self, token: &str, x: u32, y: u32, color: u8) -> HttpResponse {
        let body = format!("{{\"x\":{x},\"y\":{y},\"color\":{color}}}");
        let auth = format!("Bearer {token}");
        self.http("POST", "/api/v1/place", &[("Authorization", &auth)], body.as_bytes())
    }

    pub fn snapshot(&self) -> SnapshotView {
        let r = self.http("GET", "/api/v1/canvas", &[], b"");
        assert_eq!(r.status, 200);
        parse_snapshot(&r.body).expect("valid snapshot")
    }

    pub fn metric(&self, name: &str) -> u64 {
        let r = self.http("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn ws(&self, query: &str) -> Ws {
        Ws::connect(self.addr, query)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    raw_http(addr, &raw)
}

/// Sends raw bytes and parses whatever HTTP response comes back before the close.
pub fn raw_http(addr: SocketAddr, raw: &[u8]) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(raw)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_response(&out)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&out))))
}

pub fn parse_response(out: &[u8]) -> Option<HttpResponse> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&out[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Some(HttpResponse { status, headers, body: out[end + 4..].to_vec() })
}

pub struct Ws {
    pub ws: WebSocket<TcpStream>,
    pub hello: serde_json::Value,
}

/// What a client saw, in order.
#[derive(Debug)]
pub enum Got {
    Batch {
        from: u64,
        to: u64,
        edits: Vec<(u32, u8)>,
    },
    /// The canvas grew at version `to` (PROTOCOL.md, "Resize message").
    Resize {
        from: u64,
        to: u64,
        width: u32,
        height: u32,
    },
    Text(serde_json::Value),
    Closed(Option<(u16, String)>),
    Timeout,
}

impl Ws {
    pub fn connect(addr: SocketAddr, query: &str) -> Ws {
        let stream = TcpStream::connect(addr).unwrap();
        Ws::over(stream, addr, query)
    }

    pub fn over(stream: TcpStream, addr: SocketAddr, query: &str) -> Ws {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let url = format!("ws://{addr}/ws{query}");
        let (ws, _) = tungstenite::client(url, stream).expect("handshake");
        let mut w = Ws { ws, hello: serde_json::Value::Null };
        match w.next() {
            Got::Text(v) if v["type"] == "hello" => w.hello = v,
            other => panic!("expected hello, got {other:?}"),
        }
        w
    }

    pub fn shard(&self) -> u64 {
        self.hello["shard"].as_u64().unwrap()
    }

    pub fn set_timeout(&self, d: Duration) {
        self.ws.get_ref().set_read_timeout(Some(d)).unwrap();
    }

    pub fn next(&mut self) -> Got {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    if let Some(r) = placecast::protocol::ResizeView::parse(&b) {
                        return Got::Resize { from: r.from, to: r.to, width: r.width, height: r.height };
                    }
                    let v = BatchView::parse(&b).expect("valid batch");
                    return Got::Batch { from: v.from, to: v.to, edits: v.iter().collect() };
                }
                Ok(Message::Text(t)) => return Got::Text(serde_json::from_str(t.as_str()).expect("JSON text")),
                Ok(Message::Close(c)) => return Got::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string()))),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed(None),
            }
        }
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).unwrap();
    }

    /// Reads until a text message of `kind` arrives (batches are skipped).
    pub fn next_text(&mut self, kind: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.next() {
                Got::Text(v) if v["type"] == kind => return v,
                Got::Closed(c) => panic!("closed while waiting for {kind}: {c:?}"),
                _ => {}
            }
        }
        panic!("no {kind} message");
    }

    /// Reads until the client's version reaches `version`, checking contiguity.
    pub fn follow_until(&mut self, mut at: u64, version: u64, canvas: &mut [u8]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while at < version {
            assert!(Instant::now() < deadline, "stuck at {at}, waiting for {version}");
            match self.next() {
                Got::Batch { from, to, edits } => {
                    assert_eq!(from, at, "batches must be contiguous: no gap, no duplicate");
                    for (i, c) in edits {
                        canvas[i as usize] = c;
                    }
                    at = to;
                }
                Got::Resize { .. } => panic!("a resize: follow this client with `follow_model`"),
                Got::Closed(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
        at
    }

    /// Reads until the client's version reaches `version`, applying batches and resizes to
    /// `model` as a client must (contiguous versions, growing at a resize); returns the
    /// versions of the resizes seen.
    pub fn follow_model(&mut self, mut at: u64, version: u64, model: &mut Model) -> (u64, Vec<u64>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut resizes = Vec::new();
        while at < version {
            assert!(Instant::now() < deadline, "stuck at {at}, waiting for {version}");
            match self.next() {
                Got::Batch { from, to, edits } => {
                    assert_eq!(from, at, "batches must be contiguous: no gap, no duplicate");
                    for (i, c) in edits {
                        model.pixels[i as usize] = c;
                    }
                    at = to;
                }
                Got::Resize { from, to, width, height } => {
                    assert_eq!(from, at, "a resize follows the version before it");
                    model.grow(width, height);
                    resizes.push(to);
                    at = to;
                }
                Got::Closed(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
        (at, resizes)
    }
}

/// A client's canvas: its size and one palette index per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Model {
    pub fn of(s: &SnapshotView) -> Model {
        Model { width: s.width, height: s.height, pixels: s.pixels.clone() }
    }

    /// Grown as a client grows it: each pixel at its (x, y), new ones 0.
    pub fn grow(&mut self, width: u32, height: u32) {
        let mut p = vec![0u8; width as usize * height as usize];
        for y in 0..self.height as usize {
            let row = &self.pixels[y * self.width as usize..(y + 1) * self.width as usize];
            p[y * width as usize..y * width as usize + row.len()].copy_from_slice(row);
        }
        (self.width, self.height, self.pixels) = (width, height, p);
    }

    pub fn at(&self, x: u32, y: u32) -> u8 {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// Opens WebSocket connections until one lands on each of the two shards.
pub fn one_per_shard(server: &Server, query: &str) -> (Ws, Ws) {
    let mut a: Option<Ws> = None;
    let mut b: Option<Ws> = None;
    for _ in 0..200 {
        let w = server.ws(query);
        match w.shard() {
            0 if a.is_none() => a = Some(w),
            1 if b.is_none() => b = Some(w),
            _ => {}
        }
        if let (Some(_), Some(_)) = (&a, &b) {
            return (a.unwrap(), b.unwrap());
        }
    }
    panic!("connections never reached both shards");
}
