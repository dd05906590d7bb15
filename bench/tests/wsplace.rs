//! Placements over WebSocket (`--via ws`, `--driver-via ws`) against a real placecast server on
//! loopback: answers are read through the batch frames the same connection receives, cooldown
//! refusals come back as refusals (not transport errors), a connection switches users with
//! `auth`, and every accepted version reaches every fanout client. Bounded: runs of 2 s.

mod common;

use common::{run_for_result, u, Server, TempDir};

fn place_ws(srv: &Server, users: &str, conns: &str, json: &std::path::Path) -> serde_json::Value {
    let target = srv.addr.to_string();
    let args = [
        "place",
        "--target",
        &target,
        "--via",
        "ws",
        "--users",
        users,
        "--conns",
        conns,
        "--rate",
        "40",
        "--duration",
        "2",
        "--quiet",
        "--json",
    ];
    run_for_result(&args, json, 60)
}

#[test]
fn websocket_placements_meet_the_cooldown_and_switch_users_with_auth() {
    let srv = Server::start(&["--cooldown", "600"]);
    let dir = TempDir::new("wsplace");
    // One user per connection: each places once, then every message is refused with cooldown.
    let r = place_ws(&srv, "4", "4", &dir.0.join("one.json"));
    let p = &r["placements"];
    assert_eq!(u(p, "/accepted"), 4, "{p}");
    assert_eq!(u(p, "/transport_errors"), 0, "{p}");
    assert_eq!(u(p, "/rejected/cooldown"), u(p, "/sent") - 4, "{p}");
    assert_eq!(r["params"]["via"], "ws", "{r}");
    // Eight new users over four connections: the connections switch users, each user places once.
    let r = place_ws(&srv, "8", "4", &dir.0.join("switch.json"));
    let p = &r["placements"];
    assert_eq!(u(p, "/accepted"), 8, "{p}");
    assert_eq!(u(p, "/transport_errors"), 0, "{p}");
}

#[test]
fn websocket_placements_reach_every_fanout_client() {
    let srv = Server::start(&["--cooldown", "0", "--batch-ms", "20"]);
    let dir = TempDir::new("wsfanout");
    let json = dir.0.join("fanout.json");
    let target = srv.addr.to_string();
    let args = [
        "fanout",
        "--target",
        &target,
        "-n",
        "200",
        "--rate",
        "200",
        "--duration",
        "2",
        "--users",
        "8",
        "--driver-conns",
        "8",
        "--driver-via",
        "ws",
        "--drain-ms",
        "3000",
        "--quiet",
        "--json",
    ];
    let r = run_for_result(&args, &json, 90);
    let d = &r["delivery"];
    assert!(u(&r, "/placements/accepted") > 100, "{r}");
    assert_eq!(u(&r, "/placements/transport_errors"), 0, "{r}");
    assert_eq!(u(d, "/versions_delivered"), u(d, "/versions_expected"), "{d}");
    assert_eq!(u(&r, "/clients/counts/gaps") + u(&r, "/clients/counts/duplicates"), 0, "{r}");
}
