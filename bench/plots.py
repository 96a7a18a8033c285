"""PNG plots of the benchmarks, drawn from the raw results each one saves (``bench/NAME.json``).

Every benchmark draws its own plot when it finishes; this redraws them all
from the saved JSON, e.g. after a change of style:

    python -m bench.plots                # docs/bench/*.json -> docs/bench/*.png
    python -m bench.plots --out /tmp/bench-trial
"""

from __future__ import annotations

import argparse
import json
import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.report import Output, add_output_argument, percentile

Record = dict[str, Any]
COLORS = ["#1f77b4", "#aec7e8", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]


def _figure(record: Record, title: str, *, ncols: int = 1, width: float = 8.0) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(1, ncols, figsize=(width, 4.8), squeeze=False)
    fig.suptitle(title, fontsize=12)
    settings = ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items())
    footer = f"{record.get('machine', '')}\n{settings}; written {record.get('written_at', '?')}"
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(footer, 150)), fontsize=6, color="#555555", va="bottom")
    return fig, axes[0]


def worker_throughput(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "Worker drain throughput (median, bar = range of runs)", width=11.0)
    rates: dict[str, list[float]] = record["jobs_per_s"]
    names = list(rates)
    medians = [statistics.median(rates[n]) for n in names]
    low = [m - min(rates[n]) for m, n in zip(medians, names, strict=True)]
    high = [max(rates[n]) - m for m, n in zip(medians, names, strict=True)]
    bars = ax.bar(names, medians, yerr=[low, high], capsize=6, color=COLORS[: len(names)])
    ax.bar_label(bars, labels=[f"{m:,.0f}" for m in medians], label_type="center", color="white", fontweight="bold")
    ax.set_ylabel("jobs/s")
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.set_ylim(0, max(max(v) for v in rates.values()) * 1.35)
    ratios = record.get("ratios", {})
    if ratios:
        text = "\n".join(
            f"{name}: {value:.2f} ({'no target' if target is None else f'target {target}'})"
            for name, (value, target) in ratios.items()
        )
        ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", fontsize=8, bbox={"fc": "white", "ec": "#cccccc"})
    return fig


def latency(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "End-to-end latency (ms, log scale)", width=9.0)
    runs: dict[str, list[float]] = record["ms"]
    points = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}
    width = 0.8 / len(runs)
    for i, (name, values) in enumerate(runs.items()):
        heights = [percentile(values, q) for q in points.values()]
        xs = [j + i * width for j in range(len(points))]
        ax.bar(xs, heights, width, label=name.replace("_", ", "), color=COLORS[i % len(COLORS)])
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(points))], list(points))
    ax.set_yscale("log")
    ax.set_ylabel("ms from created_at")
    for target_ms, label in record.get("targets_ms", []):
        ax.axhline(target_ms, color="#d62728", linestyle="--", linewidth=0.8)
        ax.annotate(label, (len(points) - 0.5, target_ms), color="#d62728", fontsize=7, va="bottom", ha="right")
    ax.legend(fontsize=8)
    return fig


def api_submit(record: Record) -> Figure:
    fig, (single, batch) = _figure(record, "API submissions", ncols=2, width=10.0)
    stores = {name: row for name, row in record["stores"].items() if row is not None}
    names = list(stores)
    bars = single.bar(names, [stores[n]["rps"] for n in names], color=COLORS[0])
    labels = [
        f"p99 {stores[n]['paced']['p99']:.0f} ms at {record['settings']['paced_rate']:,.0f}/s"
        if "paced" in stores[n]
        else f"p99 {stores[n]['p99']:.0f} ms"
        for n in names
    ]
    single.bar_label(bars, labels=labels, padding=3, fontsize=8)
    single.set_title("single submits/s (wrk, saturated)", fontsize=10)
    bars = batch.bar(names, [stores[n]["batch_jobs_per_s"] for n in names], color=COLORS[2])
    batch.bar_label(bars, labels=[f"{stores[n]['batch_jobs_per_s']:,.0f}" for n in names], padding=3, fontsize=8)
    batch.set_title("jobs/s in batches of 1,000", fontsize=10)
    for ax, target in ((single, record.get("target_single_per_s")), (batch, record.get("target_batch_per_s"))):
        if target:
            ax.axhline(target, color="#d62728", linestyle="--", linewidth=0.8, label=f"target {target:,}")
            ax.legend(fontsize=8)
    return fig


def scheduler_lag(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "Scheduler fire lag per tick (scheduled time to published)")
    lags: list[float] = record["lags_ms"]
    ax.plot(range(1, len(lags) + 1), lags, marker=".", linewidth=0.8)
    ax.axhline(record.get("target_ms", 100), color="#d62728", linestyle="--", linewidth=0.8, label="target")
    ax.set_xlabel("tick")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def worker_memory(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "Worker resident memory while draining no-op jobs")
    samples: list[dict[str, Any]] = record["samples"]
    done = [s["done"] for s in samples]
    ax.plot(done, [sum(s["children_kib"]) / 1024 for s in samples], marker="o", label="worker processes (sum)")
    for i in range(len(samples[0]["children_kib"])):
        ax.plot(done, [s["children_kib"][i] / 1024 for s in samples], linestyle=":", label=f"worker process {i + 1}")
    ax.plot(done, [s["supervisor_kib"] / 1024 for s in samples], linestyle="--", label="supervisor")
    limit = sum(samples[0]["children_kib"]) / 1024 * (1 + record.get("target_growth", 0.10))
    ax.axhline(limit, color="#d62728", linestyle="--", linewidth=0.8, label="target: first sample + 10%")
    ax.set_xlabel("jobs done")
    ax.set_ylabel("RSS, MiB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def redelivery(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "Crash redelivery: kill to every interrupted job started again")
    scenarios: dict[str, list[dict[str, Any]]] = record["scenarios"]
    for i, repeats in enumerate(scenarios.values()):
        firsts = [r["first_s"] for r in repeats]
        alls = [r["all_s"] for r in repeats]
        first_label, last_label = ("first job started again", "last job started again") if i == 0 else (None, None)
        ax.scatter([i - 0.1] * len(firsts), firsts, marker="x", color=COLORS[0], label=first_label)
        ax.scatter([i + 0.1] * len(alls), alls, marker="o", color=COLORS[2], label=last_label)
    ax.set_xticks(range(len(scenarios)), [record.get("labels", {}).get(n, n) for n in scenarios], fontsize=8)
    ax.set_xlim(-0.6, len(scenarios) - 0.4)
    ax.axhline(record.get("target_s", 20), color="#d62728", linestyle="--", linewidth=0.8, label="target")
    ax.set_ylabel("seconds after SIGKILL")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def retention(record: Record) -> Figure:
    fig, (rate_ax, p99_ax) = _figure(record, "Pruning: rows deleted per second, and submit p99 while it runs", ncols=2)
    stores = {name: figures for name, figures in record["stores"].items() if figures}
    names = list(stores)
    bars = rate_ax.bar(names, [stores[n]["rows_per_s"] for n in names], color=COLORS[: len(names)])
    rate_ax.bar_label(bars, labels=[f"{stores[n]['rows_per_s']:,.0f}" for n in names])
    rate_ax.axhline(40000, color="#d62728", linestyle="--", linewidth=0.8, label="target")
    rate_ax.set_ylabel("rows/s")
    rate_ax.legend(fontsize=8)
    width = 0.38
    windows = (("baseline", "alone", -width / 2), ("during", "while pruning", width / 2))
    for key, label, offset in windows:
        values = [stores[n][key]["p99"] for n in names]
        p99_ax.bar([i + offset for i in range(len(names))], values, width, label=label)
    p99_ax.set_xticks(range(len(names)), names)
    p99_ax.set_ylabel("submit p99 ms")
    p99_ax.legend(fontsize=8)
    return fig


def store_scale(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "API reads as the jobs table grows: p99 per endpoint", width=11.0)
    sizes = sorted(record["sizes"], key=int)
    names = list(record["sizes"][sizes[0]]["endpoints"])
    for index, name in enumerate(names):
        values = [record["sizes"][size]["endpoints"][name]["p99_ms"] for size in sizes]
        style = "-" if index < 10 else "--"
        ax.plot([int(size) for size in sizes], values, style, marker="o", label=name, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jobs in the table")
    ax.set_ylabel("p99 ms")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    return fig


def redis_work(record: Record) -> Figure:
    fig, (ax,) = _figure(record, "Slowest Redis command per operation", width=9.0)
    operations: list[dict[str, Any]] = record["operations"]
    names = [item["name"] for item in operations]
    ax.barh(range(len(names)), [item["slowest_ms"] for item in operations], color=COLORS[0])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(record.get("target_ms", 50), color="#d62728", linestyle="--", linewidth=0.8, label="target")
    ax.set_xlabel(f"ms ({record['dead']:,} dead letters, {record['queued']:,} queued)")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8)
    return fig


PLOTS: dict[str, Callable[[Record], Figure]] = {
    "worker_throughput": worker_throughput,
    "latency": latency,
    "api_submit": api_submit,
    "scheduler_lag": scheduler_lag,
    "worker_memory": worker_memory,
    "redelivery": redelivery,
    "retention": retention,
    "store_scale": store_scale,
    "redis_work": redis_work,
}


def render(name: str, record: Record, path: Path) -> None:
    fig = PLOTS[name](record)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_argument(parser)
    out = Output(parser.parse_args(argv).out)
    for name in PLOTS:
        path = out.results_path(name)
        if path.exists():
            render(name, json.loads(path.read_text()), out.image_path(name))
            print(f"drew {out.image_path(name)}")


if __name__ == "__main__":
    main()
