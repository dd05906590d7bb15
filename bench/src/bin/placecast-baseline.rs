//! `placecast-baseline`: the plain tokio + tokio-tungstenite broadcaster placecast is compared
//! with (see `placecast_load::baseline`). Runtime: tokio's multi-thread scheduler (what
//! `#[tokio::main]` gives) with `--workers` threads, by default one per CPU the process may use,
//! so under `taskset -c 0` it runs one worker on that core.

use clap::Parser;
use placecast_load::baseline::{serve, BaselineConfig};
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    name = "placecast-baseline",
    version,
    about = "Baseline broadcaster: tokio, tokio-tungstenite, broadcast channel of Bytes, 100 ms batches"
)]
struct Args {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Batch interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    batch_ms: u64,
    /// Bytes per edit on the wire (4 = compact; more pads with zeros).
    #[arg(long, default_value_t = 4)]
    edit_stride: u8,
    #[arg(long, default_value_t = 1000)]
    width: u32,
    #[arg(long, default_value_t = 1000)]
    height: u32,
    /// Tokio worker threads (default: CPUs this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Frames the broadcast channel keeps; a client further behind is closed with 4000.
    #[arg(long, default_value_t = 1024)]
    channel_capacity: usize,
    /// Ignored (accepted so the same command line as placecast's works).
    #[arg(long, hide = true)]
    cooldown: Option<u64>,
}

fn main() {
    let a = Args::parse();
    if !(4..=64).contains(&a.edit_stride)
        || a.batch_ms == 0
        || a.batch_ms > 10_000
        || a.width == 0
        || a.height == 0
        || (a.width as u64 * a.height as u64) > 1 << 27
    {
        eprintln!("error: --edit-stride must be 4..=64, --batch-ms 1..=10000, and the canvas at most 2^27 pixels");
        std::process::exit(2);
    }
    // Servers are deployed with LimitNOFILE raised; do the same for the soft limit here.
    let (soft, hard) = placecast_load::sys::raise_nofile_to_hard();
    eprintln!("open-file limit {soft} (hard {hard})");
    let workers = a.workers.unwrap_or_else(|| placecast_load::sys::allowed_cpus().len().max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = BaselineConfig {
        listen: a.listen,
        width: a.width,
        height: a.height,
        batch_ms: a.batch_ms,
        edit_stride: a.edit_stride,
        channel_capacity: a.channel_capacity,
    };
    if let Err(e) = rt.block_on(serve(cfg)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
