#!/usr/bin/env python3
"""Where a loaded server's core goes, in the steady part of a load run.

Usage: fanout-window.py HOST:PORT CLIENTS [--cpu N] [--every S] [--max-seconds S]

Run it beside a `placecast-load` run against a placecast node. It scrapes the node's `/metrics`
and the kernel's counters for one CPU (`/proc/stat`) every `--every` seconds until the node stops
answering (or `--max-seconds` pass), then prints the difference between the first scrape with
`CLIENTS` WebSockets open and the last one, so the connection ramp is left out:
- the CPU's user / sys / softirq / idle shares;
- each shard's fan-out histogram (`placecast_fanout_seconds`): passes, mean, share within each
  bucket;
- each shard's placement acknowledgements (`placecast_placement_ack_seconds`): count, mean,
  and the bucket bounds their 50th and 99th percentiles fall under;
- merged sends and deferred cuts, and the cut-age percentiles the applier keeps since start.

bench/RESULTS.md, "Where an overloaded core's time goes", was made with it. Reads only
loopback-local counters; it sends nothing but GET /metrics.
"""
import argparse
import re
import time
import urllib.request


def scrape_metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def scrape_cpu(cpu):
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0] == f"cpu{cpu}":
                v = [int(x) for x in parts[1:8]]
                # user+nice, system, idle+iowait, irq, softirq
                return {"user": v[0] + v[1], "sys": v[2], "idle": v[3] + v[4], "irq": v[5], "softirq": v[6]}
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("clients", type=int)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    a = ap.parse_args()
    samples = []
    deadline = time.monotonic() + a.max_seconds
    while time.monotonic() < deadline:
        try:
            m = scrape_metrics(a.addr)
        except OSError:
            if samples:
                break
            time.sleep(a.every)
            continue
        samples.append((m, scrape_cpu(a.cpu)))
        time.sleep(a.every)
    conns = lambda m: sum(v for k, v in m.items() if k.startswith("placecast_ws_connections{"))
    full = [s for s in samples if conns(s[0]) >= a.clients]
    if len(full) < 2:
        raise SystemExit(f"{len(full)} scrapes with {a.clients} clients open: too few for a window")
    (m0, c0), (m1, c1) = full[0], full[-1]
    d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)
    print(f"window: {len(full)} scrapes, {(len(full) - 1) * a.every:.0f} s")
    total = sum(c1[k] - c0[k] for k in c1)
    print(f"cpu{a.cpu}: " + ", ".join(f"{k} {100 * (c1[k] - c0[k]) / max(total, 1):.1f}%" for k in c1))
    shards = sorted({re.search(r'shard="(\d+)"', k).group(1) for k in m1 if k.startswith("placecast_fanout_seconds_count")})
    for sh in shards:
        n = d(f'placecast_fanout_seconds_count{{shard="{sh}"}}')
        mean_ms = 1000 * d(f'placecast_fanout_seconds_sum{{shard="{sh}"}}') / max(n, 1)
        merged = d('placecast_merged_sends_total{shard="%s"}' % sh)
        print(f"shard {sh}: {n:.0f} fan-outs, mean {mean_ms:.1f} ms, merged sends {merged:.0f}")
        prefix = 'placecast_fanout_seconds_bucket{shard="%s",le="' % sh
        for le in sorted((k[len(prefix):-2] for k in m1 if k.startswith(prefix)), key=float):
            share = d(prefix + le + '"}') / max(n, 1)
            print(f"  within {le:>5} s: {share:.2f}")
        ack_n = d(f'placecast_placement_ack_seconds_count{{shard="{sh}"}}')
        if ack_n > 0:
            ack_ms = 1000 * d(f'placecast_placement_ack_seconds_sum{{shard="{sh}"}}') / ack_n
            prefix = 'placecast_placement_ack_seconds_bucket{shard="%s",le="' % sh
            les = sorted((k[len(prefix):-2] for k in m1 if k.startswith(prefix)), key=float)
            # The smallest bound the quantile's share of the window's acknowledgements is under.
            under = lambda q: next((le for le in les if d(prefix + le + '"}') >= q * ack_n), "+Inf")
            print(f"  placements acknowledged: {ack_n:.0f}, mean {ack_ms:.1f} ms, p50 <= {under(0.5)} s, p99 <= {under(0.99)} s")
    print(f"cuts deferred: {d('placecast_cuts_deferred'):.0f}")
    for g in ("placecast_log_to_batch_p50_ms", "placecast_log_to_batch_p99_ms"):
        print(f"{g} (since start): {m1.get(g, 0):.0f}")


if __name__ == "__main__":
    main()
