//! The embedded edit log: an append-only file of 32-byte records under `--data-dir`, written by
//! one thread with group commit (many appends, one write, one fdatasync).
//!
//! Record layout (little-endian): x u16, y u16, color u8, 3 zero bytes, user u64, ts_ms u64,
//! 4 zero bytes, crc32 u32 over (version u64 ++ bytes 0..28). Record n (0-based) holds version
//! n + 1, so versions are contiguous by construction.
//!
//! Crash safety: an append is acknowledged only after its group's fdatasync. At open, a torn tail
//! (a partial record, or bad records with nothing valid after them) is cut off: those edits were
//! never acknowledged. A bad record followed by valid ones is corruption and refuses to open.

use super::{AppendAck, Committed, Edit, EditLog, LogError};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures_channel::oneshot;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const RECORD: usize = 32;
/// Appends waiting for the writer; beyond this, placements get 503 instead of piling up.
const QUEUE: usize = 65_536;
/// Most records in one group commit.
const GROUP: usize = 8192;

enum Msg {
    Append(Edit, oneshot::Sender<Result<u64, LogError>>),
    Tail(u64, Sender<Committed>),
}

pub struct FileLog {
    tx: Sender<Msg>,
    head: Arc<AtomicU64>,
    path: PathBuf,
    /// The last group's write failed (cleared by the next that succeeds): `/readyz` says so.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

pub fn encode(version: u64, e: &Edit, out: &mut [u8]) {
    out[..RECORD].fill(0);
    out[0..2].copy_from_slice(&e.x.to_le_bytes());
    out[2..4].copy_from_slice(&e.y.to_le_bytes());
    out[4] = e.color;
    out[8..16].copy_from_slice(&e.user.to_le_bytes());
    out[16..24].copy_from_slice(&e.ts_ms.to_le_bytes());
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
        user: u64::from_le_bytes(r[8..16].try_into().unwrap()),
        ts_ms: u64::from_le_bytes(r[16..24].try_into().unwrap()),
    })
}

/// Scans the file, cuts a torn tail, and returns the number of valid records.
fn recover(file: &mut File, path: &Path) -> Result<u64, LogError> {
    let len = file.metadata().map_err(|e| LogError::Io(e.to_string()))?.len();
    let mut valid = 0u64;
    let mut first_bad: Option<u64> = None;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut *file);
    reader.seek(SeekFrom::Start(0)).map_err(|e| LogError::Io(e.to_string()))?;
    let mut rec = [0u8; RECORD];
    for n in 0..len / RECORD as u64 {
        reader.read_exact(&mut rec).map_err(|e| LogError::Io(e.to_string()))?;
        match (decode(n + 1, &rec).is_some(), first_bad) {
            (true, None) => valid = n + 1,
            (true, Some(bad)) => {
                return Err(LogError::Corrupt(format!(
                    "{}: record {} is damaged but valid records follow it; restore from a backup or truncate by hand",
                    path.display(),
                    bad + 1
                )))
            }
            (false, None) => first_bad = Some(n),
            (false, Some(_)) => {}
        }
    }
    drop(reader);
    if valid * RECORD as u64 != len {
        tracing::warn!(path = %path.display(), kept = valid, cut_bytes = len - valid * RECORD as u64, "cutting a torn tail from the edit log (edits never acknowledged)");
        file.set_len(valid * RECORD as u64).map_err(|e| LogError::Io(e.to_string()))?;
        file.sync_all().map_err(|e| LogError::Io(e.to_string()))?;
    }
    Ok(valid)
}

impl FileLog {
    /// Opens (or creates) `dir/edits.log`, recovers it, and starts the writer thread.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join("edits.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| LogError::Io(format!("{}: {e}", path.display())))?;
        let count = recover(&mut file, &path)?;
        let head = Arc::new(AtomicU64::new(count));
        let (tx, rx) = bounded(QUEUE);
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            file,
            path: path.clone(),
            head: head.clone(),
            fsync,
            sink: None,
            buf: Vec::new(),
            failing: failing.clone(),
        };
        std::thread::Builder::new()
            .name("placecast-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::Io(e.to_string()))?;
        Ok(FileLog { tx, head, path, failing })
    }
}

impl EditLog for FileLog {
    fn append(&self, edit: Edit) -> Result<AppendAck, LogError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Append(edit, tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    fn tail(&self, after: u64, sink: Sender<Committed>) -> Result<(), LogError> {
        self.tx.send(Msg::Tail(after, sink)).map_err(|_| LogError::Closed)
    }

    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
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
    sink: Option<Sender<Committed>>,
    buf: Vec<u8>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut group: Vec<(Edit, oneshot::Sender<Result<u64, LogError>>)> = Vec::with_capacity(GROUP);
        while let Ok(first) = rx.recv() {
            self.take(first, &mut group);
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(m) => self.take(m, &mut group),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
        }
    }

    fn take(&mut self, m: Msg, group: &mut Vec<(Edit, oneshot::Sender<Result<u64, LogError>>)>) {
        match m {
            Msg::Append(e, tx) => group.push((e, tx)),
            Msg::Tail(after, sink) => {
                // Commit what is pending first, so the replay and the live feed meet exactly.
                if !group.is_empty() {
                    self.commit(group);
                }
                if let Err(e) = self.replay(after, &sink) {
                    tracing::error!(error = %e, "replaying the edit log failed");
                }
                self.sink = Some(sink);
            }
        }
    }

    fn replay(&self, after: u64, sink: &Sender<Committed>) -> Result<(), LogError> {
        let head = self.head.load(Ordering::Acquire);
        if after >= head {
            return Ok(());
        }
        let mut f = File::open(&self.path).map_err(|e| LogError::Io(e.to_string()))?;
        f.seek(SeekFrom::Start(after * RECORD as u64)).map_err(|e| LogError::Io(e.to_string()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut rec = [0u8; RECORD];
        for v in after + 1..=head {
            r.read_exact(&mut rec).map_err(|e| LogError::Io(e.to_string()))?;
            let edit = decode(v, &rec).ok_or_else(|| LogError::Corrupt(format!("record {v} changed on disk")))?;
            if sink.send(Committed { version: v, edit }).is_err() {
                return Err(LogError::Closed);
            }
        }
        Ok(())
    }

    fn commit(&mut self, group: &mut Vec<(Edit, oneshot::Sender<Result<u64, LogError>>)>) {
        let head = self.head.load(Ordering::Acquire);
        self.buf.resize(group.len() * RECORD, 0);
        for (i, (e, _)) in group.iter().enumerate() {
            encode(head + 1 + i as u64, e, &mut self.buf[i * RECORD..]);
        }
        let result =
            self.file.write_all(&self.buf).and_then(|_| if self.fsync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            tracing::error!(error = %e, path = %self.path.display(), "edit log write failed; placements get 503 until it recovers");
            // Put the file back to the last durable record so versions stay contiguous.
            if let Err(e2) = self.file.set_len(head * RECORD as u64) {
                tracing::error!(error = %e2, "cannot cut the failed write from the edit log");
            }
            self.failing.store(true, Ordering::Release);
            let err = LogError::Io(e.to_string());
            for (_, tx) in group.drain(..) {
                let _ = tx.send(Err(err.clone()));
            }
            return;
        }
        self.failing.store(false, Ordering::Release);
        self.head.store(head + group.len() as u64, Ordering::Release);
        for (i, (edit, tx)) in group.drain(..).enumerate() {
            let version = head + 1 + i as u64;
            if let Some(sink) = &self.sink {
                let _ = sink.send(Committed { version, edit });
            }
            let _ = tx.send(Ok(version));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    fn edit(i: u16) -> Edit {
        Edit { x: i, y: i + 1, color: (i % 16) as u8, user: 1000 + i as u64, ts_ms: 5 + i as u64 }
    }

    fn block<T>(rx: oneshot::Receiver<T>) -> T {
        futures_lite::future::block_on(rx).unwrap()
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
            let (tx, rx) = unbounded();
            log.tail(0, tx).unwrap();
            let acks: Vec<_> = (0..100).map(|i| log.append(edit(i)).unwrap()).collect();
            let versions: Vec<u64> = acks.into_iter().map(|a| block(a).unwrap()).collect();
            assert_eq!(versions, (1..=100).collect::<Vec<_>>());
            let got: Vec<Committed> = (0..100).map(|_| rx.recv().unwrap()).collect();
            assert_eq!(got[42], Committed { version: 43, edit: edit(42) });
        }
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(log.head(), 100);
        let (tx, rx) = unbounded();
        log.tail(90, tx).unwrap();
        assert_eq!(rx.recv().unwrap().version, 91);
        assert_eq!(block(log.append(edit(7)).unwrap()).unwrap(), 101);
        let rest: Vec<u64> = (0..10).map(|_| rx.recv().unwrap().version).collect();
        assert_eq!(rest, (92..=101).collect::<Vec<_>>());
    }

    #[test]
    fn torn_tail_is_cut_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = FileLog::open(dir.path(), true).unwrap();
            for i in 0..10 {
                block(log.append(edit(i)).unwrap()).unwrap();
            }
        }
        let path = dir.path().join("edits.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7u8; 40]); // a torn, unacknowledged write
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(FileLog::open(dir.path(), true).unwrap().head(), 10);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * RECORD as u64);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3 * RECORD + 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        match FileLog::open(dir.path(), true) {
            Err(LogError::Corrupt(m)) => assert!(m.contains("record 4"), "{m}"),
            other => panic!("expected corruption, got {:?}", other.map(|l| l.head())),
        }
    }
}
