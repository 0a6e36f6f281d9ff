"""Which thread runs the model: the same steps on the thread that loaded it, on another
thread, and loaded and run on one other thread (what the worker does), in one run.

    python -m sarathi_serve.bench.threads [--rounds 8] [--json PATH]

libgomp keeps a pool of threads per thread that starts OpenMP parallel regions. When a
second thread of the process starts them (the model loaded on the main thread, stepped
on another), libgomp manages more threads than there are cores and throttles its
spin-waits: every barrier of a step sleeps and wakes. The worker therefore loads and
steps its model on one thread (`worker/__main__.py`, ModelThread). Each case loads its
own runner in a fresh process, so no case inherits another's pools. The cells: a
56-token prompt chunk over 384 cached tokens (a shared system prompt's hit), one
decode at context 450. Median ms of `rounds` steps each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

CASES = {
    "loaded and stepped on the main thread": ("main", "main"),
    "loaded on the main thread, stepped on another": ("main", "other"),
    "loaded and stepped on one other thread (the worker)": ("other", "other"),
}


def _runner() -> Any:
    from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model
    from sarathi_serve.worker.model_runner import ModelRunner

    return ModelRunner(resolve_model(DEFAULT_MODEL), kv_cache_bytes=1 << 28)


def _steps(runner: Any, rounds: int) -> dict[str, float]:
    from sarathi_serve.common.sampling import SamplingParams
    from sarathi_serve.worker.model_runner import BatchEntry, Sequence

    greedy = SamplingParams(temperature=0.0, max_tokens=1 << 20)
    tokens = [(7 + 31 * i) % 40_000 + 100 for i in range(451)]
    chunk = Sequence("chunk", tokens[:440], 440, greedy, list(range(28)), 384)
    decode = Sequence("decode", tokens[:450], 450, greedy, list(range(28, 57)), 449)
    times: dict[str, list[float]] = {"prefill 56 at 384": [], "decode 1 at 450": []}
    for i in range(rounds + 2):  # two rounds of warm-up
        for name, entry in zip(times, (BatchEntry(chunk, 56), BatchEntry(decode, 1)), strict=True):
            start = time.perf_counter()
            runner.execute([entry])
            if i >= 2:
                times[name].append((time.perf_counter() - start) * 1e3)
        time.sleep(0.05)  # the gap between a client's requests: pools go idle
    return {name: statistics.median(samples) for name, samples in times.items()}


def _case(load_on: str, step_on: str, rounds: int, threads: int, out: Any) -> None:
    torch.set_num_threads(threads)
    box: dict[str, Any] = {}

    def on_other(fn: Any) -> None:
        worker = threading.Thread(target=lambda: box.update(result=fn()))
        worker.start()
        worker.join()

    if load_on == "main":
        box["runner"] = _runner()
    if step_on == "main":
        out.put(_steps(box["runner"], rounds))
        return
    on_other(lambda: _steps(box.get("runner") or _runner(), rounds))
    out.put(box["result"])


def run(rounds: int, threads: int) -> dict[str, dict[str, float]]:
    context = mp.get_context("spawn")
    results = {}
    for name, (load_on, step_on) in CASES.items():
        queue = context.Queue()
        process = context.Process(target=_case, args=(load_on, step_on, rounds, threads, queue))
        process.start()
        results[name] = queue.get()
        process.join()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results = run(args.rounds, args.threads)
    cells = list(next(iter(results.values())))
    print(f"{'case':52s}" + "".join(f"{c:>20s}" for c in cells) + "   (median ms)")
    for name, row in results.items():
        print(f"{name:52s}" + "".join(f"{row[c]:20.1f}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
