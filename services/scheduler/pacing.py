"""When to plan step n+1 while the worker computes step n: as late as is safe.

The replica's loop is pipelined: the worker finds plan n+1 waiting when it ends step n,
so the control plane never stalls it. Planned the moment step n starts, though, plan
n+1 misses every request that arrives during step n: a new request waits for the rest
of step n *and* all of step n+1 before its first chunk runs, 1.5 steps on average. A
step on a CPU is 50-500 ms, so that is most of a light load's time to first token.

The pacer plans n+1 shortly before step n is due to end instead, `lead` ahead of the
end that an online step-time model (`StepTimeModel`, fitted on the worker's measured
step times) predicts. New requests then wait half a step on average. The lead adapts:
when a plan arrives late (the worker reports it waited for it, `worker_wait_ms`), the
lead doubles; while plans arrive in time it shrinks slowly, down to `MIN_LEAD_MS`. Until
the model has seen a few steps, and whenever the predicted step is shorter than the
lead, plans go out at once, as without a pacer.
"""

from __future__ import annotations

from sarathi_serve.scheduler.iteration import PlannedStep
from sarathi_serve.scheduler.policies.step_model import StepTimeModel

MIN_LEAD_MS = 4.0  # planning (~1 ms at 256 running), gRPC, the worker's decode of the plan
MAX_LEAD_MS = 1000.0
LATE_MS = 0.5  # a worker that waited longer than this for a plan got it late
LEAD_DECAY = 0.95  # per step on time


class PlanPacer:
    def __init__(self, min_lead_ms: float = MIN_LEAD_MS):
        self.min_lead_ms = min_lead_ms
        self.lead_ms = 4 * min_lead_ms  # cautious until plans are seen to be on time
        self.model = StepTimeModel()
        self.num_late = 0  # plans the worker waited for

    def due(self, started_at: float, computing: PlannedStep) -> float:
        """The time (the clock of `started_at`, seconds) to plan the step after
        `computing`, which the worker began at `started_at`; at most `started_at`: now."""
        if not self.model.ready:
            return started_at
        predicted_ms = self.model.predict_ms(computing.shape)
        return started_at + max(predicted_ms - self.lead_ms, 0.0) / 1e3

    def observe(self, step: PlannedStep, execution_ms: float, worker_wait_ms: float) -> None:
        """A step's measured time, and how long the worker waited for its plan."""
        self.model.observe(step.shape, execution_ms)
        if worker_wait_ms > LATE_MS:
            self.num_late += 1
            self.lead_ms = min(2 * self.lead_ms + worker_wait_ms, MAX_LEAD_MS)
        else:
            self.lead_ms = max(self.lead_ms * LEAD_DECAY, self.min_lead_ms)
