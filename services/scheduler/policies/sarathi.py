"""Sarathi-Serve: chunked prefill with stall-free batching (OSDI'24).

Every iteration carries, within `token_budget` tokens:
  1. one token for each running request that is decoding (decodes never stall),
  2. the next chunk of running requests whose prefill is unfinished,
  3. the first chunk of new requests, first come first served,
with 2 and 3 ordered by priority and fair share when there are several of either
(waiting.py): a light tenant's new prompt goes before a heavy tenant's running ones.
Running requests are capped at min(max_num_seqs, token_budget) so that every
decode fits in every iteration.

With `target_tbt_ms` (beyond the paper, which leaves the chunk size to the
operator) the budget of each iteration is chosen from a step-time model fitted
online to measured iteration times: the decodes, plus as many prefill tokens
as the model says fit in the step target (at least `MIN_PREFILL_TOKENS`, so
prefills always progress; at most `MAX_BUDGET_FACTOR` x `token_budget`).
`token_budget` is used until the model has seen enough iterations. The step
target is the TBT target less the tail margin `TailGuard` measures (tail.py).
With `batch_priority` > 0, requests at that priority or a higher value are the batch
class: the target is kept for the others (interactive) only. An iteration that carries
no interactive decode runs at the static `token_budget` (batch fills what the
interactive class leaves), and the tail guard counts interactive decodes alone.
(Capping the running requests at the decodes that fit in the step target was
tried and measured: 20 % less throughput past capacity for no better tail.)

With `low_chunk_size` > 0, the paper's dynamic chunk schedule (as in its code):
a prompt's chunks shrink as its prefill progresses, because the attention of a
chunk grows with the context before it. The batch's token cap for a request
whose prefill has computed `c` tokens is stage `c // (max_tokens / stages)` of
`stages` sizes going linearly from `token_budget` down to `low_chunk_size`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies.base import (
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_TOKEN_BUDGET,
    Schedule,
    make_room_to_admit,
    next_waiting,
    schedule_decodes,
    validate_limits,
)
from sarathi_serve.scheduler.policies.step_model import StepShape, StepTimeModel
from sarathi_serve.scheduler.policies.tail import TailGuard
from sarathi_serve.scheduler.request import Request, RequestStatus
from sarathi_serve.scheduler.state import SchedulerState

MIN_PREFILL_TOKENS = 16
MAX_BUDGET_FACTOR = 4
AUTO_SAMPLES = 16  # decode-only steps of at most AUTO_MAX_DECODES decodes
AUTO_MAX_DECODES = 4


@dataclass(slots=True)
class SarathiPolicy:
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    target_tbt_ms: float = 0.0  # > 0: an SLO-driven budget per iteration
    # > 0 with no target_tbt_ms: the target is this x the measured decode step (as the
    # paper set its SLOs), once AUTO_SAMPLES small decode-only steps have been seen
    target_tbt_factor: float = 0.0
    # > 0: priorities >= this are batch: the TBT target is kept for lower values only
    batch_priority: int = 0
    low_chunk_size: int = 0  # > 0: the dynamic chunk schedule, from token_budget down to this
    chunk_schedule_max_tokens: int = 8192
    chunk_schedule_stages: int = 16
    name: str = "sarathi"
    step_model: StepTimeModel = field(default_factory=StepTimeModel)
    guard: TailGuard | None = None  # with target_tbt_ms: steers the tail (tail.py)
    last_budget: int = 0  # the budget of the latest schedule
    _decode_steps: list[float] = field(default_factory=list)  # for target_tbt_factor

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)
        if self.target_tbt_ms < 0 or self.target_tbt_factor < 0 or self.batch_priority < 0:
            raise ValueError("target_tbt_ms, target_tbt_factor and batch_priority must be >= 0")
        if self.target_tbt_ms > 0 and self.guard is None:
            self.guard = TailGuard(self.target_tbt_ms)
        if not 0 <= self.low_chunk_size <= self.token_budget:
            raise ValueError(
                f"low_chunk_size must be in [0, token_budget={self.token_budget}], "
                f"got {self.low_chunk_size}"
            )
        if self.chunk_schedule_stages < 1 or self.chunk_schedule_max_tokens < 1:
            raise ValueError("chunk_schedule_stages and chunk_schedule_max_tokens must be >= 1")

    def options(self) -> dict[str, float]:
        """What make_policy needs to build the same policy with another budget."""
        return {
            "target_tbt_ms": self.target_tbt_ms,
            "target_tbt_factor": self.target_tbt_factor,
            "batch_priority": self.batch_priority,
            "low_chunk_size": self.low_chunk_size,
            "chunk_schedule_max_tokens": self.chunk_schedule_max_tokens,
            "chunk_schedule_stages": self.chunk_schedule_stages,
        }

    def chunk_cap(self, num_computed: int) -> int:
        """The batch's token cap for a prompt that has `num_computed` tokens computed."""
        if not self.low_chunk_size:
            return self.token_budget
        stages = self.chunk_schedule_stages
        per_stage = -(-self.chunk_schedule_max_tokens // stages)
        stage = min(num_computed // per_stage, stages - 1)
        step = (self.token_budget - self.low_chunk_size) / max(stages - 1, 1)
        return round(self.token_budget - stage * step)

    @property
    def max_running(self) -> int:
        return min(self.max_num_seqs, self.token_budget)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        left = schedule_decodes(state, blocks, out, self.token_budget)
        if self.batch_priority > 0:
            out.num_slo_decodes = sum(1 for r, _ in out.chunks if r.priority < self.batch_priority)
        shape = None  # with a target to keep: what the iteration holds so far
        if self.target_tbt_ms > 0 and out.num_slo_decodes != 0:
            left, shape = self._fitted_prefill(state, out)
        self.last_budget = len(out.chunks) + left
        self._schedule_prefills(state, blocks, out, left, shape)
        return out

    def observe(
        self, shape: StepShape, execution_ms: float, interval_ms: float | None = None
    ) -> None:
        """Feeds the step-time model with a measured iteration, and the tail guard with
        its interval since the result before it (None: the worker had been idle) for
        the decodes the target is kept for."""
        if self.guard is None:
            self._learn_target(shape, execution_ms)
            return
        if interval_ms is not None:
            model = self.step_model
            predicted = model.predict_ms(shape) if model.ready else None
            waited = shape.num_decode if shape.num_slo_decodes is None else shape.num_slo_decodes
            self.guard.observe(interval_ms, predicted, shape.num_prefill, waited)
        self.step_model.observe(shape, execution_ms)

    def _learn_target(self, shape: StepShape, execution_ms: float) -> None:
        """With `target_tbt_factor`: the target from the median of the first small
        decode-only steps (their KV context is short; the guard's margin covers the
        rest), then an SLO-driven budget as with `target_tbt_ms`."""
        if self.target_tbt_factor <= 0:
            return
        self.step_model.observe(shape, execution_ms)
        if shape.num_prefill == 0 and 0 < shape.num_decode <= AUTO_MAX_DECODES:
            self._decode_steps.append(execution_ms)
        if len(self._decode_steps) >= AUTO_SAMPLES:
            median = sorted(self._decode_steps)[len(self._decode_steps) // 2]
            self.target_tbt_ms = self.target_tbt_factor * median
            self.guard = TailGuard(self.target_tbt_ms)

    def _fitted_prefill(self, state: SchedulerState, out: Schedule) -> tuple[int, StepShape]:
        """The prefill tokens that fit beside the scheduled decodes in the step target,
        as a chunk at the context of the first prefill in line (`token_budget` less
        the decodes until the model is fitted), and the decodes' shape. With a batch
        class, batch decodes are left out of this iteration (the newest first) while
        the decodes alone leave less than `MIN_PREFILL_TOKENS`: interactive ones keep
        their target."""
        assert self.guard is not None
        target, model = self.guard.step_target_ms, self.step_model
        start = _first_prefill_start(state)
        decodes = StepShape.of(out.chunks)
        fit = model.max_prefill_tokens(decodes, target, start)
        if fit is None:
            return max(self.token_budget - decodes.num_decode, 0), decodes
        bar = self.batch_priority
        batch = [i for i, (r, _) in enumerate(out.chunks) if r.priority >= bar] if bar else []
        while fit < MIN_PREFILL_TOKENS and batch:
            del out.chunks[batch.pop()]  # the newest batch decode waits an iteration
            decodes = StepShape.of(out.chunks)
            fit = model.max_prefill_tokens(decodes, target, start) or 0
        cap = MAX_BUDGET_FACTOR * self.token_budget - decodes.num_decode
        return max(min(fit, cap), MIN_PREFILL_TOKENS), decodes

    def _chunk(self, request: Request, out: Schedule, budget: int, shape: StepShape | None) -> int:
        num_tokens = min(request.num_pending_tokens, budget)
        if self.low_chunk_size:
            num_tokens = min(
                num_tokens, self.chunk_cap(request.num_computed_tokens) - out.num_tokens
            )
        if shape is not None:
            num_tokens = min(num_tokens, self._fit_chunk(request, shape))
        return num_tokens

    def _fit_chunk(self, request: Request, base: StepShape) -> int:
        """With a target: the tokens of `request`'s next chunk that fit in the step target
        beside `base` (what the iteration holds), at the chunk's own context (a chunk
        late in a long prompt fits fewer than one at its start). The iteration's first
        chunk gets at least `MIN_PREFILL_TOKENS`, so prefills progress."""
        assert self.guard is not None
        start = request.num_computed_tokens
        fit = self.step_model.max_prefill_tokens(base, self.guard.step_target_ms, start)
        if fit is None:  # the model does not know yet: the budget decides
            return request.num_pending_tokens
        return fit if base.num_prefill else max(fit, MIN_PREFILL_TOKENS)

    def _schedule_prefills(
        self,
        state: SchedulerState,
        blocks: BlockManager,
        out: Schedule,
        budget: int,
        shape: StepShape | None,
    ) -> None:
        """Fills the budget with prefill chunks of running and waiting requests, the
        first by `share_key` first (one tenant, one priority: running ones, then new ones
        first come, first served). A running chunk that does not fit in KV ends the
        iteration's prefills; a waiting one that cannot start ends admissions. With a
        target, each chunk is fitted beside `shape`, what the iteration holds so far."""
        share = state.waiting.share_key
        running = deque(sorted((r for r in state.running if r.is_prefilling), key=share))
        admitting = True
        while budget > 0 and (running or (admitting and state.waiting)):
            if running and not (
                admitting and state.waiting and share(state.waiting[0]) < share(running[0])
            ):
                request = running.popleft()
                if request.status is not RequestStatus.RUNNING:  # preempted to admit
                    continue
                num_tokens = self._chunk(request, out, budget, shape)
                if num_tokens <= 0 or not blocks.can_allocate(request, num_tokens):
                    return
            else:
                request = next_waiting(state, blocks)
                num_tokens = self._chunk(request, out, budget, shape)
                num_preempted = len(out.preempted)
                if num_tokens <= 0 or not make_room_to_admit(
                    request, num_tokens, state, blocks, out, self.max_running
                ):
                    blocks.forget_reuse(request)
                    admitting = False
                    continue
                if shape is not None and len(out.preempted) != num_preempted:
                    shape = StepShape.of(out.chunks)  # preempted requests left the iteration
                state.admit(request)
            if shape is not None:
                shape += StepShape.of([(request, num_tokens)])
            blocks.allocate(request, num_tokens)
            out.chunks.append((request, num_tokens))
            budget -= num_tokens


def _first_prefill_start(state: SchedulerState) -> int:
    """The context a first prefill chunk would start at: the running prefill first in
    line (by share), else 0 (a new request; its cached prefix is not known yet)."""
    share = state.waiting.share_key
    running = [r for r in state.running if r.is_prefilling]
    if not running:
        return 0
    first = min(running, key=share)
    if state.waiting and share(state.waiting[0]) < share(first):
        return 0
    return first.num_computed_tokens
