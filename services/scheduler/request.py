"""The scheduler's state of one request."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.stop_reason import StopReason

__all__ = ["Request", "RequestStatus", "StopReason"]


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # never scheduled, or preempted and waiting to be recomputed
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    session_id: str
    arrival_time: float
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    # Tokens to (re)compute before decoding starts: the prompt, or on recompute
    # the prompt plus the tokens generated before preemption.
    num_prefill_tokens: int = 0
    cache_salt: str = ""  # requests share cached KV only with the same salt
    priority: int = 0  # lower is served first (vLLM's convention); may preempt higher values
    tenant: str = ""  # whose share of the machine it uses (waiting.py)
    fair_tag: float = 0.0  # its start tag in the fair queue
    block_ids: list[int] = field(default_factory=list)
    num_blocks_sent: int = 0  # how many of block_ids the worker has been told
    num_cached_blocks: int = 0  # how many of block_ids are in the prefix cache
    block_hashes: list[bytes] = field(default_factory=list)  # of its full blocks, in order
    hash_block_size: int = 0  # the block size block_hashes were computed for
    on_worker: bool = False  # the worker holds this request's tokens
    num_preemptions: int = 0
    last_planned_step: int = -(1 << 62)  # the latest step that computes some of its tokens
    awaiting_resume: bool = False  # its gateway reconnected (or a new leader recovered it): held
    num_released: int = 0  # output tokens in Redis and free to send (a resume sends no more)
    stop_reason: StopReason | None = None
    error: ServiceError | None = None  # why it ended, with stop_reason ERROR
    num_failed_steps: int = 0  # steps it was in that failed as a whole (a worker fault)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    def __post_init__(self) -> None:
        if not self.num_prefill_tokens:
            self.num_prefill_tokens = len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens known but not yet in the KV cache (1 while decoding)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prefill_tokens

    @property
    def has_last_token_in_flight(self) -> bool:
        """A decoding request whose max_tokens-th token is already scheduled: every
        computed position past the prompt yields one output (the last one its next)."""
        return self.num_computed_tokens - len(self.prompt_token_ids) >= self.sampling.max_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole list."""
        prompt = self.prompt_token_ids
        if end <= len(prompt):
            return prompt[start:end]
        output_start = max(start - len(prompt), 0)
        return prompt[start:end] + self.output_token_ids[output_start : end - len(prompt)]
