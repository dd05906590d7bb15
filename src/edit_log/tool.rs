//! `placecast log verify|repair`: the operator's commands for the embedded log (`file.rs`), run
//! while no server holds it (both take its `flock`: verify a shared one, repair an exclusive one).
//!
//! - `verify --data-dir DIR` reads every record and prints, one `key: value` a line: the file,
//!   `records`, `head` (the last version of the valid prefix: what a server serves), `first bad
//!   version`, `bad records`, the first runs of bad versions, and `state`. It judges exactly as
//!   `FileLog::open` does (`Scan::state`). Exit 0: a server starts on it (clean, or a torn tail
//!   it will cut); 1: damaged, a server refuses it; 2: it cannot be read (no log, locked, I/O).
//! - `repair --data-dir DIR --truncate-after V` keeps versions `1..=V` and removes the rest. V is
//!   required (there is no default) and may be at most the valid prefix: repair never keeps a bad
//!   record, nor a valid one after it (a version is a position). The removed bytes are first
//!   saved, fsynced, to `DIR/edits.log.removed-after-V.<unix seconds>` (appending them back undoes
//!   the repair); then the log is truncated and the file and directory fsynced. It prints what it
//!   removed: how many records were valid (edits that had been acknowledged, now gone from the
//!   canvas) and how many bad. Exit 0: repaired, or nothing to remove; 1: refused or failed.

use super::file::{lock, scan, sync_dir, Scan, State, GROUP, LOG_FILE, RECORD};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LogCommand {
    /// Check every record of DIR/edits.log: records, head, the first bad version, the bad count.
    /// Exits 0 when a server would start on it, 1 when it is damaged, 2 when it cannot be read.
    Verify {
        /// The server's data directory (its --data-dir).
        #[arg(long, env = "PLACECAST_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Keep versions 1..=V of DIR/edits.log and remove every later one (saved beside it first).
    /// V may not go past the first bad record. Stop the server first.
    Repair {
        /// The server's data directory (its --data-dir).
        #[arg(long, env = "PLACECAST_DATA_DIR")]
        data_dir: PathBuf,
        /// The last version to keep (`placecast log verify` shows the first bad one).
        #[arg(long, value_name = "V")]
        truncate_after: u64,
    },
}

/// Runs a log command; returns the process's exit code.
pub fn run(cmd: &LogCommand) -> i32 {
    match cmd {
        LogCommand::Verify { data_dir } => verify(data_dir),
        LogCommand::Repair { data_dir, truncate_after } => match repair(data_dir, *truncate_after) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("placecast log repair: {e}");
                1
            }
        },
    }
}

/// Opens the log without creating it, and takes its lock.
fn open(dir: &Path, write: bool) -> Result<(File, PathBuf), String> {
    let path = dir.join(LOG_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(&path)
        .map_err(|e| format!("{}: {e} (is --data-dir the server's data directory?)", path.display()))?;
    lock(&file, &path, write).map_err(|e| e.to_string())?;
    Ok((file, path))
}

fn scan_file(file: &mut File, path: &Path) -> Result<Scan, String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let bytes = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    scan(BufReader::with_capacity(1 << 20, &mut *file), bytes).map_err(io)
}

fn runs(s: &Scan) -> String {
    let mut out: Vec<String> =
        s.bad_runs.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}..={b}") }).collect();
    let shown: u64 = s.bad_runs.iter().map(|&(a, b)| b - a + 1).sum();
    if shown < s.bad {
        out.push(format!("and {} more", s.bad - shown));
    }
    out.join(", ")
}

fn verify(dir: &Path) -> i32 {
    let scanned = open(dir, false).and_then(|(mut f, path)| Ok((scan_file(&mut f, &path)?, path)));
    let (s, path) = match scanned {
        Ok(x) => x,
        Err(e) => {
            eprintln!("placecast log verify: {e}");
            return 2;
        }
    };
    println!("file: {} ({} bytes)", path.display(), s.bytes);
    println!("records: {}", s.records);
    println!("head: {}", s.good);
    match s.first_bad() {
        Some(v) => println!("first bad version: {v}"),
        None => println!("first bad version: none"),
    }
    println!("bad records: {}", s.bad);
    if s.bad > 0 {
        println!("bad versions: {}", runs(&s));
        println!("valid records after the first bad one: {}", s.valid_after_bad());
    }
    if s.partial() > 0 {
        println!("partial record: {} bytes", s.partial());
    }
    match s.state() {
        State::Clean => {
            println!("state: clean");
            0
        }
        State::TornTail { cut_bytes } => {
            println!(
                "state: torn tail: the last {cut_bytes} bytes (after version {}) are one write cut by a crash, \
                 never acknowledged; the next start cuts them",
                s.good
            );
            0
        }
        State::Damaged { first_bad } => {
            println!(
                "state: damaged: bad records before valid ones, or more at the end than one write ({GROUP} records) \
                 can tear; placecast serve refuses to start on it"
            );
            println!(
                "fix: restore {LOG_FILE} from a backup, or keep versions 1..={keep} (every later edit is lost): \
                 placecast log repair --data-dir {} --truncate-after {keep}",
                dir.display(),
                keep = first_bad - 1
            );
            1
        }
    }
}

fn repair(dir: &Path, keep: u64) -> Result<(), String> {
    let (mut file, path) = open(dir, true)?;
    let s = scan_file(&mut file, &path)?;
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    if keep > s.good {
        return Err(match s.first_bad() {
            Some(bad) => format!(
                "refusing to keep versions 1..={keep}: version {bad} is bad, and a repair never keeps a bad \
                 record (nor the ones after it); the most it can keep is --truncate-after {}",
                s.good
            ),
            None => format!("{} holds versions 1..={} only; nothing to remove after {keep}", path.display(), s.good),
        });
    }
    let cut_at = keep * RECORD as u64;
    println!("file: {} ({} bytes)", path.display(), s.bytes);
    if s.bytes == cut_at {
        println!("nothing to remove: the log ends at version {keep}");
        return Ok(());
    }
    // Save what is removed (fsynced, and its directory entry too) before removing it.
    let mut removed = Vec::with_capacity((s.bytes - cut_at) as usize);
    file.seek(SeekFrom::Start(cut_at)).map_err(|e| io(&path, e))?;
    file.read_to_end(&mut removed).map_err(|e| io(&path, e))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let saved = dir.join(format!("{LOG_FILE}.removed-after-{keep}.{stamp}"));
    let mut out = OpenOptions::new().write(true).create_new(true).open(&saved).map_err(|e| io(&saved, e))?;
    out.write_all(&removed).and_then(|_| out.sync_all()).map_err(|e| io(&saved, e))?;
    sync_dir(dir).map_err(|e| io(dir, e))?;
    file.set_len(cut_at).and_then(|_| file.sync_all()).map_err(|e| io(&path, e))?;
    sync_dir(dir).map_err(|e| io(dir, e))?;
    // What went: the removed whole records, valid or not, and a partial one.
    let removed_records = s.records - keep;
    let removed_bad = s.bad; // every bad record is after the valid prefix, and keep <= good
    let removed_valid = removed_records - removed_bad;
    println!("kept: versions 1..={keep}");
    match removed_records {
        0 => println!("removed: {} bytes of a partial record", s.partial()),
        n => println!(
            "removed: versions {}..={} ({n} records: {removed_bad} bad, {removed_valid} valid){}",
            keep + 1,
            s.records,
            match s.partial() {
                0 => String::new(),
                p => format!(" and {p} bytes of a partial record"),
            }
        ),
    }
    if removed_valid > 0 {
        println!(
            "warning: the {removed_valid} valid records removed were edits that had been acknowledged; \
             they are gone from the canvas"
        );
    }
    println!(
        "saved: the {} removed bytes are in {} (to undo, with no server running: cat it >> {})",
        removed.len(),
        saved.display(),
        path.display()
    );
    Ok(())
}
