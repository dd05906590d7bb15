//! `placecast-load`: parses the command line, runs one scenario (or its share of one as a
//! `--procs` child), prints the table to stderr and the JSON result to stdout or `--json FILE`;
//! or writes a synthetic event trace (`trace`); or serves coordinators as a load agent
//! (`agent`).
//! Exit codes: 0 ok, 1 failed run or error, 2 bad arguments, 3 a host limit was hit.

use clap::Parser;
use placecast_load::cli::{Cli, Cmd};
use placecast_load::error::LoadError;
use placecast_load::report::Report;
use placecast_load::{agent, compare, scenario, share, signals, trace};
use std::io::Write;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn emit(report: &mut Report, json: Option<&std::path::Path>) -> Result<(), LoadError> {
    report.loadavg.push(scenario::loadavg());
    eprintln!("\n{}", report.table());
    let doc = serde_json::to_string_pretty(report).expect("a report always serializes");
    match json {
        Some(p) => std::fs::write(p, doc + "\n").map_err(|e| LoadError::io(format!("writing {}", p.display()), e)),
        None => {
            let mut o = std::io::stdout().lock();
            writeln!(o, "{doc}").map_err(|e| LoadError::io("writing the result", e))
        }
    }
}

fn run(cli: Cli) -> Result<i32, LoadError> {
    signals::install();
    let (mut report, json) = match &cli.cmd {
        Cmd::Hold(a) if a.common.is_child() => return share::run_child(&cli.cmd).map(|_| 0),
        Cmd::Fanout(a) if a.common.is_child() => return share::run_child(&cli.cmd).map(|_| 0),
        Cmd::Session(a) if a.common.is_child() => return share::run_child(&cli.cmd).map(|_| 0),
        Cmd::Agent(a) => return agent::run(a).map(|_| 0),
        Cmd::Session(a) => (scenario::session(a)?, a.common.json.clone()),
        Cmd::Hold(a) => (scenario::hold(a)?, a.common.json.clone()),
        Cmd::Fanout(a) => (scenario::fanout(a)?, a.common.json.clone()),
        Cmd::Place(a) => (scenario::place(a)?, a.common.json.clone()),
        Cmd::Reconnect(a) => (scenario::reconnect(a)?, a.common.json.clone()),
        Cmd::Abuse(a) => (scenario::abuse(a)?, a.common.json.clone()),
        Cmd::Trace(a) => return trace::run(a).map(|_| 0).map_err(LoadError::from),
        Cmd::Compare(a) => {
            let (c, table) = compare::compare(a)?;
            eprint!("{table}");
            let doc = serde_json::to_string_pretty(&c).expect("serializable");
            match &a.json {
                Some(p) => {
                    std::fs::write(p, doc + "\n").map_err(|e| LoadError::io(format!("writing {}", p.display()), e))?
                }
                None => println!("{doc}"),
            }
            return Ok(0);
        }
    };
    emit(&mut report, json.as_deref())?;
    if let Some(l) = &report.outcome.limit {
        eprintln!("\nerror: {l}");
        return Ok(3);
    }
    if let Some(e) = report.outcome.error.as_ref().filter(|_| !report.outcome.ok) {
        eprintln!("\nerror: {e}");
        return Ok(1);
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
