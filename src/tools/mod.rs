//! The offline history tools: `placecast export` (the log as CSV), `placecast import` (a CSV
//! into an empty embedded log) and `placecast timelapse` (wiring the log to `timelapse/`).
//! Each reads the same configuration as `serve` (flags, environment, `--config`), so it finds the
//! same log, canvas and cooldown.
//!
//! Invariants: `import` writes nothing unless every row is valid (it writes a temporary file and
//! renames it into place, durably); `export` and `timelapse` never write to the log and work
//! while a server runs on it. Ctrl-C stops each cleanly (a partial output is removed).

pub mod csv;
pub mod read;

use crate::canvas::Geometry;
use crate::config::{Config, ServeArgs};
use crate::edit_log::file::{encode, lock, sync_dir, LOG_FILE, RECORD};
use crate::edit_log::Edit;
use crate::progress::Progress;
use read::LogReader;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Output format (csv: `timestamp,user_hash,x,y,color,version`, Reddit's published form).
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Output file; `-` is standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Replace each user's key by a keyed hash of it (the token secret keys it), as a published
    /// dataset should: one user's edits still group, but the key cannot be matched to a name.
    #[arg(long)]
    pub anonymize_users: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TimelapseCommand {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub timelapse: crate::timelapse::TimelapseArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The CSV to read (`-` is standard input); see `placecast export`.
    #[arg(long = "in")]
    pub input: PathBuf,
}

fn config(serve: &ServeArgs) -> Result<Config, String> {
    Config::from_args(serve.clone()).map_err(|e| e.to_string())
}

/// Ctrl-C and SIGTERM set the flag the tools poll.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

/// Runs `f`, printing its error; the exit code (0, 1 on failure, 2 on bad configuration, 130 when
/// stopped).
fn exit_code(r: Result<(), ToolError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(ToolError::Config(e)) => {
            eprintln!("placecast: {e}");
            2
        }
        Err(ToolError::Stopped) => {
            eprintln!("placecast: stopped; nothing was left half-written");
            130
        }
        Err(ToolError::Failed(e)) => {
            eprintln!("placecast: {e}");
            1
        }
    }
}

#[derive(Debug)]
enum ToolError {
    Config(String),
    Failed(String),
    Stopped,
}

pub fn export(args: &ExportArgs) -> i32 {
    exit_code(export_inner(args))
}

fn export_inner(args: &ExportArgs) -> Result<(), ToolError> {
    let config = config(&args.serve).map_err(ToolError::Config)?;
    let hash_key = match args.anonymize_users {
        true => Some(export_hash_key(&config).map_err(ToolError::Config)?),
        false => None,
    };
    let reader = LogReader::open(&config).map_err(ToolError::Failed)?;
    let stop = stop_flag();
    let to_stdout = args.out.as_os_str() == "-";
    let tmp = partial(&args.out);
    let sink: Box<dyn Write> = match to_stdout {
        true => Box::new(std::io::stdout().lock()),
        false => {
            Box::new(std::fs::File::create(&tmp).map_err(|e| ToolError::Failed(format!("{}: {e}", tmp.display())))?)
        }
    };
    let result = write_csv(reader, sink, hash_key, &stop);
    if to_stdout {
        return result;
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, &args.out).map_err(|e| ToolError::Failed(format!("{}: {e}", args.out.display())))
}

fn partial(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// The key `--anonymize-users` hashes with: from the token secret, so two exports of one event
/// agree and `--pixel-lookup hashed` shows a prefix of the same hash.
fn export_hash_key(config: &Config) -> Result<[u8; 32], String> {
    let secret = match &config.args.secret {
        Some(s) => s.as_bytes().to_vec(),
        None => std::fs::read(crate::secrets::path_in(&config.args.data_dir)).map_err(|e| {
            format!("--anonymize-users needs the token secret (--secret, or the data directory's): {e}")
        })?,
    };
    Ok(crate::history::derive_hash_key(&secret))
}

fn write_csv(
    reader: LogReader,
    sink: Box<dyn Write>,
    hash_key: Option<[u8; 32]>,
    stop: &AtomicBool,
) -> Result<(), ToolError> {
    let fail = |e: std::io::Error| ToolError::Failed(format!("writing the CSV: {e}"));
    let extent = reader.extent;
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    writeln!(out, "{}", csv::HEADER).map_err(fail)?;
    let mut progress = Progress::new("export", extent.head - extent.first, "edits");
    let mut line = String::with_capacity(64);
    for (n, item) in reader.enumerate() {
        let a = item.map_err(ToolError::Failed)?;
        if n % 65_536 == 0 {
            if stop.load(Ordering::Relaxed) {
                return Err(ToolError::Stopped);
            }
            progress.set(n as u64);
        }
        if !a.applied {
            continue;
        }
        let user = hash_key.map_or(a.edit.user, |k| crate::history::keyed_user_hash(&k, a.edit.user));
        line.clear();
        csv::format_row(&mut line, a.edit.ts_ms, user, a.edit.x, a.edit.y, a.edit.color, a.version);
        out.write_all(line.as_bytes()).map_err(fail)?;
    }
    out.flush().map_err(fail)?;
    progress.finish(extent.head - extent.first);
    Ok(())
}

pub fn import(args: &ImportArgs) -> i32 {
    exit_code(import_inner(args))
}

fn import_inner(args: &ImportArgs) -> Result<(), ToolError> {
    let config = config(&args.serve).map_err(ToolError::Config)?;
    #[cfg(feature = "kafka")]
    if config.args.kafka_brokers.is_some() {
        return Err(ToolError::Config(
            "import writes the embedded log; to replay an event on a cluster, import it into one node's \
             --data-dir and serve from there"
                .into(),
        ));
    }
    let dir = &config.args.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| ToolError::Failed(format!("{}: {e}", dir.display())))?;
    let path = dir.join(LOG_FILE);
    // Hold the log's lock for the whole import: no server may open it meanwhile.
    let guard = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| ToolError::Failed(format!("{}: {e}", path.display())))?;
    lock(&guard, &path, true).map_err(|e| ToolError::Failed(e.to_string()))?;
    if guard.metadata().map_err(|e| ToolError::Failed(e.to_string()))?.len() > 0 {
        return Err(ToolError::Failed(format!(
            "{} is not empty: import writes versions 1..N into an empty log (use a new --data-dir)",
            path.display()
        )));
    }
    let input: Box<dyn std::io::Read> = match args.input.as_os_str() == "-" {
        true => Box::new(std::io::stdin().lock()),
        false => Box::new(
            std::fs::File::open(&args.input)
                .map_err(|e| ToolError::Failed(format!("{}: {e}", args.input.display())))?,
        ),
    };
    let size = std::fs::metadata(&args.input).map(|m| m.len()).unwrap_or(0);
    let tmp = dir.join(format!(".{LOG_FILE}.import"));
    let result = import_rows(input, size, &tmp, &config.geometry, &stop_flag());
    let count = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &path).map_err(|e| ToolError::Failed(format!("{}: {e}", path.display())))?;
    sync_dir(dir).map_err(|e| ToolError::Failed(format!("{}: {e}", dir.display())))?;
    eprintln!("placecast: imported {count} edits into {} (versions 1..={count})", path.display());
    drop(guard);
    Ok(())
}

/// Reads every row, writes the log's records to `tmp` and fsyncs it; returns the edit count.
fn import_rows(
    input: Box<dyn std::io::Read>,
    size: u64,
    tmp: &Path,
    g: &Geometry,
    stop: &AtomicBool,
) -> Result<u64, ToolError> {
    let io = |e: std::io::Error| ToolError::Failed(format!("{}: {e}", tmp.display()));
    let file = std::fs::File::create(tmp).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let mut lines = BufReader::with_capacity(1 << 20, input);
    let mut line = String::new();
    let read = |lines: &mut BufReader<_>, line: &mut String| -> Result<usize, ToolError> {
        line.clear();
        lines.read_line(line).map_err(|e| ToolError::Failed(format!("reading the CSV: {e}")))
    };
    if read(&mut lines, &mut line)? == 0 {
        return Err(ToolError::Failed("the CSV is empty (no header)".into()));
    }
    let cols = csv::Columns::from_header(&line).map_err(|e| ToolError::Failed(format!("line 1: {e}")))?;
    let mut progress = Progress::new("import", size, "bytes");
    let (mut version, mut bytes, mut last_version, mut renumbered) = (0u64, line.len() as u64, 0u64, 0u64);
    let mut rec = [0u8; RECORD];
    loop {
        let n = read(&mut lines, &mut line)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        if line.trim().is_empty() {
            continue;
        }
        let at = version + 2;
        let row = csv::parse_row(&cols, &line).map_err(|e| ToolError::Failed(format!("line {at}: {e}")))?;
        let edit = to_edit(&row, g).map_err(|e| ToolError::Failed(format!("line {at}: {e}")))?;
        if let Some(v) = row.version {
            if v <= last_version {
                return Err(ToolError::Failed(format!(
                    "line {at}: version {v} does not increase (after {last_version})"
                )));
            }
            renumbered += u64::from(v != version + 1);
            last_version = v;
        }
        version += 1;
        encode(version, &edit, &mut rec);
        out.write_all(&rec).map_err(io)?;
        if version.is_multiple_of(65_536) {
            if stop.load(Ordering::Relaxed) {
                return Err(ToolError::Stopped);
            }
            progress.set(bytes);
        }
    }
    out.flush().map_err(io)?;
    drop(out);
    file.sync_all().map_err(io)?;
    progress.finish(bytes);
    if renumbered > 0 {
        eprintln!("placecast: {renumbered} rows had versions with gaps (rejected edits left out of the export): imported as 1..={version}");
    }
    Ok(version)
}

fn to_edit(row: &csv::Row, g: &Geometry) -> Result<Edit, String> {
    if g.index(row.x as i64, row.y as i64).is_none() {
        return Err(format!(
            "({}, {}) is outside the {}x{} canvas (--width/--height)",
            row.x, row.y, g.width, g.height
        ));
    }
    let color = match row.color {
        csv::Color::Index(i) if g.valid_color(i as i64) => i as u8,
        csv::Color::Index(i) => return Err(format!("color {i} is not in the {}-color palette", g.palette.len())),
        csv::Color::Rgb(rgb) => match g.palette.iter().position(|&p| p == rgb) {
            Some(i) => i as u8,
            None => return Err(format!("color #{rgb:06x} is not in the palette (--palette)")),
        },
    };
    Ok(Edit { x: row.x as u16, y: row.y as u16, color, user: row.user, ts_ms: row.ts_ms, ext: 0, aux: 0 })
}

pub fn timelapse(args: &TimelapseCommand) -> i32 {
    exit_code(timelapse_inner(args))
}

/// Feeds `timelapse::run` the applied edits of the configured log (embedded file or Kafka topic).
fn timelapse_inner(args: &TimelapseCommand) -> Result<(), ToolError> {
    use crate::timelapse::{FrameEdit, Head, TimelapseError};
    let config = config(&args.serve).map_err(ToolError::Config)?;
    let reader = LogReader::open(&config).map_err(ToolError::Failed)?;
    // The film has one size: the canvas as large as the log grew it (smaller at first, white).
    let geometry = reader.final_geometry.clone();
    let e = reader.extent;
    let head = Head { version: e.head, first_ts_ms: e.first_ts_ms, last_ts_ms: e.last_ts_ms };
    let stop = stop_flag();
    let edits = reader.filter_map(|r| match r {
        Ok(a) if a.applied => {
            let (v, e) = (a.version, a.edit);
            Some(Ok(FrameEdit { version: v, ts_ms: e.ts_ms, x: e.x, y: e.y, color: e.color }))
        }
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    });
    match crate::timelapse::run(&args.timelapse, &geometry, head, edits, &stop) {
        Ok(summary) => {
            eprintln!("placecast: {summary}");
            Ok(())
        }
        Err(TimelapseError::Stopped) => Err(ToolError::Stopped),
        Err(TimelapseError::Args(e)) => Err(ToolError::Config(e.to_string())),
        Err(e) => Err(ToolError::Failed(e.to_string())),
    }
}
