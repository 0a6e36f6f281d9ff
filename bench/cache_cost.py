"""The scheduler's CPU per iteration at 256 decoding requests, with the prefix cache
empty and full: does planning cost grow with the number of cached blocks?

    python -m sarathi_serve.bench.cache_cost [--num-blocks 120000] [--iterations 300]

In process (a `SchedulerCore`, no gRPC, no Redis): first distinct 320-token prompts run
to completion until the pool is nearly all cached blocks, then 256 requests decode and
each iteration's plan + apply is timed in process CPU. With a full cache every new
block a decode needs evicts a cached one (the LRU path). Each configuration twice, in
turns.
"""

from __future__ import annotations

import argparse
import random
import time

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import Request

FILL_PROMPT_TOKENS = 320
RUNNING_PROMPT_TOKENS = 64


class _Run:
    def __init__(self, num_blocks: int, seed: int = 1):
        policy = make_policy("sarathi", token_budget=8192, max_num_seqs=512)
        self.core = SchedulerCore(policy, watermark=0.0)
        self.core.attach_worker(WorkerGeometry(num_blocks, 16, 1 << 20, 0))
        self.random = random.Random(seed)
        self.step_id = 0
        self.num_added = 0

    def add(self, num_tokens: int, max_tokens: int) -> None:
        prompt = [self.random.randrange(3, 40_000) for _ in range(num_tokens)]
        sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.core.add(Request(f"r{self.num_added}", prompt, sampling, "s", 0.0))
        self.num_added += 1

    def iterate(self) -> None:
        planned = self.core.plan(self.step_id, 0.0)
        sampled = {c.request_id: 7 for c in planned.plan.chunks}
        self.core.apply(StepResult(self.step_id, sampled), 0.0)
        self.step_id += 1

    @property
    def num_cached_blocks(self) -> int:
        assert self.core.blocks is not None
        return self.core.blocks.num_cached_blocks


def measure(num_blocks: int, fill: bool, running: int, iterations: int) -> tuple[float, int]:
    """(ms of CPU per iteration, cached blocks at the end)."""
    run = _Run(num_blocks)
    while fill and run.num_cached_blocks < 0.9 * num_blocks:
        for _ in range(max(num_blocks // 200, 1)):
            run.add(FILL_PROMPT_TOKENS, max_tokens=1)
        while run.core.has_work:
            run.iterate()
    for _ in range(running):
        run.add(RUNNING_PROMPT_TOKENS, max_tokens=iterations + 50)
    for _ in range(20):  # prompts computed, every request decoding
        run.iterate()
    start = time.process_time()
    for _ in range(iterations):
        run.iterate()
    return (time.process_time() - start) / iterations * 1e3, run.num_cached_blocks


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-blocks", type=int, default=120_000)
    p.add_argument("--running", type=int, default=256)
    p.add_argument("--iterations", type=int, default=300)
    args = p.parse_args(argv)
    rows = []
    for _ in range(2):
        for fill in (False, True):
            ms, cached = measure(args.num_blocks, fill, args.running, args.iterations)
            rows.append({"cache": "full" if fill else "empty", "cached_blocks": cached, "ms": ms})
            print(f"cache {rows[-1]['cache']:5}: {cached:6d} cached blocks of {args.num_blocks}, "
                  f"{ms:.3f} ms CPU per iteration (plan + apply), {args.running} decoding",
                  flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
