//! A minimal blocking HTTP/1.1 client over one keep-alive TCP connection: enough for the
//! placement driver (`POST /api/v1/session`, `POST /api/v1/place`) and for reading
//! `/api/v1/canvas/info` and the binary snapshot. Bodies by Content-Length or chunked.

use crate::error::LoadError;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response body accepted (a 8192x8192 8-bit snapshot is 64 MiB).
pub const MAX_BODY: usize = 128 << 20;

pub struct HttpConn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// The last answer said `Connection: close` (the server closes after it).
    closing: bool,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value, LoadError> {
        serde_json::from_slice(&self.body).map_err(|e| LoadError::Http {
            what: "response body".into(),
            detail: format!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body[..self.body.len().min(200)])),
        })
    }

    /// The `error.code` of an error answer (`{"error":{"code":..}}`), else `status_NNN`.
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("status_{}", self.status))
    }

    /// How long the server asks the client to wait: `error.retry_after_ms`, else the
    /// `Retry-After` header (seconds).
    pub fn retry_after_ms(&self) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/error/retry_after_ms").and_then(|r| r.as_u64()))
            .or_else(|| self.header("retry-after").and_then(|s| s.trim().parse::<u64>().ok()).map(|s| s * 1000))
    }

    /// Whether the server closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

impl HttpConn {
    pub fn connect(target: SocketAddr, timeout: Duration) -> io::Result<Self> {
        Self::connect_from(None, target, timeout)
    }

    /// Connects from source address `source` (None: the kernel's choice).
    pub fn connect_from(source: Option<IpAddr>, target: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = match source {
            None => TcpStream::connect_timeout(&target, timeout)?,
            Some(src) => crate::sys::connect_blocking(src, target, timeout)?,
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(HttpConn { stream, host: target.to_string(), buf: Vec::with_capacity(4096), closing: false })
    }

    /// Whether the last answer said the server closes the connection (open a new one).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Sends one request and reads its answer. `headers` are extra `Name: value` lines.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let mut req = Vec::with_capacity(256 + body.len());
        write!(req, "{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host)?;
        for (n, v) in headers {
            write!(req, "{n}: {v}\r\n")?;
        }
        if !body.is_empty() || method == "POST" {
            write!(req, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())?;
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.stream.write_all(&req)?;
        let r = self.read_response(method == "HEAD")?;
        self.closing = r.closes();
        Ok(r)
    }

    fn fill(&mut self) -> io::Result<()> {
        read_more(&mut self.stream, &mut self.buf)
    }

    fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
                        .collect();
                    break (r.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > 64 * 1024 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too large"));
                    }
                    self.fill()?
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP answer: {e}"))),
            }
        };
        self.buf.drain(..head_len);
        let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            self.read_chunked()?
        } else if let Some(len) = find("content-length") {
            let len: usize =
                len.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
            if len > MAX_BODY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        } else {
            // No length: the body runs to the end of the connection.
            loop {
                match self.fill() {
                    Ok(()) if self.buf.len() <= MAX_BODY => {}
                    Ok(()) => return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large")),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Response { status, headers, body })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill()?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.buf.drain(..line_end + 2);
            if body.len() + size > MAX_BODY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// Something that sends one HTTP request and reads its answer.
pub trait Requester {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response>;
}

impl Requester for HttpConn {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        self.request(method, path, headers, body)
    }
}

impl Requester for KeepAlive {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        self.request(method, path, headers, body)
    }
}

/// A kept-alive connection from one source address that reopens itself: when the last answer
/// said `Connection: close`, after a transport error, and before a request on a connection idle
/// longer than [`KeepAlive::MAX_IDLE`] (below the server's default 15 s idle timeout, which a
/// request could otherwise race).
pub struct KeepAlive {
    pub source: Option<IpAddr>,
    pub target: SocketAddr,
    pub timeout: Duration,
    conn: Option<HttpConn>,
    last_used: std::time::Instant,
    /// Connections opened, and requests sent again on a fresh one.
    pub connects: u64,
    pub retries: u64,
}

impl KeepAlive {
    pub const MAX_IDLE: Duration = Duration::from_secs(10);

    pub fn new(source: Option<IpAddr>, target: SocketAddr) -> Self {
        KeepAlive {
            source,
            target,
            timeout: Duration::from_secs(10),
            conn: None,
            last_used: std::time::Instant::now(),
            connects: 0,
            retries: 0,
        }
    }

    /// The connection, opened first if needed. Marks it used now.
    pub fn get(&mut self) -> io::Result<&mut HttpConn> {
        if self.conn.as_ref().is_some_and(|c| c.closing()) || self.last_used.elapsed() > Self::MAX_IDLE {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.connects += 1;
            self.conn = Some(HttpConn::connect_from(self.source, self.target, self.timeout)?);
        }
        self.last_used = std::time::Instant::now();
        Ok(self.conn.as_mut().expect("opened above"))
    }

    /// Whether the next [`get`](Self::get) reuses an open connection.
    pub fn is_open(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.closing()) && self.last_used.elapsed() <= Self::MAX_IDLE
    }

    /// Forgets the connection (after a transport error).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// One request; a reused connection that fails (transport error, or a 408 the server sent
    /// as it closed it idle) is replaced and the request sent once more.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let reused = self.is_open();
        let r = self.get()?.request(method, path, headers, body);
        self.last_used = std::time::Instant::now();
        if reused && (r.is_err() || matches!(&r, Ok(x) if x.status == 408)) {
            self.retries += 1;
        }
        match r {
            Ok(resp) if resp.status == 408 && reused => {}
            Ok(resp) => return Ok(resp),
            Err(e) if !reused => {
                self.conn = None;
                return Err(e);
            }
            Err(_) => {}
        }
        self.conn = None;
        let r = self.get()?.request(method, path, headers, body);
        self.last_used = std::time::Instant::now();
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// One request on a fresh connection, with errors as [`LoadError`].
pub fn fetch(target: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<Response, LoadError> {
    let mut c = HttpConn::connect(target, Duration::from_secs(10))
        .map_err(|e| LoadError::io(format!("connecting to {target} for {method} {path}"), e))?;
    c.request(method, path, &[], body).map_err(|e| LoadError::io(format!("{method} {path}"), e))
}

/// The fields of `GET /api/v1/canvas/info` the load tester uses.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanvasInfo {
    pub width: u32,
    pub height: u32,
    pub palette_len: u32,
    pub version: u64,
    pub edit_stride: u32,
    pub cooldown_ms: u64,
}

pub fn canvas_info(target: SocketAddr) -> Result<CanvasInfo, LoadError> {
    let r = fetch(target, "GET", "/api/v1/canvas/info", b"")?;
    if r.status != 200 {
        return Err(LoadError::Http { what: "GET /api/v1/canvas/info".into(), detail: format!("status {}", r.status) });
    }
    let v = r.json()?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_u64());
    Ok(CanvasInfo {
        width: num("width").unwrap_or(1000) as u32,
        height: num("height").unwrap_or(1000) as u32,
        palette_len: v.get("palette").and_then(|p| p.as_array()).map(|a| a.len() as u32).unwrap_or(16),
        version: num("version").unwrap_or(0),
        edit_stride: num("edit_stride").unwrap_or(4) as u32,
        cooldown_ms: num("cooldown_ms").unwrap_or(0),
    })
}

/// Appends what one `read` of `stream` gives to `buf` (at most 16 KiB); the server closing the
/// connection is an `UnexpectedEof` error.
pub fn read_more(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut tmp = [0u8; 16 * 1024];
    let n = stream.read(&mut tmp)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn content_length_and_chunked_on_one_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Canvas-Version: 7\r\n\r\nhello").unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        });
        let mut c = HttpConn::connect(addr, Duration::from_secs(5)).unwrap();
        let r = c.request("GET", "/x", &[], b"").unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("x-canvas-version")), (200, &b"hello"[..], Some("7")));
        let r = c.request("POST", "/y", &[("Authorization", "Bearer t")], b"{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (429, &b"abcde"[..]));
        t.join().unwrap();
    }
}
