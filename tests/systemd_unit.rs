//! The ops files: systemd/placecast.service, placecast.env, placecast.toml and kernel-tuning/.
//!
//! - `systemd-analyze verify` accepts the unit (on a temporary copy whose ExecStart points at the
//!   binary cargo built, since verify wants an existing executable);
//! - `systemd-analyze security --offline=yes` rates it at 3.0 or lower;
//! - the unit has what the edge contract needs (notify, watchdog, drain-sized stop timeout,
//!   mandatory environment file, io_uring allowed);
//! - `kernel-tuning/apply.sh --dry-run` sizes tcp_mem from this host's MemTotal, changes nothing,
//!   and the descriptor budget is one number in the unit, the limits file and fs.nr_open;
//! - the shipped secrets are placeholders the binary refuses, and the shipped TOML (with every
//!   commented edge setting switched on) parses to the documented defaults.
//!
//! Nothing here needs or changes anything as root: apply.sh only ever runs with --dry-run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The unit's assignments, in order, per key (a key may repeat, e.g. SystemCallFilter).
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not an assignment: {line}"));
        m.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    m
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match s.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}= must be set exactly once, found {other:?}"),
    }
}

/// Seconds of a systemd time span: "30", "30s", "1min", "1min 30s".
fn seconds(span: &str) -> u64 {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span {span:?}"));
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            unit => panic!("time unit {unit:?} in {span:?}"),
        };
    }
    total
}

/// systemd-analyze, or None (with the reason printed) when it is not installed.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("systemd-analyze")).find(|p| p.is_file()))
        .unwrap_or(None)
        .or_else(|| Some(PathBuf::from("/usr/bin/systemd-analyze")).filter(|p| p.is_file()));
    if found.is_none() {
        eprintln!("SKIP: systemd-analyze is not installed (Debian: apt-get install systemd)");
    }
    found
}

/// A copy of the unit in a temporary directory, ExecStart pointing at the binary cargo built.
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let unit = read("systemd/placecast.service");
    let bin = env!("CARGO_BIN_EXE_placecast");
    let mut rewritten = 0;
    let body: String = unit
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=/usr/local/bin/placecast") {
            Some(rest) => {
                rewritten += 1;
                format!("ExecStart={bin}{rest}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert_eq!(rewritten, 1, "the unit should have one ExecStart=/usr/local/bin/placecast ...");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("placecast.service");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(sa) = systemd_analyze() else { return };
    let (_dir, path) = unit_copy();
    let out = Command::new(&sa).arg("verify").arg(&path).output().expect("run systemd-analyze verify");
    let all = text(&out);
    // Anything said about our unit is a finding, warnings included ("Unknown key name ...").
    let about_us: Vec<&str> = all.lines().filter(|l| l.contains("placecast.service")).collect();
    assert!(about_us.is_empty(), "systemd-analyze verify on {}:\n{all}", path.display());
    if !out.status.success() {
        // Failed without naming our unit: the environment (no manager could be set up in this
        // container, a broken dependency unit of the host), not the unit under test.
        eprintln!("SKIP: systemd-analyze verify failed for a reason outside placecast.service:\n{all}");
    }
}

#[test]
fn unit_security_exposure_is_at_most_3() {
    let Some(sa) = systemd_analyze() else { return };
    let (_dir, path) = unit_copy();
    let out = Command::new(&sa)
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let all = text(&out);
    if all.contains("unrecognized option") {
        eprintln!("SKIP: this systemd-analyze has no --offline (systemd < 250):\n{all}");
        return;
    }
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level for placecast.service"))
        .unwrap_or_else(|| panic!("no overall exposure in systemd-analyze security output:\n{all}"));
    let figure: f64 = line
        .rsplit_once(':')
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure in {line:?}"));
    eprintln!("systemd-analyze security --offline=yes: {}", line.trim());
    assert!(figure <= 3.0, "exposure {figure} > 3.0:\n{all}");
}

#[test]
fn unit_has_notify_watchdog_drain_and_io_uring() {
    let s = unit_settings(&read("systemd/placecast.service"));
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "NotifyAccess"), "main");
    let watchdog = seconds(one(&s, "WatchdogSec"));
    assert!((3..=60).contains(&watchdog), "WatchdogSec={watchdog}");
    assert_eq!(one(&s, "KillSignal"), "SIGTERM");
    // Drain: grace 5 s + spread 10 s + 5 s of the server's own margin, and room before SIGKILL.
    let stop = seconds(one(&s, "TimeoutStopSec"));
    assert!(stop > 5 + 10 + 5, "TimeoutStopSec={stop} is shorter than a default drain");

    let env = one(&s, "EnvironmentFile");
    assert!(!env.starts_with('-'), "EnvironmentFile={env}: a missing secrets file must fail the start");
    assert_eq!(env, "/etc/placecast/placecast.env");

    let filters = &s["SystemCallFilter"];
    let allow: Vec<&str> = filters.iter().filter(|f| !f.starts_with('~')).flat_map(|f| f.split_whitespace()).collect();
    let deny: Vec<&str> =
        filters.iter().filter_map(|f| f.strip_prefix('~')).flat_map(|f| f.split_whitespace()).collect();
    assert_eq!(filters.first().map(|f| f.starts_with('~')), Some(false), "the first filter must be an allow list");
    for call in ["@system-service", "io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allow.contains(&call), "SystemCallFilter does not allow {call}: {filters:?}");
        assert!(!deny.contains(&call), "SystemCallFilter denies {call}: {filters:?}");
    }
    // sched_setaffinity (pinned shards) and setrlimit live in @resources: never deny it.
    assert!(!deny.contains(&"@resources"), "denying @resources breaks shard pinning: {filters:?}");
    assert_eq!(one(&s, "SystemCallArchitectures"), "native");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "");
    assert_eq!(one(&s, "AmbientCapabilities"), "");
    let families: Vec<&str> = one(&s, "RestrictAddressFamilies").split_whitespace().collect();
    for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.contains(&f), "RestrictAddressFamilies lacks {f} (AF_UNIX: sd_notify)");
    }
    assert!(!s.contains_key("IPAddressDeny"), "a public server must not deny client addresses");
    // /sys must stay readable for glommio's CPU topology: strict, not a hidden /sys.
    assert_eq!(one(&s, "ProtectSystem"), "strict");
    assert!(!s.contains_key("InaccessiblePaths"), "check that /sys/devices/system stays readable");
}

fn mem_total_kb(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in meminfo")
}

fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

/// min/pressure/max = RAM/16, RAM/8, RAM/4 in pages, integer division as apply.sh does it.
fn tcp_mem_for(mem_kb: u64) -> [u64; 3] {
    let pages = mem_kb * 1024 / page_size();
    [pages / 16, pages / 8, pages / 4]
}

fn dry_run(meminfo: Option<&Path>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("kernel-tuning/apply.sh")).arg("--dry-run");
    if let Some(m) = meminfo {
        cmd.env("PLACECAST_MEMINFO", m);
    }
    let out = cmd.output().expect("run bash kernel-tuning/apply.sh --dry-run");
    let all = text(&out);
    assert!(out.status.success(), "apply.sh --dry-run failed:\n{all}");
    assert!(all.contains("dry run: nothing was changed"), "{all}");
    for line in all.lines() {
        assert!(!line.starts_with("SET "), "--dry-run changed something: {line}\n{all}");
    }
    all
}

fn printed_tcp_mem(out: &str) -> [u64; 3] {
    let line = out
        .lines()
        .find(|l| l.contains("net.ipv4.tcp_mem = "))
        .unwrap_or_else(|| panic!("apply.sh printed no net.ipv4.tcp_mem line:\n{out}"));
    let v: Vec<u64> = line
        .split("net.ipv4.tcp_mem = ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap_or_else(|_| panic!("tcp_mem value in {line:?}")))
        .collect();
    [v[0], v[1], v[2]]
}

#[test]
fn apply_dry_run_sizes_tcp_mem_from_memtotal_and_changes_nothing() {
    let installed = [
        PathBuf::from("/etc/sysctl.d/99-placecast.conf"),
        PathBuf::from("/etc/security/limits.d/99-placecast-limits.conf"),
    ];
    let before: Vec<_> = installed.iter().map(|p| std::fs::read(p).ok()).collect();

    // This host.
    let host_kb = mem_total_kb(&std::fs::read_to_string("/proc/meminfo").unwrap());
    let out = dry_run(None);
    assert_eq!(printed_tcp_mem(&out), tcp_mem_for(host_kb), "MemTotal {host_kb} kB:\n{out}");

    // A 16 GiB host, the same math: 4 KiB pages give 262144 524288 1048576.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("meminfo");
    std::fs::write(&fake, "MemTotal:       16777216 kB\nMemFree:         1000 kB\n").unwrap();
    let out = dry_run(Some(&fake));
    let want = tcp_mem_for(16_777_216);
    assert_eq!(printed_tcp_mem(&out), want, "{out}");
    if page_size() == 4096 {
        assert_eq!(want, [262_144, 524_288, 1_048_576]);
    }

    let after: Vec<_> = installed.iter().map(|p| std::fs::read(p).ok()).collect();
    assert_eq!(before, after, "apply.sh --dry-run touched an installed file");
}

#[test]
fn descriptor_budget_is_one_number() {
    let unit = unit_settings(&read("systemd/placecast.service"));
    let n: u64 = one(&unit, "LimitNOFILE").parse().expect("LimitNOFILE is a number");

    let limits = read("kernel-tuning/99-placecast-limits.conf");
    let mut nofile = Vec::new();
    for line in limits.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "limits line {line:?}");
        assert_eq!(f[0], "placecast", "limits apply to the placecast user only, not {:?}", f[0]);
        if f[2] == "nofile" {
            nofile.push((f[1].to_string(), f[3].parse::<u64>().unwrap()));
        }
    }
    nofile.sort();
    assert_eq!(nofile, vec![("hard".to_string(), n), ("soft".to_string(), n)], "nofile vs LimitNOFILE={n}");

    let sysctl = read("kernel-tuning/99-placecast.conf");
    let value = |key: &str| -> u64 {
        sysctl
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{key} not in 99-placecast.conf"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("fs.nr_open"), n, "fs.nr_open vs LimitNOFILE");
    assert!(value("fs.file-max") >= 2 * n, "fs.file-max must hold both ends of N loopback connections");

    let readme = read("kernel-tuning/README.md");
    assert!(readme.contains(&format!("LimitNOFILE={n}")), "kernel-tuning/README.md states another LimitNOFILE");

    // apply.sh checks the same and says so.
    let out = dry_run(None);
    assert!(out.lines().any(|l| l.starts_with("OK") && l.contains(&format!("N = {n}"))), "{out}");
}

#[test]
fn shipped_secrets_are_placeholders_the_binary_refuses() {
    let env = read("systemd/placecast.env");
    let vars: BTreeMap<&str, &str> = env
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {l}")))
        .collect();
    assert_eq!(vars.keys().copied().collect::<Vec<_>>(), ["PLACECAST_ADMIN_TOKEN", "PLACECAST_SECRET"]);
    for (k, v) in &vars {
        assert!(v.contains("change-me"), "{k}={v} is not a visible placeholder");
        assert!(placecast::secrets::check("value", v).is_err(), "{k}={v} would be accepted by placecast");
    }
    assert!(env.contains("openssl rand -hex 32"), "say how to make real ones");
}

fn serve_args(argv: &[&str]) -> placecast::config::ServeArgs {
    let mut v = vec!["placecast", "serve"];
    v.extend_from_slice(argv);
    match placecast::config::parse_cli(v).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
        placecast::config::Command::Serve(a) => a,
        _ => unreachable!(),
    }
}

#[test]
fn shipped_toml_parses_and_its_commented_defaults_are_the_defaults() {
    let path = repo().join("systemd/placecast.toml");
    serve_args(&["--config", path.to_str().unwrap()]);

    // Switch every commented "# key = value" setting on (the palette example is not a value).
    let toml = read("systemd/placecast.toml");
    let mut on = 0;
    let enabled: String = toml
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if !rest.starts_with("palette")
                    && rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    }) =>
            {
                on += 1;
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(on, 13, "the 13 edge settings of the spec, commented with their defaults:\n{enabled}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("all.toml");
    std::fs::write(&f, &enabled).unwrap();
    let a = serve_args(&["--config", f.to_str().unwrap()]);
    let d = serve_args(&[]);
    let pairs = [
        ("proxy-protocol", format!("{:?}", a.proxy_protocol), format!("{:?}", d.proxy_protocol)),
        ("max-conns-per-addr", a.max_conns_per_addr.to_string(), d.max_conns_per_addr.to_string()),
        ("sessions-per-min", a.sessions_per_min.to_string(), d.sessions_per_min.to_string()),
        (
            "placements-per-addr-per-min",
            a.placements_per_addr_per_min.to_string(),
            d.placements_per_addr_per_min.to_string(),
        ),
        ("anonymous-sessions", format!("{:?}", a.anonymous_sessions), format!("{:?}", d.anonymous_sessions)),
        ("pow-difficulty", a.pow_difficulty.to_string(), d.pow_difficulty.to_string()),
        ("fd-reserve", a.fd_reserve.to_string(), d.fd_reserve.to_string()),
        ("idle-timeout-ms", a.idle_timeout_ms.to_string(), d.idle_timeout_ms.to_string()),
        ("write-timeout-ms", a.write_timeout_ms.to_string(), d.write_timeout_ms.to_string()),
        ("ws-ping-secs", a.ws_ping_secs.to_string(), d.ws_ping_secs.to_string()),
        ("drain-grace-ms", a.drain_grace_ms.to_string(), d.drain_grace_ms.to_string()),
        ("drain-spread-s", a.drain_spread_s.to_string(), d.drain_spread_s.to_string()),
    ];
    for (key, file, default) in pairs {
        assert_eq!(file, default, "{key} in placecast.toml is not the default");
    }
    assert_eq!(a.trusted_proxies.len(), 2, "the trusted-proxies example parses");

    // The unit's stop timeout covers the default drain: grace + spread + the server's 5 s.
    let unit = unit_settings(&read("systemd/placecast.service"));
    let drain_s = d.drain_grace_ms.div_ceil(1000) + d.drain_spread_s + 5;
    assert!(seconds(one(&unit, "TimeoutStopSec")) > drain_s, "TimeoutStopSec vs a {drain_s} s drain");
}
