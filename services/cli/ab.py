"""`sarathi-serve ab report`: compare the A/B variants behind one or more gateways.

Reads each gateway's per-request samples (`GET /ab/samples`: TTFT, time per
output token, end-to-end latency, output tokens of the latest finished requests
of every variant), pools them by variant and prints medians and tails with 95 %
bootstrap confidence intervals, plus each variant's ratio to the first one.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from sarathi_serve.gateway.config import DEFAULT_HTTP_PORT

NUM_RESAMPLES = 1000
Statistic = Callable[[np.ndarray], float]
STATISTICS: dict[str, tuple[str, Statistic]] = {
    "ttft_median_ms": ("ttft", lambda x: 1000 * float(np.median(x))),
    "ttft_p99_ms": ("ttft", lambda x: 1000 * float(np.percentile(x, 99))),
    "tpot_median_ms": ("tpot", lambda x: 1000 * float(np.median(x))),
    "tpot_p99_ms": ("tpot", lambda x: 1000 * float(np.percentile(x, 99))),
    "e2e_median_ms": ("e2e", lambda x: 1000 * float(np.median(x))),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True)
    report = actions.add_parser("report", help="latency of each variant, with confidence intervals")
    report.add_argument(
        "--gateway",
        action="append",
        help=f"gateway HTTP base URL (repeatable; default http://127.0.0.1:{DEFAULT_HTTP_PORT})",
    )
    report.add_argument("--api-key", default=None, help="if the gateways require one")
    report.add_argument(
        "--since", type=float, default=0.0, help="only requests finished after this unix time"
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument("--seed", type=int, default=0, help="of the bootstrap")


def run(args: argparse.Namespace) -> int:
    gateways = args.gateway or [f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    pooled: dict[str, dict[str, list[float]]] = {}
    for url in gateways:
        request = urllib.request.Request(f"{url.rstrip('/')}/ab/samples", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"sarathi-serve ab report: {url}: {exc}", file=sys.stderr)
            return 1
        for variant, columns in body["variants"].items():
            into = pooled.setdefault(variant, {})
            for name, values in columns.items():
                into.setdefault(name, []).extend(values)
    report = build_report(pooled, args.since, np.random.default_rng(args.seed))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["variants"] else 1


def build_report(
    samples: dict[str, dict[str, list[float]]], since: float, rng: np.random.Generator
) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for name in sorted(samples):
        columns = {k: np.asarray(v, dtype=float) for k, v in samples[name].items()}
        keep = columns["finished_at"] >= since
        columns = {k: v[keep] for k, v in columns.items()}
        count = int(keep.sum())
        if count == 0:
            continue
        span = float(columns["finished_at"].max() - columns["finished_at"].min())
        row: dict[str, Any] = {
            "requests": count,
            "output_tokens": int(columns["output_tokens"].sum()),
            "output_throughput_tok_s": float(columns["output_tokens"].sum() / span)
            if span > 0
            else None,
        }
        for stat, (column, fn) in STATISTICS.items():
            row[stat] = _with_ci(columns[column], fn, rng)
        variants[name] = row
    baseline = next(iter(variants), None)
    report: dict[str, Any] = {"variants": variants, "baseline": baseline, "ratios": {}}
    for name in variants:
        if baseline is None or name == baseline:
            continue
        report["ratios"][name] = {
            stat: _ratio_ci(samples[name], samples[baseline], column, fn, since, rng)
            for stat, (column, fn) in STATISTICS.items()
        }
    return report


def _with_ci(values: np.ndarray, fn: Statistic, rng: np.random.Generator) -> dict[str, Any]:
    estimate = fn(values)
    boots = [fn(rng.choice(values, size=len(values))) for _ in range(NUM_RESAMPLES)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"value": estimate, "ci95": [float(low), float(high)]}


def _ratio_ci(
    a: dict[str, list[float]],
    b: dict[str, list[float]],
    column: str,
    fn: Statistic,
    since: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """`fn(a) / fn(b)` with a bootstrap interval (independent resamples of a and b)."""
    x = np.asarray(a[column])[np.asarray(a["finished_at"]) >= since]
    y = np.asarray(b[column])[np.asarray(b["finished_at"]) >= since]
    if len(x) == 0 or len(y) == 0 or fn(y) == 0:
        return {"value": None, "ci95": None}
    boots = []
    for _ in range(NUM_RESAMPLES):
        denominator = fn(rng.choice(y, size=len(y)))
        if denominator > 0:
            boots.append(fn(rng.choice(x, size=len(x))) / denominator)
    low, high = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return {"value": fn(x) / fn(y), "ci95": [float(low), float(high)]}


def format_report(report: dict[str, Any]) -> str:
    if not report["variants"]:
        return "no finished requests yet"
    header = ["variant", "requests", "out tok/s", *STATISTICS]
    rows = [header]
    for name, row in report["variants"].items():
        throughput = row["output_throughput_tok_s"]
        rows.append(
            [
                name,
                str(row["requests"]),
                f"{throughput:.1f}" if throughput is not None else "-",
                *(_cell(row[stat]) for stat in STATISTICS),
            ]
        )
    for name, ratios in report["ratios"].items():
        rows.append(
            [f"{name}/{report['baseline']}", "", "", *(_cell(ratios[s], "x") for s in STATISTICS)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("(value [95% bootstrap CI]; ms unless marked x = ratio to the baseline)")
    return "\n".join(lines)


def _cell(stat: dict[str, Any], unit: str = "") -> str:
    if stat["value"] is None:
        return "-"
    low, high = stat["ci95"]
    digits = 2 if unit else 1
    return f"{stat['value']:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"
