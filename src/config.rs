//! Configuration: command-line flags, `PLACECAST_*` environment variables and an optional TOML
//! file, in that order of precedence, turned into one validated `Config`.
//!
//! Invariant: a `Config` that exists is valid (geometry, stride, intervals); every error names
//! the setting at fault.

use crate::canvas::{parse_color, Geometry, GeometryError, RPLACE_2017_PALETTE};
use clap::{parser::ValueSource, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Parser, Debug)]
#[command(name = "placecast", version, about = "An io_uring broadcaster for r/place-style pixel canvases")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the appliance: HTTP API, WebSocket fan-out, placements, snapshots.
    Serve(ServeArgs),
    /// Mint a user token with the configured secret (what an operator's sign-in service does).
    MintToken {
        /// The user id: 1-64 characters of [A-Za-z0-9_-].
        user: String,
        /// Lifetime in seconds; 0 never expires.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// The token secret (at least 16 bytes).
        #[arg(long, env = "PLACECAST_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// All of a batch's socket sends submitted in bulk through the shard's io_uring.
    Uring,
    /// One send() system call per socket (for comparison).
    Syscall,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Serve")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the long flags, with - or _).
    /// Flags and environment variables override it.
    #[arg(long, env = "PLACECAST_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP and WebSocket on; every shard binds it with SO_REUSEPORT.
    #[arg(long, env = "PLACECAST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Number of shards (one pinned glommio executor each); 0 = one per available core.
    #[arg(long, env = "PLACECAST_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Directory for the embedded edit log and the token secret.
    #[arg(long, env = "PLACECAST_DATA_DIR", default_value = "./placecast-data")]
    pub data_dir: PathBuf,

    /// Batch interval in milliseconds: edits are cut into one frame this often.
    #[arg(long, env = "PLACECAST_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,

    /// Cooldown per user between placements, in seconds (0 disables it, for tests and load
    /// tests). Changeable while running through POST /api/v1/admin/cooldown.
    #[arg(long, env = "PLACECAST_COOLDOWN", default_value_t = 300)]
    pub cooldown: u64,

    /// Canvas width in pixels.
    #[arg(long, env = "PLACECAST_WIDTH", default_value_t = 1000)]
    pub width: u32,

    /// Canvas height in pixels.
    #[arg(long, env = "PLACECAST_HEIGHT", default_value_t = 1000)]
    pub height: u32,

    /// Palette as comma-separated #rrggbb colors (2 to 32); default r/place 2017's 16 colors.
    /// Changing it on an existing log reinterprets old edits, so fix it before an event.
    #[arg(long, env = "PLACECAST_PALETTE", value_delimiter = ',')]
    pub palette: Vec<String>,

    /// HMAC secret for user tokens (at least 16 bytes). Without it a random secret is created
    /// once and kept in DATA_DIR/secret.
    #[arg(long, env = "PLACECAST_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Bearer token for /api/v1/admin/* (without it the admin API is off).
    #[arg(long, env = "PLACECAST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Lifetime of anonymous session tokens in seconds (0 = never expire).
    #[arg(long, env = "PLACECAST_SESSION_TTL", default_value_t = 30 * 24 * 3600)]
    pub session_ttl: u64,

    /// Edits kept in memory for catch-up with /ws?since= (at least 1,000,000 in production).
    #[arg(long, env = "PLACECAST_WINDOW", default_value_t = 2_000_000)]
    pub window: usize,

    /// Bytes per edit on the wire (4 = compact; more pads with zeros, for benchmarks).
    #[arg(long, env = "PLACECAST_EDIT_STRIDE", default_value_t = 4)]
    pub edit_stride: u8,

    /// Batches a client may fall behind before it is closed with 4000 (the shard keeps this many
    /// recent batch frames, shared by all its clients).
    #[arg(long, env = "PLACECAST_MAX_LAG_BATCHES", default_value_t = 50)]
    pub max_lag_batches: usize,

    /// SO_SNDBUF for WebSocket sockets in bytes (0 = kernel autotuning). A small value bounds
    /// kernel memory per slow client.
    #[arg(long, env = "PLACECAST_WS_SNDBUF", default_value_t = 0)]
    pub ws_sndbuf: usize,

    /// How batch frames are written to sockets.
    #[arg(long, env = "PLACECAST_SEND_MODE", value_enum, default_value_t = SendMode::Uring)]
    pub send_mode: SendMode,

    /// Milliseconds a client has to send a complete HTTP request (and so a WebSocket handshake).
    #[arg(long, env = "PLACECAST_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Most WebSocket connections per shard (further upgrades get 503). 0 = derived from the
    /// open-file limit.
    #[arg(long, env = "PLACECAST_MAX_CONNS", default_value_t = 0)]
    pub max_conns: usize,

    /// Skip fdatasync on the embedded log (faster, loses acknowledged edits on power loss).
    #[arg(long, env = "PLACECAST_NO_FSYNC", default_value_t = false)]
    pub no_fsync: bool,

    /// Kafka bootstrap brokers (host:port,...). Setting it makes a Kafka topic the edit log, shared
    /// by every node, instead of the embedded log (needs a build with the `kafka` feature; see
    /// KAFKA.md). Every node must then use the same --cooldown, canvas size and palette.
    #[arg(long, env = "PLACECAST_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// The Kafka topic of the edits: exactly one partition, infinite retention (see KAFKA.md).
    #[arg(long, env = "PLACECAST_KAFKA_TOPIC", default_value = "placecast-edits")]
    pub kafka_topic: String,

    /// Milliseconds a placement waits for Kafka's acknowledgement before it answers 503; the
    /// start-up checks of the broker and topic give up after this long too.
    #[arg(long, env = "PLACECAST_KAFKA_TIMEOUT_MS", default_value_t = 5000)]
    pub kafka_timeout_ms: u64,

    /// Seconds between local checkpoints (DATA_DIR/checkpoint.bin) of a node on a Kafka log; one
    /// is also written on SIGTERM/SIGINT. A restart replays only the log after it.
    #[arg(long, env = "PLACECAST_CHECKPOINT_SECS", default_value_t = 30)]
    pub checkpoint_secs: u64,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Toml { path: PathBuf, source: toml::de::Error },
    #[error("config file {path}: unknown setting {key:?}")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: setting {key:?} must be a string, number, boolean or list")]
    BadValue { path: PathBuf, key: String },
    #[error("{0}")]
    Clap(#[from] clap::Error),
    #[error("canvas: {0}")]
    Geometry(#[from] GeometryError),
    #[error("--batch-ms must be between 1 and 10000, got {0}")]
    BatchMs(u64),
    #[error("--edit-stride must be between 4 and 64, got {0}")]
    Stride(u8),
    #[error("--window must be at least 1, got {0}")]
    Window(usize),
    #[error("--max-lag-batches must be between 2 and 100000, got {0}")]
    MaxLag(usize),
    #[error("--secret must be at least 16 bytes")]
    ShortSecret,
    #[error("--kafka-brokers needs a placecast built with Kafka support (cargo build --features kafka)")]
    NoKafka,
    #[error("--kafka-timeout-ms must be between 1000 and 300000, got {0}")]
    KafkaTimeout(u64),
    #[error("--checkpoint-secs must be between 1 and 86400, got {0}")]
    CheckpointSecs(u64),
    #[error("--kafka-topic must not be empty")]
    KafkaTopic,
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub args: ServeArgs,
    pub geometry: Geometry,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let palette = if args.palette.is_empty() {
            RPLACE_2017_PALETTE.to_vec()
        } else {
            args.palette.iter().map(|c| parse_color(c)).collect::<Result<Vec<_>, _>>()?
        };
        let geometry = Geometry::new(args.width, args.height, palette)?;
        if args.batch_ms == 0 || args.batch_ms > 10_000 {
            return Err(ConfigError::BatchMs(args.batch_ms));
        }
        if !(4..=64).contains(&args.edit_stride) {
            return Err(ConfigError::Stride(args.edit_stride));
        }
        if args.window == 0 {
            return Err(ConfigError::Window(args.window));
        }
        if !(2..=100_000).contains(&args.max_lag_batches) {
            return Err(ConfigError::MaxLag(args.max_lag_batches));
        }
        if args.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError::ShortSecret);
        }
        if args.kafka_brokers.is_some() {
            if !cfg!(feature = "kafka") {
                return Err(ConfigError::NoKafka);
            }
            if !(1000..=300_000).contains(&args.kafka_timeout_ms) {
                return Err(ConfigError::KafkaTimeout(args.kafka_timeout_ms));
            }
            if !(1..=86_400).contains(&args.checkpoint_secs) {
                return Err(ConfigError::CheckpointSecs(args.checkpoint_secs));
            }
            if args.kafka_topic.trim().is_empty() {
                return Err(ConfigError::KafkaTopic);
            }
        }
        Ok(Config { args, geometry })
    }
}

/// Parses the command line, then fills settings neither given as flags nor as environment
/// variables from the TOML file named by `--config`.
pub fn parse_cli<I, T>(argv: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let Command::Serve(ref serve) = cli.command else { return Ok(cli) };
    let Some(path) = serve.config.clone() else { return Ok(cli) };
    let sub = matches.subcommand_matches("serve").expect("serve matched");
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.clone(), source })?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        // Known settings are the serve command's arguments (matches list only those with a value).
        let known = Cli::command()
            .find_subcommand("serve")
            .is_some_and(|c| c.get_arguments().any(|a| a.get_id().as_str() == id));
        if !known || id == "config" {
            return Err(ConfigError::UnknownKey { path, key });
        }
        if sub.value_source(&id) != Some(ValueSource::DefaultValue) && sub.value_source(&id).is_some() {
            continue; // a flag or environment variable wins over the file
        }
        let flag = format!("--{}", id.replace('_', "-"));
        let rendered = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => {
                if b {
                    extra.push(flag.into());
                }
                continue;
            }
            toml::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            _ => return Err(ConfigError::BadValue { path, key }),
        };
        extra.push(format!("{flag}={rendered}").into());
    }
    // The file's settings go right after the subcommand, before the user's own arguments.
    let pos = argv.iter().position(|a| a == "serve").expect("serve given") + 1;
    let mut full = argv.clone();
    full.splice(pos..pos, extra);
    let matches = Cli::command().try_get_matches_from(&full)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(argv: &[&str]) -> Result<ServeArgs, ConfigError> {
        let mut v = vec!["placecast", "serve"];
        v.extend_from_slice(argv);
        match parse_cli(v)?.command {
            Command::Serve(a) => Ok(a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_rplace() {
        let c = Config::from_args(serve(&[]).unwrap()).unwrap();
        assert_eq!((c.geometry.width, c.geometry.height, c.geometry.palette.len()), (1000, 1000, 16));
        assert_eq!(c.args.batch_ms, 100);
        assert_eq!(c.args.cooldown, 300);
    }

    #[test]
    fn file_fills_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "width = 4000\nheight = 4000\nbatch-ms = 50\nno_fsync = true\ncooldown = 7\n").unwrap();
        let a = serve(&["--config", f.to_str().unwrap(), "--cooldown", "9"]).unwrap();
        assert_eq!((a.width, a.height, a.batch_ms, a.cooldown, a.no_fsync), (4000, 4000, 50, 9, true));
        std::fs::write(&f, "kafka-brokers = \"127.0.0.1:9092\"\nkafka_topic = \"edits\"\n").unwrap();
        let a = serve(&["--config", f.to_str().unwrap()]).unwrap();
        assert_eq!((a.kafka_brokers.as_deref(), a.kafka_topic.as_str()), (Some("127.0.0.1:9092"), "edits"));
    }

    #[test]
    fn file_unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "widht = 4\n").unwrap();
        let e = serve(&["--config", f.to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("widht"), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        let e = Config::from_args(serve(&["--batch-ms", "0"]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("--batch-ms"));
        let pal: Vec<String> = (0..32).map(|i| format!("#0000{i:02x}")).collect();
        let a = serve(&["--width", "4000", "--height", "4000", "--palette", &pal.join(",")]).unwrap();
        assert_eq!(Config::from_args(a).unwrap().geometry.bits_per_pixel(), 8);
    }
}
