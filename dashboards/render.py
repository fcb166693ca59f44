#!/usr/bin/python3
"""Draw the main panels of dashboards/voxlb.json from scraped /metrics pages.

Grafana is not in Debian's archive, so the README picture is made this way:
`voxlb-demo --metrics-log run.jsonl` scrapes a real daemon every 2 s during
the demo (traffic, a drain, a killed compiler, recovery); this script
evaluates the same expressions as the dashboard's panels (rates over a
6-second window) with matplotlib and writes a PNG.

    /usr/bin/python3 dashboards/render.py run.jsonl dashboards/voxlb-dashboard.png
"""

import json
import re
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WINDOW = 3  # scrapes: 6 s


def parse(page):
    out = {}
    for line in page.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(3) or "")))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def series(scrapes, name, keep=lambda l: True):
    """{labels: [(t, value)]} of a metric."""
    out = defaultdict(list)
    for t, s in scrapes:
        for (n, labels), v in s.items():
            if n == name and keep(dict(labels)):
                out[labels].append((t, v))
    return out


def rate(points):
    out = []
    for i in range(WINDOW, len(points)):
        (t0, v0), (t1, v1) = points[i - WINDOW], points[i]
        if t1 > t0:
            out.append((t1, max(0.0, v1 - v0) / (t1 - t0)))
    return out


def label(labels, *keys):
    d = dict(labels)
    return " ".join(d.get(k, "") for k in keys).strip()


def plot(ax, data, title, ylabel="", step=False):
    for name, pts in sorted(data.items()):
        if not pts:
            continue
        xs, ys = zip(*pts)
        if step:
            ax.step(xs, ys, where="post", label=name)
        else:
            ax.plot(xs, ys, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if data:
        ax.legend(fontsize=6, loc="upper left")


def main(src, dst):
    scrapes = []
    with open(src) as f:
        for line in f:
            r = json.loads(line)
            scrapes.append((r["t"], parse(r["page"])))
    compilers = lambda l: l.get("service") == "compilers"  # noqa: E731

    fig, axes = plt.subplots(3, 2, figsize=(13, 10))
    fig.suptitle(
        "voxlb dashboard queries on a real demo run (drain c2, kill c3, recover)\n"
        "rendered with matplotlib from scraped /metrics, not by Grafana",
        fontsize=11,
    )

    # Share of new flows per compiler.
    svc = rate(next(iter(series(scrapes, "voxlb_service_new_flows_total", compilers).values()), []))
    tot = dict(svc)
    share = {}
    for l, pts in series(scrapes, "voxlb_backend_new_flows_total", compilers).items():
        share[label(l, "name", "backend")] = [
            (t, v / tot[t]) for t, v in rate(pts) if tot.get(t)
        ]
    plot(axes[0][0], share, "Share of new flows per compiler", "fraction")

    # Packets/s per compiler.
    pps = {
        label(l, "name", "backend"): rate(p)
        for l, p in series(scrapes, "voxlb_backend_packets_total", compilers).items()
    }
    plot(axes[0][1], pps, "Packets/s per compiler", "packets/s")

    # Health timeline.
    health = {
        label(l, "backend"): p
        for l, p in series(scrapes, "voxlb_backend_healthy", compilers).items()
    }
    plot(axes[1][0], health, "Health (voxlb_backend_healthy)", "1 = up", step=True)

    # Packets by reason (drops and passes).
    reasons = {}
    for l, p in series(scrapes, "voxlb_reason_packets_total").items():
        r = rate(p)
        if any(v > 0 for _, v in r) and not label(l, "reason").startswith("tx_"):
            reasons[label(l, "verdict", "reason")] = r
    plot(axes[1][1], reasons, "Drops and passes by reason", "packets/s")

    # Flow table.
    ft = {}
    cap = series(scrapes, "voxlb_flow_table_capacity")
    capv = next(iter(cap.values()), [(0, 0)])[-1][1]
    for l, p in series(scrapes, "voxlb_backend_flow_entries", compilers).items():
        ft[label(l, "name", "backend")] = p
    for l, p in series(scrapes, "voxlb_flow_table_entries").items():
        ft["all entries"] = p
    plot(axes[2][0], ft, f"Flow-table entries (capacity {capv:.0f})", "entries")

    # Rebuilds.
    rb = {}
    for l, p in series(scrapes, "voxlb_table_rebuilds_total").items():
        rb["rebuilds (total)"] = p
    for l, p in series(scrapes, "voxlb_table_installs_total").items():
        rb["tables installed (total)"] = p
    plot(axes[2][1], rb, "Table rebuilds", "count", step=True)

    for ax in axes[-1]:
        ax.set_xlabel("seconds into the demo", fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
