//! The baseline broadcaster, written the way a typical Rust developer would: tokio,
//! tokio-tungstenite with its default configuration, one task per connection, a
//! `tokio::sync::broadcast` channel of `bytes::Bytes`, and a batcher task that cuts the pending
//! edits into one frame every `batch_ms`.
//!
//! It serves the subset of PROTOCOL.md that the `hold`, `fanout` and `reconnect` scenarios use:
//! `GET /ws` (with `since`, from an in-memory copy of the whole log), `POST /api/v1/place` (any
//! or no Bearer token, no cooldown), `POST /api/v1/session`, `GET /api/v1/canvas/info`,
//! `GET /api/v1/canvas` and `GET /healthz`. Batch frames are byte for byte PROTOCOL.md's
//! binary batch format, with `--edit-stride` padding. Plain HTTP is a small httparse loop (not
//! part of what the comparison measures: placements cost both servers the same order of work).
//!
//! Consistency: the batcher applies edits to the canvas and publishes a frame under one lock,
//! and a new connection subscribes and reads its catch-up under the same lock, so `since`
//! connections see neither a gap nor a duplicate, and snapshots are at a published version.

use crate::batch;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// r/place 2017's 16 colors.
pub const PALETTE: [&str; 16] = [
    "#ffffff", "#e4e4e4", "#888888", "#222222", "#ffa7d1", "#e50000", "#e59500", "#a06a42", "#e5d900", "#94e044",
    "#02be01", "#00d3dd", "#0083c7", "#0000ea", "#cf6ee4", "#820080",
];

#[derive(Debug, Clone)]
pub struct BaselineConfig {
    pub listen: SocketAddr,
    pub width: u32,
    pub height: u32,
    pub batch_ms: u64,
    pub edit_stride: u8,
    /// Frames the broadcast channel buffers; a client further behind is closed with 4000.
    pub channel_capacity: usize,
}

struct Inner {
    /// Last version placed.
    version: u64,
    /// Last version sent in a batch (the canvas is at this version).
    published: u64,
    pending: Vec<u32>,
    /// Every edit ever placed, for `since` (version v is log[v - 1]).
    log: Vec<u32>,
    canvas: Vec<u8>,
    sessions: u64,
}

pub struct AppState {
    cfg: BaselineConfig,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Bytes>,
}

impl AppState {
    pub fn new(cfg: BaselineConfig) -> Arc<Self> {
        let (tx, _) = broadcast::channel(cfg.channel_capacity.max(1));
        let n = cfg.width as usize * cfg.height as usize;
        Arc::new(AppState {
            inner: Mutex::new(Inner {
                version: 0,
                published: 0,
                pending: Vec::new(),
                log: Vec::new(),
                canvas: vec![0; n],
                sessions: 0,
            }),
            cfg,
            tx,
        })
    }
}

/// Serves until the process ends.
pub async fn serve(cfg: BaselineConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await?;
    eprintln!("placecast-baseline listening on {}", listener.local_addr()?);
    serve_on(listener, cfg).await
}

/// Serves on an already bound listener (tests bind port 0 and read the address first).
pub async fn serve_on(listener: TcpListener, cfg: BaselineConfig) -> std::io::Result<()> {
    let state = AppState::new(cfg);
    tokio::spawn(batcher(state.clone()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_conn(stream, state.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn batcher(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.cfg.batch_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut g = state.inner.lock().unwrap();
        if g.pending.is_empty() {
            continue;
        }
        let (from, to) = (g.published, g.version);
        let mut frame = Vec::new();
        batch::encode_batch(from, to, &g.pending, state.cfg.edit_stride, &mut frame);
        let pending = std::mem::take(&mut g.pending);
        for e in &pending {
            let (i, c) = batch::unpack(*e);
            g.canvas[i as usize] = c;
        }
        g.pending = pending;
        g.pending.clear();
        g.published = to;
        // Err only means nobody is subscribed.
        let _ = state.tx.send(Bytes::from(frame));
    }
}

async fn handle_conn(stream: TcpStream, state: Arc<AppState>) {
    let _ = stream.set_nodelay(true);
    // Route on the request line: WebSocket upgrades go to tokio-tungstenite, the rest to HTTP.
    let mut head = [0u8; 8];
    for _ in 0..200 {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= 8 => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    if &head == b"GET /ws?" || &head[..7] == b"GET /ws" && head[7] == b' ' {
        ws_conn(stream, state).await;
    } else {
        http_conn(stream, state).await;
    }
}

fn since_from_query(q: Option<&str>) -> Result<Option<u64>, ()> {
    for kv in q.unwrap_or("").split('&') {
        if let Some(v) = kv.strip_prefix("since=") {
            return v.parse().map(Some).map_err(|_| ());
        }
    }
    Ok(None)
}

// The handshake callback's error type is tungstenite's (an HTTP response), large by design.
#[allow(clippy::result_large_err)]
async fn ws_conn(stream: TcpStream, state: Arc<AppState>) {
    let mut since: Option<u64> = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match since_from_query(req.uri().query()) {
            Ok(s) => {
                since = s;
                Ok(resp)
            }
            Err(()) => {
                let mut e = ErrorResponse::new(Some(
                    r#"{"error":{"code":"bad_since","message":"since must be a number"}}"#.into(),
                ));
                *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
                Err(e)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let (mut sink, mut incoming) = ws.split();
    // Subscribe and read the catch-up under the batcher's lock: no gap, no duplicate.
    let (mut rx, hello_version, catchup) = {
        let g = state.inner.lock().unwrap();
        let rx = state.tx.subscribe();
        let s = g.published;
        let catchup = match since {
            Some(v) if v > g.version => Err(()),
            Some(v) if v <= s => {
                let mut f = Vec::new();
                batch::encode_batch(v, s, &g.log[v as usize..s as usize], state.cfg.edit_stride, &mut f);
                Ok(Some(f))
            }
            _ => Ok(None),
        };
        (rx, s, catchup)
    };
    let hello = format!(r#"{{"type":"hello","version":{hello_version},"cooldown_ms":0,"user":null}}"#);
    if sink.send(Message::text(hello)).await.is_err() {
        return;
    }
    match catchup {
        Err(()) => {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: "since ahead of the server".into(),
                })))
                .await;
            return;
        }
        Ok(Some(f)) => {
            if sink.send(Message::binary(f)).await.is_err() {
                return;
            }
        }
        Ok(None) => {}
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(frame) => {
                    if sink.send(Message::Binary(frame)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code: CloseCode::from(4000), reason: "too slow".into() })))
                        .await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = incoming.next() => match msg {
                // Pings are answered by tungstenite itself; the baseline ignores text messages.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn json_response(status: u16, reason: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_response(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    json_response(status, reason, &format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#), "")
}

async fn http_conn(mut stream: TcpStream, state: Arc<AppState>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let (method, path, body_len, head_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let close = req
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
                    break (req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string(), len, n, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
                _ => {
                    let _ =
                        stream.write_all(&error_response(400, "Bad Request", "bad_request", "malformed request")).await;
                    return;
                }
            }
            let mut tmp = [0u8; 4096];
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        if body_len > 4096 {
            let _ =
                stream.write_all(&error_response(413, "Payload Too Large", "body_too_large", "body over 4 KiB")).await;
            return;
        }
        while buf.len() < head_len + body_len {
            let mut tmp = [0u8; 4096];
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let resp = route(&state, &method, &path, &body);
        if stream.write_all(&resp).await.is_err() || close {
            return;
        }
    }
}

fn route(state: &AppState, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let path_only = path.split('?').next().unwrap_or("");
    match (method, path_only) {
        ("GET", "/api/v1/canvas/info") => {
            let v = state.inner.lock().unwrap().published;
            let palette: Vec<String> = PALETTE.iter().map(|c| format!("\"{c}\"")).collect();
            let b = format!(
                r#"{{"width":{},"height":{},"palette":[{}],"cooldown_ms":0,"version":{v},"edit_stride":{}}}"#,
                state.cfg.width,
                state.cfg.height,
                palette.join(","),
                state.cfg.edit_stride
            );
            json_response(200, "OK", &b, "")
        }
        ("GET", "/api/v1/canvas") => {
            let (v, snap) = {
                let g = state.inner.lock().unwrap();
                (
                    g.published,
                    batch::encode_snapshot(
                        state.cfg.width,
                        state.cfg.height,
                        PALETTE.len() as u8,
                        g.published,
                        &g.canvas,
                    ),
                )
            };
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nX-Canvas-Version: {v}\r\nETag: \"{v}\"\r\nCache-Control: public, max-age=1\r\n\r\n",
                snap.len()
            )
            .into_bytes();
            r.extend_from_slice(&snap);
            r
        }
        ("GET", "/healthz") => {
            let v = state.inner.lock().unwrap().published;
            json_response(200, "OK", &format!(r#"{{"status":"ok","version":{v}}}"#), "")
        }
        ("POST", "/api/v1/session") => {
            let n = {
                let mut g = state.inner.lock().unwrap();
                g.sessions += 1;
                g.sessions
            };
            json_response(
                200,
                "OK",
                &format!(r#"{{"token":"anon-{n}.0.baseline","user":"anon-{n}","expires_at":0}}"#),
                "",
            )
        }
        ("POST", "/api/v1/place") => place(state, body),
        _ => error_response(404, "Not Found", "not_found", "no such endpoint"),
    }
}

#[derive(serde::Deserialize)]
struct Place {
    x: i64,
    y: i64,
    color: i64,
}

fn place(state: &AppState, body: &[u8]) -> Vec<u8> {
    let Ok(p) = serde_json::from_slice::<Place>(body) else {
        return error_response(400, "Bad Request", "bad_json", "body must be {\"x\":..,\"y\":..,\"color\":..}");
    };
    let (w, h) = (state.cfg.width as i64, state.cfg.height as i64);
    if p.x < 0 || p.y < 0 || p.x >= w || p.y >= h {
        return error_response(400, "Bad Request", "bad_coordinates", "pixel outside the canvas");
    }
    if p.color < 0 || p.color >= PALETTE.len() as i64 {
        return error_response(400, "Bad Request", "bad_color", "color outside the palette");
    }
    let edit = batch::pack((p.y * w + p.x) as u32, p.color as u8);
    let v = {
        let mut g = state.inner.lock().unwrap();
        g.version += 1;
        g.pending.push(edit);
        g.log.push(edit);
        g.version
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    json_response(200, "OK", &format!(r#"{{"version":{v},"next_at_ms":{now_ms},"cooldown_ms":0}}"#), "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parsing() {
        assert_eq!(since_from_query(None), Ok(None));
        assert_eq!(since_from_query(Some("since=12")), Ok(Some(12)));
        assert_eq!(since_from_query(Some("token=x&since=3")), Ok(Some(3)));
        assert_eq!(since_from_query(Some("since=abc")), Err(()));
    }

    #[test]
    fn place_then_batch_frame_is_protocol_format() {
        let s = AppState::new(BaselineConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            width: 10,
            height: 10,
            batch_ms: 100,
            edit_stride: 16,
            channel_capacity: 16,
        });
        let r = place(&s, br#"{"x":3,"y":2,"color":5}"#);
        assert!(String::from_utf8_lossy(&r).contains(r#""version":1"#));
        assert!(String::from_utf8_lossy(&place(&s, br#"{"x":30,"y":2,"color":5}"#)).contains("bad_coordinates"));
        let g = s.inner.lock().unwrap();
        let mut f = Vec::new();
        batch::encode_batch(g.published, g.version, &g.pending, 16, &mut f);
        let h = batch::decode_batch(&f).unwrap();
        assert_eq!((h.from, h.to, h.count, h.stride), (0, 1, 1, 16));
        assert_eq!(batch::edits(&f, &h).map(batch::unpack).next(), Some((23, 5)));
    }
}
