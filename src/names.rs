//! The user directory: the 64-bit user key the log keeps (`token::user_key`) → the display name
//! from the user's token, so "who placed this pixel" can name them, after a restart and the same
//! on every node.
//!
//! How a name gets into it, by backend:
//! - Every token verification (an HTTP placement, a WebSocket `auth` or `?token=`) `note`s the
//!   name if the key is not known yet (an "unpublished" name).
//! - A placement carries its user's unpublished name into the log (`EditLog::append_named`). The
//!   embedded log's writer `persist`s the names of a group (one write and one fdatasync of
//!   `users.names`) before the group's own fdatasync, so a name is durable before the first edit
//!   that needs it is acknowledged. On Kafka the name rides in the edit's message (after the
//!   32-byte record) and every node's tail `learn`s it as it reads the topic, so every node has
//!   the same directory; `sync` (before each checkpoint) makes it durable, and what a crash loses
//!   after a checkpoint is read again from the topic on replay.
//!
//! File `users.names` (append-only): records of key u64 LE, length u8, the name's bytes, and a
//! crc32 u32 LE over the three. A torn or damaged tail is cut at open (a name lost that way only
//! shows as unknown; no edit depends on it).
//!
//! Bounds (`bounds::MAX_NAMES`, `bounds::MAX_UNPUBLISHED_NAMES`): when the directory is full a
//! new user's name is not kept (lookups show the user as unknown); unpublished names are kept at
//! most `UNPUBLISHED_TTL_MS` and at most `MAX_UNPUBLISHED_NAMES` (full: not noted).
//!
//! Deliberately not here: who may see names (`history::Lookup` decides: names, a keyed hash, or
//! nothing) and any check of the name beyond the token's (`token::valid_user`).

use crate::bounds::{MAX_NAMES, MAX_UNPUBLISHED_NAMES, UNPUBLISHED_TTL_MS};
use rustc_hash::FxHashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The directory's file in the data directory.
pub const NAMES_FILE: &str = "users.names";
const SHARDS: usize = 64;
/// Longest name a record holds (the token's rule allows 64).
const MAX_NAME: usize = 64;

#[derive(Default)]
struct Shard {
    known: FxHashMap<u64, Box<str>>,
    /// Names seen in a token but not yet in the log, with when they were noted.
    unpublished: FxHashMap<u64, (Box<str>, u64)>,
}

pub struct Names {
    shards: Box<[Mutex<Shard>]>,
    known: AtomicUsize,
    unpublished: AtomicUsize,
    file: Mutex<File>,
    path: PathBuf,
}

fn shard_of(key: u64) -> usize {
    // Keys are FNV hashes: the low bits are already mixed.
    (key as usize) % SHARDS
}

fn checksum(key: u64, name: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(&[name.len() as u8]);
    h.update(name);
    h.finalize()
}

fn encode(key: u64, name: &str, out: &mut Vec<u8>) {
    let n = &name.as_bytes()[..name.len().min(MAX_NAME)];
    out.extend_from_slice(&key.to_le_bytes());
    out.push(n.len() as u8);
    out.extend_from_slice(n);
    out.extend_from_slice(&checksum(key, n).to_le_bytes());
}

/// Reads records from `r` until the end or the first bad one; returns them and the length of the
/// valid prefix.
type Loaded = (Vec<(u64, Box<str>)>, u64);

fn load(mut r: impl Read) -> io::Result<Loaded> {
    let mut all = Vec::new();
    r.read_to_end(&mut all)?;
    let (mut at, mut out) = (0usize, Vec::new());
    while let Some(rec) = decode(&all[at..]) {
        at += rec.2;
        out.push((rec.0, rec.1));
    }
    Ok((out, at as u64))
}

/// One record at the start of `b`: key, name, bytes used; `None` when partial or invalid.
fn decode(b: &[u8]) -> Option<(u64, Box<str>, usize)> {
    let key = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let len = *b.get(8)? as usize;
    let name = b.get(9..9 + len)?;
    let crc = u32::from_le_bytes(b.get(9 + len..13 + len)?.try_into().ok()?);
    if len == 0 || len > MAX_NAME || crc != checksum(key, name) || key == 0 {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    Some((key, name.into(), 13 + len))
}

impl Names {
    /// Opens (or creates) `dir/users.names`, loading every valid record and cutting a bad tail.
    pub fn open(dir: &Path) -> io::Result<Names> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(NAMES_FILE);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        file.seek(SeekFrom::Start(0))?;
        let (records, good) = load(BufReader::new(&mut file))?;
        if good < file.metadata()?.len() {
            tracing::warn!(path = %path.display(), kept = records.len(), "cutting a torn tail from the user directory");
            file.set_len(good)?;
        }
        let names = Names {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            known: AtomicUsize::new(0),
            unpublished: AtomicUsize::new(0),
            file: Mutex::new(file),
            path,
        };
        for (key, name) in records {
            names.insert_known(key, name);
        }
        Ok(names)
    }

    fn lock(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard aborts the process (panic = "abort"), so never poisoned
        // in a server; in tests, recover the data.
        self.shards[shard_of(key)].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_known(&self, key: u64, name: Box<str>) -> bool {
        let mut s = self.lock(key);
        if let Some((_, _)) = s.unpublished.remove(&key) {
            self.unpublished.fetch_sub(1, Ordering::Relaxed);
        }
        if s.known.contains_key(&key) {
            return false;
        }
        if self.known.load(Ordering::Relaxed) >= MAX_NAMES {
            return false;
        }
        s.known.insert(key, name);
        self.known.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The display name of `key`, if the directory has it.
    pub fn get(&self, key: u64) -> Option<Box<str>> {
        self.lock(key).known.get(&key).cloned()
    }

    pub fn len(&self) -> usize {
        self.known.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A verified token named `key` `name`: remember it until one of the user's edits carries it.
    pub fn note(&self, key: u64, name: &str, now_ms: u64) {
        let mut s = self.lock(key);
        if s.known.contains_key(&key) || s.unpublished.contains_key(&key) {
            return;
        }
        if self.unpublished.load(Ordering::Relaxed) >= MAX_UNPUBLISHED_NAMES {
            return;
        }
        s.unpublished.insert(key, (name.into(), now_ms));
        self.unpublished.fetch_add(1, Ordering::Relaxed);
    }

    /// The name an edit by `key` should carry into the log: its unpublished name, if any.
    pub fn for_append(&self, key: u64) -> Option<Box<str>> {
        self.lock(key).unpublished.get(&key).map(|(n, _)| n.clone())
    }

    /// The embedded log's writer, before a group's fdatasync: makes `names` durable (one write,
    /// one fdatasync) and known. An error leaves them unpublished (a later edit retries).
    pub fn persist(&self, names: &[(u64, Box<str>)]) -> io::Result<()> {
        let new: Vec<&(u64, Box<str>)> = names.iter().filter(|(k, _)| self.get(*k).is_none()).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(new.len() * 32);
        for (k, n) in &new {
            encode(*k, n, &mut buf);
        }
        {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&buf)?;
            f.sync_data()?;
        }
        for (k, n) in new {
            self.insert_known(*k, n.clone());
        }
        Ok(())
    }

    /// A node's tail read `name` for `key` from the shared log: known at once, written to the
    /// file without an fdatasync (`sync` does that before a checkpoint).
    pub fn learn(&self, key: u64, name: &str) {
        if key == 0 || name.is_empty() || name.len() > MAX_NAME || !self.insert_known(key, name.into()) {
            return;
        }
        let mut buf = Vec::with_capacity(32);
        encode(key, name, &mut buf);
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&buf) {
            tracing::warn!(error = %e, path = %self.path.display(), "writing the user directory failed; the name is kept in memory");
        }
    }

    /// Makes every name learned so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).sync_data()
    }

    /// Forgets unpublished names older than `UNPUBLISHED_TTL_MS` (users who never placed).
    pub fn sweep(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.unpublished.len();
            s.unpublished.retain(|_, (_, at)| now_ms.saturating_sub(*at) < UNPUBLISHED_TTL_MS);
            self.unpublished.fetch_sub(before - s.unpublished.len(), Ordering::Relaxed);
        }
    }
}

/// The name a Kafka message carries after its 32-byte record, if any (`None` for none or a bad
/// one: the edit still counts, only its name is unknown).
pub fn from_message_tail(tail: &[u8]) -> Option<&str> {
    if tail.is_empty() || tail.len() > MAX_NAME {
        return None;
    }
    std::str::from_utf8(tail).ok().filter(|n| crate::token::valid_user(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let n = Names::open(dir.path()).unwrap();
            n.note(7, "alice", 0);
            assert_eq!(n.for_append(7).as_deref(), Some("alice"));
            n.persist(&[(7, "alice".into()), (9, "bob".into())]).unwrap();
            assert_eq!(n.for_append(7), None, "published names are no longer carried");
            n.learn(11, "carol");
            n.sync().unwrap();
        }
        let path = dir.path().join(NAMES_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3, 4, 5]).unwrap();
        drop(f);
        let n = Names::open(dir.path()).unwrap();
        assert_eq!(n.get(7).as_deref(), Some("alice"));
        assert_eq!(n.get(9).as_deref(), Some("bob"));
        assert_eq!(n.get(11).as_deref(), Some("carol"));
        assert_eq!(n.len(), 3);
        n.learn(13, "dave");
        drop(n);
        assert_eq!(Names::open(dir.path()).unwrap().get(13).as_deref(), Some("dave"));
    }

    #[test]
    fn unpublished_names_expire_and_duplicates_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let n = Names::open(dir.path()).unwrap();
        n.note(5, "eve", 1_000);
        n.note(5, "mallory", 1_000);
        assert_eq!(n.for_append(5).as_deref(), Some("eve"));
        n.sweep(1_000 + UNPUBLISHED_TTL_MS);
        assert_eq!(n.for_append(5), None);
        n.learn(5, "eve");
        n.learn(5, "mallory");
        assert_eq!(n.get(5).as_deref(), Some("eve"));
    }

    #[test]
    fn message_tails_are_checked() {
        assert_eq!(from_message_tail(b"alice"), Some("alice"));
        assert_eq!(from_message_tail(b""), None);
        assert_eq!(from_message_tail(b"a b"), None);
        assert_eq!(from_message_tail(&[0xff, 0xfe]), None);
        assert_eq!(from_message_tail(&[b'a'; 65]), None);
    }
}
