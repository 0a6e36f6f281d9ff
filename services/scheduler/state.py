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
    # A decode may be planned while the step sampling its input token is in flight (a
    # worker that runs one step at a time feeds it); False for a pipelined worker, whose
    # micro-batches in flight compute at once: a decode then waits for its token.
    decode_ahead: bool = True

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
