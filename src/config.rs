//! Configuration: command-line flags, `PLACECAST_*` environment variables and an optional TOML
//! file, in that order of precedence, turned into one validated `Config`.
//!
//! Invariant: a `Config` that exists is valid (geometry, stride, intervals); every error names
//! the setting at fault.

use crate::canvas::{parse_color, Geometry, GeometryError, RPLACE_2017_PALETTE};
use crate::client_addr::Cidr;
use crate::pow::SessionMode;
use crate::proxy_header::ProxyMode;
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
    /// Print the configuration `serve` would run with (each value's source, secrets masked) and
    /// every problem with it; exits non-zero if there is any.
    CheckConfig(ServeArgs),
    /// Mint a user token with the configured secret (what an operator's sign-in service does).
    MintToken {
        /// The user id: 1-64 characters of [A-Za-z0-9_-].
        user: String,
        /// Lifetime in seconds; 0 never expires.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// The token secret (at least 32 bytes).
        #[arg(long, env = "PLACECAST_SECRET", hide_env_values = true)]
        secret: String,
        /// A claim the token carries (repeatable; a v2 token): see --claim-cooldown.
        #[arg(long = "claim", value_name = "CLAIM")]
        claims: Vec<String>,
    },
    /// Make a token for a moderator or operator: prints the token (give it to them) and the entry
    /// to add to the `--roles` file (it holds only the token's SHA-256).
    RoleToken {
        /// Their name: 1-64 of [A-Za-z0-9_-]; also their user name on the canvas.
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Inspect or repair the embedded edit log (`log verify`, `log repair --truncate-after V`);
    /// run them with the server stopped.
    #[command(subcommand)]
    Log(crate::edit_log::tool::LogCommand),
    /// Write the log as CSV (`timestamp,user_hash,x,y,color,version`, as Reddit published
    /// r/place's), streaming, with progress; works while the server runs.
    Export(crate::tools::ExportArgs),
    /// Read such a CSV (ours, or Reddit's 2017/2022 files) into an empty embedded log.
    Import(crate::tools::ImportArgs),
    /// Render a span of the log as an animation: APNG or GIF written here, MP4 or WebM through
    /// ffmpeg; reads the embedded log or the Kafka topic, works while the server runs.
    Timelapse(crate::tools::TimelapseCommand),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Moderator,
    Operator,
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
#[command(next_help_heading = "Serve", args_override_self = true)]
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

    /// HMAC secret for user tokens (at least 32 bytes; `openssl rand -hex 32`). Without it a
    /// random secret is created once and kept in DATA_DIR/secret (single node only: a cluster
    /// node must be given the one secret every node shares).
    #[arg(long, env = "PLACECAST_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Bearer token for /api/v1/admin/* (at least 32 bytes; without it the admin API is off).
    #[arg(long, env = "PLACECAST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A cooldown for users whose token carries a claim, NAME=SECONDS (repeatable, at most 8; the
    /// first listed claim a token carries decides). The same on every node of a cluster.
    #[arg(long = "claim-cooldown", value_name = "NAME=SECONDS")]
    pub claim_cooldown: Vec<String>,

    /// Moderators and operators with their own named tokens: a TOML file of `[[holder]]` name,
    /// role and the SHA-256 of the token (`placecast role-token NAME --role moderator`).
    #[arg(long, env = "PLACECAST_ROLES", value_name = "FILE")]
    pub roles: Option<PathBuf>,

    /// Lifetime of anonymous session tokens in seconds (0 = never expire).
    #[arg(long, env = "PLACECAST_SESSION_TTL", default_value_t = 30 * 24 * 3600)]
    pub session_ttl: u64,

    /// Edits kept in memory for catch-up with /ws?since= (at least 1,000,000 in production).
    #[arg(long, env = "PLACECAST_WINDOW", default_value_t = 2_000_000)]
    pub window: usize,

    /// What `GET /api/v1/pixel` says about who placed a pixel: `names` (the display name from
    /// the user's token, public), `hashed` (a keyed hash: one user's edits can be grouped but
    /// not named), or `off` (403). The user directory is kept either way.
    #[arg(long, env = "PLACECAST_PIXEL_LOOKUP", value_enum, default_value_t = crate::history::Lookup::Names)]
    pub pixel_lookup: crate::history::Lookup,

    /// Versions between two history keyframes: the canvas at any version is built from the
    /// keyframe before it plus at most this many edits (a multiple of 4096).
    #[arg(long, env = "PLACECAST_KEYFRAME_EVERY", default_value_t = crate::bounds::KEYFRAME_EVERY)]
    pub keyframe_every: u64,

    /// Bytes per edit on the wire (4 = compact; more pads with zeros, for benchmarks).
    #[arg(long, env = "PLACECAST_EDIT_STRIDE", default_value_t = 4)]
    pub edit_stride: u8,

    /// Batches a client may fall behind before it is closed with 4000 (the shard keeps this many
    /// recent batch frames, shared by all its clients).
    #[arg(long, env = "PLACECAST_MAX_LAG_BATCHES", default_value_t = 50)]
    pub max_lag_batches: usize,

    /// Milliseconds a client has to take its whole catch-up before it is closed (4000). A far
    /// catch-up is at most the window (2M edits: 8 MB: 64 s at 1 Mbit/s); a client that is
    /// closed resumes with `since` from where it got to, and one that stopped reading frees its
    /// frames.
    #[arg(long, env = "PLACECAST_CATCH_UP_DRAIN_MS", default_value_t = 30_000)]
    pub catch_up_drain_ms: u64,

    /// Origins (scheme://host[:port]) whose pages may open the WebSocket, e.g.
    /// https://place.example.com; empty = any origin (the API is public and tokens are not
    /// cookies, so a foreign page gains nothing a script could not do anyway).
    #[arg(long, env = "PLACECAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// SO_SNDBUF for WebSocket sockets in bytes (0 = kernel autotuning). Bounds the kernel
    /// memory a client that stops reading holds (Linux doubles it: 128 KiB at the default), and
    /// makes --max-lag-batches bite: with autotuning the kernel absorbs megabytes per slow client
    /// before the lag bound ever sees one.
    #[arg(long, env = "PLACECAST_WS_SNDBUF", default_value_t = 65_536)]
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

    /// Microseconds a group commit of the embedded log stays open after its first placement for
    /// more to share its fdatasync (0 to 100000). Adds at most this to a placement's answer;
    /// saves most fdatasyncs under a steady trickle of placements (bench/RESULTS.md).
    #[arg(long, env = "PLACECAST_COMMIT_WINDOW_US", default_value_t = crate::bounds::COMMIT_WINDOW_US, value_parser = clap::value_parser!(u64).range(0..=crate::bounds::MAX_COMMIT_WINDOW_US))]
    pub commit_window_us: u64,

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

    /// Milliseconds the producer waits to fill a batch before sending it (`linger.ms`, 0 to 100).
    /// A produce request costs the broker about the same whatever it carries, so at thousands of
    /// placements a second a longer linger means fewer, fuller requests (more placements per
    /// broker core), for that much more time before a placement's answer (bench/RESULTS.md,
    /// "Kafka placements through a cluster of two nodes").
    #[arg(long, env = "PLACECAST_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u64,

    /// Seconds between local checkpoints (DATA_DIR/checkpoint.bin) of a node on a Kafka log; one
    /// is also written on SIGTERM/SIGINT. A restart replays only the log after it.
    #[arg(long, env = "PLACECAST_CHECKPOINT_SECS", default_value_t = 30)]
    pub checkpoint_secs: u64,

    /// The Kafka topic where nodes publish their checkpoints for joining nodes (one partition;
    /// compaction welcome). Empty: the edit topic's name with `-checkpoints` after it. A node
    /// runs without it (and says so) when it does not exist.
    #[arg(long, env = "PLACECAST_CHECKPOINT_TOPIC", default_value = "")]
    pub checkpoint_topic: String,

    /// Seconds between publications of this node's checkpoint (when its version moved); 0 = this
    /// node does not publish.
    #[arg(long, env = "PLACECAST_PUBLISH_CHECKPOINT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub publish_checkpoint_secs: u64,

    /// A node with an empty data directory replays the whole edit topic instead of starting from
    /// the newest published checkpoint (its history then reaches back to version 0).
    #[arg(long, env = "PLACECAST_NO_PUBLISHED_JOIN", default_value_t = false)]
    pub no_published_join: bool,

    /// PROXY protocol on the listener (behind a layer-4 load balancer): off, v1, v2 or any.
    /// When on, connections from --trusted-proxies must start with a header and others must not.
    #[arg(long, env = "PLACECAST_PROXY_PROTOCOL", value_enum, default_value_t = ProxyMode::Off)]
    pub proxy_protocol: ProxyMode,

    /// Sources allowed (and then required) to send a PROXY header, as CIDR blocks or addresses.
    #[arg(long, env = "PLACECAST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Concurrent connections (HTTP and WebSocket) per client address (IPv6: per /64); 0 = no
    /// cap. Live: POST /api/v1/admin/limits.
    #[arg(long, env = "PLACECAST_MAX_CONNS_PER_ADDR", default_value_t = 64)]
    pub max_conns_per_addr: u32,

    /// Anonymous sessions one address may create per minute (burst of as many); 0 = no cap.
    #[arg(long, env = "PLACECAST_SESSIONS_PER_MIN", default_value_t = 20)]
    pub sessions_per_min: u32,

    /// Placements per minute summed over every user from one address (burst of as many); 0 = no
    /// cap. Sized for a shared address (a school, a carrier NAT) of many users at one per cooldown.
    #[arg(long, env = "PLACECAST_PLACEMENTS_PER_ADDR_PER_MIN", default_value_t = 60)]
    pub placements_per_addr_per_min: u32,

    /// Catch-ups (`/ws?since=`) per minute from one address (burst of as many); 0 = no cap.
    /// Each costs the applier a frame build; a reconnecting NAT of a hundred users fits. History
    /// answers built from disk (`/api/v1/canvas?at=`, `/api/v1/edits`) count too; cached ones not.
    #[arg(long, env = "PLACECAST_CATCHUPS_PER_ADDR_PER_MIN", default_value_t = 120)]
    pub catchups_per_addr_per_min: u32,

    /// Anonymous sessions: on, off (a sign-in service mints every token), or proof (a proof of
    /// work per session).
    #[arg(long, env = "PLACECAST_ANONYMOUS_SESSIONS", value_enum, default_value_t = SessionMode::On)]
    pub anonymous_sessions: SessionMode,

    /// Leading zero bits a session's proof of work needs (8 to 32; each bit doubles the work).
    #[arg(long, env = "PLACECAST_POW_DIFFICULTY", default_value_t = 20)]
    pub pow_difficulty: u8,

    /// Descriptors kept for /healthz, /readyz, /metrics and the admin API when every other slot
    /// is taken.
    #[arg(long, env = "PLACECAST_FD_RESERVE", default_value_t = 256)]
    pub fd_reserve: usize,

    /// Milliseconds an idle keep-alive HTTP connection stays open.
    #[arg(long, env = "PLACECAST_IDLE_TIMEOUT_MS", default_value_t = 15_000)]
    pub idle_timeout_ms: u64,

    /// Milliseconds an HTTP answer may take to be written before the connection is closed.
    #[arg(long, env = "PLACECAST_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// A WebSocket silent for this many seconds is pinged; silent for as long again, it is
    /// closed with 4002.
    #[arg(long, env = "PLACECAST_WS_PING_SECS", default_value_t = 30)]
    pub ws_ping_secs: u64,

    /// Milliseconds between the start of a drain (SIGTERM, POST /api/v1/admin/drain) and the
    /// first client close: /readyz is 503 meanwhile, so the balancer stops sending new clients.
    #[arg(long, env = "PLACECAST_DRAIN_GRACE_MS", default_value_t = 5_000)]
    pub drain_grace_ms: u64,

    /// Seconds over which a drain closes the clients (1012 with a reconnect hint), evenly, so the
    /// nodes that take them over see at most clients/spread new connections per second.
    #[arg(long, env = "PLACECAST_DRAIN_SPREAD_S", default_value_t = 10)]
    pub drain_spread_s: u64,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--roles: {0}")]
    Roles(String),
    #[error("{0}")]
    Claims(String),
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
    #[error("--keyframe-every must be a positive multiple of 4096 up to 16777216, got {0}")]
    KeyframeEvery(u64),
    #[error("--max-lag-batches must be between 2 and 100000, got {0}")]
    MaxLag(usize),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error("--pow-difficulty must be between 8 and 32, got {0}")]
    PowDifficulty(u8),
    #[error("--proxy-protocol {0:?} (any version) needs --trusted-proxies: the addresses of the load balancers allowed to send the header")]
    NoTrustedProxies(ProxyMode),
    #[error("--{name} must be between {min} and {max}, got {got}")]
    Range { name: &'static str, min: u64, max: u64, got: u64 },
    #[error("--kafka-brokers needs a placecast built with Kafka support (cargo build --features kafka)")]
    NoKafka,
    #[error("--kafka-timeout-ms must be between 1000 and 300000, got {0}")]
    KafkaTimeout(u64),
    #[error("--kafka-linger-ms must be between 0 and 100, got {0}")]
    KafkaLinger(u64),
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
    /// The validated configuration, or the first problem with it.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let (geometry, mut problems) = check(&args);
        match (geometry, problems.is_empty()) {
            (Some(geometry), true) => Ok(Config { args, geometry }),
            _ => Err(problems.remove(0)),
        }
    }
}

/// Every problem with `args` (not just the first), and the canvas geometry when it is valid.
pub fn check(args: &ServeArgs) -> (Option<Geometry>, Vec<ConfigError>) {
    let mut p: Vec<ConfigError> = Vec::new();
    let geometry = palette(args).and_then(|pal| Ok(Geometry::new(args.width, args.height, pal)?));
    let geometry = geometry.map_err(|e| p.push(e)).ok();
    if args.batch_ms == 0 || args.batch_ms > 10_000 {
        p.push(ConfigError::BatchMs(args.batch_ms));
    }
    if !(4..=64).contains(&args.edit_stride) {
        p.push(ConfigError::Stride(args.edit_stride));
    }
    if args.window == 0 {
        p.push(ConfigError::Window(args.window));
    }
    if args.keyframe_every == 0 || !args.keyframe_every.is_multiple_of(4096) || args.keyframe_every > 1 << 24 {
        p.push(ConfigError::KeyframeEvery(args.keyframe_every));
    }
    if !(2..=100_000).contains(&args.max_lag_batches) {
        p.push(ConfigError::MaxLag(args.max_lag_batches));
    }
    if let Some(Err(e)) = args.secret.as_deref().map(|s| crate::secrets::check("--secret", s)) {
        p.push(e.into());
    }
    if let Some(Err(e)) = args.admin_token.as_deref().map(|t| crate::secrets::check("--admin-token", t)) {
        p.push(e.into());
    }
    if let Err(e) = crate::claims::ClaimCooldowns::parse(&args.claim_cooldown) {
        p.push(ConfigError::Claims(e.to_string()));
    }
    if let Err(e) = crate::roles::Roles::load(args.admin_token.as_deref(), args.roles.as_deref()) {
        p.push(ConfigError::Roles(e.to_string()));
    }
    if args.kafka_brokers.is_some() && args.secret.is_none() {
        p.push(crate::secrets::SecretError::ClusterNeedsSecret.into());
    }
    if !(crate::pow::MIN_DIFFICULTY..=crate::pow::MAX_DIFFICULTY).contains(&args.pow_difficulty) {
        p.push(ConfigError::PowDifficulty(args.pow_difficulty));
    }
    if args.proxy_protocol != ProxyMode::Off && args.trusted_proxies.is_empty() {
        p.push(ConfigError::NoTrustedProxies(args.proxy_protocol));
    }
    for (name, min, max, got) in [
        ("idle-timeout-ms", 100, 3_600_000, args.idle_timeout_ms),
        ("write-timeout-ms", 100, 600_000, args.write_timeout_ms),
        ("ws-ping-secs", 1, 3600, args.ws_ping_secs),
        ("drain-grace-ms", 0, 600_000, args.drain_grace_ms),
        ("drain-spread-s", 0, 3600, args.drain_spread_s),
        ("fd-reserve", 16, 100_000, args.fd_reserve as u64),
        ("catch-up-drain-ms", 100, 600_000, args.catch_up_drain_ms),
    ] {
        if !(min..=max).contains(&got) {
            p.push(ConfigError::Range { name, min, max, got });
        }
    }
    if args.kafka_brokers.is_some() {
        if !cfg!(feature = "kafka") {
            p.push(ConfigError::NoKafka);
        }
        if !(1000..=300_000).contains(&args.kafka_timeout_ms) {
            p.push(ConfigError::KafkaTimeout(args.kafka_timeout_ms));
        }
        if args.kafka_linger_ms > 100 {
            p.push(ConfigError::KafkaLinger(args.kafka_linger_ms));
        }
        if !(1..=86_400).contains(&args.checkpoint_secs) {
            p.push(ConfigError::CheckpointSecs(args.checkpoint_secs));
        }
        if args.kafka_topic.trim().is_empty() {
            p.push(ConfigError::KafkaTopic);
        }
    }
    (geometry, p)
}

fn palette(args: &ServeArgs) -> Result<Vec<u32>, ConfigError> {
    if args.palette.is_empty() {
        return Ok(RPLACE_2017_PALETTE.to_vec());
    }
    Ok(args.palette.iter().map(|c| parse_color(c)).collect::<Result<Vec<_>, _>>()?)
}

/// Where each setting of a parsed `serve`/`check-config` came from.
#[derive(Debug, Default)]
pub struct Sources {
    /// (setting id, rendered value, source) in the command's argument order.
    pub values: Vec<(String, String, &'static str)>,
}

/// Parses the command line, then fills settings neither given as flags nor as environment
/// variables from the TOML file named by `--config`.
pub fn parse_cli<I, T>(argv: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_cli_with_sources(argv).map(|(cli, _)| cli)
}

/// `parse_cli`, and where each setting came from (for `check-config`).
pub fn parse_cli_with_sources<I, T>(argv: I) -> Result<(Cli, Sources), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let (name, serve) = match &cli.command {
        Command::Serve(a) => ("serve", a),
        Command::CheckConfig(a) => ("check-config", a),
        Command::Export(a) => ("export", &a.serve),
        Command::Import(a) => ("import", &a.serve),
        Command::Timelapse(a) => ("timelapse", &a.serve),
        _ => return Ok((cli, Sources::default())),
    };
    let sub = matches.subcommand_matches(name).expect("subcommand matched");
    let Some(path) = serve.config.clone() else { return Ok((cli, sources(name, sub, &[]))) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.clone(), source })?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    let mut from_file: Vec<String> = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        // Known settings are the serve command's arguments (matches list only those with a value).
        let known =
            Cli::command().find_subcommand(name).is_some_and(|c| c.get_arguments().any(|a| a.get_id().as_str() == id));
        if !known || id == "config" {
            return Err(ConfigError::UnknownKey { path, key });
        }
        if sub.value_source(&id) != Some(ValueSource::DefaultValue) && sub.value_source(&id).is_some() {
            continue; // a flag or environment variable wins over the file
        }
        from_file.push(id.clone());
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
    let pos = argv.iter().position(|a| a == name).expect("subcommand given") + 1;
    let mut full = argv.clone();
    full.splice(pos..pos, extra);
    let matches = Cli::command().try_get_matches_from(&full)?;
    let sub = matches.subcommand_matches(name).expect("subcommand matched");
    let sources = sources(name, sub, &from_file);
    Ok((Cli::from_arg_matches(&matches)?, sources))
}

/// Every setting of subcommand `name` with its value and source; secrets masked.
fn sources(name: &str, sub: &clap::ArgMatches, from_file: &[String]) -> Sources {
    let cmd = Cli::command();
    let Some(c) = cmd.find_subcommand(name) else { return Sources::default() };
    let mut values = Vec::new();
    for arg in c.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let raw: Vec<String> =
            sub.get_raw(id).map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let mut value = raw.join(",");
        if matches!(id, "secret" | "admin_token") && !value.is_empty() {
            value = crate::secrets::mask(&value);
        }
        let source = match sub.value_source(id) {
            _ if from_file.iter().any(|f| f == id) => "config file",
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        values.push((id.to_string(), value, source));
    }
    Sources { values }
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
    fn check_lists_every_problem_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "cooldown = 7\n").unwrap();
        let argv = [
            "placecast",
            "check-config",
            "--config",
            f.to_str().unwrap(),
            "--batch-ms",
            "0",
            "--secret",
            "change-me-please-change-me-please-0000",
            "--admin-token",
            "short",
        ];
        let (cli, src) = parse_cli_with_sources(argv).unwrap();
        let Command::CheckConfig(a) = cli.command else { panic!() };
        let (_, problems) = check(&a);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert!(text[0].contains("--batch-ms") && text[1].contains("--secret") && text[2].contains("--admin-token"));
        let find = |id: &str| src.values.iter().find(|v| v.0 == id).cloned().unwrap();
        assert_eq!(find("cooldown"), ("cooldown".into(), "7".into(), "config file"));
        assert_eq!(find("batch_ms").2, "command line");
        assert_eq!(find("width").2, "default");
        let secret = find("secret").1;
        assert!(!secret.contains("please") && secret.contains("masked"), "{secret}");
    }

    #[test]
    fn validation_names_the_setting() {
        let e = Config::from_args(serve(&["--batch-ms", "0"]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("--batch-ms"));
        let pal: Vec<String> = (0..32).map(|i| format!("#0000{i:02x}")).collect();
        let a = serve(&["--width", "4000", "--height", "4000", "--palette", &pal.join(",")]).unwrap();
        assert_eq!(Config::from_args(a).unwrap().geometry.bits_per_pixel(), 8);
    }

    #[test]
    #[cfg(feature = "kafka")]
    fn kafka_linger_is_bounded() {
        let k = [
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--secret",
            "test-secret-0123456789-abcdefghijklmnop",
            "--kafka-linger-ms",
        ];
        let e = Config::from_args(serve(&[&k[..], &["101"]].concat()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("--kafka-linger-ms must be between 0 and 100, got 101"), "{e}");
        let c = Config::from_args(serve(&[&k[..], &["5"]].concat()).unwrap()).unwrap();
        assert_eq!(c.args.kafka_linger_ms, 5);
    }
}
