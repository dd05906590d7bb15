//! The embedded edit log: an append-only file of 32-byte records, `--data-dir/edits.log`, written
//! by one thread with group commit (many appends, one write, one fdatasync).
//!
//! Record layout (little-endian): x u16, y u16, color u8, ext u24 (format 2: a control entry's
//! argument bits; zero for edits and in format 1), user u64, ts_ms u64,
//! aux u32 (format 2: a control entry's actor or an edit's flags, `control.rs`; zero in format 1),
//! crc32 u32 over (version u64 ++ bytes 0..28). Record n (0-based) holds version
//! n + 1, so versions are contiguous by construction.
//!
//! # Crash semantics
//!
//! - An append is acknowledged only after its group's fdatasync. A group is at most [`GROUP`]
//!   records, written by one write(2), and the next group is written only after that fdatasync
//!   returned: at any moment at most the last `GROUP * RECORD` bytes of the file can be
//!   unacknowledged.
//! - The data directory is fsynced at every open, so a newly created `edits.log` (and a newly
//!   created data directory) survives a power loss before its first acknowledgement; every file
//!   the log creates or renames (`placecast log repair`'s saved tail) is followed by one too.
//! - Open reads every record ([`scan`]) and judges the file ([`Scan::state`]):
//!   - clean: every record is valid;
//!   - a torn tail: invalid records and/or a partial record at the end, no valid record after
//!     them, and no more than `GROUP * RECORD` bytes: the last write, cut by a crash before its
//!     fdatasync returned, so never acknowledged. It is cut off with a warning;
//!   - damaged: anything else (an invalid record followed by a valid one, or more invalid bytes
//!     at the end than one write can tear). Acknowledged edits are at stake, so open refuses
//!     with an error naming the file, the first bad version and the operator's commands
//!     (`placecast log verify`, `placecast log repair --truncate-after V`; see `tool.rs`).
//!
//!   What a scan cannot tell apart: a bit flip in the last acknowledged records looks like a
//!   torn tail (cut, with the warning); a last write whose pages reached the disk out of order
//!   (a hole, then valid records) looks like damage (the operator repairs it).
//! - One process at a time: open takes an exclusive `flock` on `edits.log` (repair takes it too,
//!   verify a shared one), so a second server on the same directory refuses to start.
//!
//! # A failed fdatasync: refuse, then exit 75
//!
//! After a failed fdatasync the page cache cannot be trusted: Linux may have dropped the dirty
//! pages and cleared the error, so a retry can "succeed" with the data never on disk
//! ("fsyncgate"), and re-reading the file only reads the same cache. So the writer never
//! retries: it answers every placement of the group, and every one queued after it, with an
//! error (503 `log_unavailable`: nothing acknowledged, the cooldown given back), cuts the group
//! from the file, logs the error, and after [`FATAL_LINGER`] (so those answers reach their
//! clients) exits the process with [`EXIT_FSYNC_FAILED`] (75, `EX_TEMPFAIL`). systemd
//! (`Restart=always`) starts a fresh process, whose recovery reads what is really on disk. The
//! same happens when a failed write cannot be cut back (`ftruncate` fails). A failed write(2)
//! that can be cut back (ENOSPC, EDQUOT) is not fatal: no fsync reported a lost page, so
//! placements get 503 and `/readyz` fails until a write succeeds again.
//!
//! # Fault injection (a test seam, never for production)
//!
//! [`FAULT_FSYNC_FAIL_AT`] (`PLACECAST_FAULT_FSYNC_FAIL_AT=N`), read once by [`FileLog::open`]:
//! the Nth group fdatasync of the process runs and then reports EIO, as a failing disk does.
//! `tests/log_faults.rs` drives the policy above through the real binary with it.

use super::{AppendAck, Committed, CommittedRun, Edit, EditLog, LogError, RunSender};
use crate::names::Names;
use crossbeam_channel::{bounded, Receiver, Select, Sender, TrySendError};
use futures_channel::oneshot;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const RECORD: usize = 32;
/// Appends waiting for the writer; beyond this, placements get 503 instead of piling up.
const QUEUE: usize = 65_536;
/// Most records in one group commit: also the most a crash can leave unacknowledged at the end.
pub const GROUP: usize = 8192;
/// The log's file in the data directory.
pub const LOG_FILE: &str = "edits.log";
/// The exit code after a failed fdatasync (`EX_TEMPFAIL`): restart, and recover from the disk.
pub const EXIT_FSYNC_FAILED: i32 = 75;
/// How long the writer keeps refusing placements after a failed fdatasync before it exits, so
/// the 503 answers of the failed group reach their clients.
pub const FATAL_LINGER: Duration = Duration::from_millis(250);
/// Test seam: `N` makes the Nth group fdatasync of this process report EIO (see the module doc).
pub const FAULT_FSYNC_FAIL_AT: &str = "PLACECAST_FAULT_FSYNC_FAIL_AT";
/// How many runs of bad versions a scan keeps for the operator (it counts them all).
const BAD_RUNS: usize = 16;

type Waiter = oneshot::Sender<Result<u64, LogError>>;

enum Msg {
    Append(Edit, Option<Box<str>>, Waiter),
    /// Edits written contiguously (nothing else between them), acknowledged once all are
    /// durable with the last one's version (`EditLog::append_many`).
    AppendMany(Vec<Edit>, Option<Box<str>>, Waiter),
    /// The user directory, sent once right after open, before any append.
    Names(Arc<Names>),
    /// The switches at the head, sent once the applier has replayed the log (see `take`).
    Switches(crate::control::Switches),
    /// How long a group stays open for more appends (`--commit-window-us`), sent once at start.
    CommitWindow(Duration),
    Tail(u64, Sender<CommittedRun>),
}

pub struct FileLog {
    tx: Sender<Msg>,
    head: Arc<AtomicU64>,
    path: PathBuf,
    /// The last group's write failed (cleared by the next that succeeds): `/readyz` says so.
    failing: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// How a log is opened; `FileLog::open` takes `fsync` from the configuration and the rest from
/// the process (the fault seam, exit on a fatal error). Unit tests do not exit.
struct Options {
    fsync: bool,
    /// The 1-based count of group fdatasyncs whose result is replaced by EIO.
    fail_sync_at: Option<u64>,
    exit_on_fatal: bool,
}

pub fn encode(version: u64, e: &Edit, out: &mut [u8]) {
    out[..RECORD].fill(0);
    out[0..2].copy_from_slice(&e.x.to_le_bytes());
    out[2..4].copy_from_slice(&e.y.to_le_bytes());
    out[4] = e.color;
    debug_assert!(e.ext < 1 << 24, "ext is 24 bits");
    out[5..8].copy_from_slice(&e.ext.to_le_bytes()[..3]);
    out[8..16].copy_from_slice(&e.user.to_le_bytes());
    out[16..24].copy_from_slice(&e.ts_ms.to_le_bytes());
    out[24..28].copy_from_slice(&e.aux.to_le_bytes());
    let crc = checksum(version, &out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(version: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_le_bytes());
    h.update(body);
    h.finalize()
}

pub fn decode(version: u64, r: &[u8]) -> Option<Edit> {
    let crc = u32::from_le_bytes(r[28..32].try_into().unwrap());
    if crc != checksum(version, &r[..28]) {
        return None;
    }
    Some(Edit {
        x: u16::from_le_bytes([r[0], r[1]]),
        y: u16::from_le_bytes([r[2], r[3]]),
        color: r[4],
        ext: u32::from_le_bytes([r[5], r[6], r[7], 0]),
        user: u64::from_le_bytes(r[8..16].try_into().unwrap()),
        ts_ms: u64::from_le_bytes(r[16..24].try_into().unwrap()),
        aux: u32::from_le_bytes(r[24..28].try_into().unwrap()),
    })
}

/// What reading a whole log file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The file's length.
    pub bytes: u64,
    /// Whole records in it.
    pub records: u64,
    /// Versions `1..=good` are valid: the longest valid prefix.
    pub good: u64,
    /// Records that fail their checksum, anywhere.
    pub bad: u64,
    /// The first `BAD_RUNS` runs of bad versions (inclusive ranges), in order.
    pub bad_runs: Vec<(u64, u64)>,
    /// The last valid version anywhere in the file (0 if none).
    pub last_valid: u64,
}

/// What open does with a scanned file (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Clean,
    /// The last write, never acknowledged: `cut_bytes` after version `good` are cut.
    TornTail {
        cut_bytes: u64,
    },
    /// Refused: `first_bad` is the first invalid version and valid data may follow it.
    Damaged {
        first_bad: u64,
    },
}

impl Scan {
    /// Bytes of a partial record at the end.
    pub fn partial(&self) -> u64 {
        self.bytes - self.records * RECORD as u64
    }

    /// The first invalid version, if any record is invalid.
    pub fn first_bad(&self) -> Option<u64> {
        (self.good < self.records).then_some(self.good + 1)
    }

    /// Valid records after the first invalid one.
    pub fn valid_after_bad(&self) -> u64 {
        self.records - self.good - self.bad
    }

    pub fn state(&self) -> State {
        let tail = self.bytes - self.good * RECORD as u64;
        if tail == 0 {
            State::Clean
        } else if self.last_valid <= self.good && tail <= (GROUP * RECORD) as u64 {
            State::TornTail { cut_bytes: tail }
        } else {
            State::Damaged { first_bad: self.good + 1 }
        }
    }
}

/// Reads `bytes` bytes of log from `r` (positioned at its start) and checks every record.
pub fn scan(mut r: impl Read, bytes: u64) -> io::Result<Scan> {
    let records = bytes / RECORD as u64;
    let mut s = Scan { bytes, records, good: 0, bad: 0, bad_runs: Vec::new(), last_valid: 0 };
    let mut rec = [0u8; RECORD];
    for v in 1..=records {
        r.read_exact(&mut rec)?;
        if decode(v, &rec).is_some() {
            if s.bad == 0 {
                s.good = v;
            }
            s.last_valid = v;
            continue;
        }
        s.bad += 1;
        let runs = s.bad_runs.len();
        match s.bad_runs.last_mut() {
            Some(run) if run.1 + 1 == v => run.1 = v,
            _ if runs < BAD_RUNS => s.bad_runs.push((v, v)),
            _ => {}
        }
    }
    Ok(s)
}

/// The refusal of a damaged log: the file, the first bad version, the commands that fix it.
pub fn damage_report(path: &Path, s: &Scan) -> String {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let first = s.good + 1;
    let why = match s.valid_after_bad() {
        0 => format!(
            "the last {} bytes are invalid, more than one unacknowledged write ({GROUP} records) can tear",
            s.bytes - s.good * RECORD as u64
        ),
        n => format!("{} record(s) fail their checksum and {n} valid record(s) come after the first of them", s.bad),
    };
    format!(
        "{}: damaged at version {first}: {why}, so acknowledged edits are at stake and \
         placecast will not start on it. Inspect it with `placecast log verify --data-dir {d}`; then \
         restore {LOG_FILE} from a backup, or keep versions 1..={keep} (every later edit is lost) with \
         `placecast log repair --data-dir {d} --truncate-after {keep}`",
        path.display(),
        d = dir.display(),
        keep = first - 1,
    )
}

/// Takes the log's `flock` (exclusive for a writer or a repair, shared for verify), or says who
/// holds it. A device as the log (tests use /dev/full) is not locked: every user shares its inode.
pub fn lock(file: &File, path: &Path, exclusive: bool) -> Result<(), LogError> {
    let io = |e: io::Error| LogError::Io(format!("{}: {e}", path.display()));
    if !file.metadata().map_err(io)?.is_file() {
        return Ok(());
    }
    match if exclusive { file.try_lock() } else { file.try_lock_shared() } {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(LogError::Unavailable(format!(
            "{}: another process holds the edit log (a running placecast server?); stop it first, \
             two processes on one log would corrupt it",
            path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Names the embedded log in `dir` by its first record, so derived data (the history index)
/// made from another log (a deleted and re-imported one) is recognised as such.
pub fn identity(dir: &Path) -> String {
    let mut first = [0u8; RECORD];
    match File::open(dir.join(LOG_FILE)).and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut first, 0)) {
        Ok(()) => identity_of(&first),
        Err(_) => EMPTY_IDENTITY.into(),
    }
}

/// The identity of an embedded log whose first record is `first`: a hash of the record's fields.
/// Not a CRC of the whole record: the record ends in its own CRC, and a CRC over data followed by
/// its CRC is the same for every record of a version, so every log would look alike.
pub fn identity_of(first: &[u8; RECORD]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(&first[..28]);
    format!("embedded log {}", h[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The identity of an embedded log with no record yet.
pub const EMPTY_IDENTITY: &str = "embedded log (empty)";

/// fsyncs a directory, so the entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then an fsync of the parent of every directory it created.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for d in missing {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// Scans the file, cuts a torn tail, refuses damage, and returns the number of valid records.
fn recover(file: &mut File, path: &Path) -> Result<u64, LogError> {
    let io = |e: io::Error| LogError::Io(format!("{}: {e}", path.display()));
    let bytes = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let s = scan(BufReader::with_capacity(1 << 20, &mut *file), bytes).map_err(io)?;
    match s.state() {
        State::Clean => {}
        State::TornTail { cut_bytes } => {
            tracing::warn!(
                path = %path.display(), kept = s.good, cut_records = s.records - s.good, cut_bytes,
                "cutting a torn tail from the edit log: the last write before a crash, never acknowledged"
            );
            file.set_len(s.good * RECORD as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        State::Damaged { .. } => return Err(LogError::Corrupt(damage_report(path, &s))),
    }
    Ok(s.good)
}

impl FileLog {
    /// Opens (or creates) `dir/edits.log`, locks and recovers it, and starts the writer thread.
    /// Reads the fault seam [`FAULT_FSYNC_FAIL_AT`] once.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, LogError> {
        let fail_sync_at = match std::env::var(FAULT_FSYNC_FAIL_AT) {
            Err(_) => None,
            Ok(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(LogError::Io(format!("{FAULT_FSYNC_FAIL_AT}={v}: must be a positive integer"))),
            },
        };
        if let Some(n) = fail_sync_at {
            tracing::warn!(at = n, "fault injection: group fdatasync {n} of this process will report EIO");
        }
        Self::open_with(dir, Options { fsync, fail_sync_at, exit_on_fatal: true })
    }

    /// As `open`, with the user directory the writer keeps durable alongside the edits.
    pub fn open_with_names(dir: &Path, fsync: bool, names: Arc<Names>) -> Result<Self, LogError> {
        let mut log = Self::open(dir, fsync)?;
        log.set_names(names)?;
        Ok(log)
    }

    fn set_names(&mut self, names: Arc<Names>) -> Result<(), LogError> {
        self.tx.send(Msg::Names(names)).map_err(|_| LogError::Closed)
    }

    /// Keeps each group open up to `window` after its first append, for more appends to share
    /// its fdatasync (0: commit as soon as the queue is empty). Sent before the first append.
    pub fn set_commit_window(&self, window: Duration) -> Result<(), LogError> {
        self.tx.send(Msg::CommitWindow(window)).map_err(|_| LogError::Closed)
    }

    fn open_with(dir: &Path, opts: Options) -> Result<Self, LogError> {
        create_dir_durably(dir).map_err(|e| LogError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| LogError::Io(format!("{}: {e}", path.display())))?;
        lock(&file, &path, true)?;
        // A new edits.log must be in its directory for good before its first acknowledgement;
        // doing it at every open also covers a creation whose process died before the fsync.
        sync_dir(dir).map_err(|e| LogError::Io(format!("{}: {e}", dir.display())))?;
        let count = recover(&mut file, &path)?;
        let head = Arc::new(AtomicU64::new(count));
        let (tx, rx) = bounded(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            file,
            path: path.clone(),
            head: head.clone(),
            fsync: opts.fsync,
            sink: None,
            buf: Vec::new(),
            failing: failing.clone(),
            syncs: 0,
            fail_sync_at: opts.fail_sync_at,
            exit_on_fatal: opts.exit_on_fatal,
            fatal: None,
            names: None,
            names_pending: Vec::new(),
            switches: Default::default(),
            window: Duration::ZERO,
        };
        let writer = std::thread::Builder::new()
            .name("placecast-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::Io(e.to_string()))?;
        Ok(FileLog { tx, head, path, failing, writer: Some(writer) })
    }
}

impl Drop for FileLog {
    /// Disconnects the writer and waits for it: it commits what is queued and closes the file
    /// (releasing the lock) before the directory can be opened again.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.tx, bounded(0).0));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl EditLog for FileLog {
    fn append_named(&self, edit: Edit, name: Option<Box<str>>) -> Result<AppendAck, LogError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Append(edit, name, tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    fn tail(&self, after: u64, sink: Sender<CommittedRun>) -> Result<(), LogError> {
        self.tx.send(Msg::Tail(after, sink)).map_err(|_| LogError::Closed)
    }

    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn set_switches(&self, switches: crate::control::Switches) -> Result<(), LogError> {
        self.tx.send(Msg::Switches(switches)).map_err(|_| LogError::Closed)
    }

    fn append_many(&self, edits: Vec<Edit>, name: Option<Box<str>>) -> Result<AppendAck, LogError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Msg::AppendMany(edits, name, tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    fn describe(&self) -> String {
        format!("embedded log {}", self.path.display())
    }

    fn writable(&self) -> Result<(), String> {
        match self.failing.load(Ordering::Acquire) {
            true => Err(format!("the last write to {} failed", self.path.display())),
            false => Ok(()),
        }
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    head: Arc<AtomicU64>,
    fsync: bool,
    sink: Option<Sender<CommittedRun>>,
    buf: Vec<u8>,
    failing: Arc<AtomicBool>,
    /// Group fdatasyncs so far (for the fault seam).
    syncs: u64,
    fail_sync_at: Option<u64>,
    exit_on_fatal: bool,
    /// Set by a failed fdatasync (or a failed write that cannot be cut back): nothing more is
    /// written, every placement is refused, and the process exits.
    fatal: Option<LogError>,
    /// The user directory, and the names the current group's edits carry (`names.rs`).
    names: Option<Arc<Names>>,
    names_pending: Vec<(u64, Box<str>)>,
    /// The switches at the end of what is queued (`control.rs`): appends are judged against
    /// them in the order they are written, so the log never holds an edit they refuse.
    switches: crate::control::Switches,
    /// How long a group waits for more appends after its first (see `run`).
    window: Duration,
}

impl Writer {
    /// Groups appends: everything queued, and (with a commit window, and only when fdatasync is
    /// on) what arrives within the window after the group's first append (the writer sleeps
    /// out the window, then takes the queue). Under a steady trickle
    /// of placements (1,000/s is one every millisecond) each fdatasync would otherwise carry one
    /// edit; the window trades up to `window` of acknowledgement latency (invisible next to a
    /// 100 ms batch interval) for fewer, larger groups.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut group: Vec<(Edit, Waiter)> = Vec::with_capacity(GROUP);
        // Waits through a one-operation `Select`, not `rx.recv()`: crossbeam's `recv` spins and
        // then calls `sched_yield` up to four times before it parks, and on the core the writer
        // shares with a shard each yield is a switch to it and back (strace at 1,000 placements/s:
        // 3.6 yields per commit). `Select::select` parks at once. (A one-arm `select!` would not
        // do: the macro turns it back into `recv`.)
        let mut idle = Select::new_biased();
        idle.recv(&rx);
        while let Ok(first) = idle.select().recv(&rx) {
            let close_at = Instant::now() + self.window;
            self.take(first, &mut group);
            while group.len() < GROUP && self.fatal.is_none() {
                match rx.try_recv() {
                    Ok(m) => {
                        self.take(m, &mut group);
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                }
                let now = Instant::now();
                if group.is_empty() || !self.fsync || now >= close_at {
                    break;
                }
                // Asleep rather than parked on the channel: an append then wakes nobody (no
                // futex call on the placing shard per placement); what came meanwhile is taken
                // by the next turn of this loop.
                std::thread::sleep(close_at - now);
            }
            if !group.is_empty() && self.fatal.is_none() {
                self.commit(&mut group);
            }
            if let Some(err) = self.fatal.take() {
                return self.refuse_from_now_on(err, group, rx);
            }
        }
    }

    fn take(&mut self, m: Msg, group: &mut Vec<(Edit, Waiter)>) {
        match m {
            Msg::Append(e, name, tx) => {
                if let Err(r) = self.gate(&e) {
                    let _ = tx.send(Err(LogError::Refused(r)));
                    return;
                }
                if let Some(n) = name {
                    self.names_pending.push((e.user, n));
                }
                group.push((e, tx))
            }
            Msg::AppendMany(edits, name, tx) => self.commit_many(edits, name, tx, group),
            Msg::Names(n) => self.names = Some(n),
            Msg::Switches(s) => self.switches = s,
            Msg::CommitWindow(w) => self.window = w,
            Msg::Tail(after, sink) => {
                // Commit what is pending first, so the replay and the live feed meet exactly.
                if !group.is_empty() && self.fatal.is_none() {
                    self.commit(group);
                }
                if self.fatal.is_some() {
                    return;
                }
                if let Err(e) = self.replay(after, &sink) {
                    tracing::error!(error = %e, "replaying the edit log failed");
                }
                self.sink = Some(sink);
            }
        }
    }

    /// After a fatal error: refuses `group` and every later placement; in a server, exits after
    /// `FATAL_LINGER` (see the module doc).
    fn refuse_from_now_on(self, err: LogError, mut group: Vec<(Edit, Waiter)>, rx: Receiver<Msg>) {
        let refuse = |m: Msg| match m {
            Msg::Append(_, _, tx) | Msg::AppendMany(_, _, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
            _ => {}
        };
        for (_, tx) in group.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        if !self.exit_on_fatal {
            while let Ok(m) = rx.recv() {
                refuse(m);
            }
            return;
        }
        let until = Instant::now() + FATAL_LINGER;
        while let Ok(m) = rx.recv_deadline(until) {
            refuse(m);
        }
        tracing::error!(
            code = EXIT_FSYNC_FAILED, path = %self.path.display(),
            "exiting after an edit log failure: a fresh process recovers the log from what is on disk"
        );
        std::process::exit(EXIT_FSYNC_FAILED);
    }

    fn replay(&self, after: u64, sink: &Sender<CommittedRun>) -> Result<(), LogError> {
        let head = self.head.load(Ordering::Acquire);
        if after >= head {
            return Ok(());
        }
        let mut f = File::open(&self.path).map_err(|e| LogError::Io(e.to_string()))?;
        f.seek(SeekFrom::Start(after * RECORD as u64)).map_err(|e| LogError::Io(e.to_string()))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut rec = [0u8; RECORD];
        let mut runs = RunSender::new(sink, (head - after) as usize);
        for v in after + 1..=head {
            r.read_exact(&mut rec).map_err(|e| LogError::Io(e.to_string()))?;
            let edit = decode(v, &rec).ok_or_else(|| LogError::Corrupt(format!("record {v} changed on disk")))?;
            runs.push(Committed { version: v, edit }).map_err(|_| LogError::Closed)?;
        }
        runs.flush().map_err(|_| LogError::Closed)
    }

    /// Writes the whole buffer; on an error, also says how many bytes reached the file.
    fn write_buf(&mut self) -> Result<(), (usize, io::Error)> {
        let mut done = 0;
        while done < self.buf.len() {
            match self.file.write(&self.buf[done..]) {
                Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }

    /// Makes the group's new display names durable before its edits are: a name is never lost
    /// behind an acknowledged edit. A failure costs only the names (a warning; the users show as
    /// unknown until a later edit carries the name again), never the edits.
    fn persist_names(&mut self) {
        let pending = std::mem::take(&mut self.names_pending);
        let Some(names) = &self.names else { return };
        if let Err(e) = names.persist(&pending) {
            tracing::warn!(error = %e, "writing the user directory failed; those users show as unknown");
        }
    }

    /// One group fdatasync, through the fault seam.
    fn sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        let result = self.file.sync_data();
        match self.fail_sync_at == Some(self.syncs) {
            true => result.and(Err(io::Error::from_raw_os_error(libc::EIO))),
            false => result,
        }
    }

    /// Refuses `group` with `why` and makes the writer refuse everything from now on.
    fn fail(&mut self, why: String, group: &mut Vec<(Edit, Waiter)>) {
        self.failing.store(true, Ordering::Release);
        let err = LogError::Io(why);
        for (_, tx) in group.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        self.fatal = Some(err);
    }

    /// Judges `e` against the switches in the order the log is written: a control entry changes
    /// them; a pixel edit they refuse must not be written.
    fn gate(&mut self, e: &Edit) -> Result<(), crate::control::Refusal> {
        match crate::control::classify(e) {
            crate::control::Entry::Control(c) => {
                self.switches.apply(&c);
                Ok(())
            }
            crate::control::Entry::Pixel => self.switches.refuse(e).map_or(Ok(()), Err),
            crate::control::Entry::Unknown(_) | crate::control::Entry::Void => Ok(()),
        }
    }

    /// `edits` in groups of at most `GROUP` (so a crash still tears at most one group), one
    /// right after the other, after what `group` holds. Answers `tx` with the last version once
    /// all are durable, or with the first group's failure (the groups before it stay: they are
    /// durable, like any acknowledged group, and the caller was told the whole did not finish).
    fn commit_many(&mut self, edits: Vec<Edit>, name: Option<Box<str>>, tx: Waiter, group: &mut Vec<(Edit, Waiter)>) {
        if !group.is_empty() && self.fatal.is_none() {
            self.commit(group);
        }
        // The name is the pixel edits' user's (a control entry's `user` is its argument).
        let user = edits.iter().find(|e| e.x != crate::control::CONTROL_X).map(|e| e.user);
        if let (Some(n), Some(u)) = (name, user) {
            self.names_pending.push((u, n));
        }
        let mut last = Ok(self.head.load(Ordering::Acquire));
        for chunk in edits.chunks(GROUP) {
            if self.fatal.is_some() {
                last = Err(LogError::Closed);
                break;
            }
            let mut acks = Vec::with_capacity(chunk.len());
            // A region's edits are exempt from the switches (`control::EDIT_REGION`); anything
            // else they refuse is left out, as a single append would be.
            for e in chunk {
                if self.gate(e).is_err() {
                    continue;
                }
                let (t, r) = oneshot::channel();
                group.push((*e, t));
                acks.push(r);
            }
            if acks.is_empty() {
                continue;
            }
            self.commit(group);
            match acks.pop().and_then(|mut r| r.try_recv().ok().flatten()) {
                Some(Ok(v)) => last = Ok(v),
                Some(Err(e)) => {
                    last = Err(e);
                    break;
                }
                None => {
                    last = Err(self.fatal.clone().unwrap_or(LogError::Closed));
                    break;
                }
            }
        }
        let _ = tx.send(last);
    }

    fn commit(&mut self, group: &mut Vec<(Edit, Waiter)>) {
        self.persist_names();
        let head = self.head.load(Ordering::Acquire);
        let durable = head * RECORD as u64;
        self.buf.resize(group.len() * RECORD, 0);
        for (i, (e, _)) in group.iter().enumerate() {
            encode(head + 1 + i as u64, e, &mut self.buf[i * RECORD..]);
        }
        if let Err((written, e)) = self.write_buf() {
            // No fdatasync failed, so the file up to `head` is known durable: cut what this write
            // added (positions are versions) and refuse the group; a later group may succeed.
            if written > 0 {
                if let Err(e2) = self.file.set_len(durable) {
                    tracing::error!(error = %e, cut_error = %e2, path = %self.path.display(), "edit log write failed and cannot be cut back");
                    let why = format!("writing {} failed ({e}) and cutting it back failed ({e2})", self.path.display());
                    return self.fail(why, group);
                }
            }
            tracing::error!(error = %e, path = %self.path.display(), "edit log write failed; placements get 503 until it recovers");
            self.failing.store(true, Ordering::Release);
            let err = LogError::Io(e.to_string());
            for (_, tx) in group.drain(..) {
                let _ = tx.send(Err(err.clone()));
            }
            return;
        }
        if self.fsync {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, path = %self.path.display(), records = group.len(),
                    "fdatasync of the edit log failed: the group is refused and never retried (the page cache cannot be trusted); exiting");
                // Best effort: the file back to the last durable record, so the refused group is
                // not served after the restart if this reaches the disk.
                if let Err(e2) = self.file.set_len(durable).and_then(|_| self.file.sync_all()) {
                    tracing::error!(error = %e2, "cannot cut the refused group from the edit log");
                }
                return self.fail(format!("fdatasync of {} failed: {e}", self.path.display()), group);
            }
        }
        self.failing.store(false, Ordering::Release);
        self.head.store(head + group.len() as u64, Ordering::Release);
        // The applier gets the group as runs before the first answer goes out: an answer wakes
        // its shard, which on a shared core preempts this thread; a run per edit would wake the
        // applier once per edit as well.
        if let Some(sink) = &self.sink {
            let mut runs = RunSender::new(sink, group.len());
            for (i, (edit, _)) in group.iter().enumerate() {
                // A closed sink: the process is stopping; the answers below still go out.
                let _ = runs.push(Committed { version: head + 1 + i as u64, edit: *edit });
            }
            let _ = runs.flush();
        }
        // One wake per shard for the whole group (glommio's hunk 7, vendor/README.md): without
        // the batch the first answer wakes its shard, which preempts this thread on their shared
        // core and goes back to sleep before the next answer wakes it again.
        let _one_wake_per_shard = glommio::batch_foreign_wakes();
        for (i, (_, tx)) in group.drain(..).enumerate() {
            let _ = tx.send(Ok(head + 1 + i as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn edit(i: u16) -> Edit {
        Edit { x: i, y: i + 1, color: (i % 16) as u8, user: 1000 + i as u64, ts_ms: 5 + i as u64, ext: 0, aux: 0 }
    }

    /// The next `n` edits of a tail, across its runs; a run must not straddle the `n`.
    fn received(rx: &Receiver<CommittedRun>, n: usize) -> Vec<Committed> {
        let mut got = Vec::new();
        while got.len() < n {
            let run = rx.recv().unwrap();
            assert!(!run.is_empty() && run.len() <= crate::edit_log::TAIL_RUN, "a run of {}", run.len());
            got.extend(run);
        }
        assert_eq!(got.len(), n, "a run went past the edits expected");
        assert!(got.windows(2).all(|w| w[1].version == w[0].version + 1), "contiguous");
        got
    }

    fn block<T>(rx: oneshot::Receiver<T>) -> T {
        futures_lite::future::block_on(rx).unwrap()
    }

    /// A log of `n` valid records, written directly (no writer thread).
    fn write_log(dir: &Path, n: u64) -> PathBuf {
        let mut bytes = vec![0u8; n as usize * RECORD];
        for v in 1..=n {
            encode(v, &edit(v as u16), &mut bytes[(v as usize - 1) * RECORD..]);
        }
        let path = dir.join(LOG_FILE);
        std::fs::write(&path, &bytes).unwrap();
        path
    }

    fn corrupt(path: &Path, version: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[(version as usize - 1) * RECORD + 1] ^= 0xff;
        std::fs::write(path, &bytes).unwrap();
    }

    fn append_bytes(path: &Path, b: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b).unwrap();
    }

    fn refusal(dir: &Path) -> String {
        match FileLog::open(dir, true) {
            Err(LogError::Corrupt(m)) => m,
            other => panic!("expected a refusal, got {:?}", other.map(|l| l.head())),
        }
    }

    fn scan_file(path: &Path) -> Scan {
        let bytes = std::fs::metadata(path).unwrap().len();
        scan(File::open(path).unwrap(), bytes).unwrap()
    }

    #[test]
    fn record_roundtrip_and_crc_binds_version() {
        let mut r = [0u8; RECORD];
        encode(9, &edit(3), &mut r);
        assert_eq!(decode(9, &r), Some(edit(3)));
        assert_eq!(decode(10, &r), None);
    }

    #[test]
    fn append_tail_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = FileLog::open(dir.path(), true).unwrap();
            // Room for every edit the test appends before it reads them.
            let (tx, rx) = bounded(128);
            log.tail(0, tx).unwrap();
            let acks: Vec<_> = (0..100).map(|i| log.append(edit(i)).unwrap()).collect();
            let versions: Vec<u64> = acks.into_iter().map(|a| block(a).unwrap()).collect();
            assert_eq!(versions, (1..=100).collect::<Vec<_>>());
            let got = received(&rx, 100);
            assert_eq!(got[42], Committed { version: 43, edit: edit(42) });
        }
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(log.head(), 100);
        let (tx, rx) = bounded(128);
        log.tail(90, tx).unwrap();
        assert_eq!(received(&rx, 10).iter().map(|c| c.version).collect::<Vec<_>>(), (91..=100).collect::<Vec<_>>());
        assert_eq!(block(log.append(edit(7)).unwrap()).unwrap(), 101);
        assert_eq!(received(&rx, 1), vec![Committed { version: 101, edit: edit(7) }]);
    }

    #[test]
    fn open_creates_the_directory_and_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let log = FileLog::open(&dir, true).unwrap();
        assert_eq!(block(log.append(edit(1)).unwrap()).unwrap(), 1);
        assert_eq!(std::fs::metadata(dir.join(LOG_FILE)).unwrap().len(), RECORD as u64);
    }

    #[test]
    fn a_partial_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = FileLog::open(dir.path(), true).unwrap();
            for i in 0..10 {
                block(log.append(edit(i)).unwrap()).unwrap();
            }
        }
        let path = dir.path().join(LOG_FILE);
        append_bytes(&path, &[7u8; 13]);
        assert_eq!(scan_file(&path).state(), State::TornTail { cut_bytes: 13 });
        assert_eq!(FileLog::open(dir.path(), true).unwrap().head(), 10);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * RECORD as u64);
    }

    #[test]
    fn bad_records_at_the_end_within_one_group_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 20);
        // Garbage records, a zero-filled record (a size extended before its data), half a record.
        append_bytes(&path, &[7u8; 2 * RECORD]);
        append_bytes(&path, &[0u8; RECORD]);
        append_bytes(&path, &[9u8; RECORD / 2]);
        let s = scan_file(&path);
        assert_eq!((s.records, s.good, s.bad, s.bad_runs.clone()), (23, 20, 3, vec![(21, 23)]));
        assert_eq!(s.state(), State::TornTail { cut_bytes: 3 * RECORD as u64 + 16 });
        // Damage in the last acknowledged records looks the same and is cut too (module doc).
        corrupt(&path, 20);
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(log.head(), 19);
        assert_eq!(block(log.append(edit(5)).unwrap()).unwrap(), 20);
    }

    #[test]
    fn a_bad_record_followed_by_valid_ones_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 100);
        corrupt(&path, 50);
        let s = scan_file(&path);
        assert_eq!((s.good, s.bad, s.valid_after_bad(), s.first_bad()), (49, 1, 50, Some(50)));
        assert_eq!(s.state(), State::Damaged { first_bad: 50 });
        let m = refusal(dir.path());
        let d = dir.path().display();
        assert!(m.contains(&path.display().to_string()), "names the file: {m}");
        assert!(m.contains("damaged at version 50"), "{m}");
        assert!(m.contains(&format!("placecast log verify --data-dir {d}")), "{m}");
        assert!(m.contains(&format!("placecast log repair --data-dir {d} --truncate-after 49")), "{m}");
        // The refusal changes nothing on disk.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100 * RECORD as u64);
        // The first record bad: keep nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3);
        corrupt(&path, 1);
        assert!(refusal(dir.path()).contains("--truncate-after 0"));
    }

    #[test]
    fn more_bad_records_at_the_end_than_one_group_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 10);
        append_bytes(&path, &vec![7u8; (GROUP + 1) * RECORD]);
        let s = scan_file(&path);
        assert_eq!((s.bad, s.valid_after_bad()), (GROUP as u64 + 1, 0));
        assert_eq!(s.state(), State::Damaged { first_bad: 11 });
        let m = refusal(dir.path());
        assert!(m.contains("more than one unacknowledged write"), "{m}");
        assert!(m.contains("--truncate-after 10"), "{m}");
        // Exactly one group's worth is still a torn tail.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len((10 + GROUP as u64) * RECORD as u64)
            .unwrap();
        assert_eq!(FileLog::open(dir.path(), true).unwrap().head(), 10);
    }

    #[test]
    fn scan_counts_every_bad_record_and_keeps_the_first_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 200);
        for v in [5, 6, 7, 40, 199] {
            corrupt(&path, v);
        }
        let s = scan_file(&path);
        assert_eq!((s.good, s.bad, s.last_valid), (4, 5, 200));
        assert_eq!(s.bad_runs, vec![(5, 7), (40, 40), (199, 199)]);
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        match FileLog::open(dir.path(), true) {
            Err(LogError::Unavailable(m)) => assert!(m.contains("another process holds the edit log"), "{m}"),
            other => panic!("a second writer must be refused, got {:?}", other.map(|l| l.head())),
        }
        let f = File::open(dir.path().join(LOG_FILE)).unwrap();
        assert!(lock(&f, &dir.path().join(LOG_FILE), false).is_err(), "not even a reader while a writer holds it");
        drop(f);
        drop(log);
        // Dropping the log releases the lock at once.
        FileLog::open(dir.path(), true).unwrap();
    }

    #[test]
    fn appends_within_the_commit_window_share_one_fdatasync() {
        // The second group fdatasync fails: only appends that shared the first one succeed.
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { fsync: true, fail_sync_at: Some(2), exit_on_fatal: false };
        let log = FileLog::open_with(dir.path(), opts).unwrap();
        log.set_commit_window(Duration::from_secs(2)).unwrap();
        // Apart, so that without the window each would be its own group (and the second fail).
        let acks: Vec<_> = (1..=3)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(50));
                log.append(edit(i)).unwrap()
            })
            .collect();
        let got: Vec<_> = acks.into_iter().map(block).collect();
        assert_eq!(got, vec![Ok(1), Ok(2), Ok(3)], "one group: appended one by one, within the window");
        assert!(block(log.append(edit(4)).unwrap()).is_err(), "the next group is the second fdatasync");
    }

    #[test]
    fn a_group_reaches_the_tail_as_runs_of_at_most_tail_run() {
        use crate::edit_log::TAIL_RUN;
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        let (tx, rx) = bounded(16);
        log.tail(0, tx).unwrap();
        // One message, so one group commit: the applier is woken per run, not per edit.
        let n = 2 * TAIL_RUN + 88;
        assert_eq!(block(log.append_many((0..n as u16).map(edit).collect(), None).unwrap()), Ok(n as u64));
        let sizes: Vec<usize> = rx.try_iter().map(|r| r.len()).collect();
        assert_eq!(sizes, vec![TAIL_RUN, TAIL_RUN, 88], "sent before the answer, in full runs");
        // A reopened log replays in the same runs.
        drop(log);
        let log = FileLog::open(dir.path(), true).unwrap();
        let (tx, rx) = bounded(16);
        log.tail(1, tx).unwrap();
        assert_eq!(received(&rx, n - 1).first().map(|c| c.version), Some(2));
    }

    #[test]
    fn a_failed_fdatasync_is_never_retried() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { fsync: true, fail_sync_at: Some(3), exit_on_fatal: false };
        let log = FileLog::open_with(dir.path(), opts).unwrap();
        let (tx, rx) = bounded(128);
        log.tail(0, tx).unwrap();
        assert_eq!(block(log.append(edit(1)).unwrap()), Ok(1));
        assert_eq!(block(log.append(edit(2)).unwrap()), Ok(2));
        match block(log.append(edit(3)).unwrap()) {
            Err(LogError::Io(m)) => assert!(m.contains("fdatasync") && m.contains("Input/output error"), "{m}"),
            other => panic!("the failed group must be refused, got {other:?}"),
        }
        // Never retried: every later placement is refused too, though the disk works again.
        for i in 4..8 {
            assert!(matches!(block(log.append(edit(i)).unwrap()), Err(LogError::Io(_))));
        }
        assert_eq!(log.head(), 2);
        assert!(log.writable().is_err());
        assert_eq!(
            rx.try_iter().flatten().map(|c| c.version).collect::<Vec<_>>(),
            vec![1, 2],
            "only acknowledged edits are applied"
        );
        drop(log);
        // The injected failure came after a real fdatasync, so the refused record was on disk:
        // the writer cut it, and a fresh open serves exactly the acknowledged edits.
        assert_eq!(std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(), 2 * RECORD as u64);
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(log.head(), 2);
        assert_eq!(block(log.append(edit(9)).unwrap()), Ok(3));
    }

    #[test]
    fn a_failed_write_is_refused_and_the_log_goes_on() {
        // /dev/full: every write fails with ENOSPC; nothing was fsynced wrongly, so it is not fatal.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(LOG_FILE)).unwrap();
        let log =
            FileLog::open_with(dir.path(), Options { fsync: true, fail_sync_at: None, exit_on_fatal: false }).unwrap();
        for i in 0..3 {
            assert!(matches!(block(log.append(edit(i)).unwrap()), Err(LogError::Io(_))));
        }
        assert_eq!(log.head(), 0);
        assert!(log.writable().is_err());
    }
}
