"""`sarathi-serve bench serve`: an open-loop load run against a running server.

    sarathi-serve bench serve --url http://127.0.0.1:8000 \\
        --lengths ../shared/data/traces/sharegpt_8k.csv --length-scale 0.125 \\
        --rate 0.5 --num-requests 64 [--json out.json]

Clients: the OpenAI HTTP API (ours, or any peer such as vLLM) or our gRPC
`Generate` (`--grpc HOST:PORT`). Prompts are random token ids sent with
`ignore_eos`, so every request generates exactly its output length, as in the
paper. Results use vLLM's metric names (`median_ttft_ms`, `p99_itl_ms`, ...).
With `--scheduler-metrics URL` (ours only) the run also reports the scheduler's
per-iteration figures and the median scheduling delay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np

from sarathi_serve.bench.workload import RequestSpec, WorkloadSpec, make_requests
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.scheduler.stats import StageTimes

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestResult:
    prompt_len: int
    expected_output_len: int
    ok: bool = False
    output_len: int = 0
    ttft: float = 0.0  # seconds
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    klass: str = ""  # the request's class and tenant (RequestSpec), for the groups
    tenant: str = ""


def _result_of(spec: RequestSpec) -> RequestResult:
    return RequestResult(
        len(spec.prompt_token_ids), spec.output_len, klass=spec.klass, tenant=spec.tenant
    )


class OpenAIClient:
    def __init__(self, base_url: str, api_key: str = ""):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(3600.0, connect=10.0), headers=headers)
        self.model = ""

    async def start(self) -> None:
        response = await self.http.get(f"{self.base_url}/models")
        response.raise_for_status()
        self.model = response.json()["data"][0]["id"]

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, spec: RequestSpec) -> RequestResult:
        result = _result_of(spec)
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": spec.prompt_token_ids,
            "max_tokens": spec.output_len,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if spec.klass:  # a server without priorities may refuse the field
            body["priority"] = spec.priority
        if spec.tenant:
            body["user"] = spec.tenant
        start = last = time.perf_counter()
        try:
            async with self.http.stream("POST", f"{self.base_url}/completions", json=body) as r:
                if r.status_code != 200:
                    result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                    return result
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        result.error = str(chunk["error"])
                        return result
                    if chunk.get("usage"):
                        result.output_len = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices"):
                        now = time.perf_counter()
                        if result.ttft == 0.0:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        result.e2el = time.perf_counter() - start
        result.output_len = result.output_len or len(result.itl) + 1
        result.ok = True
        return result


class GrpcClient:
    def __init__(self, addr: str):
        self.channel = grpc.aio.insecure_channel(addr)
        self.stub = gpb_grpc.GenerationStub(self.channel)

    async def start(self) -> None:
        await self.channel.channel_ready()

    async def close(self) -> None:
        await self.channel.close()

    async def send(self, spec: RequestSpec) -> RequestResult:
        result = _result_of(spec)
        request = gpb.GenerateRequest(
            prompt_token_ids=gpb.TokenIds(ids=spec.prompt_token_ids),
            sampling=gpb.SamplingOptions(
                max_tokens=spec.output_len, temperature=0.0, ignore_eos=True
            ),
            user=spec.tenant,
        )
        if spec.klass:
            request.priority = spec.priority
        start = last = time.perf_counter()
        try:
            async for response in self.stub.Generate(request):
                now = time.perf_counter()
                for i in range(len(response.token_ids)):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last if i == 0 else 0.0)
                last = now
                result.output_len += len(response.token_ids)
        except grpc.aio.AioRpcError as exc:
            result.error = f"{exc.code().name}: {exc.details()}"
            return result
        result.e2el = time.perf_counter() - start
        result.ok = True
        return result


async def run_load(
    client: OpenAIClient | GrpcClient, requests: list[RequestSpec], progress: bool = True
) -> tuple[list[RequestResult], float]:
    """Sends each request at its arrival time (open loop); returns results and duration."""
    await client.start()
    done = 0

    async def one(spec: RequestSpec, t0: float) -> RequestResult:
        nonlocal done
        await asyncio.sleep(max(0.0, t0 + spec.arrival_s - time.perf_counter()))
        result = await client.send(spec)
        done += 1
        if progress:
            print(f"\r  {done}/{len(requests)} requests", end="", file=sys.stderr, flush=True)
        return result

    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(spec, t0) for spec in requests))
    finally:
        await client.close()
    if progress:
        print(file=sys.stderr)
    return list(results), time.perf_counter() - t0


def summarize(
    results: list[RequestResult], duration: float, slo_ttft_ms: float = 0, slo_tpot_ms: float = 0
) -> dict[str, Any]:
    """vLLM's keys: completed, throughputs, mean/median/p90/p99 of ttft, tpot, itl, e2el."""
    ok = [r for r in results if r.ok]
    out: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration": duration,
        "total_input_tokens": sum(r.prompt_len for r in ok),
        "total_output_tokens": sum(r.output_len for r in ok),
        "request_throughput": len(ok) / duration if duration else 0.0,
    }
    out["output_throughput"] = out["total_output_tokens"] / duration if duration else 0.0
    out["total_token_throughput"] = (
        (out["total_input_tokens"] + out["total_output_tokens"]) / duration if duration else 0.0
    )
    tpot = [(r.e2el - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": tpot,
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.e2el for r in ok],
    }
    for name, values in series.items():
        ms = np.asarray(values, dtype=float) * 1000
        out[f"mean_{name}_ms"] = float(ms.mean()) if len(ms) else math.nan
        for p in PERCENTILES:
            key = "median" if p == 50 else f"p{p}"
            out[f"{key}_{name}_ms"] = float(np.percentile(ms, p)) if len(ms) else math.nan
    if slo_ttft_ms or slo_tpot_ms:
        good = [
            r
            for r in ok
            if (not slo_ttft_ms or r.ttft * 1000 <= slo_ttft_ms)
            and (
                not slo_tpot_ms
                or r.output_len <= 1
                or (r.e2el - r.ttft) / (r.output_len - 1) * 1000 <= slo_tpot_ms
            )
        ]
        out["request_goodput"] = len(good) / duration if duration else 0.0
    errors = sorted({r.error for r in results if not r.ok})
    if errors:
        out["errors"] = errors[:5]
    groups = by_group(results)
    if groups:
        out["groups"] = groups
    return out


def by_group(results: list[RequestResult]) -> dict[str, dict[str, float]]:
    """Per class and per tenant ("class NAME", "tenant NAME"): requests, those done,
    TTFT and TBT percentiles (ms). Empty without classes or tenants."""
    members: dict[str, list[RequestResult]] = {}
    for r in results:
        for kind, name in (("class", r.klass), ("tenant", r.tenant)):
            if name:
                members.setdefault(f"{kind} {name}", []).append(r)
    out = {}
    for group, rs in sorted(members.items()):
        ok = [r for r in rs if r.ok]
        ttft = np.asarray([r.ttft for r in ok], dtype=float) * 1000
        itl = np.asarray([g for r in ok for g in r.itl], dtype=float) * 1000

        def pct(ms: np.ndarray, p: int) -> float:
            return float(np.percentile(ms, p)) if len(ms) else math.nan

        out[group] = {
            "requests": len(rs),
            "completed": len(ok),
            "median_ttft_ms": pct(ttft, 50),
            "p99_ttft_ms": pct(ttft, 99),
            "median_itl_ms": pct(itl, 50),
            "p99_itl_ms": pct(itl, 99),
        }
    return out


def format_groups(groups: dict[str, dict[str, float]], indent: str = "  ") -> list[str]:
    return [
        f"{indent}{name}: {g['completed']}/{g['requests']} done, TTFT p50 "
        f"{g['median_ttft_ms']:.0f} p99 {g['p99_ttft_ms']:.0f}, TBT p50 "
        f"{g['median_itl_ms']:.0f} p99 {g['p99_itl_ms']:.0f} ms"
        for name, g in groups.items()
    ]


# ---- server-side figures (our scheduler's /metrics) ---------------------------------


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {series with labels: value} (no external parser needed)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Deltas over a run: iterations, mean execution and overhead, median scheduling delay;
    the TBT target a sarathi policy kept at the end."""

    def delta(prefix: str) -> dict[str, float]:
        return {k: after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix)}

    def total(prefix: str) -> float:
        return sum(delta(prefix).values())

    out: dict[str, Any] = {}
    iterations = total("sarathi_scheduler_batch_execution_seconds_count")
    if iterations:
        out["iterations"] = iterations
        out["mean_batch_execution_ms"] = (
            1000 * total("sarathi_scheduler_batch_execution_seconds_sum") / iterations
        )
        out["mean_control_plane_ms"] = (
            1000 * total("sarathi_scheduler_overhead_seconds_sum") / iterations
        )
        out["mean_worker_wait_ms"] = (
            1000 * total("sarathi_scheduler_worker_wait_seconds_sum") / iterations
        )
    out["median_scheduling_delay_s"] = _histogram_quantile(
        delta("sarathi_scheduler_queue_seconds_bucket"), 0.5
    )
    out["preemptions"] = total("sarathi_scheduler_preemptions_total")
    targets = [v for k, v in after.items() if k.startswith("sarathi_scheduler_tbt_target_seconds")]
    if targets:  # the TBT target at the end of the run (measured, with a factor)
        out["tbt_target_ms"] = 1000 * max(targets)
    if total("sarathi_scheduler_pipeline_stage_busy_seconds_total"):  # a pipelined worker ran
        out["pipeline_bubble_fraction"] = pipeline_bubbles(
            delta("sarathi_scheduler_pipeline_stage")
        )
    return out


def pipeline_bubbles(series: dict[str, float]) -> list[float]:
    """Per pipeline stage: idle / (busy + idle) seconds over the run, from the
    `sarathi_scheduler_pipeline_stage_{busy,idle}_seconds_total` counters."""
    seconds: dict[tuple[bool, int], float] = {}  # (busy, stage) -> summed over policies
    for name, value in series.items():
        if name.endswith("}") and "_total{" in name:
            stage = int(name.split('stage="', 1)[1].split('"', 1)[0])
            key = (name.startswith("sarathi_scheduler_pipeline_stage_busy"), stage)
            seconds[key] = seconds.get(key, 0.0) + value
    stages = range(1 + max(stage for _, stage in seconds)) if seconds else range(0)
    busy, idle = ([seconds.get((b, s), 0.0) for s in stages] for b in (True, False))
    return StageTimes(busy, idle).bubble_fractions


def _histogram_quantile(buckets: dict[str, float], q: float) -> float:
    """Like PromQL's histogram_quantile, over buckets summed across label sets."""
    by_le: dict[float, float] = {}
    for series, count in buckets.items():
        le = series.split('le="', 1)[1].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        by_le[bound] = by_le.get(bound, 0.0) + count
    bounds = sorted(by_le)
    if not bounds or by_le[bounds[-1]] == 0:
        return math.nan
    rank = q * by_le[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if by_le[bound] >= rank:
            if math.isinf(bound):
                return lower
            inside = by_le[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, by_le[bound]
    return lower


# ---- the command ----------------------------------------------------------------------


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lengths",
        default="uniform:64:512:16:128",
        help="trace CSV (num_prefill_tokens,num_decode_tokens), or fixed:P:D, "
        "uniform:PMIN:PMAX:DMIN:DMAX, zipf:PMAX:DMAX[:A]",
    )
    p.add_argument("--length-scale", type=float, default=1.0, help="multiply trace lengths")
    p.add_argument("--max-prompt-len", type=int, default=2048)
    p.add_argument("--max-output-len", type=int, default=256)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma: 1/cv^2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prefixes",
        default="",
        help="K:N: every prompt starts with one of K shared N-token prompts",
    )
    p.add_argument(
        "--turns", type=int, default=1, help="conversations of T turns (each resends the last)"
    )
    p.add_argument(
        "--classes",
        default="",
        help="NAME=PRIORITY:WEIGHT,...: request classes (their OpenAI priority), by weight",
    )
    p.add_argument(
        "--tenants", default="", help="NAME:WEIGHT,...: tenants (their OpenAI user), by weight"
    )


def workload_from(args: argparse.Namespace, rate: float) -> WorkloadSpec:
    return WorkloadSpec(
        lengths=args.lengths,
        rate=rate,
        num_requests=args.num_requests,
        arrival=args.arrival,
        burstiness=args.burstiness,
        length_scale=args.length_scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
        seed=args.seed,
        prefixes=args.prefixes,
        turns=args.turns,
        classes=args.classes,
        tenants=args.tenants,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", default="http://127.0.0.1:8000", help="OpenAI API base URL")
    target.add_argument("--grpc", default=None, help="our gRPC gateway HOST:PORT instead")
    p.add_argument("--api-key", default="")
    p.add_argument("--rate", type=float, default=1.0, help="requests/s (inf: all at once)")
    add_workload_arguments(p)
    p.add_argument("--scheduler-metrics", default=None, help="our scheduler's /metrics URL")
    p.add_argument("--slo-ttft-ms", type=float, default=0.0)
    p.add_argument("--slo-tpot-ms", type=float, default=0.0)
    p.add_argument("--json", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    spec = workload_from(args, args.rate)
    client: OpenAIClient | GrpcClient = (
        GrpcClient(args.grpc) if args.grpc else OpenAIClient(args.url, args.api_key)
    )
    print(f"workload: {spec.describe()}", file=sys.stderr)
    before = scrape(args.scheduler_metrics) if args.scheduler_metrics else {}
    results, duration = asyncio.run(run_load(client, make_requests(spec)))
    summary = summarize(results, duration, args.slo_ttft_ms, args.slo_tpot_ms)
    if args.scheduler_metrics:
        summary["server"] = server_figures(before, scrape(args.scheduler_metrics))
    print(format_summary(summary))
    if args.json:
        args.json.write_text(json.dumps({"workload": asdict(spec), **summary}, indent=2))
    return 0 if summary["failed"] == 0 else 1


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"completed {s['completed']} (failed {s['failed']}) in {s['duration']:.1f} s; "
        f"{s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} output tok/s",
    ]
    for name in ("ttft", "tpot", "itl", "e2el"):
        lines.append(
            f"  {name:5s} ms  mean {s[f'mean_{name}_ms']:8.1f}"
            f"  median {s[f'median_{name}_ms']:8.1f}  p90 {s[f'p90_{name}_ms']:8.1f}"
            f"  p99 {s[f'p99_{name}_ms']:8.1f}"
        )
    lines.extend(format_groups(s.get("groups", {})))
    if "server" in s:
        lines.append(f"  server: {json.dumps(s['server'])}")
    return "\n".join(lines)
