//! The session scenario against a real placecast server on loopback (`--cooldown 1`): a few
//! hundred users through an 8-second day get sessions and snapshots, place (every placement
//! answered or accounted for), come back with `since` and catch up without a gap; the same day
//! over two agents is planned identically and merges to the same totals. Bounded: under 60 s
//! per run.

mod common;

use common::{result, run_load, u, Agent, Server, TempDir};

fn session(srv: &Server, extra: &[&str], json: &std::path::Path) -> serde_json::Value {
    let target = srv.addr.to_string();
    let pid = srv.pid().to_string();
    let mut args = vec!["session", "--target", &target, "--server-pid", &pid, "--quiet", "--seed", "7"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    let out = run_load(&args, 90);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    result(json)
}

#[test]
fn a_compressed_day_of_users_places_returns_and_catches_up() {
    let srv = Server::start(&["--cooldown", "1", "--width", "200", "--height", "200"]);
    let dir = TempDir::new("session");
    let r = session(&srv, &["-n", "300", "--day-seconds", "8"], &dir.0.join("day.json"));
    let s = &r["session"];
    // Everyone arrived, got a session and the snapshot, and connected with since=its version.
    assert_eq!(u(s, "/users_arrived"), 300, "{s}");
    assert_eq!(u(s, "/sessions"), 300, "{s}");
    assert!(u(s, "/snapshots") >= 300 && u(s, "/snapshot_bytes") > 300 * 20_000, "{s}");
    assert!(u(s, "/joins_after_snapshot") >= 300, "{s}");
    // Placements: many accepted, and every one sent was answered or is accounted for.
    let sent = u(s, "/placements_sent") + u(s, "/placements_retried");
    let refused: u64 = s["placements_refused"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(u(s, "/placements_accepted") * 2 > u(s, "/placements_planned"), "{s}");
    assert_eq!(u(s, "/placements_accepted") + refused + u(s, "/answers_missing"), sent, "{s}");
    assert!(u(s, "/own_edits_seen") > 0, "{s}");
    // Returns came back with since=<their last version> and caught up from exactly there.
    assert!(u(s, "/returns") > 0, "{s}");
    assert!(u(s, "/returns_caught_up") > 0, "{s}");
    assert!(u(s, "/returns_caught_up") * 10 >= u(s, "/returns_with_since") * 9, "{s}");
    assert_eq!((u(s, "/reloads"), u(s, "/catch_up_gaps")), (0, 0), "{s}");
    // Every user applied every batch in sequence.
    assert!(u(s, "/batches_received") > 0);
    assert_eq!((u(s, "/gaps"), u(s, "/duplicates")), (0, 0), "{s}");
    // Latency was measured, the server's CPU sampled, the day's shape recorded.
    assert!(u(&r, "/latency/frame_oldest_edit/count") > 0);
    assert!(r["server"]["window_s"].as_f64().unwrap() > 5.0);
    assert_eq!(s["arrivals_by_hour"].as_array().unwrap().len(), 24);
    assert_eq!(u(s, "/tester_state_bytes_per_user"), 48);
}

#[test]
fn the_same_day_over_two_agents_is_planned_alike() {
    let srv = Server::start(&["--cooldown", "1", "--width", "100", "--height", "100"]);
    let (a, b) = (Agent::start("127.0.0.2"), Agent::start("127.0.0.3"));
    let dir = TempDir::new("session-agents");
    let agents = format!("{},{}", a.addr, b.addr);
    let local = session(&srv, &["-n", "200", "--day-seconds", "6"], &dir.0.join("local.json"));
    let over = session(&srv, &["-n", "200", "--day-seconds", "6", "--agents", &agents], &dir.0.join("agents.json"));
    for k in ["/session/visits_planned", "/session/placements_planned", "/session/users"] {
        assert_eq!(u(&local, k), u(&over, k), "{k}");
    }
    let parts = over["agents"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(u(&over, "/session/users_arrived"), 200);
    assert_eq!(u(&over, "/session/gaps") + u(&over, "/session/duplicates"), 0);
    assert!(u(&over, "/session/placements_accepted") > 0);
}
