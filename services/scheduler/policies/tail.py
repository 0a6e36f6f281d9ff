"""Keeping the tail of time between tokens under a target, as clients see it.

An SLO-driven budget fits each iteration's prefill to a step-time model (`step_model.py`).
That model predicts a mean, and only of the worker's step: a client's time between two
tokens is the interval between two results, which adds the control plane, the transfer
and the step's own noise. Fitting the predicted step to the target T itself misses T
about half the time at the tail.

`TailGuard` keeps the residuals of recent iterations that carried a prefill chunk
beside decodes (the iterations a budget shapes): each one's interval minus the step
time the model predicted for it, weighted by its decodes (each decode is one client's
wait). The step time the budget is fitted to is T minus the `quantile` of those
residuals, so the intervals of shaped iterations exceed T in about `1 - quantile` of
decode tokens, whatever the model's error and the time outside the step; the window
follows the load and the mix as they change. Until it has seen `MIN_RESIDUALS`, the
step target is `START` x T. Every interval a decoding client waited is counted, with
how far past T it went (the `sarathi_scheduler_tbt_target_*` series).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

QUANTILE = 0.99
WINDOW = 256  # residuals kept
MIN_RESIDUALS = 16
FLOOR = 0.25  # the step target never drops below this fraction of the target
START = 0.8


@dataclass(slots=True)
class TailGuard:
    target_ms: float
    quantile: float = QUANTILE
    num_intervals: int = 0  # intervals decoding clients waited (one per decode)
    num_missed: int = 0  # of them, longer than the target
    missed_by_ms: float = 0.0  # their total excess over the target
    _residuals: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _step_target_ms: float | None = None  # cached until the next residual

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")

    @property
    def step_target_ms(self) -> float:
        """The predicted step time an iteration's prefill is fitted to."""
        if self._step_target_ms is None:
            margin = self.margin_ms()
            target = START * self.target_ms if margin is None else self.target_ms - margin
            self._step_target_ms = min(max(target, FLOOR * self.target_ms), self.target_ms)
        return self._step_target_ms

    def margin_ms(self) -> float | None:
        """The `quantile` of the residuals, by decode (None: too few seen yet)."""
        if len(self._residuals) < MIN_RESIDUALS:
            return None
        ranked = sorted(self._residuals)
        rank = self.quantile * sum(weight for _, weight in ranked)
        seen = 0
        for residual, weight in ranked:
            seen += weight
            if seen >= rank:
                return residual
        return ranked[-1][0]

    def observe(
        self, interval_ms: float, predicted_ms: float | None, num_prefill: int, num_decode: int
    ) -> None:
        """An iteration's interval since the result before it, the step time the model
        predicted for its shape (None: not fitted yet) and its shape."""
        if num_decode <= 0:
            return  # nobody waited on this interval for a token
        self.num_intervals += num_decode
        if interval_ms > self.target_ms:
            self.num_missed += num_decode
            self.missed_by_ms += (interval_ms - self.target_ms) * num_decode
        if num_prefill > 0 and predicted_ms is not None:
            self._residuals.append((interval_ms - predicted_ms, num_decode))
            self._step_target_ms = None
