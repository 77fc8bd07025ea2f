#!/usr/bin/env python3
"""Tables and charts from scripts/study/compare.sh's raw results (standard library only).

    scripts/study/compare_report.py --raw DIR --out DIR [--machine TEXT] [--settings TEXT]

Reads DIR/<scenario>.<contender>.<run>.json (herd-bench --json, propagation.py --json, memory.py
--json); for each scenario and contender keeps the median run by throughput (or by p99 for
propagation); writes results.csv (every run), results.md (tables with ratios to mio) and the
charts throughput.svg and latency.svg.
"""

import argparse
import csv
import glob
import json
import math
import os
from collections import defaultdict

ORDER = ["mio", "tokio", "asyncio", "redis"]
COLOURS = {"mio": "#1f77b4", "tokio": "#ff7f0e", "asyncio": "#2ca02c", "redis": "#d62728"}
SCENARIOS = [
    ("solo-d1", "one server, depth 1, logging off"),
    ("solo-d16", "one server, depth 16, logging off"),
    ("solo-d1-log", "one server, depth 1, full logging"),
    ("solo-d16-log", "one server, depth 16, full logging"),
    ("connect", "one server, a new connection per request"),
    ("whatsat", "one server, 50% WHATSAT via places-stub"),
    ("herd5-d1", "five servers, IAMAT spread over all, depth 1"),
    ("herd5-d16", "five servers, IAMAT spread over all, depth 16"),
]


def load(raw):
    runs = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        scenario, contender, run = os.path.basename(path)[: -len(".json")].rsplit(".", 2)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        data["run"] = int(run)
        runs[(scenario, contender)].append(data)
    return runs


def median_run(results, key):
    ordered = sorted(results, key=lambda r: r.get(key, 0))
    return ordered[(len(ordered) - 1) // 2]


def fmt(n, digits=0):
    return f"{n:,.{digits}f}"


def bar_chart(path, title, unit, groups, log=False):
    """groups: [(label, {contender: value})]. Grouped horizontal bars, one group per scenario."""
    contenders = [c for c in ORDER if any(c in v for _, v in groups)]
    bar_h, gap, left, width = 14, 12, 250, 520
    height = 60 + len(groups) * (len(contenders) * bar_h + gap) + 30
    vmax = max([v for _, vals in groups for v in vals.values()] + [1])
    def scale(v):
        if log:
            return width * math.log10(max(v, 1)) / math.log10(max(vmax, 10))
        return width * v / vmax

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 140}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>',
        f'<text x="10" y="40" fill="#555">{unit}{" (log scale)" if log else ""}; longer is '
        f'{"better" if "per second" in unit else "worse"}</text>',
    ]
    y = 60
    for label, vals in groups:
        out.append(f'<text x="10" y="{y + bar_h}" fill="#222">{label}</text>')
        for c in contenders:
            if c in vals:
                w = max(1.0, scale(vals[c]))
                out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLOURS[c]}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" fill="#222">{c} {fmt(vals[c])}</text>')
            y += bar_h
        y += gap
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="")
    ap.add_argument("--settings", default="")
    args = ap.parse_args()
    runs = load(args.raw)

    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "contender", "run", "per_second", "p50_us", "p90_us", "p99_us", "p999_us",
                    "max_us", "requests", "errors"])
        for (scenario, contender), results in sorted(runs.items()):
            for r in results:
                if "per_second" in r or "p99_us" in r:
                    w.writerow([scenario, contender, r["run"], round(r.get("per_second", 0), 1), r.get("p50_us"),
                                r.get("p90_us"), r.get("p99_us"), r.get("p999_us"), r.get("max_us"),
                                r.get("requests", r.get("samples")), r.get("errors", 0)])

    md = ["# Contrast study: results", ""]
    if args.machine:
        md.append(f"Machine: {args.machine}.  ")
    if args.settings:
        md.append(f"Settings: {args.settings}.")
    md += ["", "Produced by `scripts/study/compare.sh`. Ratios are against mio in the same run; for "
           "throughput above 1 means mio is faster, for p99 below 1 means mio's tail is lower.", ""]
    md += ["## Throughput and latency (herd-bench)", "",
           "| scenario | contender | requests/s | mio ÷ it | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | "
           "mio p99 ÷ its p99 | errors |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    through, tails = [], []
    for scenario, label in SCENARIOS:
        best = {c: median_run(runs[(scenario, c)], "per_second") for c in ORDER if runs.get((scenario, c))}
        if not best:
            continue
        mio = best.get("mio")
        for c, r in best.items():
            ratio = f"{mio['per_second'] / r['per_second']:.2f}×" if mio and r["per_second"] else "–"
            tail = f"{mio['p99_us'] / r['p99_us']:.2f}" if mio and r["p99_us"] else "–"
            errors = sum(x.get("errors", 0) for x in runs[(scenario, c)])
            md.append(f"| {label} | {c} | {fmt(r['per_second'])} | {ratio if c != 'mio' else ''} | "
                      f"{fmt(r['p50_us'])} | {fmt(r['p90_us'])} | {fmt(r['p99_us'])} | {fmt(r['p999_us'])} | "
                      f"{fmt(r['max_us'])} | {tail if c != 'mio' else ''} | {errors} |")
        through.append((label, {c: r["per_second"] for c, r in best.items()}))
        tails.append((label, {c: r["p99_us"] for c, r in best.items()}))

    prop = {c: median_run(runs[("propagation", c)], "p99_us") for c in ORDER if runs.get(("propagation", c))}
    if prop:
        md += ["", "## Two hops on an idle herd (scripts/study/propagation.py)", "",
               "IAMAT at Campbell until Jaquez floods it to a probe neighbour (an upper bound on "
               "\"visible at Jaquez\": it includes the flood to the probe and Python's own time).", "",
               "| contender | samples | p50 µs | p90 µs | p99 µs | max µs |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for c, r in prop.items():
            md.append(f"| {c} | {r['samples']} | {fmt(r['p50_us'])} | {fmt(r['p90_us'])} | {fmt(r['p99_us'])} | "
                      f"{fmt(r['max_us'])} |")
        tails.append(("two hops, idle herd", {c: r["p99_us"] for c, r in prop.items()}))

    mem = {c: runs[("memory", c)][0] for c in ORDER if runs.get(("memory", c))}
    if mem:
        md += ["", "## Memory (scripts/study/memory.py)", "",
               "| contender | RSS at start KiB | bytes per idle connection (10,000) | bytes per stored client | "
               "RSS with 1,000,000 clients MiB |", "| --- | ---: | ---: | ---: | ---: |"]
        for c, r in mem.items():
            md.append(f"| {c} | {fmt(r['rss_base_kib'])} | {fmt(r['bytes_per_idle_connection'])} | "
                      f"{fmt(r['bytes_per_client'])} | {fmt(r['rss_clients_mib'], 1)} |")

    md += ["", "Charts: [throughput.svg](throughput.svg), [latency.svg](latency.svg).", ""]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md))
    bar_chart(os.path.join(args.out, "throughput.svg"), "Throughput by scenario", "requests per second", through, log=True)
    bar_chart(os.path.join(args.out, "latency.svg"), "p99 latency by scenario", "p99 microseconds", tails, log=True)


if __name__ == "__main__":
    main()
