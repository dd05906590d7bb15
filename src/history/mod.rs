//! The history index: every version the applier applies, kept on disk so that anyone can ask
//! who placed a pixel (and the pixel's earlier edits), see the canvas at any version or time, and
//! read whole chunks of past edits. The applier alone writes it (`HistoryWriter`, in log order,
//! so every node of a cluster holds the same index); shards read it (`HistoryReader`) on
//! blocking threads.
//!
//! Files in `--data-dir/history/`:
//! - `edits.hist`: a 64-byte header (magic `PCH1`, format 1, the first version it covers `base`,
//!   the canvas size, a hash of the log's identity, crc32), then one 32-byte record per version
//!   `base+1, base+2, ...` (little-endian): x u16, y u16, color u8, flags u8 (bit 7: present,
//!   bit 0: the edit changed the pixel; rejected or outside edits are recorded unapplied),
//!   check u16 (the low 16 bits of a crc32 over the version and the other 30 bytes), user u64,
//!   ts_ms u64, prev u64 (the version of the previous APPLIED edit of the same pixel, 0 if none).
//!   The `prev` links make a pixel's history a list on disk: the last N edits of a pixel cost N
//!   32-byte reads, at any log length.
//! - `kf-<version>.bin`: keyframes (`keyframe.rs`), the canvas at every multiple of
//!   `--keyframe-every` versions: the canvas at V is the keyframe at or before V plus at most
//!   `keyframe_every` records.
//!
//! Memory: one u64 per pixel (the version of its last applied edit: 8 MB at 1000x1000) and one
//! u64 per 4,096 versions (the running maximum of the edits' timestamps, for `?t=`).
//!
//! Size: the header holds the canvas's size at `base`; a resize entry (a control record,
//! `control::resize_of`, kept like any record) grows it from its version on, by the same rule as
//! the applier (`Geometry::grown`). The per-pixel heads are then copied into a larger table
//! (swapped whole, so a reader sees one size or the other), keyframes carry their own size, and
//! the canvas at V has the size the log had at V.
//!
//! Crash semantics: this is derived data, never fsynced; records are written (one write(2) per
//! turn of the applier's loop) before the in-memory heads that point at them are published, so
//! a reader only follows links to records in the file. At open, records are checked in order
//! and the file is cut at the first bad one and at the log's head (a repaired log may be
//! shorter); versions the file already holds are not written again. A history that does not
//! reach the applier's starting version (a node restored from a checkpoint whose history was
//! lost) starts again at that version: see `HistoryWriter::begin`.
//!
//! Deliberately not here: HTTP (`routes.rs`), who may see names (`Lookup`), the display names
//! themselves (`names.rs`).

pub mod keyframe;
pub mod routes;

use crate::bounds::{HISTORY_BUFFER, HISTORY_CACHE};
use crate::canvas::{Canvas, Geometry};
use crate::edit_log::Edit;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;

pub const HISTORY_DIR: &str = "history";
const FILE: &str = "edits.hist";
const HEADER: usize = 64;
pub const RECORD: usize = 32;
const MAGIC: &[u8; 4] = b"PCH1";
const FORMAT: u32 = 1;
/// Versions per entry of the time index.
const TIME_STEP: u64 = 4096;
const PRESENT: u8 = 0x80;
const APPLIED: u8 = 0x01;

const _: () = assert!(RECORD == 32 && HEADER == 64);

/// Who a pixel lookup names (`--pixel-lookup`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookup {
    /// The display name from the user's token.
    Names,
    /// A keyed hash of the user (12 hex digits, the same on every node sharing the secret):
    /// edits by one user can be grouped, but not named.
    Hashed,
    /// `GET /api/v1/pixel` answers 403 `pixel_lookup_off`.
    Off,
}

/// The version of each pixel's last applied edit (0: never edited since `base`), for one size.
struct Heads {
    width: u32,
    height: u32,
    slots: Box<[AtomicU64]>,
}

impl Heads {
    fn new(width: u32, height: u32) -> Heads {
        Heads { width, height, slots: (0..width as usize * height as usize).map(|_| AtomicU64::new(0)).collect() }
    }

    fn index(&self, x: u32, y: u32) -> Option<usize> {
        (x < self.width && y < self.height).then(|| y as usize * self.width as usize + x as usize)
    }

    /// A copy grown to `width`x`height` (each pixel at its (x, y)).
    fn grown(&self, width: u32, height: u32) -> Heads {
        let out = Heads::new(width, height);
        for (i, slot) in self.slots.iter().enumerate() {
            let (x, y) = ((i % self.width as usize) as u32, (i / self.width as usize) as u32);
            if let Some(j) = out.index(x, y) {
                out.slots[j].store(slot.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        out
    }
}

/// One version as the history holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub version: u64,
    pub x: u16,
    pub y: u16,
    pub color: u8,
    /// Whether the edit changed the pixel (false: rejected in log order, or outside the canvas).
    pub applied: bool,
    pub user: u64,
    pub ts_ms: u64,
    /// The previous applied edit of this pixel (0: none).
    pub prev: u64,
}

impl Rec {
    /// The size a resize entry asks for, if this is one (`control::resize_of`).
    pub fn resize(&self) -> Option<(u32, u32)> {
        let e = Edit { x: self.x, y: self.y, color: self.color, user: self.user, ts_ms: self.ts_ms, ext: 0, aux: 0 };
        crate::control::resize_of(&e)
    }
}

fn check(version: u64, b: &[u8]) -> u16 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_le_bytes());
    h.update(&b[0..6]);
    h.update(&b[8..32]);
    h.finalize() as u16
}

pub fn encode_rec(r: &Rec, out: &mut [u8]) {
    out[0..2].copy_from_slice(&r.x.to_le_bytes());
    out[2..4].copy_from_slice(&r.y.to_le_bytes());
    out[4] = r.color;
    out[5] = PRESENT | if r.applied { APPLIED } else { 0 };
    out[8..16].copy_from_slice(&r.user.to_le_bytes());
    out[16..24].copy_from_slice(&r.ts_ms.to_le_bytes());
    out[24..32].copy_from_slice(&r.prev.to_le_bytes());
    let c = check(r.version, out);
    out[6..8].copy_from_slice(&c.to_le_bytes());
}

pub fn decode_rec(version: u64, b: &[u8]) -> Option<Rec> {
    let b = b.get(..RECORD)?;
    if b[5] & PRESENT == 0 || u16::from_le_bytes([b[6], b[7]]) != check(version, b) {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let prev = u64_at(24);
    if prev >= version {
        return None;
    }
    Some(Rec {
        version,
        x: u16::from_le_bytes([b[0], b[1]]),
        y: u16::from_le_bytes([b[2], b[3]]),
        color: b[4],
        applied: b[5] & APPLIED != 0,
        user: u64_at(8),
        ts_ms: u64_at(16),
        prev,
    })
}

/// The file's header: which log and canvas the records belong to, and the first version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    base: u64,
    width: u32,
    height: u32,
    log_id: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        h[8..16].copy_from_slice(&self.base.to_le_bytes());
        h[16..20].copy_from_slice(&self.width.to_le_bytes());
        h[20..24].copy_from_slice(&self.height.to_le_bytes());
        h[24..32].copy_from_slice(&self.log_id.to_le_bytes());
        let crc = crc32fast::hash(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> Option<Header> {
        let h = h.get(..HEADER)?;
        let crc = u32::from_le_bytes(h[60..64].try_into().ok()?);
        if &h[0..4] != MAGIC
            || u32::from_le_bytes(h[4..8].try_into().ok()?) != FORMAT
            || crc != crc32fast::hash(&h[..60])
        {
            return None;
        }
        Some(Header {
            base: u64::from_le_bytes(h[8..16].try_into().ok()?),
            width: u32::from_le_bytes(h[16..20].try_into().ok()?),
            height: u32::from_le_bytes(h[20..24].try_into().ok()?),
            log_id: u64::from_le_bytes(h[24..32].try_into().ok()?),
        })
    }
}

/// A stable hash of the log's identity (the file log's path is not: any embedded log is "file").
pub fn log_id_hash(id: &str) -> u64 {
    crate::token::user_key(id)
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("version {asked} is beyond the log (its last version is {head})")]
    NotYet { asked: u64, head: u64 },
    #[error("this node's history starts at version {base}; ask another node or a CDN for older versions")]
    Unavailable { base: u64 },
    #[error("reading the history failed: {0}")]
    Io(String),
    #[error("the history is damaged at version {0}")]
    Damaged(u64),
}

impl From<io::Error> for HistoryError {
    fn from(e: io::Error) -> Self {
        HistoryError::Io(e.to_string())
    }
}

/// What a built answer is, for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Built {
    Canvas(u64),
    Png(u64),
    Edits(u64, u64),
}

/// The read side, shared by every shard (see the module doc).
pub struct HistoryReader {
    dir: PathBuf,
    file: File,
    base: u64,
    /// The canvas's geometry at `base` (the palette never changes).
    geometry: Geometry,
    /// The heads at the current size (swapped whole at a resize).
    heads: RwLock<Arc<Heads>>,
    /// Resizes after `base` that grew the canvas, `(version, width, height)` ascending.
    resizes: RwLock<Vec<(u64, u32, u32)>>,
    /// Every version up to this is in the file.
    flushed: AtomicU64,
    /// Running maximum timestamp at versions `base + (i + 1) * TIME_STEP`.
    times: RwLock<Vec<u64>>,
    first_ts: AtomicU64,
    last_ts: AtomicU64,
    keyframe_every: u64,
    keyframes: RwLock<BTreeSet<u64>>,
    pub lookup: Lookup,
    hash_key: [u8; 32],
    /// Builds from disk in progress (`bounds::HISTORY_BUILDS`).
    pub builds: AtomicUsize,
    cache: Mutex<VecDeque<(Built, Bytes)>>,
}

impl HistoryReader {
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The last version a reader can ask for.
    pub fn version(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    pub fn first_ts_ms(&self) -> u64 {
        self.first_ts.load(Ordering::Relaxed)
    }

    pub fn last_ts_ms(&self) -> u64 {
        self.last_ts.load(Ordering::Relaxed)
    }

    /// The geometry at `base`.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The geometry the canvas had after version `v` was applied.
    pub fn geometry_at(&self, v: u64) -> Geometry {
        let r = self.resizes.read().unwrap_or_else(|p| p.into_inner());
        match r.iter().rev().find(|r| r.0 <= v) {
            Some(&(_, width, height)) => Geometry { width, height, palette: self.geometry.palette.clone() },
            None => self.geometry.clone(),
        }
    }

    fn heads(&self) -> Arc<Heads> {
        self.heads.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn keyframe_count(&self) -> usize {
        self.keyframes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user as `--pixel-lookup hashed` shows them: the first 12 hex digits of the keyed hash
    /// `export --anonymize-users` writes.
    pub fn hashed_user(&self, user: u64) -> String {
        format!("{:016x}", keyed_user_hash(&self.hash_key, user))[..12].to_string()
    }

    fn check_version(&self, v: u64) -> Result<(), HistoryError> {
        let head = self.version();
        if v > head {
            return Err(HistoryError::NotYet { asked: v, head });
        }
        if v < self.base {
            return Err(HistoryError::Unavailable { base: self.base });
        }
        Ok(())
    }

    /// The record of version `v` (base < v <= version()).
    pub fn record(&self, v: u64) -> Result<Rec, HistoryError> {
        let mut b = [0u8; RECORD];
        self.file.read_exact_at(&mut b, HEADER as u64 + (v - self.base - 1) * RECORD as u64)?;
        decode_rec(v, &b).ok_or(HistoryError::Damaged(v))
    }

    /// Records `(from, to]`, in order.
    pub fn records(&self, from: u64, to: u64) -> Result<Vec<Rec>, HistoryError> {
        let mut buf = vec![0u8; ((to - from) as usize) * RECORD];
        self.file.read_exact_at(&mut buf, HEADER as u64 + (from - self.base) * RECORD as u64)?;
        buf.chunks_exact(RECORD)
            .enumerate()
            .map(|(i, b)| {
                let v = from + 1 + i as u64;
                decode_rec(v, b).ok_or(HistoryError::Damaged(v))
            })
            .collect()
    }

    /// The last `n` applied edits of pixel `(x, y)`, newest first (`None`: outside the canvas as
    /// the history has applied it so far).
    pub fn pixel(&self, x: u32, y: u32, n: usize) -> Option<Result<Vec<Rec>, HistoryError>> {
        let heads = self.heads();
        let mut v = heads.slots[heads.index(x, y)?].load(Ordering::Acquire);
        let mut out = Vec::with_capacity(n.min(16));
        while v > self.base && out.len() < n {
            match self.record(v) {
                Ok(r) => {
                    v = r.prev;
                    out.push(r);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    /// The newest version whose edits all carry timestamps at most `t_ms` (timestamps taken as
    /// their running maximum, so the answer is one version even when clocks of several nodes
    /// disagree by a little). `base` if no edit is that old.
    pub fn version_at(&self, t_ms: u64) -> Result<u64, HistoryError> {
        let head = self.version();
        let (start, mut running) = {
            let times = self.times.read().unwrap_or_else(|p| p.into_inner());
            let i = times.partition_point(|&m| m <= t_ms);
            let prev = if i > 0 { times[i - 1] } else { 0 };
            (self.base + i as u64 * TIME_STEP, prev)
        };
        if start >= head {
            return Ok(head.max(self.base));
        }
        let end = (start + TIME_STEP).min(head);
        let mut answer = start;
        for r in self.records(start, end)? {
            running = running.max(r.ts_ms);
            if running > t_ms {
                break;
            }
            answer = r.version;
        }
        Ok(answer)
    }

    /// The canvas at version `v`: the nearest keyframe at or before it plus the records after.
    pub fn canvas_at(&self, v: u64) -> Result<Canvas, HistoryError> {
        self.check_version(v)?;
        let (mut canvas, from) = self.keyframe_before(v);
        let step = self.keyframe_every.max(TIME_STEP);
        let mut at = from;
        while at < v {
            let to = (at + step).min(v);
            for r in self.records(at, to)? {
                apply_rec(&mut canvas, &r);
            }
            at = to;
        }
        Ok(canvas)
    }

    /// The newest readable keyframe at or before `v` (the blank canvas at version 0 when the
    /// history starts there).
    fn keyframe_before(&self, v: u64) -> (Canvas, u64) {
        let candidates: Vec<u64> = {
            let k = self.keyframes.read().unwrap_or_else(|p| p.into_inner());
            k.range(self.base..=v).rev().copied().collect()
        };
        for k in candidates {
            match keyframe::read(&self.dir, k, &self.geometry_at(k)) {
                Ok(c) => return (c, k),
                Err(e) => tracing::warn!(version = k, error = %e, "skipping an unreadable keyframe"),
            }
        }
        (Canvas::new(self.geometry.clone()), self.base)
    }

    /// Versions `(from, to]` as stream messages' payloads, one after another (PROTOCOL.md): a
    /// batch of packed wire edits (applied ones only), split by a resize message at each resize.
    pub fn stream(&self, from: u64, to: u64, stride: u8) -> Result<Vec<u8>, HistoryError> {
        use crate::protocol::{batch_payload, encode_batch, encode_resize, pack_edit};
        self.check_version(from)?;
        let mut g = self.geometry_at(from);
        let (mut out, mut edits, mut start) = (Vec::new(), Vec::new(), from);
        for r in self.records(from, to)? {
            if let Some(grown) = r.resize().and_then(|(w, h)| g.grown(w, h)) {
                out.extend_from_slice(&batch_payload(&encode_batch(start, r.version - 1, &edits, stride)));
                out.extend_from_slice(&batch_payload(&encode_resize(
                    r.version - 1,
                    r.version,
                    grown.width,
                    grown.height,
                )));
                (g, start) = (grown, r.version);
                edits.clear();
                continue;
            }
            if let (true, Some(i)) = (r.applied, g.index(r.x as i64, r.y as i64)) {
                edits.push(pack_edit(i, r.color));
            }
        }
        if start < to || out.is_empty() {
            out.extend_from_slice(&batch_payload(&encode_batch(start, to, &edits, stride)));
        }
        Ok(out)
    }

    pub fn cached(&self, key: Built) -> Option<Bytes> {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().find(|(k, _)| *k == key).map(|(_, b)| b.clone())
    }

    pub fn remember(&self, key: Built, value: Bytes) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.iter().any(|(k, _)| *k == key) {
            return;
        }
        if c.len() >= HISTORY_CACHE {
            c.pop_front();
        }
        c.push_back((key, value));
    }
}

/// How the history is opened.
pub struct HistorySetup<'a> {
    pub data_dir: &'a Path,
    pub geometry: Geometry,
    /// Names the log (`log_id_hash`): a history of another log is discarded.
    pub log_id: &'a str,
    /// The log's last version: records beyond it are cut.
    pub log_head: u64,
    pub keyframe_every: u64,
    pub lookup: Lookup,
    /// Keys the `hashed` lookup (derived from the token secret, so every node agrees).
    pub secret: &'a [u8],
}

/// The write side, owned by the applier.
pub struct HistoryWriter {
    reader: Arc<HistoryReader>,
    file: File,
    header: Header,
    buf: Vec<u8>,
    /// Heads not yet published (their records are in `buf`).
    pending: FxHashMap<u32, u64>,
    /// The last version recorded (in `buf` or the file).
    last: u64,
    /// Versions up to this were in the file at open: not written again.
    had: u64,
    running_ts: u64,
    keyframes: keyframe::Keyframer,
}

impl HistoryWriter {
    /// Opens (or creates) `data_dir/history/`, checks what it holds (see the module doc) and
    /// rebuilds the in-memory index from it.
    pub fn open(s: HistorySetup<'_>) -> io::Result<HistoryWriter> {
        let dir = s.data_dir.join(HISTORY_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let want =
            |base| Header { base, width: s.geometry.width, height: s.geometry.height, log_id: log_id_hash(s.log_id) };
        let mut head = [0u8; HEADER];
        let len = file.metadata()?.len();
        let header = match (len >= HEADER as u64).then(|| file.read_exact_at(&mut head, 0)) {
            Some(Ok(())) => Header::decode(&head)
                .map(|h| adopt_first_edit(&file, h, &want(0)))
                .filter(|h| fits(h, &want(h.base)) && h.base <= s.log_head),
            _ => None,
        };
        let header = match header {
            Some(h) => h,
            None => {
                if len > 0 {
                    tracing::warn!(path = %path.display(), "the history is of another log or canvas (or damaged); starting it again");
                }
                reset(&mut file, &dir, want(0))?
            }
        };
        let reader = Arc::new(HistoryReader {
            file: File::open(&path)?,
            base: header.base,
            heads: RwLock::new(Arc::new(Heads::new(header.width, header.height))),
            resizes: RwLock::new(Vec::new()),
            flushed: AtomicU64::new(header.base),
            times: RwLock::new(Vec::new()),
            first_ts: AtomicU64::new(0),
            last_ts: AtomicU64::new(0),
            keyframe_every: s.keyframe_every,
            keyframes: RwLock::new(BTreeSet::new()),
            lookup: s.lookup,
            hash_key: derive_hash_key(s.secret),
            builds: AtomicUsize::new(0),
            cache: Mutex::new(VecDeque::new()),
            geometry: Geometry { width: header.width, height: header.height, palette: s.geometry.palette.clone() },
            dir: dir.clone(),
        });
        let mut w = HistoryWriter {
            keyframes: keyframe::Keyframer::start(dir.clone(), reader.clone())?,
            reader,
            file,
            header,
            buf: Vec::with_capacity(HISTORY_BUFFER + RECORD),
            pending: FxHashMap::default(),
            last: header.base,
            had: header.base,
            running_ts: 0,
        };
        w.load(s.log_head)?;
        Ok(w)
    }

    pub fn reader(&self) -> Arc<HistoryReader> {
        self.reader.clone()
    }

    /// The versions the file holds: `(base, end]`.
    pub fn span(&self) -> (u64, u64) {
        (self.header.base, self.had)
    }

    /// Whether an applier starting at `version` continues this history.
    pub fn continues_at(&self, version: u64) -> bool {
        (self.header.base..=self.had).contains(&version)
    }

    /// Reads every record in order, cutting at the first bad one or the log's head, and
    /// rebuilds heads, the time index and the keyframe list.
    fn load(&mut self, log_head: u64) -> io::Result<()> {
        let started = std::time::Instant::now();
        let base = self.header.base;
        let len = self.file.metadata()?.len();
        let records = (len.saturating_sub(HEADER as u64) / RECORD as u64).min(log_head - base);
        self.file.seek(SeekFrom::Start(HEADER as u64))?;
        let mut r = BufReader::with_capacity(1 << 20, &mut self.file);
        let mut b = [0u8; RECORD];
        let (mut v, mut times, mut first_ts) = (base, Vec::new(), 0u64);
        let (mut heads, mut g, mut resizes) = (self.reader.heads(), self.reader.geometry.clone(), Vec::new());
        while v - base < records {
            r.read_exact(&mut b)?;
            let Some(rec) = decode_rec(v + 1, &b) else { break };
            v += 1;
            if let Some(grown) = rec.resize().and_then(|(w, h)| g.grown(w, h)) {
                heads = Arc::new(heads.grown(grown.width, grown.height));
                resizes.push((v, grown.width, grown.height));
                g = grown;
            }
            if rec.applied {
                if let Some(i) = heads.index(rec.x as u32, rec.y as u32) {
                    heads.slots[i].store(v, Ordering::Relaxed);
                }
            }
            if first_ts == 0 && rec.ts_ms > 0 {
                first_ts = rec.ts_ms;
            }
            self.running_ts = self.running_ts.max(rec.ts_ms);
            if (v - base).is_multiple_of(TIME_STEP) {
                times.push(self.running_ts);
            }
        }
        drop(r);
        let keep = HEADER as u64 + (v - base) * RECORD as u64;
        if keep < len {
            tracing::warn!(kept = v, cut_bytes = len - keep, "cutting the history at the log's head or a torn record");
            self.file.set_len(keep)?;
        }
        self.file.seek(SeekFrom::Start(keep))?;
        self.last = v;
        self.had = v;
        *self.reader.heads.write().unwrap_or_else(|p| p.into_inner()) = heads;
        *self.reader.resizes.write().unwrap_or_else(|p| p.into_inner()) = resizes;
        *self.reader.times.write().unwrap_or_else(|p| p.into_inner()) = times;
        self.reader.first_ts.store(first_ts, Ordering::Relaxed);
        self.reader.last_ts.store(self.running_ts, Ordering::Relaxed);
        self.reader.flushed.store(v, Ordering::Release);
        let kept = keyframe::list(&self.reader.dir, base, v)?;
        *self.reader.keyframes.write().unwrap_or_else(|p| p.into_inner()) = kept;
        tracing::info!(base, end = v, ms = started.elapsed().as_millis() as u64, "history index loaded");
        Ok(())
    }

    /// Called once before the applier applies anything, with the version and canvas it starts
    /// from: a history that does not continue there starts again at `version`.
    pub fn begin(&mut self, version: u64, canvas: &Canvas) -> io::Result<()> {
        if self.continues_at(version) {
            return Ok(());
        }
        tracing::warn!(
            history_base = self.header.base,
            history_end = self.had,
            start = version,
            "the history does not reach the version this node starts from (restored from a checkpoint without its history); \
             it starts again there: pixel lookups and older canvases begin at this version"
        );
        let g = &canvas.geometry;
        let header = Header { base: version, width: g.width, height: g.height, ..self.header };
        reset(&mut self.file, &self.reader.dir, header)?;
        // The reader's base is fixed at open: rebuild it over the new file.
        let fresh = Arc::new(HistoryReader {
            file: File::open(self.reader.dir.join(FILE))?,
            base: version,
            heads: RwLock::new(Arc::new(Heads::new(g.width, g.height))),
            resizes: RwLock::new(Vec::new()),
            flushed: AtomicU64::new(version),
            times: RwLock::new(Vec::new()),
            first_ts: AtomicU64::new(0),
            last_ts: AtomicU64::new(0),
            keyframe_every: self.reader.keyframe_every,
            keyframes: RwLock::new(BTreeSet::new()),
            lookup: self.reader.lookup,
            hash_key: self.reader.hash_key,
            builds: AtomicUsize::new(0),
            cache: Mutex::new(VecDeque::new()),
            geometry: g.clone(),
            dir: self.reader.dir.clone(),
        });
        self.keyframes = keyframe::Keyframer::start(self.reader.dir.clone(), fresh.clone())?;
        self.reader = fresh;
        self.header = header;
        (self.last, self.had, self.running_ts) = (version, version, 0);
        if version > 0 {
            self.keyframes.write(version, canvas);
        }
        Ok(())
    }

    /// Records version `v` (contiguous; the applier asserts it too): its edit, whether it changed
    /// pixel `target`, and the canvas after it (for keyframes).
    pub fn record(&mut self, v: u64, e: &Edit, target: Option<u32>, canvas: &Canvas) {
        if v <= self.had {
            if v.is_multiple_of(self.reader.keyframe_every) && !self.reader.has_keyframe(v) {
                self.keyframes.write(v, canvas);
            }
            return;
        }
        assert_eq!(v, self.last + 1, "history versions must be contiguous");
        let prev = match target {
            Some(i) => self.pending.insert(i, v).unwrap_or_else(|| self.head_now(i)),
            None => 0,
        };
        let rec = Rec {
            version: v,
            x: e.x,
            y: e.y,
            color: e.color,
            applied: target.is_some(),
            user: e.user,
            ts_ms: e.ts_ms,
            prev,
        };
        let at = self.buf.len();
        self.buf.resize(at + RECORD, 0);
        encode_rec(&rec, &mut self.buf[at..]);
        self.last = v;
        if self.reader.first_ts.load(Ordering::Relaxed) == 0 && e.ts_ms > 0 {
            self.reader.first_ts.store(e.ts_ms, Ordering::Relaxed);
        }
        self.running_ts = self.running_ts.max(e.ts_ms);
        if (v - self.header.base).is_multiple_of(TIME_STEP) {
            self.reader.times.write().unwrap_or_else(|p| p.into_inner()).push(self.running_ts);
        }
        let g = &canvas.geometry;
        if (g.width, g.height) != self.size() {
            self.grow(v, g);
        }
        if v.is_multiple_of(self.reader.keyframe_every) {
            // The keyframe's version must be readable before a reader can pick it.
            self.flush();
            self.keyframes.write(v, canvas);
        } else if self.buf.len() >= HISTORY_BUFFER {
            self.flush();
        }
    }

    fn size(&self) -> (u32, u32) {
        let h = self.reader.heads();
        (h.width, h.height)
    }

    /// The applied head of pixel index `i` (of the current size), as published.
    fn head_now(&self, i: u32) -> u64 {
        self.reader.heads.read().unwrap_or_else(|p| p.into_inner()).slots[i as usize].load(Ordering::Relaxed)
    }

    /// The canvas grew at version `v` (the applier applied the resize entry just recorded):
    /// publish what is pending at the old size, then swap in heads of the new size.
    fn grow(&mut self, v: u64, g: &Geometry) {
        self.flush();
        let grown = Arc::new(self.reader.heads().grown(g.width, g.height));
        *self.reader.heads.write().unwrap_or_else(|p| p.into_inner()) = grown;
        self.reader.resizes.write().unwrap_or_else(|p| p.into_inner()).push((v, g.width, g.height));
    }

    /// Writes the buffered records, then publishes the heads that point at them.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Derived data: the log still has every edit. Stop recording rather than leave a
            // hole; a restart rebuilds from the log.
            tracing::error!(error = %e, "writing the history failed; lookups stay at version {}; restart to rebuild", self.reader.version());
            self.buf.clear();
            self.pending.clear();
            self.had = u64::MAX;
            return;
        }
        self.buf.clear();
        let heads = self.reader.heads();
        for (i, v) in self.pending.drain() {
            heads.slots[i as usize].store(v, Ordering::Release);
        }
        self.reader.last_ts.store(self.running_ts, Ordering::Relaxed);
        self.reader.flushed.store(self.last, Ordering::Release);
    }
}

impl HistoryReader {
    fn has_keyframe(&self, v: u64) -> bool {
        self.keyframes.read().unwrap_or_else(|p| p.into_inner()).contains(&v)
    }

    fn add_keyframe(&self, v: u64) {
        self.keyframes.write().unwrap_or_else(|p| p.into_inner()).insert(v);
    }
}

/// Whether a history's header belongs to this log and canvas: from version 0 the canvas is the
/// configured one; a history begun later (at a checkpoint) starts at the size the log had grown
/// the canvas to by then, never smaller than configured.
fn fits(h: &Header, want: &Header) -> bool {
    let size_ok = match h.base {
        0 => (h.width, h.height) == (want.width, want.height),
        _ => {
            h.width >= want.width
                && h.height >= want.height
                && h.width as u64 * h.height as u64 <= crate::protocol::MAX_PIXELS
        }
    };
    h.log_id == want.log_id && h.base == want.base && size_ok
}

/// Applies one history record to a canvas being rebuilt (the canvas at V, the tools): a resize
/// grows it by the applier's rule, an applied edit sets its pixel.
pub fn apply_rec(canvas: &mut Canvas, r: &Rec) {
    if let Some(g) = r.resize().and_then(|(w, h)| canvas.geometry.grown(w, h)) {
        canvas.grow(g);
        return;
    }
    let g = &canvas.geometry;
    if let (true, Some(i)) = (r.applied, g.index(r.x as i64, r.y as i64)) {
        if g.valid_color(r.color as i64) {
            canvas.set(i, r.color);
        }
    }
}

/// A user's key hashed with `key` (SHA-256, the first 8 bytes, never 0).
pub fn keyed_user_hash(key: &[u8; 32], user: u64) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new().chain_update(key).chain_update(user.to_le_bytes()).finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

/// The key of `keyed_user_hash`, from the token secret (so every node and tool agrees).
pub fn derive_hash_key(secret: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new().chain_update(b"placecast-pixel-user.").chain_update(secret).finalize().into()
}

/// Empties the history (file and keyframes) and writes `header`.
/// The embedded log's identity is its first record (`file::identity`), so a history begun while
/// the log was empty carries the empty log's identity. If its own first record is the log's
/// (the record this history holds for version 1, encoded as the log encodes it, hashes to the
/// log's identity now), it is that log's history: the header is rewritten instead of the whole
/// history being rebuilt at the first restart.
fn adopt_first_edit(file: &File, h: Header, want: &Header) -> Header {
    let empty = log_id_hash(crate::edit_log::file::EMPTY_IDENTITY);
    if h.log_id != empty || h.base != 0 || want.log_id == empty || (h.width, h.height) != (want.width, want.height) {
        return h;
    }
    let mut b = [0u8; RECORD];
    let Some(r) = file.read_exact_at(&mut b, HEADER as u64).ok().and_then(|()| decode_rec(1, &b)) else { return h };
    let e = Edit { x: r.x, y: r.y, color: r.color, user: r.user, ts_ms: r.ts_ms, ext: 0, aux: 0 };
    let mut rec = [0u8; crate::edit_log::file::RECORD];
    crate::edit_log::file::encode(1, &e, &mut rec);
    if log_id_hash(&crate::edit_log::file::identity_of(&rec)) != want.log_id {
        return h;
    }
    let adopted = Header { log_id: want.log_id, ..h };
    match file.write_all_at(&adopted.encode(), 0) {
        Ok(()) => adopted,
        Err(_) => h,
    }
}

fn reset(file: &mut File, dir: &Path, header: Header) -> io::Result<Header> {
    file.set_len(0)?;
    file.write_all_at(&header.encode(), 0)?;
    file.seek(SeekFrom::Start(HEADER as u64))?;
    keyframe::remove_all(dir)?;
    Ok(header)
}

#[cfg(test)]
mod tests;
