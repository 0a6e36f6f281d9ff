"""`sarathi-serve bench compare`: several configurations, one workload, one run, alternating.

    sarathi-serve bench compare --config sarathi:256 --config vllm:256 \\
        --config vllm-cpu=http://127.0.0.1:8011 \\
        --lengths ../shared/data/traces/sharegpt_8k.csv --length-scale 0.125 \\
        --rates 0.25,0.5 --num-requests 48 --out docs/results/compare-sharegpt

A configuration is POLICY:BUDGET[:TARGET_TBT_MS] on our system (one system is
started with `up`; the policy is swapped live between trials, after draining),
or NAME=URL of any OpenAI-compatible server (a peer such as vLLM). Every rate
runs every configuration in turn (`--repeats` rounds), so slow drifts of a
noisy machine hit all of them alike. Every configuration of a round gets the same
lengths and arrival times, and prompt tokens of its own that no run has sent before
(our configurations share one system, hence one prefix cache): a prefix cache serves
only the repetition inside a workload (`--prefixes`, `--turns`), never a replay.
With `--capacity`, each configuration's capacity is searched instead: the highest
rate with P99 TBT <= `--slo-tbt-ms` and median scheduling delay <= 2 s (the paper's
rule), by bisection.

Writes OUT.json, OUT.txt (the table) and PNG plots: TBT CDF per configuration,
latency vs load, capacity bars.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sarathi_serve.bench.serving import (
    OpenAIClient,
    add_workload_arguments,
    format_groups,
    run_load,
    scrape,
    server_figures,
    summarize,
    workload_from,
)
from sarathi_serve.bench.system import LocalSystem
from sarathi_serve.bench.workload import make_requests
from sarathi_serve.scheduler.policies import DEFAULT_TOKEN_BUDGET, POLICIES

MAX_SCHEDULING_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    policy: str = ""  # ours
    token_budget: int = 0
    target_tbt_ms: float = 0.0
    target_tbt_factor: float = 0.0  # sarathi:BUDGET:xF
    url: str = ""  # a peer

    @classmethod
    def parse(cls, text: str) -> Config:
        if "=" in text:
            name, url = text.split("=", 1)
            return cls(name=name, url=url)
        policy, _, rest = text.partition(":")
        budget, _, target = rest.partition(":")
        if policy not in POLICIES:
            raise argparse.ArgumentTypeError(
                f"{text!r}: POLICY:BUDGET[:TBT_MS | :xFACTOR] or NAME=URL"
            )
        factor = target.startswith("x")
        return cls(
            name=text,
            policy=policy,
            token_budget=int(budget or DEFAULT_TOKEN_BUDGET),
            target_tbt_ms=0.0 if factor else float(target or 0),
            target_tbt_factor=float(target[1:]) if factor else 0.0,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", type=Config.parse, required=True)
    p.add_argument("--rates", default="0.5", help="comma-separated request rates (req/s)")
    p.add_argument("--repeats", type=int, default=1)
    add_workload_arguments(p)
    p.add_argument("--capacity", action="store_true", help="search each config's capacity")
    p.add_argument("--slo-tbt-ms", type=float, default=0.0, help="capacity: P99 TBT bound")
    p.add_argument("--max-trials", type=int, default=6, help="capacity: trials per config")
    p.add_argument("--up-args", default="", help="extra `sarathi-serve up` flags, quoted")
    p.add_argument("--out", type=Path, required=True, help="OUT.json, OUT.txt, OUT-*.png")


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop our system on the way out
    ours = [c for c in args.config if c.policy]
    system = LocalSystem(*args.up_args.split()) if ours else None
    try:
        report = _capacity(args, system) if args.capacity else _fixed_rates(args, system)
    finally:
        if system is not None:
            system.stop()
    report["workload"] = asdict(workload_from(args, 0.0)) | {"rate": None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = format_table(report)
    args.out.with_suffix(".txt").write_text(table + "\n")
    print(table)
    plot(report, args.out)
    return 0


def _trial(
    args: argparse.Namespace,
    system: LocalSystem | None,
    config: Config,
    rate: float,
    prompt_salt: int,
) -> dict[str, Any]:
    spec = replace(workload_from(args, rate), prompt_salt=prompt_salt)
    url = config.url or (system.base_url if system else "")
    metrics_url = ""
    if config.policy and system is not None:
        system.set_policy(
            config.policy, config.token_budget, config.target_tbt_ms, config.target_tbt_factor
        )
        metrics_url = system.scheduler_metrics
    print(f"{config.name} @ {rate:g} req/s: {spec.describe()}", file=sys.stderr)
    before = scrape(metrics_url) if metrics_url else {}
    results, duration = asyncio.run(run_load(OpenAIClient(url), make_requests(spec)))
    summary = summarize(results, duration)
    if metrics_url:
        summary["server"] = server_figures(before, scrape(metrics_url))
    if system is not None:
        system.drain()
    summary["itl_ms"] = [round(gap * 1000, 1) for r in results if r.ok for gap in r.itl]
    summary.update(config=config.name, rate=rate)
    return summary


def _fixed_rates(args: argparse.Namespace, system: LocalSystem | None) -> dict[str, Any]:
    runs = []
    rates = [float(r) for r in args.rates.split(",")]
    rounds = (rate for rate in rates for _ in range(args.repeats))
    for round_index, rate in enumerate(rounds):  # one round: the same lengths for all
        for i, config in enumerate(args.config):
            salt = round_index * len(args.config) + i  # fresh tokens for every trial
            runs.append(_trial(args, system, config, rate, salt))
    return {"mode": "fixed", "runs": runs}


def _passes(summary: dict[str, Any], slo_tbt_ms: float) -> bool:
    delay = summary.get("server", {}).get("median_scheduling_delay_s")
    if delay is None or math.isnan(delay):  # a peer: TTFT bounds its scheduling delay
        delay = summary["median_ttft_ms"] / 1000
    return (
        summary["failed"] == 0
        and summary["p99_itl_ms"] <= slo_tbt_ms
        and delay <= MAX_SCHEDULING_DELAY_S
    )


def _capacity(args: argparse.Namespace, system: LocalSystem | None) -> dict[str, Any]:
    if args.slo_tbt_ms <= 0:
        raise SystemExit("--capacity needs --slo-tbt-ms")
    start = float(args.rates.split(",")[0])
    capacities, runs = {}, []
    for index, config in enumerate(args.config):
        lo, hi, rate = 0.0, math.inf, start
        for trial in range(args.max_trials):
            summary = _trial(args, system, config, rate, index * args.max_trials + trial)
            runs.append(summary)
            if _passes(summary, args.slo_tbt_ms):
                lo = rate
            else:
                hi = rate
            if math.isfinite(hi) and lo > 0 and (hi - lo) / lo <= 0.025:
                break
            rate = rate * 2 if math.isinf(hi) else (lo + hi) / 2 if lo > 0 else rate / 2
        capacities[config.name] = {"capacity_rps": lo, "failing_rps": hi}
    return {"mode": "capacity", "slo_tbt_ms": args.slo_tbt_ms, "capacity": capacities, "runs": runs}


def format_table(report: dict[str, Any]) -> str:
    header = ["config", "rate", "done", "out tok/s", "TTFT p50", "TTFT p99", "TBT p50",
              "TBT p99", "TPOT p50", "sched delay p50 s", "ctrl ms/it", "wait ms/it"]  # fmt: skip
    rows = [header]
    for run in report["runs"]:
        server = run.get("server", {})
        rows.append(
            [
                run["config"],
                f"{run['rate']:g}",
                f"{run['completed']}/{run['completed'] + run['failed']}",
                f"{run['output_throughput']:.1f}",
                f"{run['median_ttft_ms']:.0f}",
                f"{run['p99_ttft_ms']:.0f}",
                f"{run['median_itl_ms']:.0f}",
                f"{run['p99_itl_ms']:.0f}",
                f"{run['median_tpot_ms']:.0f}",
                _fmt(server.get("median_scheduling_delay_s"), 2),
                _fmt(server.get("mean_control_plane_ms"), 2),
                _fmt(server.get("mean_worker_wait_ms"), 2),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for run in report["runs"]:
        if bubbles := run.get("server", {}).get("pipeline_bubble_fraction"):
            stages = ", ".join(f"stage {i} {b:.1%}" for i, b in enumerate(bubbles))
            lines.append(f"{run['config']} @ {run['rate']:g}: pipeline bubbles {stages}")
    for run in report["runs"]:
        if run.get("groups"):
            lines.append(f"{run['config']} @ {run['rate']:g}:")
            lines.extend(format_groups(run["groups"]))
    if report["mode"] == "capacity":
        lines.append(f"\ncapacity (P99 TBT <= {report['slo_tbt_ms']:g} ms, median delay <= 2 s):")
        for name, c in report["capacity"].items():
            lines.append(f"  {name}: {c['capacity_rps']:.3f} req/s")
    lines.append("(latencies in ms; TBT = inter-token latency, pooled over requests)")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def plot(report: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return
    runs = report["runs"]
    cdf_rates = sorted({r["rate"] for r in runs}) if report["mode"] == "fixed" else []
    for rate in cdf_rates:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in (r for r in runs if r["rate"] == rate):
            values = np.sort(np.asarray(run["itl_ms"]))
            if len(values):
                ax.plot(values, np.linspace(0, 1, len(values)), label=run["config"])
        ax.set(xscale="log", xlabel="time between tokens (ms)", ylabel="CDF",
               title=f"TBT at {rate:g} req/s")  # fmt: skip
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{out}-tbt-cdf-{rate:g}.png", dpi=120)
        plt.close(fig)
    if report["mode"] == "fixed" and len({r["rate"] for r in runs}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["config"] for r in runs):
            points = sorted((r["rate"], r["p99_itl_ms"]) for r in runs if r["config"] == name)
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set(xlabel="request rate (req/s)", ylabel="P99 TBT (ms)", yscale="log",
               title="latency vs load")  # fmt: skip
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{out}-latency-vs-load.png", dpi=120)
        plt.close(fig)
    if report["mode"] == "capacity":
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(report["capacity"])
        ax.bar(names, [report["capacity"][n]["capacity_rps"] for n in names])
        ax.set(ylabel="capacity (req/s)", title=f"capacity, P99 TBT <= {report['slo_tbt_ms']:g} ms")
        fig.tight_layout()
        fig.savefig(f"{out}-capacity.png", dpi=120)
        plt.close(fig)
    _plot_bubbles(plt, runs, out)


def _plot_bubbles(plt: Any, runs: list[dict[str, Any]], out: Path) -> None:
    """A pipelined worker's bubbles: per run, each stage's idle fraction."""
    runs = [r for r in runs if r.get("server", {}).get("pipeline_bubble_fraction")]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    num_stages = max(len(r["server"]["pipeline_bubble_fraction"]) for r in runs)
    width = 0.8 / num_stages
    for stage in range(num_stages):
        fractions = [r["server"]["pipeline_bubble_fraction"][stage] for r in runs]
        xs = [i + stage * width for i in range(len(runs))]
        ax.bar(xs, [100 * f for f in fractions], width, label=f"stage {stage}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))])
    ax.set_xticklabels([f"{r['config']}\n{r['rate']:g} req/s" for r in runs], fontsize=7)
    ax.set(ylabel="idle while requests run (%)", title="pipeline bubbles per stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}-bubbles.png", dpi=120)
    plt.close(fig)
