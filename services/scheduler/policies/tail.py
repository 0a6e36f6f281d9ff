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

The promise is about every interval clients wait, and most of them may come from steps
no budget shapes (decodes alone, far under T on a light load). So the quantile the
shaped steps are held to is what leaves the whole the `quantile` it asks for: over the
latest `SPAN` iterations, with a share `f` of the decode intervals in shaped steps and
`m` of the others already over T, shaped steps may exceed T in
`((1 - quantile) - m) / f` of theirs (never more than `1 - MIN_QUANTILE`, never less
than `1 - quantile`). On a light load (a quarter of intervals shaped) that turns a
margin at the shaped steps' P99 into one at their P96: more prefill per step, the same
P99 for clients. Past capacity nearly every step is shaped and nothing changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

QUANTILE = 0.99
WINDOW = 256  # residuals kept
MIN_RESIDUALS = 16
SPAN = 4 * WINDOW  # iterations over which the share of shaped intervals is counted
MIN_QUANTILE = 0.9  # the lowest quantile shaped steps are held to
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
    # the latest SPAN iterations that decodes waited on: (decodes, shaped, missed unshaped)
    _span: deque[tuple[int, bool, bool]] = field(default_factory=lambda: deque(maxlen=SPAN))
    _span_decodes: int = 0  # their sums
    _span_shaped: int = 0
    _span_missed: int = 0

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

    def shaped_quantile(self) -> float:
        """The quantile shaped steps are held to so that all intervals keep `quantile`."""
        if not self._span_shaped:
            return self.quantile
        allowed = (1 - self.quantile) * self._span_decodes - self._span_missed
        held = 1 - allowed / self._span_shaped
        return min(max(held, MIN_QUANTILE), self.quantile)

    def margin_ms(self) -> float | None:
        """The `shaped_quantile` of the residuals, by decode (None: too few seen yet)."""
        if len(self._residuals) < MIN_RESIDUALS:
            return None
        ranked = sorted(self._residuals)
        rank = self.shaped_quantile() * sum(weight for _, weight in ranked)
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
        missed = interval_ms > self.target_ms
        if missed:
            self.num_missed += num_decode
            self.missed_by_ms += (interval_ms - self.target_ms) * num_decode
        self._count(num_decode, num_prefill > 0, missed)
        if num_prefill > 0 and predicted_ms is not None:
            self._residuals.append((interval_ms - predicted_ms, num_decode))
            self._step_target_ms = None

    def _count(self, num_decode: int, shaped: bool, missed: bool) -> None:
        span = self._span
        if len(span) == span.maxlen:
            old_decodes, old_shaped, old_missed = span[0]
            self._span_decodes -= old_decodes
            self._span_shaped -= old_decodes if old_shaped else 0
            self._span_missed -= old_decodes if old_missed else 0
        missed_unshaped = missed and not shaped
        span.append((num_decode, shaped, missed_unshaped))
        self._span_decodes += num_decode
        self._span_shaped += num_decode if shaped else 0
        self._span_missed += num_decode if missed_unshaped else 0
