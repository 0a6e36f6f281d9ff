"""Grammar token masks of a step's constrained rows, filled while its forward pass runs.

A mask depends only on the tokens a request has so far, so it is computed on a thread
of its own from the moment the step's batch is known, and the sampler waits for it only
after the logits exist. Rows without a grammar cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarathi_serve.common.grammar import GrammarCompiler

log = logging.getLogger(__name__)


def load_grammar_compiler(
    model_path: Path | None, vocab_size: int, eos_token_id: int
) -> GrammarCompiler | None:
    """Structured output needs the model's tokenizer; a model built in memory has none."""
    if model_path is None or not (Path(model_path) / "tokenizer.json").exists():
        log.info("no tokenizer.json beside the model: structured output is off")
        return None
    from transformers import AutoTokenizer

    return GrammarCompiler(AutoTokenizer.from_pretrained(model_path), vocab_size, eos_token_id)


class TokenMasks:
    def __init__(self, compiler: GrammarCompiler):
        self.compiler = compiler
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="token-masks")

    def start(self, matchers: Sequence[Any]) -> Future[torch.Tensor] | None:
        """Starts filling one bitmask row per matcher (None: no constrained rows)."""
        if not matchers:
            return None
        return self._pool.submit(self._fill, list(matchers))

    def _fill(self, matchers: list[Any]) -> torch.Tensor:
        bitmask = self.compiler.new_bitmask(len(matchers))
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, row)
        return bitmask


def banned_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, vocab] bool, True where the grammar forbids the token, from an int32
    [R, ceil(vocab / 32)] bitmask of the allowed ones (bit j of word w: token 32 w + j)."""
    inverted = (~bitmask).numpy().view(np.uint8)  # little-endian words: bytes in token order
    bits = np.unpackbits(inverted, axis=1, bitorder="little")[:, :vocab_size]
    return torch.from_numpy(bits).view(torch.bool)
