"""The baselines the Sarathi-Serve paper compares against, as policies of the same scheduler.

- `vllm`: prefill-prioritizing. While new prompts fit, an iteration runs only
  whole prompts and every decode waits (generation stalls); otherwise it decodes.
- `orca`: iteration-level batching. Every iteration carries all decodes plus
  whole new prompts that fit the budget, mixed in one batch (no chunking).
- `faster_transformer`: request-level batching. A batch of requests is
  admitted together and decodes until all of them finish; nobody joins
  meanwhile.

`token_budget` bounds the prefill tokens of an iteration (vLLM's
max_num_batched_tokens); a single prompt longer than it still runs alone, whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies.base import (
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_TOKEN_BUDGET,
    Schedule,
    StaticBudget,
    schedule_decodes,
    schedule_whole_prefills,
    validate_limits,
)
from sarathi_serve.scheduler.state import SchedulerState


@dataclass(slots=True)
class VllmPolicy(StaticBudget):
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    name: str = "vllm"

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        schedule_whole_prefills(
            state, blocks, out, self.token_budget, self.max_num_seqs, first_may_exceed=True
        )
        if not out.chunks:
            schedule_decodes(state, blocks, out, budget=len(state.running))
        return out


@dataclass(slots=True)
class OrcaPolicy(StaticBudget):
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    name: str = "orca"

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        schedule_decodes(state, blocks, out, budget=len(state.running))
        schedule_whole_prefills(
            state, blocks, out, self.token_budget, self.max_num_seqs, first_may_exceed=True
        )
        return out


@dataclass(slots=True)
class FasterTransformerPolicy(StaticBudget):
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    name: str = "faster_transformer"

    def __post_init__(self) -> None:
        validate_limits(self.token_budget, self.max_num_seqs)

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule:
        out = Schedule()
        if state.running:  # the batch runs to completion; nobody joins
            prefilling = any(r.is_prefilling for r in state.running)
            if prefilling:  # a batch admitted under another policy: finish its prompts first
                schedule_whole_prefills(state, blocks, out, 1 << 62, 0, first_may_exceed=True)
            schedule_decodes(state, blocks, out, budget=len(state.running))
            return out
        schedule_whole_prefills(
            state, blocks, out, self.token_budget, self.max_num_seqs, first_may_exceed=True
        )
        return out
