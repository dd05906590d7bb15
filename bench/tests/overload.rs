//! A shard behind its batches, against a real placecast server on loopback: batches every
//! millisecond to 3,000 clients cannot each get a pass of their own, so the shard brings the
//! connections behind up to date with several batches per send (`placecast_merged_sends_total`)
//! and every client still gets every version exactly once, in order. Bounded: one 3 s run.

mod common;

use common::{run_for_result, u, Server, TempDir};

#[test]
fn a_shard_behind_merges_batches_into_one_send_and_loses_nothing() {
    let srv = Server::start(&["--cooldown", "0", "--batch-ms", "1", "--edit-stride", "64"]);
    let dir = TempDir::new("overload");
    let json = dir.0.join("fanout.json");
    let (target, pid) = (srv.addr.to_string(), srv.pid().to_string());
    let args = [
        "fanout",
        "--target",
        &target,
        "-n",
        "3000",
        "--rate",
        "2000",
        "--duration",
        "3",
        "--users",
        "64",
        "--driver-conns",
        "8",
        "--drain-ms",
        "5000",
        "--server-pid",
        &pid,
        "--quiet",
        "--json",
    ];
    let r = run_for_result(&args, &json, 90);
    let d = &r["delivery"];
    assert!(u(&r, "/placements/accepted") > 0, "{r}");
    assert_eq!(u(d, "/versions_delivered"), u(d, "/versions_expected"), "{d}");
    assert_eq!(u(d, "/frames_delivered"), u(d, "/frames_expected"), "{d}");
    assert_eq!(u(&r, "/clients/counts/gaps") + u(&r, "/clients/counts/duplicates"), 0, "{r}");
    let merged = srv.metric("placecast_merged_sends_total").expect("the metric is exported");
    assert!(merged > 0, "3,000 sockets per 1 ms batch and no send carried two batches");
    assert_eq!(srv.metric("placecast_closed_slow_total"), Some(0));
}
