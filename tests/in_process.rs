//! The server run in-process: the test binds the listeners itself (port 0, so no race for a free
//! port), runs `server::run` on a thread, and stops it through the `Stop` channel; `run` returns
//! once the drain is over.

mod common;

use common::try_http;
use placecast::config::{parse_cli, Command, Config};
use placecast::server::{run, Listen, Stop};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Two listening sockets on one loopback port (SO_REUSEPORT), one per shard.
fn listeners() -> (Vec<std::net::TcpListener>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let bind = |addr: SocketAddr| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(1024).unwrap();
        std::net::TcpListener::from(s)
    };
    let first = bind("127.0.0.1:0".parse().unwrap());
    let addr = first.local_addr().unwrap();
    (vec![first, bind(addr)], addr)
}

fn config(dir: &std::path::Path) -> Config {
    let argv = [
        "placecast",
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--secret",
        common::TEST_SECRET,
        "--cooldown",
        "0",
        "--drain-grace-ms",
        "100",
        "--drain-spread-s",
        "0",
    ];
    let Command::Serve(args) = parse_cli(argv).unwrap().command else { unreachable!() };
    Config::from_args(args).unwrap()
}

#[test]
fn runs_in_process_on_given_listeners_and_returns_after_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (ls, addr) = listeners();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(4);
    let cfg = config(dir.path());
    let server = std::thread::spawn(move || run(cfg, Listen::Given(ls), stop_rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_http(addr, "GET", "/readyz", &[], b"").map(|r| r.status).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token =
        try_http(addr, "POST", "/api/v1/session", &[], b"").unwrap().json()["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    let r =
        try_http(addr, "POST", "/api/v1/place", &[("Authorization", &auth)], br#"{"x":1,"y":2,"color":3}"#).unwrap();
    assert_eq!(r.status, 200);
    stop_tx.send(Stop::Drain("test")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "run did not return after the drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.join().unwrap().unwrap();
    assert!(try_http(addr, "GET", "/healthz", &[], b"").is_err(), "the listeners are closed");
}
