"""One iteration's plan (scheduler -> worker) and result (worker -> scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.common.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class WorkerGeometry:
    """What a worker has and serves, told to the scheduler when it attaches."""

    num_kv_blocks: int
    block_size: int
    max_model_len: int
    eos_token_id: int
    vocab_size: int = 0  # rows of the embedding (0: not told, token ids are not checked)
    # micro-batches computed at once (pipeline stages): a decode goes into a plan this
    # many steps after the one that samples its input token
    pipeline_depth: int = 1


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request the worker has not seen, or must recompute from scratch."""

    request_id: str
    token_ids: tuple[int, ...]  # prompt + tokens generated so far
    num_output_tokens: int
    sampling: SamplingParams
    # Tokens whose KV is already in the request's first blocks (a cached prefix,
    # whole blocks, shared with other requests: the worker never writes there).
    num_computed_tokens: int = 0


@dataclass(slots=True)  # not frozen: 256 of these a step, and frozen ones cost 3x to build
class ScheduledChunk:
    request_id: str
    num_tokens: int
    new_block_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StepPlan:
    step_id: int
    new_requests: tuple[NewRequest, ...] = ()
    chunks: tuple[ScheduledChunk, ...] = ()  # batch order
    freed_request_ids: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Log-probability of a sampled token and the most likely alternatives."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True, slots=True)
class StepResult:
    step_id: int
    sampled: dict[str, int] = field(default_factory=dict)  # request id -> token id
    execution_ms: float = 0.0
    error: str = ""
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)  # who asked for them
    worker_wait_ms: float = 0.0  # the worker waited this long for the plan after its last result
    # Requests the worker could not compute, each with why: they end with that error
    # while the rest of the step goes on.
    failures: dict[str, ServiceError] = field(default_factory=dict)
    # a pipelined worker: per stage, its compute for this micro-batch and its idle time
    # before it (a bubble when requests were running: the scheduler decides)
    stage_busy_ms: tuple[float, ...] = ()
    stage_idle_ms: tuple[float, ...] = ()
