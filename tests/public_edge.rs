//! The public edge on one node, without a balancer (tests/edge.rs has HAProxy in front):
//! readiness and drain, sessions (on, off, proof of work) and their rate, placements per
//! address, the connection cap and descriptor reserve, HTTP idle and write timeouts, the
//! server's ping, and the refusal of placeholder or short secrets. The real binary on loopback.

mod common;

use common::{serve_args, try_http, wait_for, Got, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "edge-admin-token-0123456789abcdefghijklmnop";

fn bearer() -> String {
    format!("Bearer {ADMIN}")
}

fn wait_exit(s: &mut Server, secs: u64) -> std::process::ExitStatus {
    wait_for(secs, "the server to exit", || s.child.try_wait().unwrap())
}

#[test]
fn readyz_is_ready_then_a_drain_closes_clients_with_a_hint_spread_out_and_exits() {
    let mut s = Server::start(&["--admin-token", ADMIN, "--drain-grace-ms", "300", "--drain-spread-s", "2"]);
    // /healthz (what the harness waits for) answers as soon as one shard listens; ready follows
    // once every shard does.
    let r = wait_for(30, "ready", || Some(s.http("GET", "/readyz", &[], b"")).filter(|r| r.status == 200));
    assert_eq!(r.json()["status"].as_str(), Some("ready"));
    let mut clients: Vec<common::Ws> = (0..10).map(|_| s.ws("")).collect();
    let r = s.http("POST", "/api/v1/admin/drain", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (401, "bad_token"));
    let r = s.http("POST", "/api/v1/admin/drain", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!((r.json()["grace_ms"].as_u64(), r.json()["spread_ms"].as_u64()), (Some(300), Some(2000)));
    // At once: not ready, but still alive and answering.
    let r = s.http("GET", "/readyz", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (503, "draining"));
    assert_eq!(s.http("GET", "/healthz", &[], b"").status, 200);
    let mut closed_at = Vec::new();
    for c in clients.iter_mut() {
        c.set_timeout(Duration::from_secs(20));
        let mut hint = None;
        let close = loop {
            match c.next() {
                Got::Text(v) if v["type"] == "reconnect" => hint = Some(v),
                Got::Closed(code) => break code,
                Got::Timeout => panic!("no close within 20 s"),
                _ => {}
            }
        };
        closed_at.push(Instant::now());
        let hint = hint.expect("a reconnect hint before the close");
        assert!(hint["after_ms"].is_u64() && hint["jitter_ms"].as_u64().unwrap() > 0, "{hint}");
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, 1012, "{reason}");
        assert!(reason.contains("since"), "{reason}");
    }
    // Spread over the window, not all at once (the schedule can only be late, never early).
    let first = *closed_at.iter().min().unwrap();
    let last = *closed_at.iter().max().unwrap();
    assert!(last - first >= Duration::from_millis(500), "closes spread over {:?}", last - first);
    let status = wait_exit(&mut s, 30);
    assert!(status.success(), "a drained node exits cleanly: {status}");
}

#[test]
fn sigterm_drains_then_exits() {
    let mut s = Server::start(&["--drain-grace-ms", "200", "--drain-spread-s", "0"]);
    let mut c = s.ws("");
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    c.set_timeout(Duration::from_secs(20));
    let code = wait_for(20, "the 1012 close", || match c.next() {
        Got::Closed(code) => Some(code),
        Got::Timeout => panic!("no close"),
        _ => None,
    });
    assert_eq!(code.map(|c| c.0), Some(1012));
    assert!(wait_exit(&mut s, 30).success());
}

#[test]
fn proof_of_work_sessions() {
    let s = Server::start(&["--anonymous-sessions", "proof", "--pow-difficulty", "10"]);
    let r = s.http("POST", "/api/v1/session", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (400, "proof_required"));
    let c = s.http("GET", "/api/v1/session/challenge", &[], b"").json();
    assert_eq!((c["difficulty"].as_u64(), c["algorithm"].as_str()), (Some(10), Some("sha256-leading-zero-bits")));
    let challenge = c["challenge"].as_str().unwrap();
    let nonce = placecast::pow::solve(challenge, 10);
    // A wrong nonce (the next one rarely also solves it: check before relying on it).
    let wrong = (nonce + 1..)
        .find(|n| placecast::pow::leading_zero_bits(&placecast::pow::proof_hash(challenge, &n.to_string())) < 10)
        .unwrap();
    let body = |n: u64| format!(r#"{{"challenge":"{challenge}","nonce":"{n}"}}"#);
    let r = s.http("POST", "/api/v1/session", &[], body(wrong).as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_proof"));
    let r = s.http("POST", "/api/v1/session", &[], body(nonce).as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(s.place(&token, 1, 1, 3).status, 200, "a proven session places");
    let r = s.http("POST", "/api/v1/session", &[], body(nonce).as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (409, "challenge_used"));
    let forged = challenge.replacen(".10.", ".8.", 1);
    let r = s.http("POST", "/api/v1/session", &[], format!(r#"{{"challenge":"{forged}","nonce":"1"}}"#).as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_proof"), "a challenge with its difficulty lowered");
}

#[test]
fn sessions_off_and_the_session_rate_live_through_the_admin_api() {
    let s = Server::start(&["--anonymous-sessions", "off", "--sessions-per-min", "3", "--admin-token", ADMIN]);
    let r = s.http("POST", "/api/v1/session", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (403, "anonymous_sessions_off"));
    assert_eq!(s.http("GET", "/api/v1/session/challenge", &[], b"").status, 403);
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    let r = s.http("POST", "/api/v1/admin/limits", &h, br#"{"anonymous_sessions":"on"}"#);
    assert_eq!((r.status, r.json()["anonymous_sessions"].as_str()), (200, Some("on")));
    assert_eq!(r.json()["sessions_per_min"].as_u64(), Some(3));
    for _ in 0..3 {
        assert_eq!(s.http("POST", "/api/v1/session", &[], b"").status, 200);
    }
    let r = s.http("POST", "/api/v1/session", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (429, "session_rate_limited"));
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert!(r.json()["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    let r = s.http("POST", "/api/v1/admin/limits", &h, br#"{"sessions_per_min":0}"#);
    assert_eq!(r.status, 200);
    assert_eq!(s.http("POST", "/api/v1/session", &[], b"").status, 200, "0 lifts the limit at once");
    for bad in [&br#"{"pow_difficulty":99}"#[..], br#"{"nope":1}"#, b"[]"] {
        assert_eq!(s.http("POST", "/api/v1/admin/limits", &h, bad).status, 400);
    }
    let v = s.http("GET", "/api/v1/admin/limits", &h, b"").json();
    assert_eq!((v["sessions_per_min"].as_u64(), v["pow_difficulty"].as_u64()), (Some(0), Some(20)));
    assert!(s.metric("placecast_admission_refused_total{rule=\"sessions_per_address\"}") >= 1);
}

#[test]
fn placements_are_limited_per_address_over_http_and_websocket() {
    let s = Server::start(&["--cooldown", "0", "--placements-per-addr-per-min", "3"]);
    let tokens: Vec<String> = (0..4).map(|_| s.session()).collect();
    for (i, t) in tokens.iter().take(3).enumerate() {
        assert_eq!(s.place(t, i as u32, 0, 1).status, 200);
    }
    // A fourth user from the same address: refused, though its own cooldown is free.
    let r = s.place(&tokens[3], 9, 9, 1);
    assert_eq!((r.status, r.error_code().as_str()), (429, "address_rate_limited"));
    assert!(r.header("Retry-After").is_some());
    let mut ws = s.ws(&format!("?token={}", tokens[3]));
    ws.send_text(r#"{"type":"place","id":7,"x":5,"y":5,"color":2}"#);
    let e = ws.next_text("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("address_rate_limited"), Some(7)));
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(s.metric("placecast_placements_rejected_total{reason=\"address\"}"), 2);
}

#[test]
fn connections_are_capped_per_address() {
    let s = Server::start(&["--max-conns-per-addr", "2"]);
    let a = TcpStream::connect(s.addr).unwrap();
    let _ws = s.ws("");
    let r = try_http(s.addr, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (429, "too_many_connections_from_address"));
    assert_eq!(r.header("Retry-After"), Some("5"));
    drop(a);
    wait_for(20, "a freed connection slot", || {
        try_http(s.addr, "GET", "/healthz", &[], b"").ok().filter(|r| r.status == 200)
    });
}

/// Starts a server whose open-file limit is `nofile` (soft and hard), so the descriptor budget
/// is small enough to fill from a test.
fn start_with_nofile(nofile: u64, extra: &[&str]) -> Server {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = serve_args(dir.path(), port, extra);
    let mut cmd = Command::new(common::bin());
    cmd.args(&args).env("RUST_LOG", "warn");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut s = Server { addr, child, dir: dir.path().to_path_buf(), args, _tmp: Some(dir) };
    s.wait_ready();
    s
}

#[test]
fn the_descriptor_reserve_keeps_health_metrics_and_admin_answering() {
    // 400 descriptors, 2 shards: hard budget 400 - 96 = 304 connections, soft 304 - 150 = 154.
    let s = start_with_nofile(400, &["--fd-reserve", "150", "--admin-token", ADMIN]);
    let mut hold = Vec::new();
    for _ in 0..160 {
        hold.push(TcpStream::connect(s.addr).unwrap());
    }
    // Past the soft budget: the public routes are refused, the operator's answer.
    wait_for(20, "the public routes refused", || {
        let r = try_http(s.addr, "GET", "/api/v1/canvas/info", &[], b"").ok()?;
        (r.status == 503 && r.error_code() == "server_busy").then_some(())
    });
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(s.http("GET", path, &[], b"").status, 200, "{path}");
    }
    let auth = bearer();
    assert_eq!(s.http("GET", "/api/v1/admin/limits", &[("Authorization", &auth)], b"").status, 200);
    // Past the hard budget a connection is closed at once, unanswered; the process keeps
    // accepting, and serves again when descriptors come back.
    for _ in 0..200 {
        hold.push(TcpStream::connect(s.addr).unwrap());
    }
    wait_for(20, "connections past the budget closed unanswered", || {
        try_http(s.addr, "GET", "/healthz", &[], b"").is_err().then_some(())
    });
    drop(hold);
    wait_for(30, "the budget given back", || {
        try_http(s.addr, "GET", "/api/v1/canvas/info", &[], b"").ok().filter(|r| r.status == 200)
    });
    assert!(s.metric("placecast_admission_refused_total{rule=\"descriptor_budget\"}") > 0);
}

#[test]
fn idle_keep_alive_connections_and_unread_answers_time_out() {
    let s = Server::start(&[
        "--idle-timeout-ms",
        "300",
        "--write-timeout-ms",
        "300",
        "--width",
        "4000",
        "--height",
        "4000",
    ]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer, then (idle) the server's close: read returns 0.
    loop {
        let n = c.read(&mut buf).expect("closed by the server, not by our read timeout");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        got.windows(9).filter(|w| w == b"HTTP/1.1 ").count(),
        1,
        "closed silently, no 408: {}",
        String::from_utf8_lossy(&got)
    );

    // A client that asks for the 8 MB snapshot and never reads: abandoned, not held.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut slow: TcpStream = sock.into();
    slow.write_all(b"GET /api/v1/canvas HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_for(30, "the write timeout", || (s.metric("placecast_http_write_timeouts_total") >= 1).then_some(()));
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut total = 0usize;
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 8_000_000, "the abandoned answer was cut short ({total} bytes)");
}

/// A WebSocket handshake by hand, so the client can stay silent (tungstenite answers pings).
fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    c
}

/// Whether `stream` holds a close frame with code 4002 (opcode 0x88, a length, then 0x0fa2).
fn closed_4002(stream: &[u8]) -> bool {
    stream.windows(4).any(|w| w[0] == 0x88 && w[2..4] == [0x0f, 0xa2])
}

#[test]
fn silent_websockets_are_pinged_and_closed_when_they_do_not_answer() {
    let s = Server::start(&["--ws-ping-secs", "1"]);
    let mut silent = raw_ws(s.addr);
    let mut polite = s.ws("");
    polite.set_timeout(Duration::from_millis(200));
    // The polite client (tungstenite answers every ping) sees pings and stays.
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pings < 3 {
        assert!(Instant::now() < deadline, "no pings");
        match polite.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the answering client was closed: {e}"),
        }
    }
    // The silent one: its stream holds the hello, pings, then a close with 4002.
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
        if closed_4002(&all) {
            break;
        }
    }
    assert!(all.windows(2).any(|w| w == [0x89, 0x00]), "pinged");
    assert!(closed_4002(&all), "closed with 4002");
    assert!(s.metric("placecast_closed_ping_timeout_total") >= 1);
    polite.send_text(r#"{"type":"nope"}"#);
    polite.set_timeout(Duration::from_secs(10));
    assert_eq!(polite.next_text("error")["code"], "unknown_type", "the answering client is still served");
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_placecast")).args(args).envs(env.iter().copied()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn placeholder_short_and_missing_secrets_are_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut a = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", d];
        a.extend_from_slice(extra);
        run(&a, &[])
    };
    let (code, text) = serve(&["--secret", "change-me"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--secret") && text.contains("openssl rand"), "{text}");
    let (code, text) = serve(&["--admin-token", "change-me-too"]);
    assert_eq!(code, 2);
    assert!(text.contains("--admin-token"), "{text}");
    let (code, text) = serve(&["--secret", "0123456789abcdef0123"]);
    assert_eq!(code, 2);
    assert!(text.contains("32"), "{text}");
    let (code, text) = serve(&["--kafka-brokers", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(text.contains("--secret"), "a cluster node never invents a secret: {text}");
    let (code, text) = run(&["mint-token", "alice", "--secret", "short"], &[]);
    assert_eq!(code, 2, "{text}");
    // The shipped environment file's placeholders are refused as they are.
    let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/placecast.env")).unwrap();
    let vars: Vec<(String, String)> = env
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    assert!(!vars.is_empty());
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, text) = run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d], &env);
    assert_eq!(code, 2, "the shipped placeholders start nothing: {text}");
}

#[test]
fn a_malformed_secret_file_stops_the_start_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "half-written\n").unwrap();
    let (code, text) = run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(path.to_str().unwrap()), "names the file: {text}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "half-written\n", "never silently replaced");
}

#[test]
fn a_generated_secret_is_private_and_survives_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut s = Server::start_in(dir.path(), port, &[]);
    // The harness passes --secret; start one without, by hand.
    s.kill9();
    let d = dir.path().to_str().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_placecast"))
        .args(["serve", "--listen", &listen, "--data-dir", d, "--sessions-per-min", "0"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let addr = listen.parse().unwrap();
    let token = wait_for(30, "the node", || {
        let r = try_http(addr, "POST", "/api/v1/session", &[], b"").ok()?;
        (r.status == 200).then(|| r.json()["token"].as_str().unwrap().to_string())
    });
    let path = dir.path().join("secret");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read_to_string(&path).unwrap();
    assert_eq!(secret.trim().len(), 64);
    let _ = child.kill();
    let _ = child.wait();
    let mut child = Command::new(env!("CARGO_BIN_EXE_placecast"))
        .args(["serve", "--listen", &listen, "--data-dir", d])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let body = br#"{"x":1,"y":1,"color":1}"#;
    let auth = format!("Bearer {token}");
    let r = wait_for(30, "the restarted node", || {
        try_http(addr, "POST", "/api/v1/place", &[("Authorization", &auth)], body).ok()
    });
    assert_eq!(r.status, 200, "a token from before the restart still works");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn check_config_prints_sources_masks_secrets_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "cooldown = 42\n").unwrap();
    let d = dir.path().to_str().unwrap();
    let good = "good-secret-0123456789abcdefghijklmnopqr";
    let (code, text) = run(&["check-config", "--config", f.to_str().unwrap(), "--data-dir", d, "--secret", good], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cooldown") && text.contains("42") && text.contains("[config file]"), "{text}");
    assert!(!text.contains(good) && text.contains("masked"), "secrets masked: {text}");
    assert!(text.contains("configuration OK"));
    let (code, text) = run(
        &["check-config", "--data-dir", d, "--secret", "change-me", "--batch-ms", "0", "--proxy-protocol", "v2"],
        &[],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("3 problem(s)"), "{text}");
    assert!(text.contains("--batch-ms") && text.contains("--secret") && text.contains("--trusted-proxies"), "{text}");
}

/// The systemd notify protocol, as systemd would see it: a datagram socket in NOTIFY_SOCKET.
#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = common::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_placecast"))
        .args(serve_args(&data, port, &["--drain-grace-ms", "100", "--drain-spread-s", "0"]))
        .env("NOTIFY_SOCKET", &sock_path)
        // A 3 s watchdog: the server feeds it at least every second.
        .env("WATCHDOG_USEC", "3000000")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut heard: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut listen_until = |heard: &mut Vec<String>, what: &str, want: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !want(heard) {
            assert!(Instant::now() < deadline, "systemd never heard {what}; heard {heard:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                heard.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
            }
        }
    };
    listen_until(&mut heard, "READY=1", &|h| h.iter().any(|l| l == "READY=1"));
    // Ready only once serving: the node answers at once.
    assert_eq!(try_http(addr, "GET", "/readyz", &[], b"").unwrap().status, 200);
    listen_until(&mut heard, "STATUS and two WATCHDOG=1", &|h| {
        h.iter().any(|l| l.starts_with("STATUS=serving: version 0"))
            && h.iter().filter(|l| *l == "WATCHDOG=1").count() >= 2
    });
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    listen_until(&mut heard, "STOPPING=1", &|h| h.iter().any(|l| l == "STOPPING=1"));
    let status = wait_for(30, "the exit", || child.try_wait().unwrap());
    assert!(status.success());
}
