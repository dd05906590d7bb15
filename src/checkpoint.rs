//! The local checkpoint of a node on a shared log: the canvas, the version it is at, and the
//! state of the log-order validity rule (each user's last valid edit), so a restart replays only
//! the log after it.
//!
//! Layout (little-endian): magic "PCK2", version u64, cooldown_ms u64 (the configured one),
//! log_clock_ms u64, width u32, height u32, log-id length u32 + bytes, pixels (one byte each),
//! entry count u64, entries (user u64, last_valid_ms u64), then the switches (`control.rs`):
//! cooldown set u8 + ms u64, paused u8, end set u8 + at_ms u64, banned count u64 + user keys,
//! protected count u64 + rectangles (x, y, w, h u16),
//! audit count u64 + entries (version u64, the entry's 32-byte log record, actor u32), the
//! last version that changed a pixel u64, then crc32 u32
//! over everything before it. "PCK1" (before control entries) is the same without the switches
//! and the audit, and still loads (no switches, an empty audit).
//!
//! Invariants: the file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new checkpoint, never a torn one; a checkpoint is
//! used only if its CRC, canvas size, cooldown rule and log id match this node's configuration
//! (otherwise the node replays the whole log, which gives the same state, only slower).

use crate::control::{classify, AuditEntry, Entry, Switches};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 4] = b"PCK2";
const MAGIC_1: &[u8; 4] = b"PCK1";
/// An audit entry: its version, its log record, its actor.
const AUDIT_BYTES: usize = 8 + crate::edit_log::file::RECORD + 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub version: u64,
    pub cooldown_ms: u64,
    /// The largest edit timestamp seen in the log so far.
    pub log_clock_ms: u64,
    pub width: u32,
    pub height: u32,
    /// Names the log this state was built from (for Kafka: brokers are not included, the topic is).
    pub log_id: String,
    pub pixels: Vec<u8>,
    /// Each user's last valid edit time, sorted by user.
    pub last_valid: Vec<(u64, u64)>,
    /// The switches at `version`.
    pub switches: Switches,
    /// The audit list at `version` (the newest `control::AUDIT_KEEP`).
    pub audit: Vec<AuditEntry>,
    /// The last version whose edit changed a pixel.
    pub last_change: u64,
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not a placecast checkpoint or damaged")]
    Damaged(PathBuf),
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("checkpoint.bin")
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.pixels.len() + self.last_valid.len() * 16);
        b.extend_from_slice(MAGIC);
        for v in [self.version, self.cooldown_ms, self.log_clock_ms] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.width.to_le_bytes());
        b.extend_from_slice(&self.height.to_le_bytes());
        b.extend_from_slice(&(self.log_id.len() as u32).to_le_bytes());
        b.extend_from_slice(self.log_id.as_bytes());
        b.extend_from_slice(&self.pixels);
        b.extend_from_slice(&(self.last_valid.len() as u64).to_le_bytes());
        for (u, t) in &self.last_valid {
            b.extend_from_slice(&u.to_le_bytes());
            b.extend_from_slice(&t.to_le_bytes());
        }
        self.encode_switches(&mut b);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn encode_switches(&self, b: &mut Vec<u8>) {
        let s = &self.switches;
        let opt = |b: &mut Vec<u8>, v: Option<u64>| {
            b.push(v.is_some() as u8);
            b.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
        };
        opt(b, s.cooldown_ms);
        b.push(s.paused as u8);
        opt(b, s.end_at_ms);
        let mut banned: Vec<u64> = s.banned.iter().copied().collect();
        banned.sort_unstable();
        b.extend_from_slice(&(banned.len() as u64).to_le_bytes());
        for u in banned {
            b.extend_from_slice(&u.to_le_bytes());
        }
        b.extend_from_slice(&(s.protected.len() as u64).to_le_bytes());
        for r in &s.protected {
            for v in [r.x, r.y, r.w, r.h] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.audit.len() as u64).to_le_bytes());
        for a in &self.audit {
            // The entry's own record (`control.rs`'s layout), so every kind round-trips.
            let mut rec = [0u8; crate::edit_log::file::RECORD];
            crate::edit_log::file::encode(a.version, &a.control.to_edit(a.ts_ms), &mut rec);
            b.extend_from_slice(&a.version.to_le_bytes());
            b.extend_from_slice(&rec);
            b.extend_from_slice(&a.actor.to_le_bytes());
        }
        b.extend_from_slice(&self.last_change.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() < 40 || (&b[..4] != MAGIC && &b[..4] != MAGIC_1) {
            return None;
        }
        let with_switches = &b[..4] == MAGIC;
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut at = 4;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
        let version = u64_(take(8)?);
        let cooldown_ms = u64_(take(8)?);
        let log_clock_ms = u64_(take(8)?);
        let width = u32_(take(4)?);
        let height = u32_(take(4)?);
        let id_len = u32_(take(4)?) as usize;
        let log_id = String::from_utf8(take(id_len)?.to_vec()).ok()?;
        let pixels = take(width as usize * height as usize)?.to_vec();
        let n = u64_(take(8)?) as usize;
        let raw = take(n.checked_mul(16)?)?;
        let last_valid = raw.chunks_exact(16).map(|c| (u64_(&c[..8]), u64_(&c[8..]))).collect();
        let mut switches = Switches::default();
        let mut audit = Vec::new();
        let mut last_change = 0;
        if with_switches {
            let flag = take(1)?[0];
            let v = u64_(take(8)?);
            switches.cooldown_ms = (flag == 1).then_some(v);
            switches.paused = take(1)?[0] == 1;
            let flag = take(1)?[0];
            let v = u64_(take(8)?);
            switches.end_at_ms = (flag == 1).then_some(v);
            let n = u64_(take(8)?) as usize;
            let raw = take(n.checked_mul(8)?)?;
            switches.banned = raw.chunks_exact(8).map(u64_).collect();
            let n = u64_(take(8)?) as usize;
            let raw = take(n.checked_mul(8)?)?;
            let u16_ = |c: &[u8], i: usize| u16::from_le_bytes([c[i], c[i + 1]]);
            switches.protected = raw
                .chunks_exact(8)
                .map(|c| crate::control::Rect { x: u16_(c, 0), y: u16_(c, 2), w: u16_(c, 4), h: u16_(c, 6) })
                .collect();
            let n = u64_(take(8)?) as usize;
            let raw = take(n.checked_mul(AUDIT_BYTES)?)?;
            for c in raw.chunks_exact(AUDIT_BYTES) {
                let version = u64_(&c[..8]);
                let e = crate::edit_log::file::decode(version, &c[8..40])?;
                let Entry::Control(control) = classify(&e) else { return None };
                audit.push(AuditEntry { version, ts_ms: e.ts_ms, control, actor: u32_(&c[40..44]) });
            }
            last_change = u64_(take(8)?);
        }
        if take(1).is_some() {
            return None;
        }
        Some(Checkpoint {
            version,
            cooldown_ms,
            log_clock_ms,
            width,
            height,
            log_id,
            pixels,
            last_valid,
            switches,
            audit,
            last_change,
        })
    }

    /// Writes the checkpoint atomically to `dir/checkpoint.bin`.
    pub fn write(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = path_in(dir);
        let tmp = dir.join("checkpoint.bin.tmp");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CheckpointError::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&self.encode()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    }

    /// Reads `dir/checkpoint.bin`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = path_in(dir);
        match std::fs::read(&path) {
            Ok(b) => Checkpoint::decode(&b).map(Some).ok_or(CheckpointError::Damaged(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let c = Checkpoint {
            version: 42,
            cooldown_ms: 300_000,
            log_clock_ms: 1_700_000_000_000,
            width: 3,
            height: 2,
            log_id: "kafka:edits".into(),
            pixels: vec![1, 2, 3, 4, 5, 6],
            last_valid: vec![(7, 100), (9, 200)],
            switches: Switches::default(),
            audit: Vec::new(),
            last_change: 0,
        };
        c.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c.clone()));
        let mut b = c.encode();
        b[20] ^= 1;
        assert_eq!(Checkpoint::decode(&b), None);
        std::fs::write(path_in(dir.path()), &b[..30]).unwrap();
        assert!(matches!(Checkpoint::load(dir.path()), Err(CheckpointError::Damaged(_))));
    }

    #[test]
    fn switches_and_audit_round_trip_and_a_format_1_checkpoint_loads() {
        use crate::control::Control;
        let mut switches = Switches::default();
        let rect = crate::control::Rect { x: 1, y: 2, w: 3, h: 4 };
        for c in [
            Control::Cooldown { ms: 5_000 },
            Control::Pause,
            Control::End { at_ms: 9 },
            Control::Ban { user: 3, revert_since_s: 0 },
            Control::Protect { rect },
        ] {
            switches.apply(&c);
        }
        let audit = vec![
            AuditEntry { version: 5, ts_ms: 50, control: Control::Pause, actor: 0 },
            AuditEntry { version: 6, ts_ms: 60, control: Control::Ban { user: 3, revert_since_s: 0 }, actor: 77 },
            AuditEntry { version: 7, ts_ms: 70, control: Control::Restore { rect, version: 2 }, actor: 77 },
        ];
        let c = Checkpoint {
            version: 6,
            cooldown_ms: 1_000,
            log_clock_ms: 60,
            width: 2,
            height: 1,
            log_id: "t".into(),
            pixels: vec![0, 1],
            last_valid: vec![(1, 2)],
            switches,
            audit,
            last_change: 4,
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c.clone()));
        // Format 1: the same bytes up to the rule's entries, magic PCK1, no switches.
        let mut old = c.encode();
        old.truncate(old.len() - 4);
        let cut = 4 + 24 + 8 + 4 + 1 + 2 + 8 + 16;
        old.truncate(cut);
        old[..4].copy_from_slice(b"PCK1");
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        let loaded = Checkpoint::decode(&old).unwrap();
        assert_eq!((loaded.switches, loaded.audit.len(), loaded.pixels), (Switches::default(), 0, vec![0, 1]));
    }
}
