"""An online model of iteration time, for an SLO-driven token budget.

Iteration time is close to affine in the tokens of the batch (the paper's
Figure 5): `ms ~ w0 + w1 * prefill_tokens + w2 * decode_tokens`. The weights
are fitted by exponentially weighted least squares on the measured
`batch_execution_time` of recent iterations, so the model follows the
machine as it is now (a noisy neighbour, a longer context). In steady state
the batches look alike and the fit can lose its footing (a negative slope);
then the model falls back to the mean cost per token of the same recent
iterations, which over-charges the fixed overhead and so errs on the safe side.
"""

from __future__ import annotations

import numpy as np

MIN_OBSERVATIONS = 8


class StepTimeModel:
    def __init__(self, decay: float = 0.98, ridge: float = 1e-3):
        self.decay = decay
        self._ridge = np.eye(3) * ridge  # not decayed: steps all of one shape stay solvable
        self._xtx = np.zeros((3, 3))
        self._xty = np.zeros(3)
        self.num_observations = 0
        self._weights: np.ndarray | None = None
        self._sum_ms = 0.0  # decayed, for the per-token fallback
        self._sum_tokens = 0.0

    def observe(self, num_prefill: int, num_decode: int, execution_ms: float) -> None:
        x = np.array([1.0, num_prefill, num_decode])
        self._xtx = self.decay * self._xtx + np.outer(x, x)
        self._xty = self.decay * self._xty + x * execution_ms
        self._sum_ms = self.decay * self._sum_ms + execution_ms
        self._sum_tokens = self.decay * self._sum_tokens + num_prefill + num_decode
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

    def predict_ms(self, num_prefill: int, num_decode: int) -> float:
        w = self.weights
        return float(w[0] + w[1] * num_prefill + w[2] * num_decode)

    def max_prefill_tokens(self, num_decode: int, target_ms: float) -> int | None:
        """Prefill tokens that fit beside `num_decode` decodes within `target_ms`
        (None: the model does not know yet, or prefill looks free)."""
        if not self.ready:
            return None
        w0, w_prefill, w_decode = self.weights
        if w_prefill > 1e-6 and w_decode >= 0 and w0 >= 0:
            return max(int((target_ms - w0 - w_decode * num_decode) / w_prefill), 0)
        if self._sum_tokens <= 0 or self._sum_ms <= 0:
            return None
        per_token = self._sum_ms / self._sum_tokens
        return max(int(target_ms / per_token) - num_decode, 0)
