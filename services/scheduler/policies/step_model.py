"""An online model of iteration time, for an SLO-driven token budget.

Iteration time is close to affine in the tokens of the batch (the paper's Figure 5),
plus attention, which grows with the context each token attends to: a 256-token chunk
late in a 1200-token prompt costs more than the first one, and a decode at context 1000
reads ten times the KV of one at 100. So the model is

    ms ~ w0 + w1 * prefill_tokens + w2 * decode_tokens
            + w3 * prefill_context / 1024 + w4 * decode_context / 1024

with `prefill_context` the sum over chunks of tokens x their mean context (the
query-key pairs a chunk's attention computes) and `decode_context` the sum of the
decodes' contexts (the KV they read). The weights are fitted by exponentially weighted
least squares on the measured `batch_execution_time` of recent iterations, so the model
follows the machine as it is now (a noisy neighbour, longer contexts). In steady state
the batches look alike and the fit can lose its footing (a negative slope); then the
model falls back to the mean cost per token of the same recent iterations, which
over-charges the fixed overhead and so errs on the safe side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sarathi_serve.scheduler.request import Request

MIN_OBSERVATIONS = 8
CONTEXT_UNIT = 1024.0  # contexts are fitted per this many tokens (weights of one scale)
NUM_FEATURES = 5


@dataclass(frozen=True, slots=True)
class StepShape:
    """What an iteration computes, as far as its time goes."""

    num_prefill: int = 0  # prefill chunk tokens
    num_decode: int = 0  # decodes (one token each)
    prefill_context: float = 0.0  # sum over chunks: tokens x (start + tokens / 2)
    decode_context: float = 0.0  # sum over decodes: context length
    # decodes of requests a TBT target is kept for (None: every decode; sarathi.py)
    num_slo_decodes: int | None = None

    @staticmethod
    def chunk_context(start: int, num_tokens: int) -> float:
        """A chunk's query-key pairs, about: its tokens x their mean context."""
        return num_tokens * (start + num_tokens / 2)

    @classmethod
    def of(
        cls, chunks: Iterable[tuple[Request, int]], num_slo_decodes: int | None = None
    ) -> StepShape:
        """The shape of an iteration's (request, tokens) chunks as scheduled, before
        they are applied: each request's computed tokens are where its chunk starts."""
        num_prefill = num_decode = 0
        prefill_context = decode_context = 0.0
        for request, num_tokens in chunks:  # hot: every running request
            start = request.num_computed_tokens
            if start < request.num_prefill_tokens:
                num_prefill += num_tokens
                prefill_context += cls.chunk_context(start, num_tokens)
            else:
                num_decode += num_tokens
                decode_context += start
        return cls(num_prefill, num_decode, prefill_context, decode_context, num_slo_decodes)

    def __add__(self, other: StepShape) -> StepShape:
        """Both iterations' work as one (`self`'s `num_slo_decodes` is kept)."""
        return StepShape(
            self.num_prefill + other.num_prefill,
            self.num_decode + other.num_decode,
            self.prefill_context + other.prefill_context,
            self.decode_context + other.decode_context,
            self.num_slo_decodes,
        )

    def features(self) -> np.ndarray:
        return np.array(
            [
                1.0,
                self.num_prefill,
                self.num_decode,
                self.prefill_context / CONTEXT_UNIT,
                self.decode_context / CONTEXT_UNIT,
            ]
        )


class StepTimeModel:
    def __init__(self, decay: float = 0.98, ridge: float = 1e-3):
        self.decay = decay
        self._ridge = np.eye(NUM_FEATURES) * ridge  # not decayed: one shape stays solvable
        self._xtx = np.zeros((NUM_FEATURES, NUM_FEATURES))
        self._xty = np.zeros(NUM_FEATURES)
        self.num_observations = 0
        self._weights: np.ndarray | None = None
        self._sum_ms = 0.0  # decayed, for the per-token fallback
        self._sum_tokens = 0.0

    def observe(self, shape: StepShape, execution_ms: float) -> None:
        x = shape.features()
        self._xtx = self.decay * self._xtx + np.outer(x, x)
        self._xty = self.decay * self._xty + x * execution_ms
        self._sum_ms = self.decay * self._sum_ms + execution_ms
        self._sum_tokens = self.decay * self._sum_tokens + shape.num_prefill + shape.num_decode
        self.num_observations += 1
        self._weights = None

    @property
    def ready(self) -> bool:
        return self.num_observations >= MIN_OBSERVATIONS

    @property
    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = np.linalg.solve(self._xtx + self._ridge, self._xty)
        return self._weights

    def predict_ms(self, shape: StepShape) -> float:
        return float(self.weights @ shape.features())

    def max_prefill_tokens(
        self, base: StepShape, target_ms: float, prefill_start: int = 0
    ) -> int | None:
        """Prefill tokens that fit within `target_ms` beside `base` (the decodes and any
        chunks already in the iteration), as one more chunk starting at context
        `prefill_start` (None: the model does not know yet, or prefill looks free). A
        context weight fitted below 0 (noise) counts as 0. Until the fit is ready, the mean
        cost per token of the iterations seen so far decides (the first steps too keep a
        target: a static budget ran them ~10 % past it)."""
        if self.num_observations == 0:
            return None
        w0, w_prefill, w_decode, w_pctx, w_dctx = self.weights
        if self.ready and w_prefill > 1e-6 and w_decode >= 0 and w0 >= 0:
            w_pctx, w_dctx = max(w_pctx, 0.0), max(w_dctx, 0.0)
            fixed = (
                w0
                + w_prefill * base.num_prefill
                + w_decode * base.num_decode
                + w_pctx * base.prefill_context / CONTEXT_UNIT
                + w_dctx * base.decode_context / CONTEXT_UNIT
            )
            # cost(n) = fixed + n (w_prefill + w_pctx s / U) + n^2 w_pctx / (2 U) <= target
            a = w_pctx / (2 * CONTEXT_UNIT)
            b = w_prefill + w_pctx * prefill_start / CONTEXT_UNIT
            room = target_ms - fixed
            if room <= 0:
                return 0
            n = room / b if a < 1e-12 else (-b + math.sqrt(b * b + 4 * a * room)) / (2 * a)
            return max(int(n), 0)
        if self._sum_tokens <= 0 or self._sum_ms <= 0:
            return None
        per_token = self._sum_ms / self._sum_tokens
        return max(int(target_ms / per_token) - base.num_decode - base.num_prefill, 0)
