//! Bounds against hostile clients on one node (issue 9): catch-ups rate-limited per address and
//! closed when not taken, tokens checked for their whole life on an open WebSocket, strict
//! request heads, close codes checked, and the allowed origins. The real binary on loopback.

mod common;

use common::{raw_http, Got, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{wait_for, TEST_SECRET as SECRET};

#[test]
fn catch_ups_are_rate_limited_per_address_with_a_retry_hint() {
    let s = Server::start(&["--catchups-per-addr-per-min", "2"]);
    let _a = s.ws("?since=0");
    let _b = s.ws("?since=0");
    // The third is refused before the upgrade: an HTTP answer, no socket for the hub.
    let raw = b"GET /ws?since=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let r = raw_http(s.addr, raw).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (429, "catch_up_rate_limited"));
    assert!(r.header("Retry-After").is_some() && r.json()["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Live clients (no since) are not catch-ups.
    let _live = s.ws("");
    assert_eq!(s.metric("placecast_admission_refused_total{rule=\"catch_ups_per_address\"}"), 1);
}

#[test]
fn a_client_that_does_not_take_its_catch_up_is_closed_and_its_frames_freed() {
    // 64-byte edits so a few thousand make a catch-up far larger than the socket buffers.
    let s = Server::start(&["--cooldown", "0", "--edit-stride", "64", "--catch-up-drain-ms", "500"]);
    let token = s.session();
    let mut w = s.ws(&format!("?token={token}"));
    let n = 4000u32;
    let mut answered = 0;
    let mut sent = 0;
    while answered < n {
        while sent < n && sent - answered < 16 {
            w.send_text(&format!(
                r#"{{"type":"place","x":{},"y":{},"color":1,"id":{sent}}}"#,
                sent % 1000,
                sent / 1000
            ));
            sent += 1;
        }
        match w.next() {
            Got::Text(v) if v["type"] == "placed" => answered += 1,
            Got::Text(v) if v["type"] == "error" => panic!("{v}"),
            Got::Closed(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut stalled: TcpStream = sock.into();
    stalled
        .write_all(b"GET /ws?since=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    wait_for(30, "the stalled catch-up closed", || {
        (s.metric("placecast_closed_catch_up_stalled_total") >= 1).then_some(())
    });
    // A client that reads gets the same catch-up whole.
    let mut fine = s.ws("?since=0");
    let mut canvas = vec![0u8; 1_000_000];
    fine.follow_until(0, n as u64, &mut canvas);
    drop(stalled);
}

#[test]
fn a_token_that_expires_on_an_open_websocket_cannot_place_until_it_authenticates_again() {
    let s = Server::start(&["--cooldown", "0"]);
    let mint = |ttl: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_placecast"))
            .args(["mint-token", "alice", "--ttl", ttl, "--secret", SECRET])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let short = mint("2");
    let mut w = s.ws(&format!("?token={short}"));
    let mut i = 0;
    let code = wait_for(30, "the token to expire", || {
        i += 1;
        w.send_text(&format!(r#"{{"type":"place","x":{i},"y":1,"color":2,"id":{i}}}"#));
        loop {
            match w.next() {
                Got::Text(v) if v["type"] == "placed" => break,
                Got::Text(v) if v["type"] == "error" => return Some(v["code"].as_str().unwrap().to_string()),
                Got::Closed(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert_eq!(code, "expired_token");
    let long = mint("3600");
    w.send_text(&format!(r#"{{"type":"auth","token":"{long}","id":1}}"#));
    assert_eq!(w.next_text("authed")["user"], "alice");
    w.send_text(r#"{"type":"place","x":9,"y":9,"color":3,"id":2}"#);
    assert!(w.next_text("placed")["version"].as_u64().unwrap() > 0);
}

#[test]
fn request_heads_have_one_reading() {
    let s = Server::start(&[]);
    let cases: [(&[u8], u16); 5] = [
        (b"POST /api/v1/session HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST /api/v1/session HTTP/1.1\r\nContent-Length: +0\r\n\r\n", 400),
        (b"POST /api/v1/session HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /api/v1/session HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST /api/v1/session HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    ];
    for (raw, want) in cases {
        let r = raw_http(s.addr, raw).unwrap();
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(raw));
        assert!(!r.error_code().is_empty());
    }
    // `since` has one spelling too.
    for since in ["%2B5", "05", "-1"] {
        let raw = format!("GET /ws?since={since} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
        let r = raw_http(s.addr, raw.as_bytes()).unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (400, "bad_since"), "since={since}");
    }
    // A token with a second spelling of its expiry is refused.
    let token = s.session();
    let mut parts: Vec<&str> = token.split('.').collect();
    let plus = format!("+{}", parts[1]);
    parts[1] = &plus;
    let r = s.place(&parts.join("."), 1, 1, 1);
    assert_eq!((r.status, r.error_code().as_str()), (401, "bad_token"));
}

#[test]
fn an_invalid_close_code_is_answered_with_1002() {
    let s = Server::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    // A masked close frame with code 999 (mask 0: the payload is sent as is).
    c.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe7]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !all.windows(4).any(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xea]) {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => panic!("no 1002 close: {:?}", String::from_utf8_lossy(&all)),
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn only_allowed_origins_open_the_websocket() {
    let s = Server::start(&["--allowed-origins", "https://place.example,https://other.example"]);
    let upgrade = |origin: &str| {
        let raw = format!("GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(raw.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(upgrade("https://place.example").starts_with("HTTP/1.1 101"));
    let refused = upgrade("https://evil.example");
    assert!(refused.starts_with("HTTP/1.1 403") && refused.contains("origin_not_allowed"), "{refused}");
}
