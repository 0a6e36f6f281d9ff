"""When a worker counts as hung: its step has run far longer than steps like it take.

A worker that stops (SIGSTOP, a deadlock, a wedged device) keeps its stream open, so
nothing breaks: every request on it would wait for as long as the hang lasts. Each
step gets an allowance instead, `stall_s` plus `HANG_FACTOR` times the time an online
step-time model (fitted on this worker's steps) predicts for it; a step that outlives
it makes the worker lost, as a broken stream does: its requests are recomputed on
another replica (or on this one once a worker attaches again). Until the model has
seen a few steps, a step is predicted at `FALLBACK_MS_PER_TOKEN` per token, a slow
CPU's prefill speed, and for a worker's first `WARMUP_STEPS` steps the allowance is
`WARMUP_FACTOR` times longer: they can be slow for reasons of their own (lazy device
setup, kernels compiled on first use).
"""

from __future__ import annotations

from sarathi_serve.scheduler.iteration import PlannedStep
from sarathi_serve.scheduler.policies.step_model import StepTimeModel

HANG_FACTOR = 4.0
FALLBACK_MS_PER_TOKEN = 10.0
WARMUP_FACTOR = 6.0
WARMUP_STEPS = 2


class StepDeadline:
    def __init__(self, stall_s: float, model: StepTimeModel | None = None):
        """`model`: a step-time model another fits on the same steps (the pacer's), read
        here; None: this deadline fits its own."""
        if stall_s <= 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.stall_s = stall_s
        self._owns_model = model is None
        self.model = StepTimeModel() if model is None else model

    def allowance_s(self, step: PlannedStep) -> float:
        """How long `step` may run on the worker before the worker counts as hung."""
        prefill, decode = step.num_prefill_tokens, step.num_decode_tokens
        if self.model.ready:
            predicted_ms = max(self.model.predict_ms(step.shape), 0.0)
            return self.stall_s + HANG_FACTOR * predicted_ms / 1e3
        allowance_s = self.stall_s + HANG_FACTOR * FALLBACK_MS_PER_TOKEN * (prefill + decode) / 1e3
        warming_up = self.model.num_observations < WARMUP_STEPS
        return WARMUP_FACTOR * allowance_s if warming_up else allowance_s

    def observe(self, step: PlannedStep, execution_ms: float) -> None:
        if self._owns_model:  # else its owner observes the step
            self.model.observe(step.shape, execution_ms)
