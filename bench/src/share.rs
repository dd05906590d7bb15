//! A share of a run: the clients one process group runs for its controller, a `--procs` child
//! for its parent or a load agent for its coordinator. It is made from the scenario's own
//! arguments (hold, fanout, session) with the share's range (`--share-base/--share-count`, a
//! child's index among its siblings), checked against this host's limits, planned (a session's
//! day plan is built here, before `ready`), and then started: in this process, or as its
//! `--procs` children, which get the same arguments.
//!
//! Invariants: the clients of a share are the contiguous global indices `base .. base + count`
//! (a child's are its piece of its group's, [`fleet::share`]); the ramp of a share is its part
//! of the run's (`ramp * count / clients`); a share's life is bounded (ramp + run + 300 s).

use crate::cli::{Cmd, SessionArgs};
use crate::day::DayConfig;
use crate::dayplan::{DayPlan, PlanParams};
use crate::engine::EngineConfig;
use crate::error::LoadError;
use crate::fleet::{self, Fleet, LocalFleet, ProcFleet};
use crate::link;
use crate::scenario::{self, Ctx};
use crate::sendtable::SendTable;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The day begins this long after the run's start instant: time for every process to build
/// its plan (about 1 s per million placements) and for the first users to get ready.
pub const DAY_LEAD_MS: u64 = 3000;

enum Spec {
    Engine { cfg: EngineConfig, ramp: f64 },
    Day { cfg: DayConfig, plan: Option<DayPlan> },
}

/// A share, checked and planned, not started.
pub struct Share {
    pub scenario: &'static str,
    /// The scenario's arguments (what child processes are started with).
    pub args: Vec<String>,
    pub base: u64,
    pub count: usize,
    /// Child processes it runs as (1: in this process).
    pub procs: usize,
    pub threads: usize,
    pub warnings: Vec<String>,
    /// Bound of its life after its start.
    pub life: Duration,
    cpus: Vec<usize>,
    spec: Spec,
}

/// The fields of `--plan-canvas WIDTHxHEIGHTxCOLORS`.
pub fn parse_canvas(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split('x').map(|p| p.parse::<u32>().ok());
    let (w, h, c) = (it.next()??, it.next()??, it.next()??);
    (it.next().is_none() && w > 0 && h > 0 && (2..=32).contains(&c)).then_some((w, h, c))
}

/// The day plan's parameters of a session run whose coordinator resolved the server's
/// cooldown, canvas and the seed (`--plan-cooldown-ms`, `--plan-canvas`, `--seed`).
pub fn plan_params(a: &SessionArgs) -> Result<PlanParams, LoadError> {
    let missing = |what: &str| LoadError::Args(format!("a session share needs {what} (set by its coordinator)"));
    let cooldown_ms = a.plan_cooldown_ms.ok_or_else(|| missing("--plan-cooldown-ms"))?;
    let (width, height, colors) =
        a.plan_canvas.as_deref().and_then(parse_canvas).ok_or_else(|| missing("--plan-canvas WxHxC"))?;
    let seed = a.common.seed.ok_or_else(|| missing("--seed"))?;
    let p = PlanParams {
        users: a.users as u64,
        per_user: a.placements_per_user,
        day_ms: a.day_seconds * 1000,
        cooldown_ms,
        day_cooldown_s: a.day_cooldown_s,
        width,
        height,
        colors,
        seed,
    };
    p.validate().map_err(LoadError::Args)?;
    Ok(p)
}

/// Checks a session's own options.
pub fn check_session(a: &SessionArgs) -> Result<(), LoadError> {
    crate::cli::check_clients(a.users)?;
    if !(5..=86_400).contains(&a.day_seconds) {
        return Err(LoadError::Args(format!("--day-seconds must be 5 to 86400, got {}", a.day_seconds)));
    }
    if !(1..=256).contains(&a.http_conns) {
        return Err(LoadError::Args("--http-conns must be 1 to 256".into()));
    }
    if !(1..=86_400).contains(&a.day_cooldown_s) || a.drain_ms > 60_000 {
        return Err(LoadError::Args("--day-cooldown-s must be 1 to 86400 and --drain-ms at most 60000".into()));
    }
    Ok(())
}

/// The default sampling of per-edit latency: about 1,000 clients.
pub fn latency_every(explicit: Option<u64>, clients: usize) -> u64 {
    explicit.unwrap_or((clients as u64 / 1000).max(1))
}

impl Share {
    /// Prepares the share `cmd` (parsed from `args`) describes, for this process group.
    pub fn prepare(cmd: &Cmd, args: Vec<String>) -> Result<Share, LoadError> {
        let (scenario, common, total) = match cmd {
            Cmd::Hold(a) => ("hold", &a.common, a.clients),
            Cmd::Fanout(a) => ("fanout", &a.common, a.clients),
            Cmd::Session(a) => ("session", &a.common, a.users),
            _ => return Err(LoadError::Args("only hold, fanout and session run on agents or as --procs".into())),
        };
        crate::cli::check_clients(total)?;
        let ctx = Ctx::new(common)?;
        let (group_base, group_count) = common.share(total);
        if group_count > total || group_base + group_count as u64 > total as u64 {
            return Err(LoadError::Args(format!(
                "share {group_base}+{group_count} lies outside the run's {total} clients"
            )));
        }
        let (base, count, procs) = match (common.child_index, common.child_count) {
            (Some(i), Some(k)) if k > 0 && i < k => {
                let (b, n) = fleet::share(group_count, i, k);
                (group_base + b, n, 1)
            }
            (Some(_), _) => return Err(LoadError::Args("bad --child-index / --child-count".into())),
            _ => (group_base, group_count, common.procs.max(1)),
        };
        let ramp = common.ramp * count as f64 / total.max(1) as f64;
        let mut warnings = Vec::new();
        let (spec, life) = match cmd {
            Cmd::Hold(_) | Cmd::Fanout(_) => {
                let every = match cmd {
                    Cmd::Fanout(a) => latency_every(a.latency_every, a.clients),
                    _ => 0,
                };
                let life =
                    Duration::from_secs_f64(total as f64 / common.ramp) + Duration::from_secs(common.duration + 300);
                (Spec::Engine { cfg: ctx.engine(None, every, 0), ramp: ramp.max(1.0) }, life)
            }
            Cmd::Session(a) => {
                check_session(a)?;
                let p = plan_params(a)?;
                let cfg = DayConfig {
                    target: common.target,
                    sources: ctx.sources.clone(),
                    seed: ctx.seed,
                    connect_timeout_ms: common.connect_timeout_ms,
                    max_payload: common.max_payload,
                    latency_every: latency_every(a.latency_every, a.users),
                    max_pending: ((common.ramp / ctx.threads as f64) as usize).clamp(64, 4096),
                    day_start_unix_ms: a.day_start_ms.unwrap_or(0),
                    http_conns: a.http_conns,
                    proof: common.proof,
                };
                // Children build their own plans; one process builds it now, before `ready`.
                let plan =
                    if procs == 1 { Some(DayPlan::build(&p, base, count).map_err(LoadError::from)?) } else { None };
                let life =
                    Duration::from_millis(DAY_LEAD_MS + a.day_seconds * 1000 + a.drain_ms) + Duration::from_secs(300);
                (Spec::Day { cfg, plan }, life)
            }
            _ => unreachable!("refused above"),
        };
        if common.child_index.is_none() {
            let extra = match cmd {
                Cmd::Session(a) => a.http_conns as u64 + 16,
                _ => 16,
            };
            warnings.extend(scenario::plan(&ctx, count, extra)?);
        }
        Ok(Share {
            scenario,
            args,
            base,
            count,
            procs,
            threads: ctx.threads,
            warnings,
            life,
            cpus: ctx.cpus.clone(),
            spec,
        })
    }

    /// Whether it needs a send table (latency) from whoever starts it.
    pub fn wants_table(&self) -> bool {
        match &self.spec {
            Spec::Engine { cfg, .. } => cfg.latency_every > 0,
            Spec::Day { .. } => true,
        }
    }

    /// Starts it, its run having started at `start_unix_ms` (a session's day begins
    /// [`DAY_LEAD_MS`] later unless its arguments fix the day's start): in this process with
    /// `table`, or as its children (sharing the file-backed `table` at `table_path`).
    pub fn start(
        mut self,
        start_unix_ms: u64,
        table: Option<Arc<SendTable>>,
        table_path: Option<PathBuf>,
    ) -> Result<Fleet, LoadError> {
        if let Spec::Day { cfg, .. } = &mut self.spec {
            if cfg.day_start_unix_ms == 0 {
                cfg.day_start_unix_ms = start_unix_ms + DAY_LEAD_MS;
                link::set_arg(&mut self.args, "--day-start-ms", cfg.day_start_unix_ms);
            }
        }
        if self.procs > 1 {
            link::set_arg(&mut self.args, "--share-base", self.base);
            link::set_arg(&mut self.args, "--share-count", self.count);
            return Ok(Fleet::Procs(ProcFleet::start(self.procs, self.args, table, table_path)?));
        }
        let local = match self.spec {
            Spec::Engine { cfg, ramp } => {
                LocalFleet::start(cfg, self.count, self.base, self.threads, ramp, &self.cpus, table)?
            }
            Spec::Day { cfg, plan } => {
                let plan = match plan {
                    Some(p) => p,
                    None => return Err(LoadError::Args("a session share started without its plan".into())),
                };
                LocalFleet::start_day(cfg, plan, self.threads, &self.cpus, table)?
            }
        };
        Ok(Fleet::Local(local))
    }
}

/// Child-process mode of hold, fanout and session: run this process's piece of its group's
/// share, controlled over stdin/stdout by the parent.
pub fn run_child(cmd: &Cmd) -> Result<(), LoadError> {
    crate::sys::raise_nofile_to_hard();
    let sendtable = match cmd {
        Cmd::Hold(a) => a.common.sendtable.clone(),
        Cmd::Fanout(a) => a.common.sendtable.clone(),
        Cmd::Session(a) => a.common.sendtable.clone(),
        _ => None,
    };
    let share = Share::prepare(cmd, std::env::args().skip(1).collect())?;
    let table = match &sendtable {
        Some(p) => {
            Some(Arc::new(SendTable::open_file(p).map_err(|e| LoadError::io(format!("opening {}", p.display()), e))?))
        }
        None if share.wants_table() => Some(Arc::new(
            SendTable::anonymous(crate::sendtable::DEFAULT_SLOTS)
                .map_err(|e| LoadError::io("mapping the send table", e))?,
        )),
        None => None,
    };
    let life = share.life;
    match share.start(link::unix_ms(), table, None)? {
        Fleet::Local(f) => fleet::run_child(f, life),
        _ => return Err(LoadError::Args("a child process runs its clients itself".into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvas_specs_parse() {
        assert_eq!(parse_canvas("1000x1000x16"), Some((1000, 1000, 16)));
        assert_eq!(parse_canvas("10x10"), None);
        assert_eq!(parse_canvas("0x10x16"), None);
        assert_eq!(parse_canvas("10x10x33"), None);
        assert_eq!(parse_canvas("10x10x16x1"), None);
    }
}
