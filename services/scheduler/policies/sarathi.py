"""Sarathi-Serve: chunked prefill with stall-free batching (OSDI'24).

Every iteration carries, within `token_budget` tokens:
  1. one token for each running request that is decoding (decodes never stall),
  2. the next chunk of running requests whose prefill is unfinished,
  3. the first chunk of new requests, first come first served.
Running requests are capped at min(max_num_seqs, token_budget) so that every
decode fits in every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies.base import Schedule, schedule_decodes, validate_limits
from sarathi_serve.scheduler.state import SchedulerState


@dataclass(slots=True)
class SarathiPolicy:
    token_budget: int = 512
    max_num_seqs: int = 128
    name: str = "sarathi"

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)

    @property
    def max_running(self) -> int:
        return min(self.max_num_seqs, self.token_budget)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        budget = schedule_decodes(state, blocks, out, self.token_budget)
        budget = self._schedule_running_prefills(state, blocks, out, budget)
        self._admit_waiting(state, blocks, out, budget)
        return out

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
