//! End to end on loopback: the client engine against the baseline server in this process:
//! clients connect, a few placements are broadcast, every client sees every version once, and
//! the reconnect path (drop, `since`, catch-up) leaves no gap. Small and fast (about 2 s).

use placecast_load::baseline::{serve_on, BaselineConfig};
use placecast_load::driver::{self, DriverConfig, DriverCounters};
use placecast_load::engine::EngineConfig;
use placecast_load::fleet::LocalFleet;
use placecast_load::sendtable::SendTable;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start_baseline(stride: u8) -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let cfg = BaselineConfig {
                listen: addr,
                width: 64,
                height: 64,
                batch_ms: 20,
                edit_stride: stride,
                channel_capacity: 256,
            };
            serve_on(l, cfg).await.unwrap();
        });
    });
    addr
}

fn engine(target: SocketAddr, since: Option<u64>, track_below: u64) -> EngineConfig {
    EngineConfig {
        target,
        sources: vec!["127.0.0.1".parse().unwrap()],
        seed: 42,
        connect_timeout_ms: 5000,
        max_payload: 1 << 20,
        latency_every: 1,
        since,
        track_below,
        max_pending: 64,
        close_politely: true,
    }
}

fn wait_open(f: &LocalFleet, n: u64) {
    let t0 = Instant::now();
    while f.progress().open < n {
        assert!(t0.elapsed() < Duration::from_secs(10), "clients did not connect: {:?}", f.progress());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn place(target: SocketAddr, n: usize, table: Arc<SendTable>) -> driver::DriverReport {
    let cfg = DriverConfig {
        target,
        rate: 500.0,
        duration: Duration::from_millis(n as u64 * 2),
        conns: 1,
        width: 64,
        height: 64,
        palette_len: 16,
        seed: 7,
        via: driver::Via::Http,
    };
    driver::run(
        &cfg,
        Arc::new(vec!["t".into()]),
        Some(table),
        Arc::new(DriverCounters::default()),
        Arc::new(AtomicBool::new(false)),
    )
}

#[test]
fn fanout_delivers_every_version_to_every_client() {
    let target = start_baseline(16);
    let table = Arc::new(SendTable::anonymous(1024).unwrap());
    let mut f = LocalFleet::start(engine(target, None, 0), 20, 0, 2, 1000.0, &[], Some(table.clone())).unwrap();
    wait_open(&f, 20);
    f.note_ready();
    f.set_window(0);
    let d = place(target, 50, table);
    assert!(d.accepted >= 40, "{d:?}");
    std::thread::sleep(Duration::from_millis(300));
    let r = f.stop();
    assert_eq!(r.counts.connected, 20);
    assert_eq!(r.counts.unexpected_disconnects, 0);
    assert_eq!((r.counts.gaps, r.counts.duplicates, r.counts.bad_batches), (0, 0, 0));
    assert_eq!(r.counts.window_versions, 20 * d.accepted);
    assert_eq!(r.counts.text_messages, 20, "one hello each");
    let batches = r.batches.len() as u64;
    assert_eq!(r.counts.window_frames, 20 * batches);
    assert!(r.fatal.is_none());
}

#[test]
fn reconnect_with_since_has_no_gap() {
    let target = start_baseline(4);
    let table = Arc::new(SendTable::anonymous(1024).unwrap());
    let mut f = LocalFleet::start(engine(target, Some(0), 5), 10, 0, 1, 1000.0, &[], Some(table.clone())).unwrap();
    wait_open(&f, 10);
    f.note_ready();
    f.set_window(0);
    let t = {
        let table = table.clone();
        std::thread::spawn(move || place(target, 200, table))
    };
    std::thread::sleep(Duration::from_millis(150));
    f.drop_tracked(50);
    let d = t.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    wait_open(&f, 10);
    let r = f.stop();
    assert_eq!((r.counts.dropped, r.counts.reconnected), (5, 5));
    assert_eq!((r.counts.gaps, r.counts.duplicates), (0, 0));
    assert_eq!(r.tracks.len(), 5);
    for tr in &r.tracks {
        assert_eq!(tr.version, d.last_version.unwrap(), "{tr:?}");
        assert_eq!(tr.edits.len() as u64, d.accepted);
    }
}
