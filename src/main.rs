//! The `placecast` binary: parses configuration and runs a subcommand. Errors reach the operator
//! as one plain sentence and exit code 2 (bad configuration) or 1 (failure while running).

use mimalloc::MiMalloc;
use placecast::config::{parse_cli, Command, Config};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    let cli = match parse_cli(std::env::args_os()) {
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
            let config = match Config::from_args(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("placecast: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = placecast::server::run(config) {
                eprintln!("placecast: {e}");
                std::process::exit(1);
            }
        }
        Command::MintToken { user, ttl, secret } => {
            if secret.len() < 16 {
                eprintln!("placecast: --secret must be at least 16 bytes");
                std::process::exit(2);
            }
            let expires = if ttl == 0 { 0 } else { placecast::now_ms() / 1000 + ttl };
            match placecast::token::Signer::new(secret.as_bytes()).mint(&user, expires) {
                Ok(t) => println!("{t}"),
                Err(e) => {
                    eprintln!("placecast: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
}
