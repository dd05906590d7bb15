//! Measurements of the Kafka edit log for bench/RESULTS.md (ignored by default; they print their
//! figures). Run one at a time, in release mode:
//!
//! ```text
//! cargo test --release --features kafka --test kafka_bench -- --ignored --nocapture --test-threads 1
//! PLACECAST_BENCH_EDITS=10000000 cargo test --release --features kafka --test kafka_bench cold_start -- --ignored --nocapture
//! ```
#![cfg(feature = "kafka")]

mod common;

use common::kafka::*;
use common::*;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Edit `i` of a loaded topic: pixels across a 1000x1000 canvas, 100,000 users, at `ts_ms`.
fn synthetic_edit(i: u64, ts_ms: u64) -> placecast::edit_log::Edit {
    placecast::edit_log::Edit {
        x: (i % 1000) as u16,
        y: ((i / 1000) % 1000) as u16,
        color: (i % 16) as u8,
        user: i % 100_000 + 1,
        ts_ms,
        ext: 0,
        aux: 0,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore]
fn placements_latency_and_log_to_client() {
    let threads = env_or("PLACECAST_BENCH_THREADS", 32) as usize;
    let secs = env_or("PLACECAST_BENCH_SECS", 10);
    let batch_ms = env_or("PLACECAST_BENCH_BATCH_MS", 100).to_string();
    let broker = Broker::start();
    let node = Node::start(&broker, &["--cooldown", "0", "--batch-ms", &batch_ms]);
    let s = node.s();
    let addr = s.addr;

    // A WebSocket client notes when each batch arrives.
    let arrivals: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (arrivals, stop) = (arrivals.clone(), stop.clone());
        let mut c = s.ws("?since=0");
        c.set_timeout(Duration::from_millis(200));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Got::Batch { to, .. } = c.next() {
                    arrivals.lock().unwrap().push((to, Instant::now()));
                }
            }
        })
    };
    let tokens: Vec<String> = (0..threads).map(|_| s.session()).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let workers: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(w, t)| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = 0u32;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let r = place_json(addr, &t, (w as u32 * 31 + i) % 1000, i % 1000, (1 + i % 15) as u8);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    out.push((r.json()["version"].as_u64().unwrap(), t0, t0.elapsed()));
                    i += 1;
                }
                out
            })
        })
        .collect();
    let placed: Vec<(u64, Instant, Duration)> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();

    let mut lat: Vec<f64> = placed.iter().map(|p| p.2.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    // Log-to-client: from the broker's acknowledgement (as seen by the placing client, an upper
    // bound on when the edit entered the log) to the WebSocket client receiving the batch.
    let mut to_client: Vec<f64> = Vec::new();
    let mut end_to_end: Vec<f64> = Vec::new();
    for (v, t0, l) in &placed {
        if let Some((_, at)) = arrivals.iter().find(|(to, _)| to >= v) {
            to_client.push(at.saturating_duration_since(*t0 + *l).as_secs_f64() * 1000.0);
            end_to_end.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
        }
    }
    to_client.sort_by(f64::total_cmp);
    end_to_end.sort_by(f64::total_cmp);
    println!(
        "BENCH placements: {} in {elapsed:.1} s = {:.0}/s through one node ({threads} HTTP clients, batch {batch_ms} ms)",
        placed.len(),
        placed.len() as f64 / elapsed
    );
    println!(
        "BENCH placement latency ms: p50 {:.1} p99 {:.1} max {:.1}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!("BENCH ack-to-client ms: p50 {:.1} p99 {:.1}", pct(&to_client, 0.5), pct(&to_client, 0.99));
    println!("BENCH place-request-to-client ms: p50 {:.1} p99 {:.1}", pct(&end_to_end, 0.5), pct(&end_to_end, 0.99));
    println!(
        "BENCH server log-to-batch ms (edit timestamp to batch cut): p50 {} p99 {} max {}",
        s.metric("placecast_log_to_batch_p50_ms"),
        s.metric("placecast_log_to_batch_p99_ms"),
        s.metric("placecast_log_to_batch_max_ms")
    );
}

/// Starts a node and returns the milliseconds until it answers /healthz (it listens only after
/// the log's history is applied).
// The caller waits for the child it is handed.
#[allow(clippy::zombie_processes)]
fn time_to_serving(dir: &std::path::Path, broker: &Broker) -> (std::process::Child, std::net::SocketAddr, u128) {
    time_to_serving_with(dir, broker, &[])
}

#[allow(clippy::zombie_processes)]
fn time_to_serving_with(
    dir: &std::path::Path,
    broker: &Broker,
    extra: &[&str],
) -> (std::process::Child, std::net::SocketAddr, u128) {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_placecast"))
        .args(common::serve_args(
            dir,
            port,
            &[
                &[
                    "--drain-grace-ms",
                    "0",
                    "--cooldown",
                    "0",
                    "--kafka-brokers",
                    &broker.addr(),
                    "--kafka-topic",
                    TOPIC,
                ],
                extra,
            ]
            .concat(),
        ))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(1800);
    loop {
        if let Ok(r) = try_http(addr, "GET", "/healthz", &[], b"") {
            if r.status == 200 {
                return (child, addr, started.elapsed().as_millis());
            }
        }
        assert!(Instant::now() < deadline, "node did not start within 30 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore]
fn cold_start_with_many_edits() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let n = env_or("PLACECAST_BENCH_EDITS", 1_000_000);
    // PLACECAST_BENCH_TANSU_DIR: a directory kept between runs; its tansu.db is loaded once.
    let keep = std::env::var_os("PLACECAST_BENCH_TANSU_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = keep.as_ref().filter(|d| d.join("tansu.db").exists()) {
        let broker = Broker::start_existing(dir);
        return measure_start(&broker, n);
    }
    let broker = match &keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            let b = Broker::start_existing(dir);
            let out = Command::new(tansu_bin())
                .args(["topic", "create", TOPIC, "--partitions", "1", "--broker", &b.url()])
                .output()
                .unwrap();
            assert!(out.status.success());
            b
        }
        None => Broker::start(),
    };
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "600000")
        .create()
        .unwrap();
    let started = Instant::now();
    let base_ts = placecast::now_ms() - n;
    let mut rec = [0u8; 32];
    for i in 0..n {
        let e = synthetic_edit(i, base_ts + i);
        placecast::edit_log::file::encode(0, &e, &mut rec);
        loop {
            match producer
                .send(BaseRecord::<(), [u8]>::to(TOPIC).partition(0).payload(&rec[..]).timestamp(e.ts_ms as i64))
            {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if i > 0 && i % 1_000_000 == 0 {
            println!("BENCH loaded {i} edits, {:.0}/s", i as f64 / started.elapsed().as_secs_f64());
        }
    }
    producer.flush(Duration::from_secs(600)).unwrap();
    println!(
        "BENCH loaded {n} edits into the topic in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    measure_start(&broker, n);
}

/// Times a node's start with no checkpoint, then its restart from the checkpoint written on
/// SIGTERM; then a second node with an empty data directory joining from the checkpoint the
/// first one published.
fn measure_start(broker: &Broker, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cp_topic = format!("{TOPIC}-checkpoints");
    let _ = Command::new(tansu_bin())
        .args(["topic", "create", &cp_topic, "--partitions", "1", "--broker", &broker.url()])
        .output();
    let publish = ["--publish-checkpoint-secs", "1", "--checkpoint-secs", "1"];
    let (mut child, addr, ms) = time_to_serving_with(dir.path(), broker, &publish);
    let v = try_http(addr, "GET", "/healthz", &[], b"").unwrap().json()["version"].as_u64().unwrap();
    assert_eq!(v, n);
    println!("BENCH cold start, no checkpoint, {n} edits: {ms} ms to serving");
    let settings = placecast::edit_log::kafka::KafkaSettings {
        brokers: broker.addr(),
        topic: TOPIC.into(),
        timeout_ms: 60_000,
        linger_ms: 1,
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some((v, b))) = placecast::edit_log::published::fetch_newest(&settings, &cp_topic) {
            if v >= n {
                println!("BENCH published checkpoint at version {v}: {} bytes", b.len());
                break;
            }
        }
        assert!(Instant::now() < deadline, "no published checkpoint");
        std::thread::sleep(Duration::from_millis(200));
    }
    let joiner = tempfile::tempdir().unwrap();
    let (mut j, jaddr, jms) = time_to_serving(joiner.path(), broker);
    let jv = try_http(jaddr, "GET", "/healthz", &[], b"").unwrap().json()["version"].as_u64().unwrap();
    assert_eq!(jv, n);
    println!("BENCH a new node, empty data directory, joining from the published checkpoint: {jms} ms to serving");
    let _ = j.kill();
    let _ = j.wait();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let (mut child, _addr, ms) = time_to_serving(dir.path(), broker);
    println!("BENCH restart from checkpoint at version {n}: {ms} ms to serving");
    let _ = child.kill();
    let _ = child.wait();
}

/// The broker's own produce limit, with no placecast in the path: one rdkafka producer set up as
/// a node's (idempotent, acks=all, 32-byte records, `linger.ms` = PLACECAST_BENCH_LINGER_MS,
/// default 1) sends PLACECAST_BENCH_EDITS records (default 300,000) as fast as the broker takes
/// them, to a fresh topic. With PLACECAST_BENCH_BROKER_PORT it uses the broker already on that
/// loopback port (the one a cluster benchmark just ran against: the same run), else its own.
#[test]
#[ignore]
fn broker_produce_limit() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let n = env_or("PLACECAST_BENCH_EDITS", 300_000);
    let linger = env_or("PLACECAST_BENCH_LINGER_MS", 1);
    let own = std::env::var("PLACECAST_BENCH_BROKER_PORT").is_err().then(Broker::start);
    let port = own.as_ref().map_or_else(|| env_or("PLACECAST_BENCH_BROKER_PORT", 0) as u16, |b| b.port);
    let (url, addr) = (format!("tcp://127.0.0.1:{port}"), format!("127.0.0.1:{port}"));
    let topic = format!("produce-limit-{}", placecast::now_ms());
    let out = Command::new(tansu_bin())
        .args(["topic", "create", &topic, "--partitions", "1", "--broker", &url])
        .output()
        .expect("run tansu topic create");
    assert!(out.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&out.stderr));
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.to_string())
        .set("queue.buffering.max.messages", "100000")
        .set("message.timeout.ms", "600000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut rec = [0u8; 32];
    for i in 0..n {
        let e = synthetic_edit(i, placecast::now_ms());
        placecast::edit_log::file::encode(0, &e, &mut rec);
        while producer.send(BaseRecord::<(), [u8]>::to(&topic).partition(0).payload(&rec[..])).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(600)).unwrap();
    let s = started.elapsed().as_secs_f64();
    println!("BENCH rdkafka-only producer, linger.ms {linger}: {n} records in {s:.1} s ({:.0}/s)", n as f64 / s);
}
