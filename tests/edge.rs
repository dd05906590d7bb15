//! The public edge, end to end: the real `placecast` binary behind a real HAProxy (`mode tcp`,
//! PROXY protocol v1 and v2, health checks on /readyz), clients from distinct loopback source
//! addresses (127.0.0.2, 127.0.0.3, ...), per-address limits counted under the client's real
//! address, PROXY header refusals without HAProxy, and a drain that moves a node's clients to
//! another node of a Kafka cluster without any of them missing an edit.
//!
//! Needs /usr/sbin/haproxy (`apt-get install haproxy`); the drain test also needs tansu (see
//! tests/kafka.rs). Run with `cargo test --features kafka --test edge`.

mod common;

use common::haproxy::*;
use common::*;
use std::time::{Duration, Instant};

fn with_limits<'a>(base: &[&'a str], limits: &[&'a str]) -> Vec<&'a str> {
    let mut v = base.to_vec();
    v.extend_from_slice(limits);
    v
}

/// The status and error code a node answers to `raw` from `src`; (0, "closed ...") when it
/// closes without an HTTP answer.
fn answer(src: std::net::Ipv4Addr, dst: std::net::SocketAddr, raw: &[u8]) -> (u16, String) {
    match exchange_from(src, dst, raw) {
        Ok(out) if out.is_empty() => (0, "closed without an answer".into()),
        Ok(out) => {
            let r = parse_response(&out)
                .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&out)));
            let code = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default();
            (r.status, code)
        }
        Err(e) => (0, format!("closed: {e}")),
    }
}

fn body(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

#[test]
fn proxy_v2_through_haproxy_caps_connections_per_real_client_address() {
    let node = start_node(&[
        "--proxy-protocol",
        "v2",
        "--trusted-proxies",
        TRUSTED,
        "--max-conns-per-addr",
        "2",
        "--sessions-per-min",
        "0",
        "--placements-per-addr-per-min",
        "0",
    ]);
    let hp = Haproxy::start(&[node.addr], SendProxy::V2);
    hp.wait_all_up();

    // Two WebSockets from 127.0.0.2 through HAProxy: the node counts them under 127.0.0.2, not
    // under HAProxy's own address.
    let a1 = ws_from(lo(2), hp.addr, "");
    let _a2 = ws_from(lo(2), hp.addr, "");
    wait_for(30, "the node to count both WebSockets", || (node.metric("placecast_ws_connections") == 2).then_some(()));
    // A third connection from 127.0.0.2 through HAProxy is over the cap ...
    let r = http_from(lo(2), hp.addr, "GET", "/api/v1/canvas/info", &[], b"").expect("an answer through haproxy");
    assert_eq!((r.status, r.error_code().as_str()), (429, "too_many_connections_from_address"), "{}", body(&r));
    assert_eq!(r.header("Retry-After"), Some("5"));
    let refused = try_ws_from(lo(2), hp.addr, "").err().expect("a third WebSocket from 127.0.0.2 is refused");
    assert!(refused.contains("429"), "{refused}");
    // ... and so is one straight from 127.0.0.2 (an untrusted source, served as itself): the
    // header's address and the socket's are one and the same client.
    let (status, code) = answer(lo(2), node.addr, &request_bytes(b"", "GET", "/api/v1/canvas/info", &[], b""));
    assert_eq!((status, code.as_str()), (429, "too_many_connections_from_address"));
    // Another address through the same HAProxy still gets in, over HTTP and WebSocket.
    let r = http_from(lo(3), hp.addr, "GET", "/api/v1/canvas/info", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", body(&r));
    let b1 = ws_from(lo(3), hp.addr, "");
    assert_eq!(b1.hello["type"], "hello");
    // HAProxy's own health checks (PROXY v2 LOCAL) never counted against anyone.
    assert_eq!(hp.status(0).0, "UP");
    // When one of 127.0.0.2's connections closes, 127.0.0.2 may connect again.
    drop(a1);
    wait_for(30, "127.0.0.2 to be under its cap again", || {
        let r = http_from(lo(2), hp.addr, "GET", "/api/v1/canvas/info", &[], b"").ok()?;
        (r.status == 200).then_some(())
    });
}

#[test]
fn proxy_v1_through_haproxy_rate_limits_sessions_and_placements_per_real_client_address() {
    let node = start_node(&[
        "--proxy-protocol",
        "v1",
        "--trusted-proxies",
        TRUSTED,
        "--cooldown",
        "60",
        "--max-conns-per-addr",
        "0",
        "--sessions-per-min",
        "2",
        "--placements-per-addr-per-min",
        "2",
    ]);
    let hp = Haproxy::start(&[node.addr], SendProxy::V1);
    hp.wait_all_up();
    let session = |n: u8| http_from(lo(n), hp.addr, "POST", "/api/v1/session", &[], b"").expect("session answer");

    // 127.0.0.2 may create two sessions a minute; the third is refused with a retry hint.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let r = session(2);
        assert_eq!(r.status, 200, "{}", body(&r));
        tokens.push(r.json()["token"].as_str().unwrap().to_string());
    }
    let r = session(2);
    assert_eq!((r.status, r.error_code().as_str()), (429, "session_rate_limited"), "{}", body(&r));
    let retry: u64 = r.header("Retry-After").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let retry_ms = r.json()["error"]["retry_after_ms"].as_u64().or_else(|| r.json()["retry_after_ms"].as_u64());
    assert!(retry_ms.is_some_and(|ms| ms > 0 && ms <= 60_000), "retry_after_ms in {}", body(&r));
    // Straight from 127.0.0.2 (untrusted, so served as itself): the same address, the same bucket.
    let (status, code) = answer(lo(2), node.addr, &request_bytes(b"", "POST", "/api/v1/session", &[], b""));
    assert_eq!((status, code.as_str()), (429, "session_rate_limited"));
    // Another client address through the same HAProxy is not affected.
    let r = session(3);
    assert_eq!(r.status, 200, "{}", body(&r));
    tokens.push(r.json()["token"].as_str().unwrap().to_string());

    // Placements are counted per address over all its users: three users at 127.0.0.4 share
    // two placements a minute; the third user places from 127.0.0.5 instead.
    let place = |n: u8, t: &str, x: u32| {
        let auth = format!("Bearer {t}");
        let body = format!("{{\"x\":{x},\"y\":1,\"color\":3}}");
        http_from(lo(n), hp.addr, "POST", "/api/v1/place", &[("Authorization", &auth)], body.as_bytes()).unwrap()
    };
    for (i, t) in tokens[..2].iter().enumerate() {
        let r = place(4, t, i as u32);
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    let r = place(4, &tokens[2], 2);
    assert_eq!((r.status, r.error_code().as_str()), (429, "address_rate_limited"), "{}", body(&r));
    assert!(r.header("Retry-After").is_some());
    let r = place(5, &tokens[2], 2);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(hp.status(0).0, "UP", "the v1 health checks pass too");
}

#[test]
fn without_haproxy_missing_wrong_or_untrusted_headers_are_refused_and_valid_ones_name_the_client() {
    let trusted = lo(9);
    let healthz = |prefix: &[u8]| request_bytes(prefix, "GET", "/healthz", &[], b"");
    let session = |prefix: &[u8]| request_bytes(prefix, "POST", "/api/v1/session", &[], b"");
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 5.6.7.8 1111 80\r\n").into_bytes();
    let v2 = |ip: &str| proxy_v2_header(format!("{ip}:1111").parse().unwrap(), "5.6.7.8:80".parse().unwrap());

    // v2 required from 127.0.0.9.
    let v2_node =
        start_node(&with_limits(&["--proxy-protocol", "v2", "--trusted-proxies", "127.0.0.9/32"], &NO_LIMITS));
    let to = v2_node.addr;
    assert_eq!(answer(trusted, to, &healthz(b"")), (400, "proxy_header_required".into()), "trusted, no header");
    assert_eq!(answer(trusted, to, &healthz(&v1("1.2.3.4"))), (400, "proxy_version".into()), "v1 where v2 is required");
    assert_eq!(answer(trusted, to, &healthz(&v2("1.2.3.4"))).0, 200, "a valid v2 header from the trusted proxy");
    assert_eq!(answer(lo(1), to, &healthz(b"")).0, 200, "an untrusted source without a header is a direct client");
    assert_eq!(answer(lo(1), to, &healthz(&v2("1.2.3.4"))), (400, "untrusted_proxy".into()), "v2 from untrusted");
    // A WebSocket through a hand-written header works like HTTP.
    {
        let mut s = connect_from(trusted, to).unwrap();
        std::io::Write::write_all(&mut s, &v2("1.2.3.4")).unwrap();
        let w = Ws::over(s, to, "");
        assert_eq!(w.hello["type"], "hello");
    }

    // Any version from 127.0.0.9; one session per minute per address shows whose address counts.
    let any_node = start_node(&[
        "--proxy-protocol",
        "any",
        "--trusted-proxies",
        "127.0.0.9/32",
        "--sessions-per-min",
        "1",
        "--max-conns-per-addr",
        "0",
        "--placements-per-addr-per-min",
        "0",
    ]);
    let to = any_node.addr;
    let untrusted = answer(lo(1), to, &healthz(&v1("1.2.3.4")));
    assert_eq!(untrusted, (400, "untrusted_proxy".into()), "a v1 header from 127.0.0.1, which is not trusted");
    assert_eq!(answer(trusted, to, &healthz(b"")), (400, "proxy_header_required".into()));
    assert_eq!(answer(trusted, to, &session(&v1("1.2.3.4"))).0, 200, "a valid v1 header from the trusted proxy");
    assert_eq!(answer(trusted, to, &session(&v1("1.2.3.4"))), (429, "session_rate_limited".into()), "1.2.3.4 again");
    assert_eq!(answer(trusted, to, &session(&v2("1.2.3.4"))), (429, "session_rate_limited".into()), "v2, 1.2.3.4");
    assert_eq!(answer(trusted, to, &session(&v1("1.2.3.5"))).0, 200, "another claimed client");
    assert_eq!(answer(trusted, to, &session(&v2("1.2.3.6"))).0, 200, "v2 is accepted too");
    assert_eq!(answer(lo(1), to, &session(b"")).0, 200, "the direct client 127.0.0.1 has its own bucket");
    // The header's "unknown" forms mean the connection itself: the proxy's own address.
    assert_eq!(answer(trusted, to, &session(b"PROXY UNKNOWN\r\n")).0, 200, "UNKNOWN counts as 127.0.0.9");
    assert_eq!(answer(trusted, to, &session(b"PROXY UNKNOWN\r\n")), (429, "session_rate_limited".into()));

    // v1 only.
    let v1_node =
        start_node(&with_limits(&["--proxy-protocol", "v1", "--trusted-proxies", "127.0.0.9/32"], &NO_LIMITS));
    let to = v1_node.addr;
    assert_eq!(answer(trusted, to, &healthz(&v1("1.2.3.4"))).0, 200);
    assert_eq!(answer(trusted, to, &healthz(&v2("1.2.3.4"))), (400, "proxy_version".into()), "v2 where v1 is required");
    assert_eq!(answer(trusted, to, &healthz(b"")), (400, "proxy_header_required".into()));
    let (status, _) = answer(trusted, to, &healthz(b"PROXY TCP4 1.2.3.4 nonsense\r\n"));
    assert_eq!(status, 400, "a malformed header");
    // Every node still serves after all that.
    for s in [&v2_node, &any_node, &v1_node] {
        assert_eq!(s.http("GET", "/healthz", &[], b"").status, 200);
    }
}

#[cfg(feature = "kafka")]
mod drain {
    use super::*;
    use common::kafka::{Broker, TOPIC};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    const GRACE_MS: u64 = 300;
    const SPREAD_MS: u64 = 1000;
    const CLIENTS: u8 = 20;

    /// Sets the flag when dropped (also when the test panics), so helper threads stop.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// What one client saw.
    struct Seen {
        at: u64,
        canvas: Vec<u8>,
        /// (when it arrived, after_ms, jitter_ms, the close's reason), one per drain it lived through.
        reconnects: Vec<(Instant, u64, u64, String)>,
    }

    fn reconnect_hint(v: &serde_json::Value) -> (u64, u64) {
        let after = v["after_ms"].as_u64().unwrap_or_else(|| panic!("after_ms in {v}"));
        let jitter = v["jitter_ms"].as_u64().unwrap_or_else(|| panic!("jitter_ms in {v}"));
        (after, jitter)
    }

    /// A client through HAProxy that follows the canvas from version 0, checking contiguity, and
    /// on `reconnect` + 1012 waits as told and reconnects with `since` (through HAProxy again).
    fn client(i: u8, edge: std::net::SocketAddr, target: Arc<AtomicU64>, abort: Arc<AtomicBool>) -> Seen {
        let src = lo(20 + i);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Seen { at: 0, canvas: vec![0u8; 1000 * 1000], reconnects: Vec::new() };
        let mut ws = ws_from(src, edge, "?since=0");
        ws.set_timeout(Duration::from_millis(200));
        while seen.at < target.load(Ordering::SeqCst) {
            assert!(!abort.load(Ordering::SeqCst), "client {i}: the test stopped");
            assert!(Instant::now() < deadline, "client {i} stuck at version {}", seen.at);
            match ws.next() {
                Got::Batch { from, to, edits } => {
                    assert_eq!(from, seen.at, "client {i}: batches must be contiguous: no gap, no duplicate");
                    for (p, c) in edits {
                        seen.canvas[p as usize] = c;
                    }
                    seen.at = to;
                }
                Got::Text(v) if v["type"] == "reconnect" => {
                    let when = Instant::now();
                    let (after, jitter) = reconnect_hint(&v);
                    // The close follows (batches still in flight before it are applied).
                    let reason = loop {
                        assert!(Instant::now() < deadline, "client {i}: no close after reconnect");
                        match ws.next() {
                            Got::Batch { from, to, edits } => {
                                assert_eq!(from, seen.at, "client {i}: contiguous before the close");
                                for (p, c) in edits {
                                    seen.canvas[p as usize] = c;
                                }
                                seen.at = to;
                            }
                            Got::Closed(Some((1012, reason))) => break reason,
                            Got::Timeout => {}
                            other => panic!("client {i}: after reconnect, expected close 1012, got {other:?}"),
                        }
                    };
                    seen.reconnects.push((when, after, jitter, reason));
                    drop(ws);
                    let wait = after + (i as u64 * 7919) % (jitter + 1);
                    std::thread::sleep(Duration::from_millis(wait));
                    ws = loop {
                        assert!(Instant::now() < deadline, "client {i} could not reconnect");
                        match try_ws_from(src, edge, &format!("?since={}", seen.at)) {
                            Ok(w) => break w,
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    };
                    ws.set_timeout(Duration::from_millis(200));
                }
                Got::Text(_) | Got::Timeout => {}
                Got::Resize { .. } => panic!("client {i}: this test does not resize the canvas"),
                Got::Closed(c) => panic!("client {i}: unexpected close {c:?} at version {}", seen.at),
            }
        }
        seen
    }

    #[test]
    fn a_drained_node_leaves_haproxy_and_its_clients_resume_on_the_other_without_missing_an_edit() {
        let broker = Broker::start();
        let kafka = broker.addr();
        let (grace, spread) = (GRACE_MS.to_string(), (SPREAD_MS / 1000).to_string());
        let flags = with_limits(
            &[
                "--kafka-brokers",
                &kafka,
                "--kafka-topic",
                TOPIC,
                "--cooldown",
                "0",
                "--batch-ms",
                "20",
                "--proxy-protocol",
                "v2",
                "--trusted-proxies",
                TRUSTED,
                "--admin-token",
                ADMIN_TOKEN,
                "--drain-grace-ms",
                &grace,
                "--drain-spread-s",
                &spread,
            ],
            &NO_LIMITS,
        );
        let mut a = start_node(&flags);
        let b = start_node(&flags);
        let hp = Haproxy::start(&[a.addr, b.addr], SendProxy::V2);
        hp.wait_all_up();
        for n in [&a, &b] {
            let r = n.http("GET", "/readyz", &[], b"");
            assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ready")), "{}", body(&r));
        }

        // `abort` stops every helper thread if the test fails; `stop` ends the writer.
        let abort = Arc::new(AtomicBool::new(false));
        let _abort_guard = StopOnDrop(abort.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let target = Arc::new(AtomicU64::new(u64::MAX));

        // Twenty clients through HAProxy, round robin: half on each node.
        let before = (hp.sessions_sent(0), hp.sessions_sent(1));
        let sent = || (hp.sessions_sent(0) - before.0, hp.sessions_sent(1) - before.1);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (t, s) = (target.clone(), abort.clone());
                let edge = hp.addr;
                let h = std::thread::Builder::new()
                    .name(format!("client-{i}"))
                    .spawn(move || client(i, edge, t, s))
                    .unwrap();
                // One at a time, so the round robin alternates predictably.
                let deadline = Instant::now() + Duration::from_secs(30);
                while sent().0 + sent().1 != i as u64 + 1 && !h.is_finished() {
                    assert!(Instant::now() < deadline, "client {i} did not connect: {}", hp.summary());
                    std::thread::sleep(Duration::from_millis(20));
                }
                h
            })
            .collect();
        let on_a = sent().0;
        assert_eq!(sent(), (CLIENTS as u64 / 2, CLIENTS as u64 / 2), "round robin");
        wait_for(30, "both nodes to count their clients", || {
            (a.metric("placecast_ws_connections") == on_a && b.metric("placecast_ws_connections") == on_a).then_some(())
        });

        // A writer places through node B the whole time.
        let last = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, last, addr) = (stop.clone(), last.clone(), b.addr);
            let token = b.session();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let r = common::kafka::place_json(addr, &token, i % 1000, i / 1000, (1 + i % 15) as u8);
                    assert_eq!(r.status, 200, "placement through node B: {}", String::from_utf8_lossy(&r.body));
                    last.fetch_max(r.json()["version"].as_u64().unwrap(), Ordering::SeqCst);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        wait_for(30, "some placements", || (last.load(Ordering::SeqCst) >= 20).then_some(()));

        // Drain node A.
        let started = Instant::now();
        let r = a.http("POST", "/api/v1/admin/drain", &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))], b"");
        assert_eq!(r.status, 202, "{}", body(&r));
        let d = r.json();
        assert_eq!(
            (d["draining"].as_bool(), d["grace_ms"].as_u64(), d["spread_ms"].as_u64()),
            (Some(true), Some(GRACE_MS), Some(SPREAD_MS)),
            "{d}"
        );
        let r = a.http("GET", "/readyz", &[], b"");
        assert_eq!((r.status, r.error_code().as_str()), (503, "draining"), "A's /readyz at once: {}", body(&r));
        assert_eq!(a.http("GET", "/healthz", &[], b"").status, 200, "a draining node is alive");
        assert_eq!(b.http("GET", "/readyz", &[], b"").status, 200);

        // HAProxy takes A out; new connections go to B only.
        hp.wait_down(0);
        let (sent_a, sent_b) = (hp.sessions_sent(0), hp.sessions_sent(1));
        for _ in 0..10 {
            let r = http_from(lo(60), hp.addr, "GET", "/readyz", &[], b"").expect("readyz through haproxy");
            assert_eq!(r.status, 200, "only the ready node answers through haproxy: {}", body(&r));
        }
        assert_eq!(hp.sessions_sent(0), sent_a, "no new connection went to the drained node");
        assert!(hp.sessions_sent(1) >= sent_b + 10);

        // A's clients are told to reconnect and closed; A exits once the last one is gone.
        let exited = wait_for(30, "node A to exit", || a.child.try_wait().unwrap());
        let exit_after = started.elapsed();
        assert!(exited.success(), "node A exits cleanly after a drain: {exited}");
        let fallback = Duration::from_millis(GRACE_MS + SPREAD_MS + 5000);
        assert!(
            exit_after < fallback,
            "node A exited {exit_after:?} after the drain began: when its last client left, not at the {fallback:?} fallback"
        );
        wait_for(30, "every client on node B", || {
            (b.metric("placecast_ws_connections") == CLIENTS as u64).then_some(())
        });

        // A few more edits after everyone moved, then every client must reach the last version.
        let moved = last.load(Ordering::SeqCst);
        wait_for(30, "placements after the move", || (last.load(Ordering::SeqCst) >= moved + 10).then_some(()));
        stop.store(true, Ordering::SeqCst);
        writer.join().expect("writer");
        let head = last.load(Ordering::SeqCst);
        target.store(head, Ordering::SeqCst);
        let snap = wait_for(30, "node B's snapshot at the last version", || {
            let s = b.snapshot();
            (s.version == head).then_some(s)
        });
        let seen: Vec<Seen> = clients.into_iter().map(|h| h.join().expect("client thread")).collect();
        let errors = Mutex::new(Vec::new());
        for (i, s) in seen.iter().enumerate() {
            if s.at != head {
                errors.lock().unwrap().push(format!("client {i} ended at {} not {head}", s.at));
            }
            if s.canvas != snap.pixels {
                errors.lock().unwrap().push(format!("client {i}'s canvas differs from node B's"));
            }
        }
        assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());

        // Exactly A's clients were told, once each, with the spec's message and close.
        let told: Vec<&Seen> = seen.iter().filter(|s| !s.reconnects.is_empty()).collect();
        assert_eq!(told.len() as u64, on_a, "every client of A, and only those, was told to reconnect");
        for s in &told {
            let (_, after, jitter, reason) = &s.reconnects[0];
            assert!(*after <= 60_000 && *jitter <= 60_000, "a sane hint: after {after} jitter {jitter}");
            assert!(reason.contains("draining"), "close reason {reason:?}");
        }
        let times: Vec<Instant> = told.iter().map(|s| s.reconnects[0].0).collect();
        let (first, last_close) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        eprintln!(
            "drain: A exited {exit_after:?} after the drain began; {} clients told, first {:?} last {:?} after it; \
             hint {:?}; reconnects per told client {:?}; {head} versions",
            told.len(),
            first - started,
            last_close - started,
            (told[0].reconnects[0].1, told[0].reconnects[0].2),
            told.iter().map(|s| s.reconnects.len()).collect::<Vec<_>>()
        );
        assert!(
            first >= started + Duration::from_millis(GRACE_MS),
            "no client is closed within the grace: the first after {:?}",
            first - started
        );
        assert!(
            last_close - first >= Duration::from_millis(SPREAD_MS * 3 / 10),
            "the closes are spread over --drain-spread-s: {:?} between the first and the last",
            last_close - first
        );
    }
}
