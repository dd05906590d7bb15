//! The `placecast` binary: parses configuration and runs a subcommand. Errors reach the operator
//! as one plain sentence and an exit code: 2 bad configuration, 1 failure while running, 65 a
//! damaged edit log (`placecast log verify`), 75 a failed fdatasync (restart: recovery reads
//! what is really on disk); `log verify`/`repair` document their own codes.

use mimalloc::MiMalloc;
use placecast::config::{parse_cli_with_sources, Command, Config, Sources};

/// `serve` refused to start on a damaged edit log (EX_DATAERR); the unit's
/// `RestartPreventExitStatus=` names it.
const EXIT_LOG_DAMAGED: i32 = 65;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    let (cli, sources) = match parse_cli_with_sources(std::env::args_os()) {
        Ok(c) => c,
        Err(placecast::config::ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("placecast: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            // A thread that dies takes the process with it, in every build (release builds
            // abort on panic anyway): a shard or the applier gone would leave a process that
            // answers health checks but serves nobody.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                report(info);
                eprintln!("placecast: a thread panicked; stopping the process so it restarts whole");
                std::process::abort();
            }));
            let config = match Config::from_args(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("placecast: {e}");
                    std::process::exit(2);
                }
            };
            let (stop_tx, stop_rx) = crossbeam_channel::bounded(4);
            if let Err(e) = placecast::server::forward_signals(stop_tx) {
                eprintln!("placecast: cannot handle signals: {e}");
                std::process::exit(1);
            }
            let listen = placecast::server::Listen::Bind(config.args.listen);
            if let Err(e) = placecast::server::run(config, listen, stop_rx) {
                eprintln!("placecast: {e}");
                // A damaged log needs an operator (`placecast log verify`/`repair`): a distinct
                // code so systemd does not restart into the same refusal forever.
                let damaged =
                    matches!(e, placecast::server::ServerError::Log(placecast::edit_log::LogError::Corrupt(_)));
                std::process::exit(if damaged { EXIT_LOG_DAMAGED } else { 1 });
            }
        }
        Command::CheckConfig(args) => std::process::exit(check_config(&args, &sources)),
        Command::Log(cmd) => std::process::exit(placecast::edit_log::tool::run(&cmd)),
        Command::Export(args) => std::process::exit(placecast::tools::export(&args)),
        Command::Import(args) => std::process::exit(placecast::tools::import(&args)),
        Command::Timelapse(args) => std::process::exit(placecast::tools::timelapse(&args)),
        Command::RoleToken { name, role } => {
            let role = match role {
                placecast::config::RoleArg::Moderator => placecast::roles::Role::Moderator,
                placecast::config::RoleArg::Operator => placecast::roles::Role::Operator,
            };
            match placecast::roles::new_token(&name, role) {
                Ok((token, entry)) => {
                    println!("{token}");
                    eprintln!("give the token above to {name}; add this to the --roles file:\n\n{entry}");
                }
                Err(e) => {
                    eprintln!("placecast: {e}");
                    std::process::exit(2);
                }
            }
        }
        Command::MintToken { user, ttl, secret, claims } => {
            if let Err(e) = placecast::secrets::check("--secret", &secret) {
                eprintln!("placecast: {e}");
                std::process::exit(2);
            }
            let expires = if ttl == 0 { 0 } else { placecast::now_ms() / 1000 + ttl };
            match placecast::token::Signer::new(secret.as_bytes()).mint_with_claims(&user, expires, &claims) {
                Ok(t) => println!("{t}"),
                Err(e) => {
                    eprintln!("placecast: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
}

/// `placecast check-config`: the effective settings with their sources, then every problem.
/// Returns the exit code: 0 when `serve` would start with this configuration, 2 otherwise.
fn check_config(args: &placecast::config::ServeArgs, sources: &Sources) -> i32 {
    let width = sources.values.iter().map(|v| v.0.len()).max().unwrap_or(0);
    for (id, value, source) in &sources.values {
        let value = if value.is_empty() { "(none)" } else { value };
        println!("{id:width$} = {value}  [{source}]");
    }
    let (_, problems) = placecast::config::check(args);
    let mut lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    if args.secret.is_none() && args.kafka_brokers.is_none() {
        let path = placecast::secrets::path_in(&args.data_dir);
        match std::fs::read(&path) {
            Ok(_) => match placecast::secrets::load_or_create(&args.data_dir) {
                Ok(_) => println!("token secret: {} (exists, well formed)", path.display()),
                Err(e) => lines.push(e.to_string()),
            },
            Err(_) => println!("token secret: none yet; the first start creates {} (single node only)", path.display()),
        }
    }
    if lines.is_empty() {
        println!("configuration OK");
        return 0;
    }
    for l in &lines {
        eprintln!("problem: {l}");
    }
    eprintln!("{} problem(s) found", lines.len());
    2
}
