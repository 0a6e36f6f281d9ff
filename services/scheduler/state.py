"""The queues a policy schedules from."""

from __future__ import annotations

from dataclasses import dataclass, field

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.request import Request, RequestStatus
from sarathi_serve.scheduler.waiting import WaitingQueue


@dataclass(slots=True)
class SchedulerState:
    waiting: WaitingQueue = field(default_factory=WaitingQueue)  # priority, fair share, arrival
    running: list[Request] = field(default_factory=list)  # admission order
    num_preemptions: int = 0
    # A decode may be planned while the step that samples its input token is in flight:
    # the worker feeds it that token. With P pipeline stages (micro-batches computing at
    # once) only in a step P after that one, whose first stage starts once the token is
    # sampled; in the steps between, the request waits.
    pipeline_depth: int = 1
    planning_step: int = 0  # the id of the step being planned

    def admit(self, request: Request) -> None:
        """Moves the head of `waiting` to `running`."""
        assert self.waiting[0] is request
        self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        request.num_prefill_tokens = request.num_tokens
        self.running.append(request)

    def preempt(self, request: Request, blocks: BlockManager) -> None:
        """Frees a running request's blocks; it is recomputed when admitted again."""
        self.running.remove(request)
        blocks.free(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def remove(self, request: Request) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)

    def waits_for_token(self, request: Request) -> bool:
        """A decoding request whose input token a step too recent is still sampling."""
        return (
            request.num_computed_tokens >= request.num_tokens  # its tokens are all in flight
            and request.last_planned_step > self.planning_step - self.pipeline_depth
        )
