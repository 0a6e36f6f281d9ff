"""protobuf <-> dataclass edges shared by the services (round-trip tested)."""

from __future__ import annotations

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import NewRequest, ScheduledChunk, StepPlan, StepResult
from sarathi_serve.protocol import scheduler_pb2 as pb


def sampling_to_pb(params: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_tokens=params.max_tokens,
        stop_token_ids=params.stop_token_ids,
        ignore_eos=params.ignore_eos,
        min_tokens=params.min_tokens,
    )
    if params.seed is not None:
        msg.seed = params.seed
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Raises ValueError (with the field named) when the values are out of range."""
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        max_tokens=msg.max_tokens,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
    )


def plan_to_pb(plan: StepPlan) -> pb.StepPlan:
    return pb.StepPlan(
        step_id=plan.step_id,
        new_requests=[
            pb.NewRequest(
                request_id=r.request_id,
                token_ids=r.token_ids,
                num_output_tokens=r.num_output_tokens,
                sampling=sampling_to_pb(r.sampling),
            )
            for r in plan.new_requests
        ],
        chunks=[
            pb.ScheduledChunk(
                request_id=c.request_id, num_tokens=c.num_tokens, new_block_ids=c.new_block_ids
            )
            for c in plan.chunks
        ],
        freed_request_ids=plan.freed_request_ids,
    )


def plan_from_pb(msg: pb.StepPlan) -> StepPlan:
    return StepPlan(
        step_id=msg.step_id,
        new_requests=tuple(
            NewRequest(
                request_id=r.request_id,
                token_ids=tuple(r.token_ids),
                num_output_tokens=r.num_output_tokens,
                sampling=sampling_from_pb(r.sampling),
            )
            for r in msg.new_requests
        ),
        chunks=tuple(
            ScheduledChunk(c.request_id, c.num_tokens, tuple(c.new_block_ids)) for c in msg.chunks
        ),
        freed_request_ids=tuple(msg.freed_request_ids),
    )


def result_to_pb(result: StepResult) -> pb.StepResult:
    return pb.StepResult(
        step_id=result.step_id,
        request_ids=list(result.sampled.keys()),
        token_ids=list(result.sampled.values()),
        execution_ms=result.execution_ms,
        error=result.error,
    )


def result_from_pb(msg: pb.StepResult) -> StepResult:
    return StepResult(
        step_id=msg.step_id,
        sampled=dict(zip(msg.request_ids, msg.token_ids, strict=True)),
        execution_ms=msg.execution_ms,
        error=msg.error,
    )
