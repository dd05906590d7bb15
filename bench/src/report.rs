//! The result of a run: one JSON document (machine, parameters, server and tester costs,
//! clients, delivery, latency, placements, catch-up check, the session scenario's day, each
//! load agent's own figures) and the same figures as a human-readable table. Also the one-line
//! progress report printed every second.

use crate::driver::DriverReport;
use crate::engine::{Counts, FleetResult, Progress};
use crate::error::LimitError;
use crate::hist::{LatencyHist, LatencySummary};
use crate::procfs::{Machine, ProcSample};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub label: Option<String>,
    pub command: Vec<String>,
    pub started_unix_s: u64,
    /// /proc/loadavg at the start and at the end: a busy host makes every figure worse.
    pub loadavg: Vec<String>,
    pub target: String,
    pub machine: Option<Machine>,
    pub params: serde_json::Value,
    pub outcome: Outcome,
    pub server: Option<ServerReport>,
    pub tester: Option<TesterReport>,
    pub clients: Option<ClientsReport>,
    pub delivery: Option<DeliveryReport>,
    pub latency: Option<LatencyReport>,
    pub placements: Option<DriverReport>,
    pub reconnect: Option<ReconnectReport>,
    pub kernel: Option<KernelReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<crate::abuse::AbuseReport>,
    /// WebSocket clients the server closed for a drain (1012 / reconnect hint, 1001) and how
    /// they came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
    /// The session scenario's day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionReport>,
    /// With --agents: each agent's own figures (the sections above are their exact merge).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<crate::coordinator::AgentPart>,
}

/// The session scenario: what the simulated users did over the compressed day.
#[derive(Debug, Serialize, Default)]
pub struct SessionReport {
    pub users: u64,
    pub day_seconds: u64,
    pub day_start_unix_ms: u64,
    /// Users who arrived at least once; the most connected at one time (sampled every 200 ms).
    pub users_arrived: u64,
    pub users_connected_max: u64,
    pub visits_planned: u64,
    pub visits: u64,
    /// Visits after a user's first.
    pub returns: u64,
    pub placements_planned: u64,
    pub placements_sent: u64,
    pub placements_accepted: u64,
    pub placements_accepted_per_s: f64,
    pub placements_refused: BTreeMap<String, u64>,
    pub placements_retried: u64,
    pub placements_missed: u64,
    pub answers_missing: u64,
    /// Accepted own placements the placing user saw come back in a batch before leaving.
    pub own_edits_seen: u64,
    pub own_edits_unseen: u64,
    pub sessions: u64,
    pub session_errors: BTreeMap<String, u64>,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub snapshot_errors: BTreeMap<String, u64>,
    /// Connections with since = a fresh snapshot's version (first visits, reloads).
    pub joins_after_snapshot: u64,
    /// Returns that reconnected with since=<their last version> / caught up from it / were told
    /// to reload instead.
    pub returns_with_since: u64,
    pub returns_caught_up: u64,
    pub reloads: u64,
    pub catch_up_gaps: u64,
    pub reconnects_within_visit: u64,
    /// Every batch every user got: applied in sequence, or a gap / duplicate.
    pub batches_received: u64,
    pub gaps: u64,
    pub gap_versions: u64,
    pub duplicates: u64,
    pub arrivals_by_hour: Vec<u64>,
    pub placements_by_hour: Vec<u64>,
    pub placement_round_trip: LatencySummary,
    pub schedule_lag: LatencySummary,
    pub snapshot_fetch: LatencySummary,
    pub session_fetch: LatencySummary,
    pub arrive_to_live: LatencySummary,
    /// The tester's own state: per user (engine), the plan, the session tokens.
    pub tester_state_bytes_per_user: u64,
    pub tester_plan_bytes: u64,
    pub tester_token_bytes: u64,
    pub http_queue_full: u64,
}

impl SessionReport {
    pub fn compute(
        d: &crate::day::DayStats,
        f: &FleetResult,
        day_seconds: u64,
        connected_max: u64,
        start: u64,
    ) -> Self {
        let sum = |h: &crate::hist::HistExport| LatencyHist::import(h).summary();
        SessionReport {
            users: d.users,
            day_seconds,
            day_start_unix_ms: start,
            users_arrived: d.users_arrived,
            users_connected_max: connected_max,
            visits_planned: d.visits_planned,
            visits: d.visits,
            returns: d.returns,
            placements_planned: d.placements_planned,
            placements_sent: d.placements_sent,
            placements_accepted: d.placements_accepted,
            placements_accepted_per_s: d.placements_accepted as f64 / day_seconds.max(1) as f64,
            placements_refused: d.placements_refused.clone(),
            placements_retried: d.placements_retried,
            placements_missed: d.placements_missed,
            answers_missing: d.answers_missing,
            own_edits_seen: d.own_seen,
            own_edits_unseen: d.own_unseen,
            sessions: d.sessions,
            session_errors: d.session_errors.clone(),
            snapshots: d.snapshots,
            snapshot_bytes: d.snapshot_bytes,
            snapshot_errors: d.snapshot_errors.clone(),
            joins_after_snapshot: d.joins_after_snapshot,
            returns_with_since: d.returns_with_since,
            returns_caught_up: d.returns_caught_up,
            reloads: d.reloads,
            catch_up_gaps: d.catch_up_gaps,
            reconnects_within_visit: d.reconnects,
            batches_received: f.counts.frames,
            gaps: f.counts.gaps,
            gap_versions: f.counts.gap_versions,
            duplicates: f.counts.duplicates,
            arrivals_by_hour: d.arrivals_by_hour.clone(),
            placements_by_hour: d.placements_by_hour.clone(),
            placement_round_trip: sum(&d.place_rtt),
            schedule_lag: sum(&d.schedule_lag),
            snapshot_fetch: sum(&d.snapshot_latency),
            session_fetch: sum(&d.session_latency),
            arrive_to_live: sum(&d.arrive_to_live),
            tester_state_bytes_per_user: d.state_bytes_per_user,
            tester_plan_bytes: d.plan_bytes,
            tester_token_bytes: d.token_bytes,
            http_queue_full: d.http_queue_full,
        }
    }
}

/// Host-wide kernel memory around the ramp (hold). On loopback both ends of every connection are
/// on this host, and anything else running on it adds noise.
#[derive(Debug, Serialize, Default)]
pub struct KernelReport {
    pub before: crate::procfs::KernelMem,
    pub ready: crate::procfs::KernelMem,
    /// (slab ready - slab before) / connections: both ends' socket structures.
    pub slab_per_connection_bytes: Option<f64>,
}

#[derive(Debug, Serialize, Default)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    pub limit: Option<LimitError>,
    pub warnings: Vec<String>,
}

/// The server process, sampled from /proc (needs --server-pid).
#[derive(Debug, Serialize, Default)]
pub struct ServerReport {
    pub pid: u32,
    pub rss_before_bytes: u64,
    pub rss_ready_bytes: u64,
    pub rss_end_bytes: u64,
    /// (RSS with all clients connected - RSS before) / clients connected.
    pub rss_per_connection_bytes: Option<f64>,
    /// RSS with all clients connected / clients connected (fixed costs included: an upper bound).
    pub rss_total_per_connection_bytes: Option<f64>,
    /// CPU time (all threads) during the measured window, and the window's wall time.
    pub window_cpu_us: u64,
    pub window_s: f64,
    /// CPU seconds per wall second in the window (1.0 = one core busy).
    pub cores_used: f64,
    pub cpu_us_per_delivered_frame: Option<f64>,
    pub frames_per_cpu_second: Option<f64>,
    pub cpu_us_per_accepted_placement: Option<f64>,
    /// Every CPU's use in the window (/proc/stat). The kernel's loopback receive work can run in
    /// ksoftirqd, which is not the server's CPU time: with the server pinned alone to a core,
    /// that core's busy time is the fuller cost.
    pub cpus: Vec<crate::procfs::CpuUse>,
    /// Busy time of the CPUs the server may run on (when it is pinned) per delivered frame.
    pub server_cores_busy_us_per_delivered_frame: Option<f64>,
}

impl ServerReport {
    pub fn from_samples(
        pid: u32,
        before: ProcSample,
        ready: ProcSample,
        w0: ProcSample,
        w1: ProcSample,
        end: ProcSample,
    ) -> Self {
        let window_cpu_us = w1.cpu_us.saturating_sub(w0.cpu_us);
        let window_s = w1.at_ns.saturating_sub(w0.at_ns) as f64 / 1e9;
        ServerReport {
            pid,
            rss_before_bytes: before.rss_bytes,
            rss_ready_bytes: ready.rss_bytes,
            rss_end_bytes: end.rss_bytes,
            window_cpu_us,
            window_s,
            cores_used: if window_s > 0.0 { window_cpu_us as f64 / 1e6 / window_s } else { 0.0 },
            ..Default::default()
        }
    }
}

/// The load tester's own cost.
#[derive(Debug, Serialize, Default)]
pub struct TesterReport {
    pub procs: u64,
    pub threads: u64,
    /// Before the client threads existed, once they had allocated their fixed state (receive
    /// buffer, histograms, the per-client array), and with all clients connected.
    pub rss_before_bytes: u64,
    pub rss_init_bytes: u64,
    pub rss_ready_bytes: u64,
    /// (RSS ready - RSS init) / clients connected, all processes: what one more idle client costs.
    pub rss_per_client_bytes: Option<f64>,
    /// (RSS ready - RSS before) / clients connected: including the fixed per-thread state.
    pub rss_per_client_with_fixed_bytes: Option<f64>,
    /// This process's CPU time in the window (driver included, child processes not), and that
    /// per wall second: near 1.0 per tester core means the tester, not the server, was the limit.
    pub window_cpu_us: u64,
    pub window_cores_used: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct ClientsReport {
    pub requested: u64,
    pub connected_at_ready: u64,
    pub counts: Counts,
    pub connect_errors: BTreeMap<String, u64>,
    pub handshake_errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub connect_latency: LatencySummary,
    pub avg_frame_payload_bytes: Option<f64>,
}

impl ClientsReport {
    pub fn from_fleet(requested: u64, f: &FleetResult) -> Self {
        ClientsReport {
            requested,
            connected_at_ready: f.clients_ready,
            counts: f.counts.clone(),
            connect_errors: f.connect_errors.clone(),
            handshake_errors: f.handshake_errors.clone(),
            close_codes: f.close_codes.clone(),
            disconnect_reasons: f.disconnect_reasons.clone(),
            connect_latency: LatencyHist::import(&f.connect_latency).summary(),
            avg_frame_payload_bytes: (f.counts.frames > 0)
                .then(|| f.counts.payload_bytes as f64 / f.counts.frames as f64),
        }
    }
}

/// Deliveries inside the measurement window (fanout, reconnect).
#[derive(Debug, Serialize, Default)]
pub struct DeliveryReport {
    /// Versions after `window_from_version` count (the server's version when placing began).
    pub window_from_version: u64,
    pub window_to_version: u64,
    pub window_s: f64,
    /// Clients open when the window began.
    pub clients_in_window: u64,
    /// Distinct batches (by `to`) any client received in the window.
    pub batches: u64,
    pub frames_expected: u64,
    pub frames_delivered: u64,
    pub frame_share: f64,
    /// One frame per client per batch interval for the whole placing time (what the issue means
    /// by "expected frames": a server that cannot keep up cuts fewer, bigger batches).
    pub nominal_frames_expected: u64,
    pub nominal_frame_share: f64,
    pub versions_expected: u64,
    pub versions_delivered: u64,
    pub version_share: f64,
    pub frames_per_s: f64,
    pub edits_per_s: f64,
    pub edit_stride: u32,
}

impl DeliveryReport {
    pub fn compute(
        f: &FleetResult,
        from: u64,
        to: u64,
        clients: u64,
        window_s: f64,
        stride: u32,
        batch_ms: u64,
    ) -> Self {
        let batches = f.batches.iter().filter(|b| b.0 > from).count() as u64;
        let frames_expected = batches * clients;
        let frames_delivered = f.counts.window_frames;
        let versions_expected = to.saturating_sub(from) * clients;
        let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let nominal = (clients as f64 * window_s * 1000.0 / batch_ms.max(1) as f64).round() as u64;
        DeliveryReport {
            nominal_frames_expected: nominal,
            nominal_frame_share: share(frames_delivered, nominal),
            window_from_version: from,
            window_to_version: to,
            window_s,
            clients_in_window: clients,
            batches,
            frames_expected,
            frames_delivered,
            frame_share: share(frames_delivered, frames_expected),
            versions_expected,
            versions_delivered: f.counts.window_versions,
            version_share: share(f.counts.window_versions, versions_expected),
            frames_per_s: if window_s > 0.0 { frames_delivered as f64 / window_s } else { 0.0 },
            edits_per_s: if window_s > 0.0 { f.counts.window_edits as f64 / window_s } else { 0.0 },
            edit_stride: stride,
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub struct LatencyReport {
    /// Placement sent (driver) to batch received (client), one sample per edit per sampled client.
    pub edit: LatencySummary,
    /// The same for the oldest edit of each frame, one sample per frame per client (all clients).
    pub frame_oldest_edit: LatencySummary,
    pub latency_every: u64,
    pub untimed_frames: u64,
    pub untimed_versions: u64,
}

impl LatencyReport {
    pub fn from_fleet(f: &FleetResult, every: u64) -> Self {
        LatencyReport {
            edit: LatencyHist::import(&f.edit_latency).summary(),
            frame_oldest_edit: LatencyHist::import(&f.frame_latency).summary(),
            latency_every: every,
            untimed_frames: f.counts.untimed_frames,
            untimed_versions: f.counts.untimed_versions,
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub struct ReconnectReport {
    pub base_version: u64,
    pub snapshot_version: u64,
    pub tracked: u64,
    pub dropped: u64,
    pub reconnected: u64,
    pub tracked_open_at_end: u64,
    pub tracked_at_snapshot_version: u64,
    pub canvases_equal: u64,
    pub canvases_different: u64,
    pub pixels_different: u64,
    pub tracked_gaps: u64,
    pub ok: bool,
}

/// Drain-aware reconnects of WebSocket clients (any scenario with clients).
#[derive(Debug, Serialize, Default)]
pub struct DrainReport {
    /// Closes after a `{"type":"reconnect"}` hint (1012, or any other end), 1012 without a
    /// hint, 1001 without a hint.
    pub closes_hinted: u64,
    pub closes_1012: u64,
    pub closes_1001: u64,
    /// Reconnect attempts (retries after a failed reconnect included).
    pub reconnects: u64,
    pub reconnect_failures: u64,
    /// Clients that got their first batch after reconnecting (with since=<their version>).
    pub live_again: u64,
    /// Drained clients not live again when the run ended.
    pub not_live_at_end: u64,
    /// Close to first batch after the reconnect, per client and drain.
    pub close_to_live: LatencySummary,
    /// First batch after a drain reconnect starting past the client's version (a missed edit),
    /// or before it (a duplicate).
    pub gaps_after_reconnect: u64,
    pub duplicates_after_reconnect: u64,
    /// Retry hints followed (drained clients or not): closes with 1013 (reconnect after the
    /// reason's retry_after_ms), upgrades refused with 429/503 + Retry-After on the reconnect
    /// path (retried after it), reconnects of clients that were not drained, and such clients
    /// not live again at the end.
    pub closes_1013: u64,
    pub refusals_retried: u64,
    pub hinted_reconnects: u64,
    pub hinted_not_live_at_end: u64,
    /// The most drain reconnect attempts the clients started in any 1 s (four consecutive
    /// 250 ms buckets): the rate they come back at, before any balancer or server delay.
    pub reconnect_starts_max_per_s: u64,
}

/// The largest sum over four consecutive 250 ms buckets (missing buckets count 0).
fn max_per_second(buckets: &[(u64, u64)]) -> u64 {
    let per = (1_000_000_000 / crate::engine::DRAIN_BUCKET_NS).max(1);
    let mut best = 0;
    for (i, &(k, _)) in buckets.iter().enumerate() {
        let sum: u64 = buckets[i..].iter().take_while(|&&(j, _)| j < k + per).map(|&(_, n)| n).sum();
        best = best.max(sum);
    }
    best
}

impl DrainReport {
    /// None when no client was drained or told to retry later.
    pub fn from_fleet(f: &FleetResult) -> Option<Self> {
        let c = &f.counts;
        let closes = c.drain_closes_hinted + c.drain_closes_1012 + c.drain_closes_1001;
        (closes + c.retry_closes_1013 + c.retry_refusals > 0).then(|| DrainReport {
            closes_hinted: c.drain_closes_hinted,
            closes_1012: c.drain_closes_1012,
            closes_1001: c.drain_closes_1001,
            reconnects: c.drain_reconnects,
            reconnect_failures: c.drain_reconnect_failures,
            live_again: c.drain_live_again,
            not_live_at_end: c.drain_not_live_at_end,
            close_to_live: LatencyHist::import(&f.drain_latency).summary(),
            gaps_after_reconnect: c.drain_gaps,
            duplicates_after_reconnect: c.drain_duplicates,
            closes_1013: c.retry_closes_1013,
            refusals_retried: c.retry_refusals,
            hinted_reconnects: c.retry_reconnects,
            hinted_not_live_at_end: c.retry_not_live_at_end,
            reconnect_starts_max_per_s: max_per_second(&f.drain_starts),
        })
    }
}

fn bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1} KB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn lat(s: &LatencySummary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!("p50 {}  p99 {}  p999 {}  max {}  (n={})", ms(s.p50_us), ms(s.p99_us), ms(s.p999_us), ms(s.max_us), s.count)
}

impl Report {
    /// The figures as an aligned two-column table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row(
            "scenario",
            format!("{}{}", self.scenario, self.label.as_ref().map(|l| format!(" [{l}]")).unwrap_or_default()),
        );
        row("target", self.target.clone());
        row("host load (start, end)", self.loadavg.join("  |  "));
        row(
            "outcome",
            if self.outcome.ok {
                "ok".into()
            } else {
                format!("FAILED: {}", self.outcome.error.clone().unwrap_or_default())
            },
        );
        for w in &self.outcome.warnings {
            row("warning", w.clone());
        }
        if let Some(c) = &self.clients {
            row("clients requested / ready", format!("{} / {}", c.requested, c.connected_at_ready));
            row(
                "connect failed / timeouts / bad upgrade",
                format!("{} / {} / {}", c.counts.connect_failed, c.counts.connect_timeouts, c.counts.handshake_failed),
            );
            row("unexpected disconnects", c.counts.unexpected_disconnects.to_string());
            row("gaps / duplicates (batches)", format!("{} / {}", c.counts.gaps, c.counts.duplicates));
            row("connect latency", lat(&c.connect_latency));
            if let Some(b) = c.avg_frame_payload_bytes {
                row("avg frame payload", bytes(b));
            }
            for (k, v) in c.connect_errors.iter().chain(&c.handshake_errors).chain(&c.disconnect_reasons) {
                row(&format!("  {k}"), v.to_string());
            }
        }
        if let Some(d) = &self.delivery {
            row("window", format!("{:.1} s, versions {}..{}", d.window_s, d.window_from_version, d.window_to_version));
            row(
                "frames delivered / expected",
                format!("{} / {} ({:.4})", d.frames_delivered, d.frames_expected, d.frame_share),
            );
            row(
                "frames delivered / nominal",
                format!(
                    "{} / {} ({:.4}: one per client per batch interval)",
                    d.frames_delivered, d.nominal_frames_expected, d.nominal_frame_share
                ),
            );
            row(
                "versions delivered / expected",
                format!("{} / {} ({:.4})", d.versions_delivered, d.versions_expected, d.version_share),
            );
            row("deliveries per second", format!("{:.0} frames/s, {:.0} edits/s", d.frames_per_s, d.edits_per_s));
        }
        if let Some(l) = &self.latency {
            row("latency per edit (sampled)", lat(&l.edit));
            row("latency oldest edit/frame", lat(&l.frame_oldest_edit));
        }
        if let Some(s) = &self.server {
            row(
                "server rss before / ready / end",
                format!(
                    "{} / {} / {}",
                    bytes(s.rss_before_bytes as f64),
                    bytes(s.rss_ready_bytes as f64),
                    bytes(s.rss_end_bytes as f64)
                ),
            );
            if let (Some(b), Some(t)) = (s.rss_per_connection_bytes, s.rss_total_per_connection_bytes) {
                row("server rss per connection", format!("{} (all of its rss / connections: {})", bytes(b), bytes(t)));
            }
            row(
                "server cpu in window",
                format!("{:.3} s over {:.1} s ({:.2} cores)", s.window_cpu_us as f64 / 1e6, s.window_s, s.cores_used),
            );
            if let Some(v) = s.cpu_us_per_delivered_frame {
                row("server cpu per delivered frame", format!("{v:.3} us"));
            }
            if let Some(v) = s.server_cores_busy_us_per_delivered_frame {
                row("server core(s) busy per delivered frame", format!("{v:.3} us (all work on its cores)"));
            }
            if !s.cpus.is_empty() {
                let u: Vec<String> = s
                    .cpus
                    .iter()
                    .map(|c| format!("cpu{} {:.0}% (softirq {:.0}%)", c.cpu, c.busy * 100.0, c.softirq * 100.0))
                    .collect();
                row("cpu use in window", u.join(", "));
            }
            if let Some(v) = s.frames_per_cpu_second {
                row("frames per server cpu-second", format!("{v:.0}"));
            }
            if let Some(v) = s.cpu_us_per_accepted_placement {
                row("server cpu per accepted placement", format!("{v:.1} us"));
            }
        }
        if let Some(k) = &self.kernel {
            if let Some(b) = k.slab_per_connection_bytes {
                row("kernel slab per connection (both ends)", bytes(b));
            }
            row(
                "tcp sockets / buffers at ready",
                format!("{} / {}", k.ready.tcp_sockets, bytes(k.ready.tcp_buffer_bytes as f64)),
            );
        }
        if let Some(t) = &self.tester {
            row(
                "tester procs x threads",
                format!("{} x {}", t.procs, t.threads.checked_div(t.procs.max(1)).unwrap_or(0)),
            );
            row(
                "tester rss before / init / ready",
                format!(
                    "{} / {} / {}",
                    bytes(t.rss_before_bytes as f64),
                    bytes(t.rss_init_bytes as f64),
                    bytes(t.rss_ready_bytes as f64)
                ),
            );
            if t.window_cpu_us > 0 {
                row(
                    "tester cpu in window",
                    format!("{:.3} s ({:.2} cores)", t.window_cpu_us as f64 / 1e6, t.window_cores_used),
                );
            }
            if let (Some(b), Some(f)) = (t.rss_per_client_bytes, t.rss_per_client_with_fixed_bytes) {
                row("tester rss per client", format!("{} (with fixed thread state {})", bytes(b), bytes(f)));
            }
        }
        if let Some(p) = &self.placements {
            row("placements sent / accepted", format!("{} / {} ({:.0}/s)", p.sent, p.accepted, p.accepted_per_s));
            row("placements rejected", format!("{} {:?}", p.rejected_total, p.rejected));
            row("placement transport errors", p.transport_errors.to_string());
            row("placement round trip", lat(&p.request_latency));
        }
        if let Some(r) = &self.reconnect {
            row("catch-up check", if r.ok { "OK".into() } else { "FAILED".into() });
            row("tracked / dropped / reconnected", format!("{} / {} / {}", r.tracked, r.dropped, r.reconnected));
            row(
                "canvases equal / different",
                format!("{} / {} ({} pixels differ)", r.canvases_equal, r.canvases_different, r.pixels_different),
            );
            row("snapshot version / at it", format!("{} / {}", r.snapshot_version, r.tracked_at_snapshot_version));
        }
        if let Some(ab) = &self.abuse {
            if let Some(x) = &ab.abuser {
                row(
                    "abuser",
                    format!(
                        "{} x {} conns{}{}",
                        x.source_addr,
                        x.conns,
                        if x.proof { ", proof of work" } else { "" },
                        if x.honor_retry_after { ", honours retry-after" } else { "" }
                    ),
                );
                row(
                    "abuser attempts",
                    format!("{} ({:.1}/s; {:.0} requests/s)", x.attempts, x.attempts_per_s, x.requests_per_s),
                );
                row(
                    "abuser sessions accepted",
                    format!("{} of {} ({:.2}/s)", x.sessions_accepted, x.session_requests, x.sessions_accepted_per_s),
                );
                row(
                    "abuser placements accepted",
                    format!(
                        "{} of {} ({:.2}/s)",
                        x.placements_accepted, x.placements_attempted, x.placements_accepted_per_s
                    ),
                );
                row("abuser rate-limited", format!("{:?}", x.rate_limited));
                row("abuser session refusals", format!("{:?}", x.session_refused));
                row("abuser placement refusals", format!("{:?}", x.place_refused));
                if !x.transport_errors.is_empty() {
                    row("abuser transport errors", format!("{:?} ({} connects)", x.transport_errors, x.connects));
                }
                if let Some(ms) = x.solve_mean_ms {
                    row(
                        "abuser proofs solved",
                        format!("{} ({:.1} ms wall each, {:.1} M hashes in all)", x.solves, ms, x.hashes as f64 / 1e6),
                    );
                }
            }
            let h = &ab.honest;
            row(
                "honest users",
                format!(
                    "{} on {} addresses (<= {} each), one placement per {} ms; setup {:.1} s{}; nice {}{}",
                    h.users,
                    h.source_addrs,
                    h.max_users_per_addr,
                    h.period_ms,
                    h.setup_s,
                    if h.setup_proof { " with proofs" } else { "" },
                    h.nice,
                    if h.nice_applied { "" } else { " NOT applied" }
                ),
            );
            row(
                "honest placements nominal / sent / accepted",
                format!(
                    "{} / {} / {} ({})",
                    h.nominal,
                    h.attempted,
                    h.accepted,
                    if h.all_accepted { "all accepted" } else { "NOT all accepted" }
                ),
            );
            if !h.refused.is_empty() || h.transport_errors > 0 {
                row("honest refusals", format!("{:?}, {} transport errors", h.refused, h.transport_errors));
            }
            row("honest placement round trip", lat(&h.latency));
            row("honest schedule lag (tester)", lat(&h.schedule_lag));
        }
        if let Some(s) = &self.session {
            row(
                "day",
                format!(
                    "24 h in {} s; {} users, {} arrived, at most {} connected",
                    s.day_seconds, s.users, s.users_arrived, s.users_connected_max
                ),
            );
            row("visits planned / made / returns", format!("{} / {} / {}", s.visits_planned, s.visits, s.returns));
            row(
                "placements planned / sent / accepted",
                format!(
                    "{} / {} / {} ({:.1}/s); {} missed, {} retried, {} answers missing",
                    s.placements_planned,
                    s.placements_sent,
                    s.placements_accepted,
                    s.placements_accepted_per_s,
                    s.placements_missed,
                    s.placements_retried,
                    s.answers_missing
                ),
            );
            row("placements refused", format!("{:?}", s.placements_refused));
            row("own edits seen / not seen before leaving", format!("{} / {}", s.own_edits_seen, s.own_edits_unseen));
            row(
                "sessions / snapshots",
                format!(
                    "{} / {} ({}); errors {:?} {:?}",
                    s.sessions,
                    s.snapshots,
                    bytes(s.snapshot_bytes as f64),
                    s.session_errors,
                    s.snapshot_errors
                ),
            );
            row(
                "returns with since / caught up / reloads",
                format!(
                    "{} / {} / {} ({} joins after a snapshot, {} catch-ups off their version, {} reconnects in a visit)",
                    s.returns_with_since,
                    s.returns_caught_up,
                    s.reloads,
                    s.joins_after_snapshot,
                    s.catch_up_gaps,
                    s.reconnects_within_visit
                ),
            );
            row(
                "batches received / gaps / duplicates",
                format!("{} / {} / {}", s.batches_received, s.gaps, s.duplicates),
            );
            row("arrivals by hour", format!("{:?}", s.arrivals_by_hour));
            row("placements by hour", format!("{:?}", s.placements_by_hour));
            row("placement round trip (ws)", lat(&s.placement_round_trip));
            row("arrival to live", lat(&s.arrive_to_live));
            row("snapshot fetch", lat(&s.snapshot_fetch));
            row("placement schedule lag", lat(&s.schedule_lag));
            row(
                "tester state",
                format!(
                    "{} B per user + plan {} + tokens {}",
                    s.tester_state_bytes_per_user,
                    bytes(s.tester_plan_bytes as f64),
                    bytes(s.tester_token_bytes as f64)
                ),
            );
        }
        for p in &self.agents {
            row(
                &format!("agent {}", p.agent),
                format!(
                    "{} clients {}..{} ({} pid {}, {} procs, {} threads): ready {}, frames {}, gaps {}, frame latency {}",
                    p.clients,
                    p.base,
                    p.base + p.clients as u64,
                    p.host,
                    p.pid,
                    p.procs,
                    p.threads,
                    p.clients_ready,
                    p.frames,
                    p.gaps,
                    lat(&p.frame_latency)
                ),
            );
        }
        if let Some(d) = &self.drain {
            row(
                "drain closes (after hint / 1012 / 1001)",
                format!("{} / {} / {}", d.closes_hinted, d.closes_1012, d.closes_1001),
            );
            row(
                "drain reconnects / live again / waiting at end",
                format!(
                    "{} / {} / {} ({} failed reconnects retried)",
                    d.reconnects, d.live_again, d.not_live_at_end, d.reconnect_failures
                ),
            );
            row("drain close to live", lat(&d.close_to_live));
            row("drain reconnects started, most in 1 s", d.reconnect_starts_max_per_s.to_string());
            row(
                "drain gaps / duplicates after reconnect",
                format!("{} / {}", d.gaps_after_reconnect, d.duplicates_after_reconnect),
            );
            if d.closes_1013 + d.refusals_retried > 0 {
                row(
                    "retry hints: 1013 closes / 429-503 retried",
                    format!(
                        "{} / {} ({} reconnects outside a drain, {} not live at end)",
                        d.closes_1013, d.refusals_retried, d.hinted_reconnects, d.hinted_not_live_at_end
                    ),
                );
            }
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<w$}  {v}");
        }
        out
    }
}

/// One progress line: elapsed time, clients, deliveries since the last line, server use.
pub fn progress_line(
    elapsed_s: f64,
    p: &Progress,
    prev: &Progress,
    dt_s: f64,
    server: Option<(f64, u64)>,
    placed: Option<(u64, u64)>,
) -> String {
    let rate = |a: u64, b: u64| if dt_s > 0.0 { a.saturating_sub(b) as f64 / dt_s } else { 0.0 };
    let mut s = format!(
        "[{elapsed_s:6.1}s] open {}/{} connecting {} failed {} drops {} | {:.0} frames/s {:.0} edits/s | gaps {} dups {} | tester rss {}",
        p.open,
        p.target,
        p.connecting,
        p.failed,
        p.disconnects,
        rate(p.frames, prev.frames),
        rate(p.edits, prev.edits),
        p.gaps,
        p.dups,
        bytes(p.rss_bytes as f64)
    );
    if let Some((cores, rss)) = server {
        let _ = write!(s, " | server {:.0}% cpu rss {}", cores * 100.0, bytes(rss as f64));
    }
    if let Some((acc, rej)) = placed {
        let _ = write!(s, " | placed {acc} rejected {rej}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::max_per_second;

    #[test]
    fn reconnect_starts_per_second() {
        assert_eq!(max_per_second(&[]), 0);
        // Four 250 ms buckets make a second; a gap counts as empty.
        assert_eq!(max_per_second(&[(10, 5), (11, 5), (12, 5), (13, 5), (14, 30)]), 45);
        assert_eq!(max_per_second(&[(10, 100), (14, 100)]), 100);
        assert_eq!(max_per_second(&[(10, 100), (13, 100)]), 200);
    }
}
