"""Worker step time vs the floor (a bare Hugging Face forward over the same tokens).

    sarathi-serve bench worker [--quick] [--json PATH] [--model NAME_OR_DIR]

Two tables, measured side by side in one run:
  1. step time over a grid of (decode tokens, prefill tokens, context length):
     our one ragged forward pass (paged KV, mixed batch) vs the floor: HF's own
     forward over the same tokens, decodes as one batch with a KV cache of the
     same context plus the prefill chunk as another, no services around it.
     Where our worker packs its linears for oneDNN (CPU), a second floor runs
     HF's forward with the same packed linears: ours / that floor is the cost of
     paging and ragged batching alone.
  2. decode throughput at batch 1/8/32/64: our decode loop vs HF `generate`.
The last line printed is the worst ratio of the grid (ours / floor).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.worker.linear import pack_linears
from sarathi_serve.worker.model_runner import BatchEntry, ModelRunner, Sequence

GREEDY = SamplingParams(temperature=0.0, max_tokens=1 << 20)
FULL_GRID = [(d, p, c) for c in (128, 1024) for d in (0, 16, 64) for p in (0, 128, 512) if d or p]
QUICK_GRID = [
    (16, 0, 1024),
    (64, 0, 256),
    (0, 128, 0),
    (16, 128, 1024),
    (0, 512, 0),
    (64, 512, 256),
]


def timed_side_by_side(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time (ms) of each function, run in turns so that a noisy
    neighbour slows them alike; the best of N is the least noisy estimate on a
    shared machine (noise only ever adds time)."""
    for fn in fns:  # warm-up
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return [min(samples) for samples in times]


class Bench:
    def __init__(self, model_dir: Path, repeats: int):
        from transformers import AutoModelForCausalLM

        self.runner = ModelRunner(model_dir, kv_cache_bytes=1 << 30, block_size=16)
        self.hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
        self.hf_packed = None  # HF's forward with our linears, where ours are packed
        if self.runner.linear_backend == "onednn":
            self.hf_packed = AutoModelForCausalLM.from_pretrained(
                model_dir, attn_implementation="sdpa"
            ).eval()
            pack_linears(self.hf_packed)
        cfg = self.hf.config
        self.vocab = cfg.vocab_size
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.repeats = repeats
        self._next_block = 0

    # ---- ours --------------------------------------------------------------

    def _sequence(self, num_tokens: int, num_computed: int) -> Sequence:
        bs = self.runner.block_size
        num_blocks = -(-(num_tokens + 1) // bs)
        if self._next_block + num_blocks > self.runner.kv_cache.num_blocks:
            self._next_block = 0
        blocks = list(range(self._next_block, self._next_block + num_blocks))
        self._next_block += num_blocks
        tokens = torch.randint(0, self.vocab, (num_tokens,)).tolist()
        return Sequence("s", tokens, num_tokens, GREEDY, blocks, num_computed)

    def ours_step(self, num_decodes: int, num_prefill: int, context: int) -> Callable[[], object]:
        self._next_block = 0
        batch = [BatchEntry(self._sequence(context, context - 1), 1) for _ in range(num_decodes)]
        if num_prefill:
            batch.append(BatchEntry(self._sequence(num_prefill, 0), num_prefill))
        return lambda: self.runner.execute(batch)

    def step_ms(
        self, num_decodes: int, num_prefill: int, context: int
    ) -> tuple[float, float, float | None]:
        """(ours, floor, floor with packed linears or None) in ms; a floor is the
        sum of HF's forward passes."""
        floor_parts = self.floor_steps(self.hf, num_decodes, num_prefill, context)
        packed_parts = (
            self.floor_steps(self.hf_packed, num_decodes, num_prefill, context)
            if self.hf_packed is not None
            else []
        )
        ours, *times = timed_side_by_side(
            [self.ours_step(num_decodes, num_prefill, context), *floor_parts, *packed_parts],
            self.repeats,
        )
        floor, packed = times[: len(floor_parts)], times[len(floor_parts) :]
        return ours, sum(floor), (sum(packed) if packed else None)

    # ---- the floor: HF's own forward -----------------------------------------

    def floor_steps(
        self, model: torch.nn.Module, num_decodes: int, num_prefill: int, context: int
    ) -> list[Callable[[], object]]:
        from transformers import DynamicCache

        parts: list[Callable[[], object]] = []
        if num_decodes:
            cache = DynamicCache(config=self.hf.config)
            shape = (num_decodes, self.kv_heads, context - 1, self.head_dim)
            for layer in range(self.num_layers):
                cache.update(torch.randn(shape), torch.randn(shape), layer)
            ids = torch.randint(0, self.vocab, (num_decodes, 1))
            pos = torch.full((num_decodes, 1), context - 1)

            @torch.inference_mode()
            def decode() -> None:
                model(input_ids=ids, position_ids=pos, cache=cache, logits_to_keep=1)
                cache.crop(-1)  # drop the token just appended

            parts.append(decode)
        if num_prefill:
            prompt = torch.randint(0, self.vocab, (1, num_prefill))

            @torch.inference_mode()
            def prefill() -> None:
                model(input_ids=prompt, logits_to_keep=1, use_cache=False)

            parts.append(prefill)
        return parts

    # ---- decode throughput -----------------------------------------------------

    def ours_decode_tps(self, batch_size: int, prompt_len: int, steps: int) -> float:
        self._next_block = 0
        seqs = [self._sequence(prompt_len, 0) for _ in range(batch_size)]
        for s in seqs:  # room for the generated tokens
            s.block_ids += list(range(self._next_block, self._next_block + steps // 16 + 1))
            self._next_block += steps // 16 + 1
        start = time.perf_counter()
        for _ in range(steps):
            batch = [BatchEntry(s, len(s.token_ids) - s.num_computed_tokens) for s in seqs]
            sampled = self.runner.execute(batch).sampled
            for s in seqs:
                s.num_computed_tokens = len(s.token_ids)
                s.token_ids.append(sampled[s.request_id])
        return batch_size * steps / (time.perf_counter() - start)

    @torch.inference_mode()
    def hf_generate_tps(self, batch_size: int, prompt_len: int, steps: int) -> float:
        ids = torch.randint(0, self.vocab, (batch_size, prompt_len))
        start = time.perf_counter()
        self.hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
        )
        return batch_size * steps / (time.perf_counter() - start)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small grid (about a minute)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-threads", type=int, default=0, help="torch threads (0: default)")


def run(args: argparse.Namespace) -> int:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    bench = Bench(resolve_model(args.model), args.repeats)
    grid = QUICK_GRID if args.quick else FULL_GRID
    print(
        f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"attention {bench.runner.backend.name}, linears {bench.runner.linear_backend}"
    )
    print(
        f"{'decode':>6} {'prefill':>7} {'context':>7} {'ours ms':>9} {'floor ms':>9} {'ratio':>6}"
        f" {'packed floor ms':>15} {'ratio':>6}"
    )
    steps = []
    for num_decodes, num_prefill, context in grid:
        ours, floor, packed = bench.step_ms(num_decodes, num_prefill, context)
        steps.append(
            dict(
                decode_tokens=num_decodes,
                prefill_tokens=num_prefill,
                context=context,
                ours_ms=ours,
                floor_ms=floor,
                ratio=ours / floor,
                packed_floor_ms=packed,
                packed_ratio=None if packed is None else ours / packed,
            )
        )
        packed_cells = "" if packed is None else f" {packed:>15.1f} {ours / packed:>6.2f}"
        print(
            f"{num_decodes:>6} {num_prefill:>7} {context:>7} "
            f"{ours:>9.1f} {floor:>9.1f} {ours / floor:>6.2f}{packed_cells}",
            flush=True,
        )
    decode_steps, prompt_len = (16, 32) if args.quick else (32, 64)
    print(f"\ndecode throughput, prompt {prompt_len}, {decode_steps} steps (tokens/s)")
    print(f"{'batch':>5} {'ours':>9} {'HF generate':>12} {'ratio':>6}")
    decode = []
    for batch_size in (1, 8, 32, 64):
        ours_runs, hf_runs = [], []
        for _ in range(3):  # alternate, keep the best of each
            ours_runs.append(bench.ours_decode_tps(batch_size, prompt_len, decode_steps))
            hf_runs.append(bench.hf_generate_tps(batch_size, prompt_len, decode_steps))
        ours, hf = max(ours_runs), max(hf_runs)
        decode.append(
            dict(batch_size=batch_size, ours_tps=ours, hf_generate_tps=hf, ratio=ours / hf)
        )
        print(f"{batch_size:>5} {ours:>9.1f} {hf:>12.1f} {ours / hf:>6.2f}", flush=True)
    worst = max(steps, key=lambda s: float(s["ratio"] or 0.0))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "config": {
                        "model": args.model,
                        "quick": args.quick,
                        "repeats": args.repeats,
                        "threads": torch.get_num_threads(),
                        "attention": bench.runner.backend.name,
                        "linears": bench.runner.linear_backend,
                    },
                    "environment": {
                        "torch": torch.__version__,
                        "python": platform.python_version(),
                        "machine": platform.machine(),
                        "processor": platform.processor(),
                    },
                    "steps": steps,
                    "decode": decode,
                    "worst_step_ratio": worst["ratio"],
                },
                indent=2,
            )
        )
    print(
        f"worst step ratio (ours / floor): {worst['ratio']:.2f} "
        f"at decode {worst['decode_tokens']}, "
        f"prefill {worst['prefill_tokens']}, context {worst['context']}"
    )
    return 0
