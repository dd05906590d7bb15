//! Every bound of the server in one place: each queue, buffer, table and timeout, what happens
//! when it is full or runs out, and the napkin math behind its size. Modules use these; the
//! flags that tune some of them at run time (`config.rs`) say so here.
//!
//! Invariant: nothing in the server grows without one of these bounds; when one is reached the
//! behaviour is a clear refusal (an HTTP status and JSON code, a WebSocket close code) or a wait
//! that the watchdog bounds, never unbounded memory. Sizes that other code relies on are
//! asserted at compile time below.
//!
//! The channels between the threads (see ARCHITECTURE.md's table):
//! - shard → applier, catch-up requests: `CATCH_UP_QUEUE`; full → the shard closes the
//!   connection with 1013 and a retry hint (`try_send`: a shard never blocks on the applier).
//! - applier → each shard, batches and catch-up answers: `SHARD_QUEUE`; full → the applier
//!   waits (a shard that stops reading for `SHARD_QUEUE` messages is stuck: the supervisor stops
//!   feeding the watchdog after `STALL_LIMIT_MS` and systemd restarts the process).
//! - log → applier, committed edits in runs: `EDIT_RUNS_QUEUE` runs of at most `TAIL_RUN`;
//!   full → the log's tail waits (back-pressure to the writer; placements then see
//!   `log_unavailable` when the log's own queue is full).
//! - shards → log writer, appends: `edit_log::file::QUEUE`; full → 503 `log_unavailable`.

use std::time::Duration;

// ---- Threads and channels ----

/// Catch-up requests waiting for the applier. Under a storm of far catch-ups it served about
/// 2,900 a second here (bench/RESULTS.md), so 1,024 queued is at most ~350 ms of wait; beyond
/// it a client is told to come back (1013) rather than wait seconds.
pub const CATCH_UP_QUEUE: usize = 1_024;
/// How long a catch-up whose `since` is ahead of this node's applier waits for it, on a shared
/// log: a client that moves between nodes (a drain, a failover) may have seen a version the
/// node it lands on has not consumed yet; nodes of a healthy cluster are milliseconds apart.
/// Past it the client is told 1008 (`since` ahead). On the embedded log there is one writer,
/// so a `since` ahead is refused at once.
pub const AHEAD_WAIT: Duration = Duration::from_secs(2);
/// Catch-ups waiting like that at once; past it, 1008 at once. One queue's worth: the shards
/// cannot have more outstanding than the catch-up queue holds plus this.
pub const MAX_AHEAD_WAITING: usize = CATCH_UP_QUEUE;
/// Messages waiting for one shard: 10 batches a second plus catch-up answers, at most one per
/// queued catch-up request; twice the catch-up queue leaves room for both.
pub const SHARD_QUEUE: usize = 2 * CATCH_UP_QUEUE;
/// Runs of committed edits waiting for the applier (`edit_log::CommittedRun`). The embedded log
/// sends one run per group commit (a few edits at a trickle), a replay or a backlog runs of
/// `TAIL_RUN`: 1,024 groups is 5 s at 1,000 placements/s in 5 ms groups, and the queue holds at
/// most 262,144 edits (10 MiB): 13 s of the 20,000 placements/s we aim to accept.
pub const EDIT_RUNS_QUEUE: usize = 1024;
/// On the embedded log the applier takes its queue at each cut and, while edits keep coming,
/// at most this often between cuts (`Applier::run`): 25 ms, a quarter of the default batch
/// interval. Napkin math: filling the queue (`EDIT_RUNS_QUEUE` runs) within it takes 41,000 group
/// commits a second; with the default 5 ms commit window the writer makes at most 200. When it
/// is full anyway the writer waits, for at most this long. A catch-up from a version still
/// queued takes the queue at once, so the interval never refuses a `since` an answer gave.
pub const APPLY_EVERY: Duration = Duration::from_millis(25);
/// Most committed edits in one run: a group of `edit_log::file::GROUP` (8,192) goes as 32.
pub const TAIL_RUN: usize = 256;
const _: () = assert!(
    EDIT_RUNS_QUEUE * TAIL_RUN * std::mem::size_of::<crate::edit_log::Committed>() <= 16 << 20,
    "the applier's queue of committed edits stays under 16 MiB"
);
/// A thread whose loop has not run for this long counts as stuck. Shards tick at least every
/// 100 ms (`shard::QUIET_TICK`) and the applier at least every `APPLIER_BEAT`; a broadcast
/// slice is bounded (`SLICE` sends), so 5 s of silence is a hang, not load.
pub const STALL_LIMIT_MS: u64 = 5_000;
/// The longest the applier's loop sleeps, whatever the batch interval (`--batch-ms` goes up to
/// 10 s): each turn is its heartbeat, and one only every batch would let an idle node with a
/// long interval pass `STALL_LIMIT_MS` and be taken for hung (`/readyz` 503, no watchdog).
pub const APPLIER_BEAT: Duration = Duration::from_secs(1);
const _: () = assert!(APPLIER_BEAT.as_millis() * 4 <= STALL_LIMIT_MS as u128);
/// The supervisor's cadence (watchdog, status, end of a drain) when systemd asks for no faster.
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// The embedded log's commit window by default (`--commit-window-us`): a group stays open this
/// long after its first append. At 1,000 placements/s one fdatasync then carries ~5 edits
/// instead of 1; at 20,000/s groups fill from the queue anyway. 5 ms is librdkafka's own default
/// `linger.ms`, the same trade of a few ms per answer for fewer writes (`--kafka-linger-ms`
/// stays 1: on tansu a longer linger saved nothing, bench/RESULTS.md). On top
/// of a placement's answer it is 5% of the 100 ms batch interval the placer waits for to see the
/// pixel anyway. Measured against 2 ms (bench/RESULTS.md, "The commit window's default"): 0.87x
/// the server CPU per delivered frame at 1,000 clients, answers 1.7 -> 3.8 ms at p50.
pub const COMMIT_WINDOW_US: u64 = 5_000;
/// The longest window an operator may set: past 100 ms the answer waits longer than a batch.
pub const MAX_COMMIT_WINDOW_US: u64 = 100_000;

// ---- The applier's catch-up frames ----

/// Versions per shared catch-up chunk (256 KiB at 4 B per edit): clients catching up far share
/// these frames; the window (2M edits) is at most 31 of them.
pub const CHUNK: u64 = 65_536;
/// Versions per shared sub-chunk: the parts of a catch-up between whole chunks are built from
/// these, so what one catch-up holds privately is at most `SUB` versions (16 KiB at 4 B per
/// edit) and a storm of catch-ups from nearby versions shares almost everything.
pub const SUB: u64 = 4_096;
/// Sub-chunk frames kept (at most 16 KiB each at stride 4: 4 MiB); when full, one is dropped to
/// make room (it is rebuilt on demand).
pub const MAX_SUBS: usize = 256;
/// Longest a cut waits for a busy shard: progress is guaranteed even if a shard stalls.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// A cut waits only while some shard has this many batches or more not yet written to every
/// connection. Below it the shard merges instead: a connection behind by several batches gets
/// them in one send (`MERGE_FRAMES`), so under overload each client is sent everything cut so
/// far once per pass over the table, and an edit waits at most one pass plus one interval;
/// merging in the applier instead holds the cut until the pass ends, so the last sockets of the
/// next pass see edits up to two passes old. Four batches: 400 ms at the default interval, and
/// never more than half of `--max-lag-batches` (the applier takes the smaller), so deferring
/// starts long before a connection that keeps up with the shard could lag out of the ring.
pub const DEFER_BACKLOG: u64 = 4;
/// Most batch frames one bulk send carries to a connection behind: one `sendmsg` with an iovec
/// per frame costs about what one frame's `send` does (the cost is per call and per segment,
/// not per byte, on these sizes). `DEFER_BACKLOG + 1` frames covers the deepest backlog the
/// deferral allows, plus the batch cut while the pass runs.
pub const MERGE_FRAMES: usize = DEFER_BACKLOG as usize + 1;
/// How often a deferred cut looks again.
pub const DEFER_STEP: Duration = Duration::from_millis(2);

// ---- A shard's WebSocket connections (hub) ----

/// One read buffer per shard (not per connection): a client message is at most 4 KiB.
pub const SCRATCH: usize = 64 * 1024;
/// epoll events taken per call; more are taken by the next call in the same tick.
pub const EVENTS: usize = 1024;
/// Frames queued for one connection besides batches and its catch-up (answers); one more and
/// it is closed with 1008: it does not read its answers.
pub const MAX_QUEUED: usize = 64;
/// Placements of one connection waiting for the log; one more gets `too_many_in_flight`.
pub const MAX_IN_FLIGHT: u8 = 16;
/// How long a closing connection may take to drain its close frame before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Sends per broadcast slice: between slices the shard's other tasks run, so a batch to tens of
/// thousands of sockets does not hold placements and handshakes back for its whole duration.
/// A slice is one `io_uring_enter`, and on a kernel without forced preemption (this machine's
/// `PREEMPT_NONE`) nothing else runs on the core until it returns: not the placement answers,
/// and not the log writer, whose window and each fdatasync I/O wake it up to a slice late.
/// Napkin math: a saturated core here spends ~13 us of kernel time per loopback send, so 1,024
/// sends hold the core ~13.5 ms and a placement's acknowledgement took 37-47 ms at 19,000
/// clients (a few slice waits); 256 sends are ~3.4 ms and it took 17-18 ms, with the offered
/// 1,000 placements/s held (bench/RESULTS.md, "Slices of 256 sends"). The cost of more slices,
/// one syscall and one 20 us pause each, is under 0.5% of the core at 19,000 clients.
pub const SLICE: usize = 256;
/// Reads per readiness event before yielding to other connections.
pub const READS_PER_EVENT: usize = 4;
/// How often the catch-up deadlines (`--catch-up-drain-ms`) are looked at, only while any.
pub const CATCH_UP_CHECK: Duration = Duration::from_millis(100);
/// The retry hint when the applier's catch-up queue is full.
pub const CATCH_UP_BUSY_RETRY_MS: u64 = 1000;
/// The random delay a drained client adds before reconnecting, when the drain closes everyone
/// at once (`--drain-spread-s 0`): it spreads the herd over a second.
pub const DRAIN_JITTER_MS: u64 = 1000;

/// The random delay a drained client adds when the closes are spread: the schedule already
/// spreads them, and a jitter wider than the gap between closes only lumps reconnects into
/// bursts above clients/spread (measured behind HAProxy with 1 s: the survivor's busiest
/// second 12% over). 1% of the window keeps arrivals smooth without adding bursts.
pub fn drain_jitter_ms(spread_ms: u64) -> u64 {
    if spread_ms == 0 {
        return DRAIN_JITTER_MS;
    }
    (spread_ms / 100).min(DRAIN_JITTER_MS)
}

// ---- HTTP ----

/// A request head: 16 KiB (a browser's is under 2 KiB); over it: 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// A request body: placements and session proofs are under 300 bytes; over it: 413.
pub const MAX_BODY: usize = 4 * 1024;
/// Headers per request; more: 431.
pub const MAX_HEADERS: usize = 48;
/// A PROXY header: v1's own limit is 107 bytes; v2 is refused beyond 536 (the specification's
/// recommended receive buffer), decided from its length field.
pub const MAX_PROXY_HEADER: usize = 536;

// ---- Tables shared by the shards ----

/// Client addresses admission tracks (~48 B each with the map: 50 MB at the cap); full → new
/// addresses get 503 `server_busy` (failing open would let many addresses bypass every limit).
pub const MAX_ADDRESSES: usize = 1 << 20;
/// Proof-of-work challenges remembered as used (~64 B each: 64 MB at the cap); full → new
/// sessions get 503 rather than accept replays.
pub const MAX_USED_CHALLENGES: usize = 1 << 20;
/// How long a proof-of-work challenge stays valid.
pub const CHALLENGE_TTL_MS: u64 = 120_000;

// ---- History (names.rs, history/) ----

/// Display names the user directory keeps (~60 B each with the map and the name: ~1 GB at the
/// cap; the 2017 event had 1.1 M users, ~70 MB); full → a new user's name is not kept and
/// lookups show them as unknown (their edits are unaffected).
pub const MAX_NAMES: usize = 1 << 24;
/// Names seen in a token but not yet carried by an edit (~64 B each: 64 MB at the cap); full →
/// not noted (that user's name stays unknown); kept at most `UNPUBLISHED_TTL_MS`.
pub const MAX_UNPUBLISHED_NAMES: usize = 1 << 20;
pub const UNPUBLISHED_TTL_MS: u64 = 3_600_000;
/// Edits of one pixel `GET /api/v1/pixel?history=N` returns at most (one 32-byte read each:
/// ~100 us from the page cache); more → 400.
pub const MAX_PIXEL_HISTORY: usize = 100;
/// Versions between two keyframes by default (`--keyframe-every`): the canvas at any V is a
/// keyframe plus at most this many 32-byte history records (2 MiB) applied; a keyframe of a
/// 1000x1000 16-color canvas is ~500 KB before compression.
pub const KEYFRAME_EVERY: u64 = 65_536;
/// Canvases-at-V and edit chunks being built from disk at once, per process (each ~2 MiB of
/// reads and a few ms of CPU on a blocking thread); more → 503 `history_busy`, `Retry-After: 1`.
pub const HISTORY_BUILDS: usize = 4;
/// Built history answers (canvas at V, binary and PNG; edit chunks) kept for repeat requests
/// (a CDN keeps the rest: they are immutable). At most ~1 MB each at 1000x1000: ~32 MB.
pub const HISTORY_CACHE: usize = 32;
/// Bytes of history records the applier buffers before writing them (also written at every
/// turn of its loop, so readers see an edit within one turn).
pub const HISTORY_BUFFER: usize = 1 << 20;
/// `GET /api/v1/canvas?t=MS` answers only for times at least this far in the past: until then
/// an edit stamped up to `MS` may still arrive (a placement in flight, another node's clock).
pub const CLOCK_SLACK_MS: u64 = 5_000;

// ---- Moderation (control.rs, control_routes.rs, region.rs, roles.rs, claims.rs) ----

/// Users banned at once. A ban is 8 bytes in each of the applier's, the log writer's and the
/// shards' sets (~24 MB at the bound); r/place 2022 banned far fewer accounts than this.
pub const MAX_BANS: usize = 1 << 20;
/// Protected rectangles at once: each placement inside any of them is checked against all, so
/// the list stays short (an event protects a few dozen artworks, not thousands).
pub const MAX_PROTECTED: usize = 256;
/// Control entries the audit list keeps, newest last: at ~40 bytes each, 10,000 is 400 KB, and
/// an event's moderators make far fewer actions (older ones stay in the log, `placecast export`
/// does not include them: `log` tools and the topic do).
pub const AUDIT_KEEP: usize = 10_000;
/// Pixels one region change may set: 1,048,576 (a 1024x1024 rectangle) is 32 MB of log.
pub const MAX_REGION_PIXELS: usize = 1 << 20;
/// Versions a revert scans for the banned user's edits: 4,194,304 (128 MB of history records,
/// about a second of reading): hours of a busy event. Further back is refused.
pub const REVERT_SCAN: u64 = 1 << 22;
/// Edits a revert follows back along one pixel's chain to find its state before the user.
pub const REVERT_CHAIN: usize = 1_000;
/// Holders in one file: a large event has tens of moderators.
pub const MAX_HOLDERS: usize = 1024;
/// Users with a class remembered at once: 16 bytes of entry each (~40 MB with the maps'
/// overhead at the bound), more than an event's users active in a day.
pub const MAX_CLAIMED: usize = 1 << 20;
/// A remembered class is dropped after a day without its token being verified.
pub const CLAIM_TTL_MS: u64 = 24 * 3600 * 1000;
/// Pixels a canvas may grow to by resize entries (`POST /api/v1/admin/resize`): 16,777,216
/// (4096x4096; Reddit's 2022 canvas ended at 2000x2000). Each pixel costs a byte in the
/// applier's canvas and in every snapshot, and 8 bytes of history heads: 16 MB + 128 MB at the
/// bound. A canvas configured larger cannot grow. A resize the log holds that would exceed it
/// (two requests racing on a cluster) is applied as a no-op, the same way on every node.
pub const MAX_GROWN_PIXELS: u64 = 1 << 24;
// ---- Published checkpoints (edit_log/published.rs) ----

/// Bytes of a checkpoint per message on the checkpoint topic: under Kafka's default 1 MB
/// message limit with room for the 68-byte header (a 1000x1000 canvas is 2 messages; with a
/// million users' last placements, 34).
pub const CHECKPOINT_CHUNK_BYTES: usize = 512 * 1024;
/// The largest checkpoint published or accepted: a 4096x4096 canvas (16 MB) and 7 M users'
/// last placements (16 B each); larger ones are not published (the node logs why).
pub const MAX_CHECKPOINT_BYTES: usize = 128 << 20;
/// Messages a joining node reads back from the end of the checkpoint topic: two of the largest
/// checkpoints plus room for interleaved small ones; also its memory bound while reading
/// (768 x 512 KiB = 384 MiB at most, a few MB for a usual canvas).
pub const PUBLISHED_READBACK: usize = 2 * MAX_CHECKPOINT_BYTES / CHECKPOINT_CHUNK_BYTES + 256;

/// How long a history read waits for this node's history to hold what the log acknowledged
/// (`read_your_writes`): asked to, the applier takes its queue within a wake; unasked it would
/// within `APPLY_EVERY`. A second is a stalled or starved applier (the watchdog's limit is
/// `STALL_LIMIT_MS`), and the answer goes out with what the history has; the wait is a parked
/// task with a timer, so even then it costs a connection its time, not the core.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(1);
const _: () = assert!(READ_YOUR_WRITES_WAIT.as_millis() >= 4 * APPLY_EVERY.as_millis());
/// How long an admin route waits for this node to apply its control entry before answering 202
/// (the applier applies within a batch interval normally).
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

const _: () = assert!(CHUNK.is_multiple_of(SUB));
const _: () = assert!(KEYFRAME_EVERY.is_multiple_of(4096));
const _: () = assert!(SLICE <= 4096, "a slice fits the shard's io_uring (4,096 entries)");
const _: () = assert!(MAX_BODY < MAX_HEAD);
const _: () = assert!(SHARD_QUEUE > CATCH_UP_QUEUE);
const _: () = assert!(MAX_GROWN_PIXELS <= crate::protocol::MAX_PIXELS, "a grown pixel index fits the packed edit");
const _: () = assert!(MAX_REGION_PIXELS <= 65_536 * 65_536, "a region fits the canvas's 16-bit sides");
