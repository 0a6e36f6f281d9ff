"""What every scheduling policy takes and returns, and the steps policies share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies.step_model import StepShape
from sarathi_serve.scheduler.request import Request, RequestStatus
from sarathi_serve.scheduler.state import SchedulerState

# The defaults of every policy and of the scheduler's flags (one place for each).
DEFAULT_TOKEN_BUDGET = 512  # tokens per iteration: the paper's chunk size on these models
DEFAULT_MAX_NUM_SEQS = 128  # running requests per replica


@dataclass(slots=True)
class Schedule:
    """One iteration's decisions, in batch order."""

    chunks: list[tuple[Request, int]] = field(default_factory=list)  # (request, num tokens)
    preempted: list[Request] = field(default_factory=list)
    # decodes of requests a TBT target is kept for (None: every decode; see sarathi.py)
    num_slo_decodes: int | None = None

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


class Policy(Protocol):
    """Decides one iteration from plain state: no gRPC, no torch, no clock.

    It moves requests between `state.waiting` and `state.running` and allocates
    their KV blocks through `blocks`; the caller turns the result into a plan.
    """

    name: str
    token_budget: int
    max_num_seqs: int

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule: ...

    @property
    def last_budget(self) -> int:
        """The token budget the latest `schedule` used (adaptive policies vary it)."""
        ...

    def observe(
        self, shape: StepShape, execution_ms: float, interval_ms: float | None = None
    ) -> None:
        """Feedback: how long the worker took for an iteration of this shape, and the
        interval since the result before it (what decoding clients waited; None when
        the worker had been idle)."""
        ...


class StaticBudget:
    """For policies whose budget never changes: the feedback is ignored."""

    __slots__ = ()
    token_budget: int

    @property
    def last_budget(self) -> int:
        return self.token_budget

    def observe(
        self, shape: StepShape, execution_ms: float, interval_ms: float | None = None
    ) -> None:
        return None


def validate_limits(token_budget: int, max_num_seqs: int) -> None:
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")


def schedule_decodes(
    state: SchedulerState, blocks: BlockManager, out: Schedule, budget: int
) -> int:
    """One token for each running request past its prefill, oldest first,
    preempting the newest when KV blocks run out; returns the budget left."""
    block_size = blocks.block_size
    for request in [r for r in state.running if not r.is_prefilling]:
        if budget == 0:
            break
        if request.status is not RequestStatus.RUNNING:  # preempted above: O(1) check
            continue
        if request.has_last_token_in_flight:
            continue  # it reaches max_tokens with a step in flight: it ends there
        if state.waits_for_token(request):
            continue  # a micro-batch in flight samples its input token (pipeline stages)
        # The hot loop (every running request, every iteration): a decode needs a new
        # block only when its last block is full, once in block_size steps.
        if request.num_computed_tokens >= len(request.block_ids) * block_size:
            if not make_room(request, 1, state, blocks, out):
                continue
            blocks.allocate(request, 1)
        out.chunks.append((request, 1))
        budget -= 1
    return budget


def next_waiting(state: SchedulerState, blocks: BlockManager) -> Request:
    """The head of the waiting queue, started on its longest cached prefix (a policy
    that does not admit it after all calls `blocks.forget_reuse(request)`)."""
    request = state.waiting[0]
    blocks.reuse_cached_prefix(request)
    return request


def make_room(
    request: Request, num_tokens: int, state: SchedulerState, blocks: BlockManager, out: Schedule
) -> bool:
    """Preempts running requests, the lowest priority first and the newest among
    them, until `request` fits. Returns False when `request` itself had to go."""
    while not blocks.can_allocate(request, num_tokens):
        victim = preemption_victim(state)
        _preempt(victim, state, blocks, out)
        if victim is request:
            return False
    return True


def make_room_to_admit(
    request: Request,
    num_tokens: int,
    state: SchedulerState,
    blocks: BlockManager,
    out: Schedule,
    max_running: int,
) -> bool:
    """Whether waiting `request` can start now with `num_tokens`: preempts running
    requests of a strictly lower priority (a higher value) while it lacks a place
    among `max_running` or KV blocks. Equal priorities never preempt each other."""
    while len(state.running) >= max_running or not blocks.can_allocate(
        request, num_tokens, admit=True
    ):
        if not state.running:
            return False
        victim = preemption_victim(state)
        if victim.priority <= request.priority:
            return False
        _preempt(victim, state, blocks, out)
    return True


def preemption_victim(state: SchedulerState) -> Request:
    """The running request to preempt first: the lowest priority, the newest of them."""
    running = state.running
    victim = running[-1]
    for request in reversed(running):
        if request.priority > victim.priority:
            victim = request
    return victim


def _preempt(victim: Request, state: SchedulerState, blocks: BlockManager, out: Schedule) -> None:
    state.preempt(victim, blocks)
    out.preempted.append(victim)
    if any(request is victim for request, _ in out.chunks):  # scheduled before it lost out
        out.chunks[:] = [(r, n) for r, n in out.chunks if r is not victim]


def schedule_whole_prefills(
    state: SchedulerState,
    blocks: BlockManager,
    out: Schedule,
    budget: int,
    max_running: int,
    *,
    first_may_exceed: bool,
) -> int:
    """Whole remaining prompts: running requests' unfinished prefills, then new
    requests FCFS, while they fit in `budget`. With `first_may_exceed`, the first
    prompt of the iteration is taken even when longer than the budget, so long
    prompts are never starved by a budget smaller than them."""
    candidates = [r for r in state.running if r.is_prefilling]
    for request in candidates:
        if not _fits(request, budget, out, first_may_exceed) or not blocks.can_allocate(
            request, request.num_pending_tokens
        ):
            return budget
        budget = _take_whole(request, blocks, out, budget)
    while state.waiting and max_running > 0:
        request = next_waiting(state, blocks)
        if not _fits(request, budget, out, first_may_exceed) or not make_room_to_admit(
            request, request.num_pending_tokens, state, blocks, out, max_running
        ):
            blocks.forget_reuse(request)
            break
        state.admit(request)
        budget = _take_whole(request, blocks, out, budget)
    return budget


def _fits(request: Request, budget: int, out: Schedule, first_may_exceed: bool) -> bool:
    if request.num_pending_tokens <= budget:
        return True
    no_prefill_yet = all(not r.is_prefilling for r, _ in out.chunks)
    return first_may_exceed and no_prefill_yet


def _take_whole(request: Request, blocks: BlockManager, out: Schedule, budget: int) -> int:
    num_tokens = request.num_pending_tokens
    blocks.allocate(request, num_tokens)
    out.chunks.append((request, num_tokens))
    return max(0, budget - num_tokens)
