//! Counters and gauges, rendered in Prometheus text format at `/metrics`.
//!
//! Invariant: each shard writes only its own `ShardStats` (cache-line padded), so counting never
//! makes cores contend; totals are summed when scraped.

use crate::place::PlaceError;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub placements_ok: AtomicU64,
    pub rejected_cooldown: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub rejected_auth: AtomicU64,
    pub rejected_log: AtomicU64,
    pub rejected_address: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_errors: AtomicU64,
    pub sessions_created: AtomicU64,
    pub sessions_refused: AtomicU64,
    /// Refusals by admission control (connection cap, session and placement rates).
    pub refused_conn_cap: AtomicU64,
    pub refused_session_rate: AtomicU64,
    pub refused_place_rate: AtomicU64,
    pub refused_catch_up_rate: AtomicU64,
    /// Catch-ups refused because the applier's queue was full (1013).
    pub refused_catch_up_busy: AtomicU64,
    /// Clients closed for not draining their catch-up in time (4000).
    pub closed_catch_up_stalled: AtomicU64,
    /// Connections refused for the descriptor budget or a bad PROXY header.
    pub refused_fd_budget: AtomicU64,
    pub refused_proxy: AtomicU64,
    pub closed_ping_timeout: AtomicU64,
    /// HTTP answers abandoned because the client did not take them within --write-timeout-ms.
    pub write_timeouts: AtomicU64,
    pub closed_drain: AtomicU64,
}

impl Metrics {
    pub fn admission_refused(&self, e: &crate::admission::AdmissionError) {
        use crate::admission::AdmissionError as A;
        let c = match e {
            A::TooManyConnections { .. } => &self.refused_conn_cap,
            A::SessionRate { .. } => &self.refused_session_rate,
            A::PlacementRate { .. } => &self.refused_place_rate,
            A::CatchUpRate { .. } => &self.refused_catch_up_rate,
            A::TableFull => &self.refused_fd_budget,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn place_rejected(&self, e: &PlaceError) {
        let c = match (e, e.status()) {
            (PlaceError::Admission(_), _) => &self.rejected_address,
            (_, 429) => &self.rejected_cooldown,
            (_, 401) => &self.rejected_auth,
            (_, 503 | 504) => &self.rejected_log,
            _ => &self.rejected_invalid,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One shard's counters.
#[repr(align(128))]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// io_uring_enter calls (uring mode) or send() calls (syscall mode) for batch fan-out.
    pub send_syscalls: AtomicU64,
    pub closed_slow: AtomicU64,
    pub closed_protocol: AtomicU64,
    pub batches: AtomicU64,
    /// Bulk sends that carried more than one batch to a connection behind (overload).
    pub merged_sends: AtomicU64,
    /// How long each batch took to reach every connection of the shard.
    pub fanout: Hist,
    /// How long each accepted placement of the shard's clients took to be acknowledged.
    pub placement_ack: Hist,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            send_syscalls: AtomicU64::new(0),
            closed_slow: AtomicU64::new(0),
            closed_protocol: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            merged_sends: AtomicU64::new(0),
            fanout: Hist::new(&FANOUT_BUCKETS_MS),
            placement_ack: Hist::new(&PLACEMENT_ACK_BUCKETS_MS),
        }
    }
}

/// Upper bounds, in ms, of the fan-out histogram's buckets (a last one, `+Inf`, counts the
/// rest). Fixed so the table is 12 counters per shard whatever the load; they bracket the batch
/// interval (100 ms by default), the figure that matters: a fan-out that outlasts it is a shard
/// that falls behind.
pub const FANOUT_BUCKETS_MS: [u64; 10] = [5, 10, 25, 50, 75, 100, 150, 250, 500, 1_000];

/// Upper bounds, in ms, of the placement acknowledgement histogram's buckets. They bracket the
/// embedded log's commit window (5 ms by default: an answer waits for its group's fdatasync), a
/// Kafka round trip (tens of ms), and the seconds an overloaded shard or a stalled log can add.
pub const PLACEMENT_ACK_BUCKETS_MS: [u64; 13] = [1, 2, 5, 7, 10, 15, 25, 50, 100, 250, 500, 1_000, 5_000];

/// Counters per histogram, `+Inf` included: a fixed table, so a histogram never grows.
const HIST_SLOTS: usize = 16;
const _: () = assert!(FANOUT_BUCKETS_MS.len() < HIST_SLOTS && PLACEMENT_ACK_BUCKETS_MS.len() < HIST_SLOTS);

/// A latency histogram of one shard, written by that shard alone.
/// - `fanout`: from a batch's arrival at the shard (its cut, give or take a wake) to the end of
///   the pass that wrote it, so a batch queued behind an unfinished one counts its wait.
///   Connections left blocked by a full socket are retried later and do not extend it.
/// - `placement_ack`: from an accepted placement's admission (its request read, its token and
///   body checked) to its answer being ready, the edit durable: the commit window, the flush
///   and the wait for the shard to run the answer (under overload, a broadcast slice). Not in
///   it: the wait for the shard to read the request, and the answer's send.
pub struct Hist {
    /// Ascending; the bucket after the last is `+Inf`.
    bounds_ms: &'static [u64],
    /// Per bucket, not cumulative (the scrape sums them).
    buckets: [AtomicU64; HIST_SLOTS],
    sum_us: AtomicU64,
}

impl Hist {
    pub const fn new(bounds_ms: &'static [u64]) -> Self {
        assert!(bounds_ms.len() < HIST_SLOTS);
        Hist { bounds_ms, buckets: [const { AtomicU64::new(0) }; HIST_SLOTS], sum_us: AtomicU64::new(0) }
    }

    pub fn record(&self, took: Duration) {
        let us = took.as_micros();
        let i = self.bounds_ms.iter().position(|&le| us <= u128::from(le) * 1000).unwrap_or(self.bounds_ms.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Prometheus histogram lines for shard `shard` (cumulative buckets, sum, count).
    fn render(&self, out: &mut String, name: &str, shard: usize) {
        let mut total = 0;
        for (i, b) in self.buckets.iter().take(self.bounds_ms.len() + 1).enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = self.bounds_ms.get(i).map_or_else(|| "+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {total}");
        }
        let sum_s = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum_s}\n{name}_count{{shard=\"{shard}\"}} {total}");
    }
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A per-shard series: name, Prometheus type, help, and which counter it reads.
type PerShard = (&'static str, &'static str, &'static str, fn(&ShardStats) -> &AtomicU64);
/// A per-shard histogram: name, help, and which histogram it reads.
type PerShardHist = (&'static str, &'static str, fn(&ShardStats) -> &Hist);

pub fn render(m: &Metrics, shards: &[ShardStats], gauges: &[(&str, &str, u64)]) -> String {
    let mut out = String::with_capacity(4096);
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
    counter(
        &mut out,
        "placecast_placements_total",
        "Placements acknowledged (durable in the log).",
        r(&m.placements_ok),
    );
    let _ = writeln!(out, "# HELP placecast_placements_rejected_total Placements refused, by reason.\n# TYPE placecast_placements_rejected_total counter");
    for (reason, c) in [
        ("cooldown", &m.rejected_cooldown),
        ("invalid", &m.rejected_invalid),
        ("auth", &m.rejected_auth),
        ("log", &m.rejected_log),
        ("address", &m.rejected_address),
    ] {
        let _ = writeln!(out, "placecast_placements_rejected_total{{reason=\"{reason}\"}} {}", r(c));
    }
    counter(&mut out, "placecast_http_requests_total", "HTTP requests served.", r(&m.http_requests));
    counter(&mut out, "placecast_http_errors_total", "HTTP requests answered with an error status.", r(&m.http_errors));
    counter(&mut out, "placecast_sessions_created_total", "Anonymous sessions minted.", r(&m.sessions_created));
    counter(
        &mut out,
        "placecast_sessions_refused_total",
        "Anonymous sessions refused (rate or proof).",
        r(&m.sessions_refused),
    );
    let _ = writeln!(out, "# HELP placecast_admission_refused_total Requests refused by admission control, by rule.\n# TYPE placecast_admission_refused_total counter");
    for (rule, c) in [
        ("connections_per_address", &m.refused_conn_cap),
        ("sessions_per_address", &m.refused_session_rate),
        ("placements_per_address", &m.refused_place_rate),
        ("catch_ups_per_address", &m.refused_catch_up_rate),
        ("catch_up_queue_full", &m.refused_catch_up_busy),
        ("descriptor_budget", &m.refused_fd_budget),
        ("proxy_header", &m.refused_proxy),
    ] {
        let _ = writeln!(out, "placecast_admission_refused_total{{rule=\"{rule}\"}} {}", r(c));
    }
    counter(
        &mut out,
        "placecast_closed_ping_timeout_total",
        "WebSockets closed for not answering a ping (4002).",
        r(&m.closed_ping_timeout),
    );
    counter(
        &mut out,
        "placecast_http_write_timeouts_total",
        "HTTP answers abandoned: not written within --write-timeout-ms.",
        r(&m.write_timeouts),
    );
    counter(
        &mut out,
        "placecast_closed_catch_up_stalled_total",
        "Clients closed for not reading their catch-up in time (4000).",
        r(&m.closed_catch_up_stalled),
    );
    counter(&mut out, "placecast_closed_drain_total", "WebSockets closed by a drain (1012).", r(&m.closed_drain));
    let per_shard: [PerShard; 9] = [
        ("placecast_ws_connections", "gauge", "Open WebSocket connections.", |s| &s.connections),
        ("placecast_ws_accepted_total", "counter", "WebSocket connections accepted.", |s| &s.accepted),
        ("placecast_frames_sent_total", "counter", "Frames fully written to sockets.", |s| &s.frames_sent),
        ("placecast_bytes_sent_total", "counter", "Bytes written to WebSocket sockets.", |s| &s.bytes_sent),
        ("placecast_send_syscalls_total", "counter", "System calls spent writing batches.", |s| &s.send_syscalls),
        ("placecast_closed_slow_total", "counter", "Clients closed for falling behind (4000).", |s| &s.closed_slow),
        ("placecast_closed_protocol_total", "counter", "Clients closed for protocol errors.", |s| &s.closed_protocol),
        ("placecast_shard_batches_total", "counter", "Batches received by the shard.", |s| &s.batches),
        (
            "placecast_merged_sends_total",
            "counter",
            "Bulk sends that brought a connection behind up to date with several batches at once.",
            |s| &s.merged_sends,
        ),
    ];
    for (name, kind, help, get) in per_shard {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", r(get(s)));
        }
    }
    let histograms: [PerShardHist; 2] = [
        ("placecast_fanout_seconds", "Time from a batch's arrival at a shard to its last connection written.", |s| {
            &s.fanout
        }),
        (
            "placecast_placement_ack_seconds",
            "Time from an accepted placement's admission to its answer, durable, being ready to send.",
            |s| &s.placement_ack,
        ),
    ];
    for (name, help, get) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, s) in shards.iter().enumerate() {
            get(s).render(&mut out, name, i);
        }
    }
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fanout_histogram_renders_cumulative_prometheus_buckets() {
        let h = Hist::new(&FANOUT_BUCKETS_MS);
        for ms in [3, 5, 100, 101, 2_000] {
            h.record(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "f", 2);
        let value = |key: &str| -> String {
            let line = out.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {out}"));
            line.rsplit(' ').next().unwrap().to_string()
        };
        // A bucket holds what is at most its bound: 5 ms is in le=0.005, 100 ms in le=0.1.
        assert_eq!(value("f_bucket{shard=\"2\",le=\"0.005\"}"), "2");
        assert_eq!(value("f_bucket{shard=\"2\",le=\"0.075\"}"), "2");
        assert_eq!(value("f_bucket{shard=\"2\",le=\"0.1\"}"), "3");
        assert_eq!(value("f_bucket{shard=\"2\",le=\"0.15\"}"), "4");
        assert_eq!(value("f_bucket{shard=\"2\",le=\"1\"}"), "4");
        assert_eq!(value("f_bucket{shard=\"2\",le=\"+Inf\"}"), "5");
        assert_eq!(value("f_count{shard=\"2\"}"), "5");
        assert_eq!(value("f_sum{shard=\"2\"}"), "2.209");
    }

    #[test]
    fn the_placement_histogram_has_its_own_bounds_and_only_those() {
        let h = Hist::new(&PLACEMENT_ACK_BUCKETS_MS);
        for us in [900, 5_000, 5_001, 6_000_000] {
            h.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "p", 0);
        let buckets: Vec<&str> = out.lines().filter(|l| l.starts_with("p_bucket")).collect();
        assert_eq!(buckets.len(), PLACEMENT_ACK_BUCKETS_MS.len() + 1, "{out}");
        assert_eq!(buckets[0], "p_bucket{shard=\"0\",le=\"0.001\"} 1");
        assert_eq!(buckets[2], "p_bucket{shard=\"0\",le=\"0.005\"} 2");
        assert_eq!(buckets[3], "p_bucket{shard=\"0\",le=\"0.007\"} 3");
        assert_eq!(buckets[12], "p_bucket{shard=\"0\",le=\"5\"} 3");
        assert_eq!(buckets[13], "p_bucket{shard=\"0\",le=\"+Inf\"} 4");
        assert!(out.contains("p_count{shard=\"0\"} 4"), "{out}");
    }
}
