"""A model runner that computes nothing: it "samples" a fixed token at once.

It lets the control plane (scheduler, gRPC, Redis) be measured and tested on
its own: with it, every second of an iteration is overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sarathi_serve.worker.model_runner import BatchEntry, StepOutput

NULL_TOKEN = 7  # never the EOS of the null model


@dataclass(frozen=True, slots=True)
class _Geometry:
    num_blocks: int


class NullRunner:
    block_size = 16
    max_model_len = 1 << 20
    eos_token_id = 0

    def __init__(self, num_blocks: int = 1 << 20, step_ms: float = 0.0):
        self.kv_cache = _Geometry(num_blocks)
        self.step_s = step_ms / 1e3  # > 0: a step takes this long, like an accelerator's

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        if self.step_s:
            time.sleep(self.step_s)
        sampled = {
            e.sequence.request_id: NULL_TOKEN
            for e in batch
            if e.sequence.num_computed_tokens + e.num_tokens == len(e.sequence.token_ids)
        }
        return StepOutput(sampled, {})
