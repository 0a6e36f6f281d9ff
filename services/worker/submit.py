"""How the Attach stream hands plans to an engine: `submit(plan, deliver)`.

An engine that computes each plan before it takes the next (one process, a
tensor-parallel group) delivers the result before `submit` returns; a pipelined group
(`micro_batches.py`) returns once its first stage has computed the plan and delivers
the result when the last stage has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sarathi_serve.common.step import StepPlan, StepResult

Deliver = Callable[[StepResult], None]


class Engine(Protocol):
    def submit(self, plan: StepPlan, deliver: Deliver) -> None: ...

    def reset(self) -> None: ...


class StepByStep:
    """Implements `submit` over a synchronous `step`."""

    def step(self, plan: StepPlan) -> StepResult:
        raise NotImplementedError

    def submit(self, plan: StepPlan, deliver: Deliver) -> None:
        deliver(self.step(plan))
