"""A model runner that computes nothing: it "samples" a token at once.

It lets the control plane (scheduler, gRPC, Redis) be measured and tested on
its own: with it, every second of an iteration is overhead.

The token a request gets at output index i is `null_token(request_id, i)`: a
stable hash of both (the same in every process and on every worker, so a
request moved to another replica goes on with the same sequence), so a test
can tell a lost, repeated or reordered token from a right one.
"""

from __future__ import annotations

import time
import zlib

from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.worker.model_runner import BatchEntry, StepOutput

# Null tokens lie in [NULL_TOKEN_MIN, NULL_TOKEN_MAX): above the null model's EOS
# (0) and the default tokenizer's special tokens (0-16), inside its vocabulary
# (49152), so the gateway detokenizes them as ordinary text.
NULL_TOKEN_MIN = 17
NULL_TOKEN_MAX = 32768


def null_token(request_id: str, index: int) -> int:
    """The token the null worker samples for output index `index` of a request."""
    digest = zlib.crc32(f"{request_id}\0{index}".encode())
    return NULL_TOKEN_MIN + digest % (NULL_TOKEN_MAX - NULL_TOKEN_MIN)


class NullRunner:
    block_size = 16
    max_model_len = 1 << 20
    eos_token_id = 0  # never a null token: a null request ends by length (or a stop token)
    grammars = None  # no tokenizer: constrained requests are refused

    def __init__(self, num_blocks: int = 1 << 20, step_ms: float = 0.0):
        self.num_kv_blocks = num_blocks
        self.step_s = step_ms / 1e3  # > 0: a step takes this long, like an accelerator's

    @property
    def geometry(self) -> WorkerGeometry:
        return WorkerGeometry(
            self.num_kv_blocks, self.block_size, self.max_model_len, self.eos_token_id
        )

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        if self.step_s:
            time.sleep(self.step_s)
        sampled = {}
        for e in batch:
            seq = e.sequence
            num_tokens = len(seq.token_ids)
            if seq.num_computed_tokens + e.num_tokens == num_tokens:  # its last chunk: it samples
                sampled[seq.request_id] = null_token(
                    seq.request_id, num_tokens - seq.num_prompt_tokens
                )
        return StepOutput(sampled, {})
