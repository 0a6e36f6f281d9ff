"""Applies step plans to the worker's sequences and runs them through the model."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from sarathi_serve.common.step import StepPlan, StepResult, WorkerGeometry
from sarathi_serve.worker.model_runner import BatchEntry, Sequence, StepOutput

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What runs a batch: the model (ModelRunner) or nothing at all (NullRunner)."""

    @property
    def geometry(self) -> WorkerGeometry:
        """What the scheduler is told when this worker attaches."""
        ...

    def execute(self, batch: list[BatchEntry]) -> StepOutput: ...


class WorkerEngine:
    def __init__(self, runner: Runner):
        self.runner = runner
        self.sequences: dict[str, Sequence] = {}

    def reset(self) -> None:
        """Forgets every sequence (the scheduler recomputes them after a reconnect)."""
        self.sequences.clear()

    def step(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        for request_id in plan.freed_request_ids:
            self.sequences.pop(request_id, None)
        for new in plan.new_requests:
            log.debug(
                "request %s: %d tokens to compute",
                new.request_id,
                len(new.token_ids),
                extra={"request_id": new.request_id},
            )
            self.sequences[new.request_id] = Sequence(
                request_id=new.request_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=len(new.token_ids) - new.num_output_tokens,
                sampling=new.sampling,
                num_computed_tokens=new.num_computed_tokens,  # a cached prefix
            )
        batch = []
        for chunk in plan.chunks:
            seq = self.sequences.get(chunk.request_id)
            if seq is None:
                raise KeyError(f"plan {plan.step_id} names unknown request {chunk.request_id}")
            seq.block_ids.extend(chunk.new_block_ids)
            batch.append(BatchEntry(seq, chunk.num_tokens))
        output = self.runner.execute(batch) if batch else StepOutput({}, {})
        for entry in batch:
            entry.sequence.num_computed_tokens += entry.num_tokens
        for request_id, token in output.sampled.items():
            self.sequences[request_id].token_ids.append(token)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        return StepResult(plan.step_id, output.sampled, elapsed_ms, logprobs=output.logprobs)
