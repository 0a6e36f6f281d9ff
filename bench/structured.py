"""What structured output costs a worker step: the same decode batch with and without a
JSON schema on every request, side by side in one run.

    python -m sarathi_serve.bench.structured [--running 32] [--steps 2] [--rounds 20] \
        [--out docs/results/structured-mask]

In process (a ModelRunner on the default model, no services): two sets of `running`
greedy requests with the same prompt lengths are prefilled, then decode in turns, a
round of `steps` steps each. In the constrained set every request carries a matcher of
the same schema (xgrammar), filled on the mask thread while the forward pass runs and
applied in the sampler, exactly as the worker does; a matcher that completes starts
over. The figure is the ratio of median step times, constrained / unconstrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sarathi_serve.common.models import resolve_model
from sarathi_serve.common.sampling import Grammar, SamplingParams
from sarathi_serve.worker.model_runner import BatchEntry, ModelRunner, Sequence

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "email", "tags", "address"],
}
GRAMMAR = Grammar("json_schema", json.dumps(SCHEMA))
PROMPT_TOKENS = 48


class _Set:
    """`running` requests decoding on one runner, constrained or not."""

    def __init__(self, runner: ModelRunner, running: int, constrained: bool, first_block: int):
        self.runner = runner
        self.grammar = GRAMMAR if constrained else None
        sampling = SamplingParams(temperature=0.0, max_tokens=1 << 20, grammar=self.grammar)
        blocks_each = 16  # 256 tokens of KV each
        self.seqs = []
        for i in range(running):
            prompt = [(1000 + 37 * i + 11 * j) % 40_000 + 100 for j in range(PROMPT_TOKENS)]
            start = first_block + i * blocks_each
            seq = Sequence(
                f"r{i}", prompt, PROMPT_TOKENS, sampling, list(range(start, start + blocks_each))
            )
            seq.matcher = self._matcher()
            self.seqs.append(seq)
        runner.execute([BatchEntry(s, PROMPT_TOKENS) for s in self.seqs])  # the prompts
        for s in self.seqs:
            s.num_computed_tokens = PROMPT_TOKENS
            s.token_ids.append(7)
            if s.matcher is not None:
                s.matcher = self._matcher()

    def _matcher(self) -> Any:
        grammars = self.runner.grammars
        return grammars.matcher(self.grammar) if self.grammar and grammars else None

    def step(self) -> float:
        start = time.perf_counter()
        out = self.runner.execute([BatchEntry(s, 1) for s in self.seqs])
        elapsed = time.perf_counter() - start
        for s in self.seqs:
            s.num_computed_tokens += 1
            token = out.sampled[s.request_id]
            s.token_ids.append(token)
            if s.matcher is not None and (
                token == self.runner.eos_token_id or not s.matcher.accept_token(token)
            ):
                s.matcher = self._matcher()  # a complete (or stuck) output starts over
        return elapsed * 1e3


def measure(running: int, steps: int, rounds: int) -> dict[str, Any]:
    runner = ModelRunner(resolve_model("SmolLM2-135M-Instruct"), kv_cache_bytes=1 << 30)
    plain = _Set(runner, running, constrained=False, first_block=0)
    constrained = _Set(runner, running, constrained=True, first_block=running * 16)
    times: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    plain.step()  # warm-up
    constrained.step()
    for _ in range(rounds):  # short rounds in turns: a noisy neighbour hits both alike
        for name, batch in (("unconstrained", plain), ("constrained", constrained)):
            times[name] += [batch.step() for _ in range(steps)]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "running": running,
        "constrained_requests": sum(s.matcher is not None for s in constrained.seqs),
        "threads": torch.get_num_threads(),
        "steps_ms": times,
        "median_ms": medians,
        "ratio": medians["constrained"] / medians["unconstrained"],
    }


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, ts in result["steps_ms"].items():
        ax.plot(sorted(ts), [i / len(ts) for i in range(1, len(ts) + 1)], label=name)
    ax.set_xlabel("decode step (ms)")
    ax.set_ylabel("CDF")
    ax.set_title(f"{result['running']} decoding, JSON schema vs none: x{result['ratio']:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--running", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round and set")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, help="OUT.json and OUT.png")
    args = p.parse_args(argv)
    result = measure(args.running, args.steps, args.rounds)
    print("| requests | threads | unconstrained ms | constrained ms | ratio |")
    print("|---:|---:|---:|---:|---:|")
    m = result["median_ms"]
    print(f"| {args.running} | {result['threads']} | {m['unconstrained']:.1f} | "
          f"{m['constrained']:.1f} | {result['ratio']:.3f} |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        _plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
