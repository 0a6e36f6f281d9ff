"""Sarathi-Serve: chunked prefill with stall-free batching (OSDI'24).

Every iteration carries, within `token_budget` tokens:
  1. one token for each running request that is decoding (decodes never stall),
  2. the next chunk of running requests whose prefill is unfinished,
  3. the first chunk of new requests, first come first served.
Running requests are capped at min(max_num_seqs, token_budget) so that every
decode fits in every iteration.

With `target_tbt_ms` (beyond the paper, which leaves the chunk size to the
operator) the budget of each iteration is chosen from a step-time model fitted
online to measured iteration times: the decodes, plus as many prefill tokens
as the model says fit in the target (at least `MIN_PREFILL_TOKENS`, so
prefills always progress; at most `MAX_BUDGET_FACTOR` x `token_budget`).
`token_budget` is used until the model has seen enough iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies.base import Schedule, schedule_decodes, validate_limits
from sarathi_serve.scheduler.policies.step_model import StepTimeModel
from sarathi_serve.scheduler.state import SchedulerState

MIN_PREFILL_TOKENS = 16
MAX_BUDGET_FACTOR = 4


@dataclass(slots=True)
class SarathiPolicy:
    token_budget: int = 512
    max_num_seqs: int = 128
    target_tbt_ms: float = 0.0  # > 0: an SLO-driven budget per iteration
    name: str = "sarathi"
    step_model: StepTimeModel = field(default_factory=StepTimeModel)
    last_budget: int = 0  # the budget of the latest schedule

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)
        if self.target_tbt_ms < 0:
            raise ValueError(f"target_tbt_ms must be >= 0, got {self.target_tbt_ms}")

    @property
    def max_running(self) -> int:
        return min(self.max_num_seqs, self.token_budget)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        left = schedule_decodes(state, blocks, out, self.token_budget)
        num_decodes = self.token_budget - left
        prefill = self._prefill_budget(num_decodes, left)
        self.last_budget = num_decodes + prefill
        budget = self._schedule_running_prefills(state, blocks, out, prefill)
        self._admit_waiting(state, blocks, out, budget)
        return out

    def observe(self, num_prefill: int, num_decode: int, execution_ms: float) -> None:
        """Feeds the step-time model with a measured iteration."""
        if self.target_tbt_ms > 0:
            self.step_model.observe(num_prefill, num_decode, execution_ms)

    def _prefill_budget(self, num_decodes: int, static_left: int) -> int:
        if self.target_tbt_ms <= 0:
            return static_left
        fit = self.step_model.max_prefill_tokens(num_decodes, self.target_tbt_ms)
        if fit is None:
            return static_left
        cap = MAX_BUDGET_FACTOR * self.token_budget - num_decodes
        return max(min(fit, cap), MIN_PREFILL_TOKENS)

    def _schedule_running_prefills(
        self, state: SchedulerState, blocks: BlockManager, out: Schedule, budget: int
    ) -> int:
        for request in [r for r in state.running if r.is_prefilling]:
            num_tokens = min(request.num_pending_tokens, budget)
            if num_tokens == 0 or not blocks.can_allocate(request, num_tokens):
                break
            blocks.allocate(request, num_tokens)
            out.chunks.append((request, num_tokens))
            budget -= num_tokens
        return budget

    def _admit_waiting(
        self, state: SchedulerState, blocks: BlockManager, out: Schedule, budget: int
    ) -> None:
        while state.waiting and budget > 0 and len(state.running) < self.max_running:
            request = state.waiting[0]
            num_tokens = min(request.num_pending_tokens, budget)
            if not blocks.can_allocate(request, num_tokens, admit=True):
                break
            state.admit(request)
            blocks.allocate(request, num_tokens)
            out.chunks.append((request, num_tokens))
            budget -= num_tokens
