//! End-to-end tests of the Kafka edit log: real `placecast` nodes on loopback sharing one topic
//! on a real Kafka-protocol broker (tansu, started here on a free loopback port with its own
//! sqlite file). Every broker and node is killed by its own PID when the test ends.
//!
//! Needs `tansu` on PATH or in ~/.cargo/bin: `cargo install tansu --locked --features libsql`
//! (scripts/install-tansu.sh). Run with `cargo test --features kafka --test kafka`.
#![cfg(feature = "kafka")]

mod common;

use common::kafka::*;
use common::*;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn three_nodes_agree_one_pixel_per_cooldown_and_a_fourth_matches() {
    let broker = Broker::start();
    let flags = ["--cooldown", "60", "--batch-ms", "20", "--admin-token", "admin-secret-1-0123456789abcdefghijklmnop"];
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&broker, &flags)).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.s().addr).collect();

    // 60 users, each placing once through one of the nodes, all at once.
    let users: Vec<String> = (0..60).map(|i| nodes[i % 3].s().session()).collect();
    let handles: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (addr, t) = (addrs[i % 3], t.clone());
            std::thread::spawn(move || place_json(addr, &t, i as u32, 7, (i % 15 + 1) as u8).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "every first placement succeeds: {statuses:?}");

    // Ten fresh users, each placing through all three nodes at the same instant: exactly one
    // success each, the others 429 cooldown.
    let racers: Vec<String> = (0..10).map(|_| nodes[0].s().session()).collect();
    let mut successes_per_user = Vec::new();
    for (u, t) in racers.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(3));
        let hs: Vec<_> = (0..3)
            .map(|n| {
                let (addr, t, b) = (addrs[n], t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    let r = place_json(addr, &t, 100 + u as u32, 200 + n as u32, (n + 1) as u8);
                    (r.status, r.error_code())
                })
            })
            .collect();
        let answers: Vec<(u16, String)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        for (status, code) in &answers {
            assert!(*status == 200 || (*status == 429 && code == "cooldown"), "unexpected answer {status} {code}");
        }
        successes_per_user.push(answers.iter().filter(|a| a.0 == 200).count());
    }
    assert_eq!(successes_per_user, vec![1; 10], "one pixel per cooldown per user, across nodes");

    let snaps = converged(&nodes.iter().collect::<Vec<_>>(), 70);
    for s in &snaps[1..] {
        assert_eq!(s.version, snaps[0].version);
        assert!(s.pixels == snaps[0].pixels, "all canvases are byte-identical");
    }
    // Exactly one of each racer's three pixels is on the canvas.
    for u in 0..10u32 {
        let set = (0..3u32).filter(|n| snaps[0].pixels[((200 + n) * 1000 + 100 + u) as usize] != 0).count();
        assert_eq!(set, 1, "racer {u}");
    }
    let rejected: Vec<u64> = nodes.iter().map(|n| n.s().metric("placecast_rejected_in_log_order")).collect();
    assert!(rejected.iter().all(|&r| r == rejected[0]), "nodes agree on the rejected edits: {rejected:?}");

    // A node started afterwards replays the topic to the same canvas.
    let fourth = Node::start(&broker, &flags);
    let all = [&nodes[0], &nodes[1], &nodes[2], &fourth];
    let snaps = converged(&all, snaps[0].version);
    assert!(snaps.iter().all(|s| s.pixels == snaps[0].pixels && s.version == snaps[0].version));
    assert_eq!(fourth.s().metric("placecast_rejected_in_log_order"), rejected[0]);
}

const ADMIN: &str = "admin-secret-1-0123456789abcdefghijklmnop";

fn admin(n: &Node, action: &str, body: &str) -> u64 {
    let auth = format!("Bearer {ADMIN}");
    let r = n.s().http("POST", &format!("/api/v1/admin/{action}"), &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(r.status, 200, "{action}: {}", String::from_utf8_lossy(&r.body));
    r.json()["version"].as_u64().unwrap()
}

fn audit(n: &Node) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN}");
    n.s().http("GET", "/api/v1/admin/audit", &[("Authorization", &auth)], b"").json()
}

/// Waits until every node's `/api/v1/canvas/info` shows `key` = `value` (applied there).
fn seen_everywhere(nodes: &[Node], key: &str, value: serde_json::Value) {
    for n in nodes {
        wait_for(30, &format!("{key} = {value} on every node"), || {
            (n.s().http("GET", "/api/v1/canvas/info", &[], b"").json()[key] == value).then_some(())
        });
    }
}

fn answer(n: &Node, token: &str, x: u32) -> (u16, String) {
    let r = place_json(n.s().addr, token, x, 9, 3);
    (r.status, if r.status == 200 { String::new() } else { r.error_code() })
}

#[test]
fn control_entries_apply_at_one_version_on_every_node_a_late_one_and_a_restarted_one() {
    let broker = Broker::start();
    let flags = ["--cooldown", "60", "--batch-ms", "20", "--checkpoint-secs", "1", "--admin-token", ADMIN];
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&broker, &flags)).collect();
    let mint = |u: &str| placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint(u, 0).unwrap();
    let (alice, bob) = (mint("alice"), mint("bob"));
    assert_eq!(answer(&nodes[0], &alice, 0).0, 200);
    // The cooldown is an entry of the log now, so a cluster changes it live, everywhere.
    assert_eq!(answer(&nodes[1], &alice, 1), (429, "cooldown".into()));
    admin(&nodes[1], "cooldown", r#"{"seconds":0}"#);
    for n in &nodes {
        wait_for(30, "the new cooldown on every node", || {
            (n.s().http("GET", "/api/v1/canvas/info", &[], b"").json()["cooldown_ms"] == 0).then_some(())
        });
    }
    assert_eq!(answer(&nodes[2], &alice, 2).0, 200);
    assert_eq!(answer(&nodes[0], &bob, 3).0, 200);

    // Pause through one node: refused through every other, from the entry's version on (the
    // log-order rule decides, so a node that has not applied it yet refuses too).
    admin(&nodes[2], "pause", "");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(answer(n, &bob, 10 + i as u32), (423, "paused".into()), "node {i}");
    }
    admin(&nodes[0], "resume", "");
    // A node's early refusal reads the switches it has applied: wait until node 1 has it.
    seen_everywhere(&nodes, "paused", serde_json::json!(false));
    assert_eq!(answer(&nodes[1], &bob, 13).0, 200);
    // A ban through one node holds on all.
    let ban = admin(&nodes[1], "ban", r#"{"user":"alice"}"#);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(answer(n, &alice, 20 + i as u32), (403, "banned".into()), "node {i}");
        assert_eq!(answer(n, &bob, 30 + i as u32).0, 200, "node {i}");
    }
    // A protected area, through one node, holds on all; then lifted.
    admin(&nodes[0], "protect", r#"{"x":70,"y":9,"w":3,"h":1}"#);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(answer(n, &bob, 70 + i as u32), (403, "protected".into()), "node {i}");
    }
    admin(&nodes[2], "unprotect", r#"{"x":70,"y":9,"w":3,"h":1}"#);
    seen_everywhere(&nodes, "protected", serde_json::json!([]));
    assert_eq!(answer(&nodes[1], &bob, 71).0, 200);
    // A fill through one node, then a restore to the version before it through another: the
    // rectangle is back to the canvas at that version, on every node.
    let before_fill = nodes[0].version();
    admin(&nodes[1], "fill", r#"{"x":80,"y":8,"w":4,"h":3,"color":7}"#);
    let fill_seen = |n: &Node| n.s().snapshot().pixels[9 * 1000 + 81] == 7;
    wait_for(30, "the fill on every node", || nodes.iter().all(fill_seen).then_some(()));
    let restored = admin(&nodes[2], "restore", &format!(r#"{{"x":80,"y":8,"w":4,"h":3,"version":{before_fill}}}"#));
    let snaps = converged(&nodes.iter().collect::<Vec<_>>(), restored);
    let r = nodes[0].s().http("GET", &format!("/api/v1/canvas?at={before_fill}"), &[], b"");
    let then = placecast::protocol::parse_snapshot(&r.body).unwrap().pixels;
    for y in 8..11 {
        for x in 80..84 {
            assert!(
                snaps.iter().all(|s| s.pixels[y * 1000 + x] == then[y * 1000 + x]),
                "({x},{y}) restored everywhere"
            );
        }
    }
    // The canvas grows through one node: every node applies it at its version, then pixels in
    // the new columns are placed through every node.
    let grown = admin(&nodes[1], "resize", r#"{"width":1200,"height":1000}"#);
    seen_everywhere(&nodes, "width", serde_json::json!(1200));
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(answer(n, &bob, 1100 + i as u32).0, 200, "node {i}");
    }
    let snaps = converged(&nodes.iter().collect::<Vec<_>>(), grown + 3);
    for s in &snaps {
        assert_eq!(
            (s.width, s.height, s.pixels[9 * 1200 + 1101], s.pixels[9 * 1200 + 81]),
            (1200, 1000, 3, then[9 * 1000 + 81])
        );
    }
    let r = nodes[2].s().http("GET", &format!("/api/v1/canvas?at={}", grown - 1), &[], b"");
    assert_eq!(placecast::protocol::parse_snapshot(&r.body).unwrap().width, 1000, "the past keeps its size");
    // The end of the event, then the canvas is final everywhere.
    let end = admin(&nodes[0], "end", &format!(r#"{{"at_ms":{}}}"#, placecast::now_ms()));
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(answer(n, &bob, 40 + i as u32), (410, "ended".into()), "node {i}");
    }
    let head = nodes[0].version().max(end);
    let all: Vec<&Node> = nodes.iter().collect();
    let snaps = converged(&all, head);
    assert!(snaps.iter().all(|s| s.pixels == snaps[0].pixels), "byte-identical canvases");
    let audits: Vec<serde_json::Value> = nodes.iter().map(|n| audit(n)["entries"].clone()).collect();
    assert!(audits.iter().all(|a| *a == audits[0]), "one audit list: {audits:?}");
    let actions: Vec<&str> = audits[0].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["end", "resize", "restore", "fill", "unprotect", "protect", "ban", "resume", "pause", "cooldown"]
    );
    assert_eq!(audits[0][6]["version"].as_u64(), Some(ban));
    assert_eq!((audits[0][1]["width"].as_u64(), audits[0][1]["version"].as_u64()), (Some(1200), Some(grown)));

    // The final canvas: one version and one hash on every node, once the end has passed.
    let finals: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            wait_for(30, "the final canvas", || {
                let r = n.s().http("GET", "/api/v1/canvas/final", &[], b"");
                (r.status == 200).then(|| r.json())
            })
        })
        .collect();
    assert!(finals.iter().all(|f| *f == finals[0]), "one final canvas: {finals:?}");
    assert!(finals[0]["version"].as_u64().unwrap() < end, "the final version is the last edit before the end");

    // A late node replays the topic to the same switches, audit and canvas.
    let late = Node::start(&broker, &flags);
    let snaps = converged(&[&nodes[0], &late], head);
    assert!(snaps[1].pixels == snaps[0].pixels && snaps[1].width == 1200, "the late node grew the canvas too");
    assert_eq!(audit(&late)["entries"], audits[0]);
    assert_eq!(late.s().http("GET", "/api/v1/canvas/final", &[], b"").json(), finals[0]);
    assert_eq!(answer(&late, &bob, 50), (410, "ended".into()));

    // A node restarted from its checkpoint (written after the last entry) has them too.
    wait_for(30, "a checkpoint past the end entry", || {
        let cp = placecast::checkpoint::Checkpoint::load(nodes[1].dir.path()).ok().flatten()?;
        (cp.version >= end).then_some(())
    });
    nodes[1].server.take();
    nodes[1].restart();
    let snaps = converged(&[&nodes[0], &nodes[1]], head);
    assert!(snaps[1].pixels == snaps[0].pixels && snaps[1].width == 1200, "a grown canvas from the checkpoint");
    assert_eq!(audit(&nodes[1])["entries"], audits[0]);
    assert_eq!(nodes[1].s().http("GET", "/api/v1/canvas/final", &[], b"").json(), finals[0], "from the checkpoint");
    let lift = placecast::now_ms() + 3_600_000;
    admin(&nodes[1], "end", &format!(r#"{{"at_ms":{lift}}}"#));
    assert_eq!(answer(&nodes[1], &alice, 60), (403, "banned".into()), "the ban came back from the checkpoint");
    assert_eq!(answer(&nodes[1], &bob, 61).0, 200);
}

#[test]
fn a_node_killed_mid_stream_restarts_from_its_checkpoint_and_catches_up() {
    let broker = Broker::start();
    let flags = ["--cooldown", "0", "--batch-ms", "20", "--checkpoint-secs", "1"];
    let a = Node::start(&broker, &flags);
    let mut b = Node::start(&broker, &flags);
    let t = a.s().session();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [a.s().addr, b.s().addr]
        .into_iter()
        .enumerate()
        .map(|(w, addr)| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ok = 0u32;
                for i in 0..100_000u32 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    match try_http(
                        addr,
                        "POST",
                        "/api/v1/place",
                        &[("Authorization", &format!("Bearer {t}"))],
                        format!(
                            "{{\"x\":{},\"y\":{},\"color\":{}}}",
                            i % 1000,
                            w * 100 + (i / 1000) as usize,
                            1 + (i % 15)
                        )
                        .as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => ok += 1,
                        _ if w == 1 => std::thread::sleep(Duration::from_millis(20)), // node b is down for a while
                        Ok(r) => panic!(
                            "placement through the live node failed: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ),
                        Err(e) => panic!("placement through the live node failed: {e}"),
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(b.dir.path().join("checkpoint.bin").exists(), "node b wrote a checkpoint");
    b.server.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(1500));
    b.restart();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let placed: Vec<u32> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(placed[0] > 20, "placements went through the live node: {placed:?}");
    let head = a.version();
    let snaps = converged(&[&a, &b], head);
    assert!(snaps[0].pixels == snaps[1].pixels, "the restarted node matches");
    // A clean stop writes a checkpoint at the node's version; the next start uses it.
    let before = b.version();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(b.s().child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.server.as_mut().unwrap().child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cp = placecast::checkpoint::Checkpoint::load(b.dir.path()).unwrap().expect("checkpoint written on SIGTERM");
    assert!(cp.version >= before, "checkpoint at {} covers version {before}", cp.version);
    b.restart();
    let snaps = converged(&[&a, &b], head);
    assert!(snaps[0].pixels == snaps[1].pixels);
}

#[test]
fn broker_outage_gives_503_and_tailing_resumes_without_gap() {
    let mut broker = Broker::start();
    let node = Node::start(&broker, &["--cooldown", "0", "--batch-ms", "20", "--kafka-timeout-ms", "2000"]);
    let s = node.s();
    let t = s.session();
    let mut client = s.ws("?since=0");
    let mut canvas = vec![0u8; 1000 * 1000];
    for i in 0..5 {
        assert_eq!(place_json(s.addr, &t, i, 0, 3).status, 200);
    }
    let mut at = client.follow_until(0, 5, &mut canvas);

    broker.kill();
    let started = Instant::now();
    let r = place_json(s.addr, &t, 9, 9, 9);
    assert_eq!((r.status, r.error_code().as_str()), (503, "log_unavailable"), "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("Retry-After").is_some());
    assert!(started.elapsed() < Duration::from_secs(10), "the 503 comes within the Kafka timeout");
    client.set_timeout(Duration::from_millis(300));
    assert!(matches!(client.next(), Got::Timeout), "the client stays connected during the outage");

    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = 0;
    let mut ok = 0;
    while ok < 20 {
        assert!(Instant::now() < deadline, "placements did not succeed again after the broker came back");
        let r = place_json(s.addr, &t, 10 + ok, 1, 4);
        match r.status {
            200 => {
                last = r.json()["version"].as_u64().unwrap();
                ok += 1;
            }
            503 => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    client.set_timeout(Duration::from_secs(10));
    at = client.follow_until(at, last, &mut canvas);
    assert_eq!(at, last);
    let snap = converged(&[&node], last);
    assert!(snap[0].pixels == canvas, "the client that stayed connected has the canvas");
}

#[test]
fn missing_topic_or_wrong_broker_fails_fast_with_a_clear_error() {
    let broker = Broker::start();
    let run = |brokers: &str, topic: &str| {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_placecast"))
            .args(common::serve_args(
                dir.path(),
                free_port(),
                &[
                    "--drain-grace-ms",
                    "0",
                    "--kafka-brokers",
                    brokers,
                    "--kafka-topic",
                    topic,
                    "--kafka-timeout-ms",
                    "3000",
                ],
            ))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("placecast hung at start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&broker.addr(), "no-such-topic");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("topic \"no-such-topic\" does not exist"), "{err}");
    let (code, err) = run(&format!("127.0.0.1:{}", free_port()), TOPIC);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Kafka"), "{err}");
}

/// Who placed a pixel, on a cluster: every node answers the same names, versions and canvases of
/// the past (the index and the user directory are built from the topic), including a node that
/// joins late and one restarted after a SIGKILL.
#[test]
fn two_nodes_answer_pixel_lookups_and_the_past_identically_and_a_late_node_too() {
    let broker = Broker::start();
    let flags = ["--cooldown", "0", "--batch-ms", "20", "--keyframe-every", "4096"];
    let mut a = Node::start(&broker, &flags);
    let b = Node::start(&broker, &flags);
    let mint = |u: &str| placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint(u, 0).unwrap();
    let (alice, bob, carol) = (mint("alice"), mint("bob"), mint("carol"));
    // Alice and Carol only ever talk to node A, Bob only to node B.
    for (addr, t, c) in [(a.s().addr, &alice, 1), (b.s().addr, &bob, 2), (a.s().addr, &carol, 3), (b.s().addr, &bob, 4)]
    {
        assert_eq!(place_json(addr, t, 9, 9, c).status, 200);
    }
    let lookup = |n: &Node| n.s().http("GET", "/api/v1/pixel?x=9&y=9&history=10", &[], b"").json();
    let want: Vec<(String, u64)> =
        [("bob", 4), ("carol", 3), ("bob", 2), ("alice", 1)].map(|(u, c)| (u.to_string(), c)).to_vec();
    let names = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["user"].as_str().unwrap_or("?").to_string(), e["color"].as_u64().unwrap()))
            .collect()
    };
    let first = wait_for(30, "node A's lookup", || Some(lookup(&a)).filter(|v| names(v) == want));
    wait_for(30, "node B's lookup", || (lookup(&b) == first).then_some(()));
    let past = |n: &Node, v: u64| n.s().http("GET", &format!("/api/v1/canvas?at={v}"), &[], b"").body;
    for v in 1..=4 {
        assert_eq!(past(&a, v), past(&b, v), "the canvas at {v}");
    }
    // A node that joins now reads everything, names included, from the topic.
    let late = Node::start(&broker, &flags);
    wait_for(30, "the late node's lookup", || (lookup(&late) == first).then_some(()));
    assert_eq!(past(&late, 3), past(&a, 3));
    // A SIGKILL and restart: the node's directory and index survive (or are read again).
    a.server.as_mut().unwrap().kill9();
    a.restart();
    wait_for(30, "node A after a restart", || (lookup(&a) == first).then_some(()));
}

#[test]
fn a_claim_class_travels_with_the_edit_and_every_node_judges_it_alike() {
    let broker = Broker::start();
    let flags = ["--cooldown", "3600", "--batch-ms", "20", "--claim-cooldown", "verified=0"];
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&broker, &flags)).collect();
    let signer = placecast::token::Signer::new(TEST_SECRET.as_bytes());
    let verified = signer.mint_with_claims("vera", 0, &["verified".into()]).unwrap();
    let plain = signer.mint("paul", 0).unwrap();
    // Vera (no cooldown) places through both nodes; Paul's second placement, through the other
    // node, is refused by the log-order rule there.
    assert_eq!(answer(&nodes[0], &verified, 1).0, 200);
    assert_eq!(answer(&nodes[1], &verified, 2).0, 200);
    assert_eq!(answer(&nodes[1], &verified, 3).0, 200);
    assert_eq!(answer(&nodes[0], &plain, 4).0, 200);
    assert_eq!(answer(&nodes[1], &plain, 5), (429, "cooldown".into()));
    let head = nodes[0].version().max(nodes[1].version());
    let snaps = converged(&nodes.iter().collect::<Vec<_>>(), head);
    assert!(snaps[0].pixels == snaps[1].pixels);
    let row: Vec<u8> = (1..6).map(|x| snaps[0].pixels[9 * 1000 + x]).collect();
    assert_eq!(row, [3, 3, 3, 3, 0], "Vera's three and Paul's first are on the canvas");
}

#[test]
fn a_node_with_an_empty_data_directory_joins_from_a_published_checkpoint_and_replays_only_the_tail() {
    let broker = Broker::start();
    let cp_topic = format!("{TOPIC}-checkpoints");
    broker.create_topic(&cp_topic);
    let flags = ["--cooldown", "0", "--batch-ms", "20", "--checkpoint-secs", "1", "--publish-checkpoint-secs", "1"];
    let a = Node::start(&broker, &flags);
    let mint = |u: &str| placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint(u, 0).unwrap();
    for i in 0..200u32 {
        let r = place_json(a.s().addr, &mint(&format!("u{}", i % 20)), i % 1000, i / 1000, (i % 15 + 1) as u8);
        assert_eq!(r.status, 200);
    }
    // Node a publishes its checkpoint; read it as a joining node will.
    let settings = placecast::edit_log::kafka::KafkaSettings {
        brokers: broker.addr(),
        topic: TOPIC.into(),
        timeout_ms: 5000,
        linger_ms: 1,
    };
    let published = wait_for(60, "a published checkpoint of the first 200 edits", || {
        let (v, _) = placecast::edit_log::published::fetch_newest(&settings, &cp_topic).ok().flatten()?;
        (v >= 200).then_some(v)
    });
    // The tail after it.
    for i in 0..50u32 {
        assert_eq!(place_json(a.s().addr, &mint("tail"), 500 + i, 7, 3).status, 200);
    }
    let head = a.version();
    // A fresh node starts from the published checkpoint: same canvas, its history starts there.
    let late = Node::start(&broker, &flags);
    let snaps = converged(&[&a, &late], head);
    assert!(snaps[0].pixels == snaps[1].pixels, "byte-identical canvases");
    let info = late.s().http("GET", "/api/v1/history/info", &[], b"").json();
    let first = info["first_version"].as_u64().unwrap();
    // Node a goes on publishing (every second): the late node took the newest, at or after the
    // one seen above, and replayed what followed it.
    let now = a.version();
    assert!(
        first >= published && first <= now,
        "joined at a published checkpoint ({first}; published {published}, head {now})"
    );
    // Placements through it are judged alike (the rule state came with the checkpoint).
    assert_eq!(place_json(late.s().addr, &mint("u1"), 900, 9, 4).status, 200);
    // With --no-published-join a fresh node replays the whole topic (and keeps all the history).
    let mut whole: Vec<&str> = flags.to_vec();
    whole.push("--no-published-join");
    let full = Node::start(&broker, &whole);
    let snaps = converged(&[&a, &late, &full], head + 1);
    assert!(snaps.iter().all(|s| s.pixels == snaps[0].pixels), "byte-identical canvases");
    assert_eq!(full.s().http("GET", "/api/v1/history/info", &[], b"").json()["first_version"], 0);
}
