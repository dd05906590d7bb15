//! `placecast-load compare`: reads result documents of placecast runs and baseline runs of the
//! same scenario, takes the median of each figure over the runs, and prints (and writes as
//! JSON) placecast's figure, the baseline's, and their ratio. The printed table names the second
//! column after the baseline files' `--label` when they share one (`bench/run.sh` labels the
//! uWebSockets peer's runs `uws`); the JSON keeps the field names `baseline*`.

use crate::cli::CompareArgs;
use crate::error::LoadError;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;

/// The figures compared: (JSON pointer into a result, name, whether lower is better).
pub const METRICS: &[(&str, &str, bool)] = &[
    ("/server/cpu_us_per_delivered_frame", "server cpu us per delivered frame", true),
    ("/server/server_cores_busy_us_per_delivered_frame", "server core busy us per frame (all work)", true),
    ("/server/frames_per_cpu_second", "frames per server cpu-second", false),
    ("/server/cores_used", "server cores used", true),
    ("/delivery/nominal_frame_share", "share of nominal frames (1/client/100ms)", false),
    ("/delivery/frame_share", "share of frames of batches made", false),
    ("/delivery/version_share", "share of expected versions delivered", false),
    ("/delivery/frames_per_s", "frames delivered per second", false),
    ("/delivery/edits_per_s", "edits delivered per second", false),
    ("/latency/edit/p50_us", "latency p50 us (per edit)", true),
    ("/latency/edit/p99_us", "latency p99 us (per edit)", true),
    ("/latency/edit/p999_us", "latency p999 us (per edit)", true),
    ("/latency/edit/max_us", "latency max us (per edit)", true),
    ("/latency/frame_oldest_edit/p99_us", "latency p99 us (oldest edit per frame)", true),
    ("/server/rss_per_connection_bytes", "server rss bytes per connection", true),
    ("/tester/rss_per_client_bytes", "tester rss bytes per client", true),
    ("/clients/counts/unexpected_disconnects", "unexpected disconnects", true),
    ("/clients/avg_frame_payload_bytes", "avg frame payload bytes", true),
    ("/placements/accepted_per_s", "placements accepted per second", false),
    ("/server/cpu_us_per_accepted_placement", "server cpu us per accepted placement", true),
    ("/tester/window_cores_used", "tester cores used", true),
];

#[derive(Debug, Serialize)]
pub struct Row {
    pub metric: String,
    pub pointer: String,
    pub lower_is_better: bool,
    pub placecast: Option<f64>,
    pub baseline: Option<f64>,
    /// placecast / baseline.
    pub ratio: Option<f64>,
    pub placecast_runs: Vec<f64>,
    pub baseline_runs: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub params: Value,
    pub placecast_files: Vec<String>,
    pub baseline_files: Vec<String>,
    pub rows: Vec<Row>,
}

/// The median of `v` (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 })
}

fn load(paths: &[std::path::PathBuf]) -> Result<Vec<Value>, LoadError> {
    paths
        .iter()
        .map(|p| {
            let s = std::fs::read_to_string(p).map_err(|e| LoadError::io(format!("reading {}", p.display()), e))?;
            serde_json::from_str(&s)
                .map_err(|e| LoadError::Args(format!("{} is not a result document: {e}", p.display())))
        })
        .collect()
}

/// The `label` every document in `docs` carries, if they all carry the same one.
fn shared_label(docs: &[Value]) -> Option<&str> {
    let first = docs.first()?.get("label")?.as_str()?;
    docs.iter().all(|d| d.get("label").and_then(|l| l.as_str()) == Some(first)).then_some(first)
}

pub fn compare(a: &CompareArgs) -> Result<(Comparison, String), LoadError> {
    let pc = load(&a.placecast)?;
    let bl = load(&a.baseline)?;
    let scenario = pc[0].get("scenario").and_then(|s| s.as_str()).unwrap_or("?").to_string();
    for d in pc.iter().chain(&bl) {
        if d.get("scenario").and_then(|s| s.as_str()) != Some(&scenario) {
            return Err(LoadError::Args("all result files must be of the same scenario".into()));
        }
    }
    let mut rows = Vec::new();
    for &(ptr, name, lower) in METRICS {
        let get =
            |docs: &[Value]| docs.iter().filter_map(|d| d.pointer(ptr).and_then(|v| v.as_f64())).collect::<Vec<_>>();
        let (p, b) = (get(&pc), get(&bl));
        if p.is_empty() && b.is_empty() {
            continue;
        }
        let (mp, mb) = (median(&p), median(&b));
        let ratio = match (mp, mb) {
            (Some(x), Some(y)) if y != 0.0 => Some(x / y),
            _ => None,
        };
        rows.push(Row {
            metric: name.into(),
            pointer: ptr.into(),
            lower_is_better: lower,
            placecast: mp,
            baseline: mb,
            ratio,
            placecast_runs: p,
            baseline_runs: b,
        });
    }
    let c = Comparison {
        scenario,
        params: pc[0].get("params").cloned().unwrap_or(Value::Null),
        placecast_files: a.placecast.iter().map(|p| p.display().to_string()).collect(),
        baseline_files: a.baseline.iter().map(|p| p.display().to_string()).collect(),
        rows,
    };
    let mut t = String::new();
    let _ = writeln!(t, "{} {}", c.scenario, c.params);
    let other = shared_label(&bl).unwrap_or("baseline");
    let _ = writeln!(t, "{:<42} {:>14} {:>14} {:>10}  runs", "figure (median)", "placecast", other, "ratio");
    let f = |v: Option<f64>| {
        v.map(|x| if x.abs() >= 100.0 { format!("{x:.0}") } else { format!("{x:.4}") }).unwrap_or_else(|| "-".into())
    };
    for r in &c.rows {
        let _ = writeln!(
            t,
            "{:<42} {:>14} {:>14} {:>10}  {}+{}",
            r.metric,
            f(r.placecast),
            f(r.baseline),
            r.ratio.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
            r.placecast_runs.len(),
            r.baseline_runs.len()
        );
    }
    Ok((c, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn the_second_column_is_named_after_a_shared_label() {
        let doc = |l: Option<&str>| serde_json::json!({ "scenario": "fanout", "label": l });
        assert_eq!(shared_label(&[doc(Some("uws")), doc(Some("uws"))]), Some("uws"));
        assert_eq!(shared_label(&[doc(Some("uws")), doc(Some("baseline"))]), None);
        assert_eq!(shared_label(&[doc(Some("uws")), doc(None)]), None);
        assert_eq!(shared_label(&[doc(None)]), None);
        assert_eq!(shared_label(&[]), None);
    }
}
