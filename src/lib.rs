//! placecast: an io_uring broadcaster appliance for r/place-style collaborative pixel canvases.
//!
//! The path of an edit: `http`/`hub` (a placement arrives on a shard) -> `place` (validate,
//! `limiter`) -> `edit_log` (durable, ordered, versioned) -> `applier` (one thread: canvas,
//! catch-up window, 100 ms batches encoded once) -> every shard's `hub` (the same `Bytes`
//! written to every socket through io_uring). See ARCHITECTURE.md.

pub mod admin;
pub mod admission;
pub mod applier;
pub mod bounds;
pub mod canvas;
pub mod checkpoint;
pub mod claims;
pub mod client_addr;
pub mod config;
pub mod control;
pub mod control_routes;
pub mod edit_log;
pub mod history;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod limiter;
pub mod log_rule;
pub mod messages;
pub mod metrics;
pub mod names;
pub mod place;
pub mod pow;
pub mod progress;
pub mod protocol;
pub mod proxy_header;
pub mod read_your_writes;
pub mod region;
pub mod roles;
pub mod secrets;
pub mod server;
pub mod session;
pub mod shard;
pub mod shared;
pub mod snapshot;
pub mod sys;
pub mod timelapse;
pub mod token;
pub mod tools;
pub mod verdict;
pub mod ws;

/// Wall-clock milliseconds since the Unix epoch: the time base of cooldowns and edit stamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
