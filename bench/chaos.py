"""Chaos soak: streaming load while every role is killed or stopped on a seeded schedule.

    python -m sarathi_serve.bench.chaos [--minutes 10] [--seed 0] [--out chaos.json]

`sarathi-serve up --schedulers 2 --workers 2` serves greedy streams from a few client
threads, over gRPC (token ids) and the OpenAI HTTP API (SSE text); some clients hang up
mid-stream. Every `--fault-every-s` one fault hits, in a seeded order that goes round
every kind: kill -9 or SIGSTOP (for 3-15 s, then SIGCONT if it still lives) of a
worker, the leader, the standby, Redis, and kill -9 of the gateway. Each stream is
then held against what the same request got before any fault:

    exact        it ended normally with exactly those tokens
    interrupted  it ended with an explicit error (a gateway kill cuts its clients), its
                 tokens so far a prefix of them
    hung up      the client left, its tokens so far a prefix of them
    lost         it ended normally with fewer
    repeated     it ended normally with more (the reference, then extra)
    changed      a token differs

The goal is 0 lost, repeated and changed. Also reported: the longest pause between two
tokens of a stream, and requests refused while the gateway restarted. JSON to `--out`,
a table on stdout, a plot of every pause over time with the faults beside the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx

from sarathi_serve.bench.system import LocalSystem
from sarathi_serve.common import probes
from sarathi_serve.common.run_records import read_system
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three primary colors:",
    "Explain what a CPU cache does in one sentence.",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "Translate 'good morning' into Spanish:",
    "A recipe for pancakes needs",
    "The tallest mountain on Earth is",
    "Summarize the plot of Hamlet:",
    "In Python, a list comprehension",
]
MAX_TOKENS = (24, 48, 64)  # prompt i asks for MAX_TOKENS[i % 3]
FAULTS = (
    ("worker", "kill"),
    ("worker", "stop"),
    ("leader", "kill"),
    ("leader", "stop"),
    ("standby", "kill"),
    ("redis", "kill"),
    ("redis", "stop"),
    ("gateway", "kill"),
)
OUTCOMES = ("exact", "interrupted", "hung up", "lost", "repeated", "changed")


@dataclass
class Stream:
    prompt: int
    api: str  # grpc (token ids) or http (text)
    started_at: float
    hang_up_after: int | None = None  # the client leaves after this many responses
    output: list[Any] = field(default_factory=list)  # token ids, or text pieces
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    finished: bool = False
    error: str = ""


@dataclass
class Fault:
    at: float
    role: str
    kind: str
    pid: int
    seconds: float = 0.0  # a stop's length
    longest_pause_s: float = 0.0  # of any stream, until the next fault


def classify(stream: Stream, expected: list[Any]) -> str:
    """The outcome of a stream against what the same request got without faults."""
    got = stream.output if stream.api == "grpc" else ["".join(stream.output)]
    want = expected if stream.api == "grpc" else ["".join(expected)]
    if stream.api == "http":  # text: compare as strings
        got_s, want_s = got[0], want[0]
        prefix, same = want_s.startswith(got_s), got_s == want_s
        longer = got_s.startswith(want_s) and not same
    else:
        prefix, same = want[: len(got)] == got, got == want
        longer = got[: len(want)] == want and len(got) > len(want)
    if stream.finished:
        if same:
            return "exact"
        if longer:
            return "repeated"
        return "lost" if prefix else "changed"
    if not prefix:
        return "changed"
    return "hung up" if stream.hang_up_after is not None and not stream.error else "interrupted"


def run_stream(system: LocalSystem, stream: Stream) -> Stream:
    max_tokens = MAX_TOKENS[stream.prompt % len(MAX_TOKENS)]
    last = time.monotonic()
    try:
        responses = (
            _grpc_responses(system, stream.prompt, max_tokens)
            if stream.api == "grpc"
            else _http_responses(system, stream.prompt, max_tokens)
        )
        for n, (piece, finished) in enumerate(responses, 1):
            now = time.monotonic()
            stream.gaps.append((now, now - last))
            last = now
            stream.output.extend(piece)
            stream.finished = finished
            if stream.hang_up_after is not None and n >= stream.hang_up_after:
                responses.close()
                break
    except (grpc.RpcError, httpx.HTTPError, ValueError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"[:300]
    return stream


def _grpc_responses(system: LocalSystem, prompt: int, max_tokens: int):  # type: ignore[no-untyped-def]
    request = gpb.GenerateRequest(
        prompt=PROMPTS[prompt], sampling=gpb.SamplingOptions(max_tokens=max_tokens, temperature=0)
    )
    with grpc.insecure_channel(system.grpc_addr) as channel:
        for response in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
            yield list(response.token_ids), response.finish_reason != 0  # 0: unspecified, going on


def _http_responses(system: LocalSystem, prompt: int, max_tokens: int):  # type: ignore[no-untyped-def]
    body = {"prompt": PROMPTS[prompt], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    url = f"{system.base_url}/completions"
    with httpx.stream("POST", url, json=body, timeout=300) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise ValueError(f"error event: {chunk['error']}")
            choice = chunk["choices"][0]
            yield [choice["text"]], choice["finish_reason"] is not None


def references(system: LocalSystem) -> dict[tuple[int, str], list[Any]]:
    """What every (prompt, API) gets before any fault, a few at a time."""
    streams = [
        Stream(i, api, time.monotonic()) for i in range(len(PROMPTS)) for api in ("grpc", "http")
    ]
    threads = [threading.Thread(target=run_stream, args=(system, s)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in streams:
        if not s.finished:
            raise RuntimeError(f"the fault-free reference failed: {s}")
    return {(s.prompt, s.api): s.output for s in streams}


class Soak:
    def __init__(self, system: LocalSystem, seed: int, clients: int, hang_up_rate: float):
        self.system = system
        self.rng = random.Random(seed)
        self.clients = clients
        self.hang_up_rate = hang_up_rate
        self.streams: list[Stream] = []
        self.faults: list[Fault] = []
        self.refused: list[str] = []  # requests refused before any token, and why
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(self, seconds: float, fault_every_s: float) -> None:
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self._client, args=(random.Random(self.rng.random()),))
            for _ in range(self.clients)
        ]
        for t in threads:
            t.start()
        order: list[tuple[str, str]] = []
        try:
            while time.monotonic() - t0 < seconds:
                time.sleep(min(fault_every_s, max(seconds - (time.monotonic() - t0), 0)))
                if time.monotonic() - t0 >= seconds:
                    break
                if not order:
                    order = self.rng.sample(FAULTS, len(FAULTS))
                self._inject(*order.pop())
        finally:
            self._stop.set()
            for t in threads:
                t.join(600)

    def _client(self, rng: random.Random) -> None:
        while not self._stop.is_set():
            hang_up = rng.randint(1, 12) if rng.random() < self.hang_up_rate else None
            stream = Stream(rng.randrange(len(PROMPTS)), rng.choice(("grpc", "http")),
                            time.monotonic(), hang_up)  # fmt: skip
            run_stream(self.system, stream)
            with self._lock:
                if not stream.output and stream.error:
                    self.refused.append(stream.error)  # nothing served: the gateway was down
                    time.sleep(0.5)
                else:
                    self.streams.append(stream)
            time.sleep(rng.uniform(0, 0.3))

    def _inject(self, role: str, kind: str) -> None:
        pid = self._pid_of(role)
        if pid is None:
            return
        fault = Fault(time.monotonic(), role, kind, pid)
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            fault.seconds = self.rng.uniform(3, 15)
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(fault.seconds, _resume, args=(pid,)).start()
        self.faults.append(fault)
        print(f"  {time.strftime('%H:%M:%S')} {kind} {role} (pid {pid})", flush=True)

    def _pid_of(self, role: str) -> int | None:
        records = read_system(self.system.run_dir)
        if role not in ("leader", "standby"):
            found = [r for r in records if r.role == role]
            return self.rng.choice(found).pid if found else None
        for record in records:
            if record.role != "scheduler":
                continue
            try:
                leads = probes.scheduler_stats(
                    record.address, 2.0, token=self.system.token
                ).is_leader
            except grpc.RpcError:
                continue
            if leads == (role == "leader"):
                return record.pid
        return None


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # `up` killed it as hung: another runs
        os.kill(pid, signal.SIGCONT)


def report(soak: Soak, refs: dict[tuple[int, str], list[Any]], seconds: float) -> dict[str, Any]:
    outcomes = {name: 0 for name in OUTCOMES}
    bad = []
    for stream in soak.streams:
        outcome = classify(stream, refs[(stream.prompt, stream.api)])
        outcomes[outcome] += 1
        if outcome in ("lost", "repeated", "changed"):
            bad.append({**asdict(stream), "outcome": outcome, "gaps": None})
    gaps = sorted(g for s in soak.streams for _, g in s.gaps[1:])  # after the first token
    ends = [f.at for f in soak.faults[1:]] + [float("inf")]
    for fault, end in zip(soak.faults, ends, strict=True):  # the pauses each fault caused
        fault.longest_pause_s = max(
            (g for s in soak.streams for at, g in s.gaps[1:] if fault.at <= at < end), default=0.0
        )
    return {
        "seconds": seconds,
        "streams": len(soak.streams),
        "outcomes": outcomes,
        "refused_before_any_token": len(soak.refused),
        "refusals": sorted(set(r[:120] for r in soak.refused))[:20],
        "longest_pause_s": gaps[-1] if gaps else 0.0,
        "p99_pause_s": gaps[int(0.99 * (len(gaps) - 1))] if gaps else 0.0,
        "faults": [asdict(f) for f in soak.faults],
        "bad_streams": bad[:20],
    }


def _plot(soak: Soak, t0: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    points = [(at - t0, gap) for s in soak.streams for at, gap in s.gaps[1:]]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=3, alpha=0.4, label="pause between two tokens")
    for fault in soak.faults:
        ax.axvline(fault.at - t0, color="red", alpha=0.3)
        ax.text(fault.at - t0, ax.get_ylim()[1] * 0.95, f"{fault.kind} {fault.role}",
                rotation=90, fontsize=7, va="top")  # fmt: skip
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("pause (s)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--fault-every-s", type=float, default=25.0)
    p.add_argument("--hang-up-rate", type=float, default=0.15, help="streams the client leaves")
    p.add_argument("--out", type=Path, default=Path("chaos.json"))
    args = p.parse_args(argv)
    system = LocalSystem("--schedulers", "2", "--workers", "2", "--token-budget", "64")
    try:
        refs = references(system)
        soak = Soak(system, args.seed, args.clients, args.hang_up_rate)
        t0 = time.monotonic()
        print(f"soak: {args.minutes:g} min, a fault every {args.fault_every_s:g} s", flush=True)
        soak.run(args.minutes * 60, args.fault_every_s)
        result = report(soak, refs, time.monotonic() - t0)
    finally:
        system.stop()
    args.out.write_text(json.dumps(result, indent=2))
    _plot(soak, t0, args.out.with_suffix(".png"))
    print(f"\n{'outcome':<12} streams")
    for name in OUTCOMES:
        print(f"{name:<12} {result['outcomes'][name]}")
    print(f"faults: {len(result['faults'])}; requests refused before any token: "
          f"{result['refused_before_any_token']}")  # fmt: skip
    print(f"longest pause {result['longest_pause_s']:.1f} s, p99 {result['p99_pause_s']:.2f} s")
    print(f"\n{'fault':<16} {'stopped s':>9} {'longest pause s':>15}")
    for f in result["faults"]:
        print(
            f"{f['kind'] + ' ' + f['role']:<16} {f['seconds']:>9.1f} {f['longest_pause_s']:>15.1f}"
        )
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
