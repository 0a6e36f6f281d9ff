"""protobuf <-> dataclass edges shared by the services (round-trip tested)."""

from __future__ import annotations

from collections.abc import Iterator

from sarathi_serve.common.errors import error_from_code
from sarathi_serve.common.sampling import Grammar, SamplingParams
from sarathi_serve.common.session import RequestEvent, SessionEvents
from sarathi_serve.common.step import (
    NewRequest,
    ScheduledChunk,
    StepPlan,
    StepResult,
    TokenLogprobs,
    WorkerGeometry,
)
from sarathi_serve.common.stop_reason import StopReason
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
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
    )
    if params.logprobs is not None:
        msg.logprobs = params.logprobs
    if params.seed is not None:
        msg.seed = params.seed
    msg.logit_bias.update(params.logit_bias)
    if params.grammar is not None:
        g = params.grammar
        msg.grammar.CopyFrom(pb.Grammar(kind=_GRAMMAR_KIND[g.kind], spec=g.spec, loose=g.loose))
    return msg


_GRAMMAR_KIND = {
    "json_schema": pb.GRAMMAR_KIND_JSON_SCHEMA,
    "regex": pb.GRAMMAR_KIND_REGEX,
    "choice": pb.GRAMMAR_KIND_CHOICE,
    "ebnf": pb.GRAMMAR_KIND_EBNF,
}
_GRAMMAR_KIND_NAME = {value: name for name, value in _GRAMMAR_KIND.items()}


def _grammar_from_pb(msg: pb.SamplingParams) -> Grammar | None:
    if not msg.HasField("grammar"):
        return None
    kind = _GRAMMAR_KIND_NAME.get(msg.grammar.kind)
    if kind is None:
        raise ValueError(f"grammar.kind: unknown kind {msg.grammar.kind}")
    return Grammar(kind, msg.grammar.spec, msg.grammar.loose)


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
        min_p=msg.min_p,
        repetition_penalty=msg.repetition_penalty or 1.0,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        logit_bias=tuple(sorted(msg.logit_bias.items())),
        grammar=_grammar_from_pb(msg),
    )


def hello_to_pb(worker_id: str, model: str, geometry: WorkerGeometry) -> pb.WorkerHello:
    return pb.WorkerHello(
        worker_id=worker_id,
        model=model,
        num_kv_blocks=geometry.num_kv_blocks,
        block_size=geometry.block_size,
        max_model_len=geometry.max_model_len,
        eos_token_id=geometry.eos_token_id,
        vocab_size=geometry.vocab_size,
        pipeline_depth=geometry.pipeline_depth,
    )


def geometry_from_pb(hello: pb.WorkerHello) -> WorkerGeometry:
    return WorkerGeometry(
        num_kv_blocks=hello.num_kv_blocks,
        block_size=hello.block_size,
        max_model_len=hello.max_model_len,
        eos_token_id=hello.eos_token_id,
        vocab_size=hello.vocab_size,
        pipeline_depth=max(hello.pipeline_depth, 1),
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
                num_computed_tokens=r.num_computed_tokens,
            )
            for r in plan.new_requests
        ],
        freed_request_ids=plan.freed_request_ids,
        chunk_request_ids=[c.request_id for c in plan.chunks],
        chunk_num_tokens=[c.num_tokens for c in plan.chunks],
        chunk_num_new_blocks=[len(c.new_block_ids) for c in plan.chunks],
        new_block_ids=[b for c in plan.chunks for b in c.new_block_ids],
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
                num_computed_tokens=r.num_computed_tokens,
            )
            for r in msg.new_requests
        ),
        chunks=tuple(_chunks_from_pb(msg)),
        freed_request_ids=tuple(msg.freed_request_ids),
    )


def _chunks_from_pb(msg: pb.StepPlan) -> Iterator[ScheduledChunk]:
    block_ids = list(msg.new_block_ids)
    at = 0
    for request_id, num_tokens, num_blocks in zip(
        msg.chunk_request_ids, msg.chunk_num_tokens, msg.chunk_num_new_blocks, strict=True
    ):
        yield ScheduledChunk(request_id, num_tokens, tuple(block_ids[at : at + num_blocks]))
        at += num_blocks
    if at != len(block_ids):
        raise ValueError(f"plan {msg.step_id}: {len(block_ids) - at} block ids belong to no chunk")


def logprobs_to_pb(lp: TokenLogprobs) -> pb.TokenLogprobs:
    return pb.TokenLogprobs(
        logprob=lp.logprob,
        top_token_ids=[t for t, _ in lp.top],
        top_logprobs=[v for _, v in lp.top],
    )


def logprobs_from_pb(msg: pb.TokenLogprobs) -> TokenLogprobs:
    return TokenLogprobs(msg.logprob, tuple(zip(msg.top_token_ids, msg.top_logprobs, strict=True)))


def result_to_pb(result: StepResult) -> pb.StepResult:
    request_ids = list(result.sampled.keys())
    rows = {rid: i for i, rid in enumerate(request_ids)}
    return pb.StepResult(
        step_id=result.step_id,
        request_ids=request_ids,
        token_ids=list(result.sampled.values()),
        execution_ms=result.execution_ms,
        error=result.error,
        logprob_rows=[rows[rid] for rid in result.logprobs],
        logprobs=[logprobs_to_pb(lp) for lp in result.logprobs.values()],
        worker_wait_ms=result.worker_wait_ms,
        failures=[
            pb.RequestFailure(request_id=rid, error_code=exc.code.name, error_message=str(exc))
            for rid, exc in result.failures.items()
        ],
        stage_busy_ms=result.stage_busy_ms,
        stage_idle_ms=result.stage_idle_ms,
    )


def result_from_pb(msg: pb.StepResult) -> StepResult:
    return StepResult(
        step_id=msg.step_id,
        sampled=dict(zip(msg.request_ids, msg.token_ids, strict=True)),
        execution_ms=msg.execution_ms,
        error=msg.error,
        logprobs={
            msg.request_ids[row]: logprobs_from_pb(lp)
            for row, lp in zip(msg.logprob_rows, msg.logprobs, strict=True)
        },
        worker_wait_ms=msg.worker_wait_ms,
        failures={
            f.request_id: error_from_code(f.error_code, f.error_message) for f in msg.failures
        },
        stage_busy_ms=tuple(msg.stage_busy_ms),
        stage_idle_ms=tuple(msg.stage_idle_ms),
    )


def session_events_to_pb(batch: SessionEvents) -> pb.SessionEvents:
    return pb.SessionEvents(
        events=[request_event_to_pb(event) for event in batch.events],
        token_request_ids=batch.token_request_ids,
        token_ids=batch.token_ids,
        token_indexes=batch.token_indexes,
        num_workers=batch.num_workers,
    )


def request_event_to_pb(event: RequestEvent) -> pb.RequestEvent:
    msg = pb.RequestEvent(
        request_id=event.request_id,
        token_ids=event.token_ids,
        first_token_index=event.first_token_index,
        logprobs=[logprobs_to_pb(lp) for lp in event.logprobs],
        error_code=event.error_code,
        error_message=event.error_message,
    )
    if event.stop_reason is not None:
        msg.stop_reason = stop_reason_to_pb(event.stop_reason)
    return msg


def request_event_from_pb(msg: pb.RequestEvent) -> RequestEvent:
    return RequestEvent(
        request_id=msg.request_id,
        token_ids=tuple(msg.token_ids),
        first_token_index=msg.first_token_index,
        logprobs=tuple(logprobs_from_pb(lp) for lp in msg.logprobs),
        stop_reason=stop_reason_from_pb(msg.stop_reason),
        error_code=msg.error_code,
        error_message=msg.error_message,
    )


def session_events_from_pb(msg: pb.SessionEvents) -> SessionEvents:
    return SessionEvents(
        events=[request_event_from_pb(event) for event in msg.events],
        token_request_ids=list(msg.token_request_ids),
        token_ids=list(msg.token_ids),
        token_indexes=list(msg.token_indexes),
        num_workers=msg.num_workers if msg.HasField("num_workers") else None,
    )


_STOP_TO_PB = {
    StopReason.EOS: pb.STOP_REASON_EOS,
    StopReason.LENGTH: pb.STOP_REASON_LENGTH,
    StopReason.CONTEXT: pb.STOP_REASON_CONTEXT,
    StopReason.ABORTED: pb.STOP_REASON_ABORTED,
    StopReason.ERROR: pb.STOP_REASON_ERROR,
}
_STOP_FROM_PB = {v: k for k, v in _STOP_TO_PB.items()}


def stop_reason_to_pb(reason: StopReason) -> pb.StopReason.ValueType:
    return _STOP_TO_PB[reason]


def stop_reason_from_pb(value: int) -> StopReason | None:
    """None for STOP_REASON_UNSPECIFIED: the request goes on."""
    return _STOP_FROM_PB.get(value)
