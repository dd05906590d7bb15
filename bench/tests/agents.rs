//! Load agents as separate processes on 127.0.0.2 and 127.0.0.3 and a coordinator, against a
//! real placecast server on 127.0.0.1: the clients split over the agents, results merged
//! exactly, every client gets every batch; an agent killed mid-run fails the run naming it, a
//! busy agent refuses a second coordinator, and an agent whose coordinator went away stops its
//! clients by itself. Bounded: a few hundred clients, each run under 60 s.

mod common;

use common::{result, run_load, u, wait_bounded, Agent, Server, TempDir};
use std::process::{Command, Stdio};

#[test]
fn fanout_over_two_agents_merges_exactly_and_delivers_everything() {
    let srv = Server::start(&["--cooldown", "0"]);
    let (a, b) = (Agent::start("127.0.0.2"), Agent::start("127.0.0.3"));
    let dir = TempDir::new("agents-fanout");
    let json = dir.0.join("fanout.json");
    let target = srv.addr.to_string();
    let agents = format!("{},{}", a.addr, b.addr);
    let pid = srv.pid().to_string();
    let out = run_load(
        &[
            "fanout",
            "--target",
            &target,
            "--agents",
            &agents,
            "-n",
            "200",
            "--rate",
            "40",
            "--duration",
            "3",
            "--users",
            "8",
            "--driver-conns",
            "2",
            "--latency-every",
            "1",
            "--drain-ms",
            "3000",
            "--server-pid",
            &pid,
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ],
        90,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = result(&json);
    let parts = r["agents"].as_array().expect("the agents' own figures");
    assert_eq!(parts.len(), 2);
    let sum = |k: &str| parts.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    // The clients were split, and every one connected.
    assert_eq!((u(&parts[0], "/clients"), u(&parts[1], "/clients")), (100, 100));
    assert_eq!((u(&parts[0], "/base"), u(&parts[1], "/base")), (0, 100));
    assert_eq!(u(&r, "/clients/connected_at_ready"), 200);
    assert_eq!(sum("clients_ready"), 200);
    // Exact merge: each merged histogram holds exactly the samples of the agents' ones.
    assert_eq!(u(&r, "/latency/frame_oldest_edit/count"), sum("frame_latency_count"));
    assert_eq!(u(&r, "/latency/edit/count"), sum("edit_latency_count"));
    assert_eq!(u(&r, "/clients/connect_latency/count"), sum("connect_latency_count"));
    assert_eq!(sum("connect_latency_count"), 200);
    // Every client got every batch, and every frame was timed against the forwarded send
    // instants (one frame-latency sample per window frame).
    let d = &r["delivery"];
    assert!(u(d, "/batches") > 0, "{d}");
    assert_eq!(u(d, "/frames_delivered"), u(d, "/frames_expected"), "{d}");
    assert_eq!(u(d, "/versions_delivered"), u(d, "/versions_expected"), "{d}");
    assert_eq!(u(&r, "/clients/counts/gaps") + u(&r, "/clients/counts/duplicates"), 0);
    assert_eq!(u(&r, "/latency/untimed_frames"), 0);
    assert_eq!(u(&r, "/latency/frame_oldest_edit/count"), u(d, "/frames_delivered"));
    assert!(u(&r, "/placements/accepted") > 0);
    // The server's CPU is still sampled here, on the coordinator.
    assert_eq!(u(&r, "/server/pid"), srv.pid() as u64);
}

#[test]
fn a_killed_agent_fails_the_run_and_the_other_stops_by_itself() {
    let srv = Server::start(&["--cooldown", "0"]);
    let (mut a, mut b) = (Agent::start("127.0.0.2"), Agent::start("127.0.0.3"));
    let target = srv.addr.to_string();
    let agents = format!("{},{}", a.addr, b.addr);
    let coordinator = Command::new(common::load_bin())
        .args(["hold", "--target", &target, "--agents", &agents, "-n", "100", "--duration", "60", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the coordinator");
    common::wait_for(30, "100 clients on the server", || {
        (srv.metric("placecast_ws_connections")? >= 100).then_some(())
    });
    // A second coordinator is refused by the busy agent, naming what holds it.
    let second = run_load(&["hold", "--target", &target, "--agents", &a.addr, "-n", "5", "--duration", "1"], 30);
    let msg = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{msg}");
    assert!(msg.contains(&a.addr) && msg.contains("busy") && msg.contains("one run at a time"), "{msg}");
    // Kill agent b (the process this test started, by its PID).
    let t0 = std::time::Instant::now();
    b.kill();
    let out = wait_bounded(coordinator, 30);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains(&b.addr) && msg.contains("went away mid-run"), "{msg}");
    assert!(t0.elapsed().as_secs() < 20, "noticed after {:?}", t0.elapsed());
    // Agent a's coordinator went away: it stops its clients by itself and serves again.
    common::wait_for(20, "agent a's clients to close", || (srv.metric("placecast_ws_connections")? == 0).then_some(()));
    assert!(a.alive());
    let again =
        run_load(&["hold", "--target", &target, "--agents", &a.addr, "-n", "10", "--duration", "1", "--quiet"], 60);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}
