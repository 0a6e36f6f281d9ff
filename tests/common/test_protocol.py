"""The generated protobuf code is fresh, and every conversion pair round-trips."""

import pytest

from sarathi_serve.common.convert import (
    plan_from_pb,
    plan_to_pb,
    result_from_pb,
    result_to_pb,
    sampling_from_pb,
    sampling_to_pb,
)
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import (
    NewRequest,
    ScheduledChunk,
    StepPlan,
    StepResult,
    TokenLogprobs,
)
from sarathi_serve.protocol import codegen


def test_generated_code_is_fresh():
    assert codegen.stale_files() == [], "run `make protos`"


def test_sampling_round_trip():
    for params in (
        SamplingParams(),
        SamplingParams(
            temperature=0.0,
            top_p=0.5,
            top_k=7,
            seed=0,
            max_tokens=3,
            stop_token_ids=(5, 9),
            ignore_eos=True,
        ),
        SamplingParams(temperature=0.75, seed=2**40),
        SamplingParams(
            min_p=0.25,
            repetition_penalty=1.5,
            presence_penalty=-0.5,
            frequency_penalty=0.5,
            logprobs=5,
            min_tokens=2,
        ),
        SamplingParams(logprobs=0),
    ):
        assert sampling_from_pb(sampling_to_pb(params)) == params


def test_plan_round_trip():
    plan = StepPlan(
        step_id=42,
        new_requests=(NewRequest("a", (1, 2, 3), 1, SamplingParams(temperature=0.0)),),
        chunks=(
            ScheduledChunk("a", 3, (7, 8)),
            ScheduledChunk("b", 1, ()),
            ScheduledChunk("e", 16, (9,)),
        ),
        freed_request_ids=("c", "d"),
    )
    assert plan_from_pb(plan_to_pb(plan)) == plan
    assert plan.num_tokens == 20


def test_a_plan_whose_block_ids_do_not_add_up_is_refused():
    msg = plan_to_pb(StepPlan(step_id=1, chunks=(ScheduledChunk("a", 3, (7, 8)),)))
    msg.new_block_ids.append(9)
    with pytest.raises(ValueError, match="belong to no chunk"):
        plan_from_pb(msg)
    msg.chunk_num_tokens.append(1)
    with pytest.raises(ValueError):
        plan_from_pb(msg)


def test_result_round_trip():
    result = StepResult(
        step_id=3, sampled={"a": 11, "b": 0}, execution_ms=12.5, error="", worker_wait_ms=0.25
    )
    assert result_from_pb(result_to_pb(result)) == result
    with_logprobs = StepResult(
        step_id=4,
        sampled={"a": 1, "b": 2, "c": 3},
        logprobs={"c": TokenLogprobs(-0.5, ((3, -0.5), (9, -1.25))), "a": TokenLogprobs(-2.0)},
    )
    assert result_from_pb(result_to_pb(with_logprobs)) == with_logprobs


def test_every_stop_reason_round_trips_and_has_a_finish_reason():
    from sarathi_serve.common.convert import stop_reason_from_pb, stop_reason_to_pb
    from sarathi_serve.common.stop_reason import StopReason
    from sarathi_serve.protocol import scheduler_pb2 as pb

    for reason in StopReason:
        assert stop_reason_from_pb(stop_reason_to_pb(reason)) is reason
    wire = set(pb.StopReason.values()) - {pb.STOP_REASON_UNSPECIFIED}
    assert {stop_reason_to_pb(r) for r in StopReason} == wire, "every wire value has a name"
    assert stop_reason_from_pb(pb.STOP_REASON_UNSPECIFIED) is None
    assert {r: r.finish_reason for r in StopReason} == {
        StopReason.EOS: "stop", StopReason.LENGTH: "length", StopReason.CONTEXT: "length",
        StopReason.ABORTED: "abort", StopReason.ERROR: "error",
    }  # fmt: skip


def test_worker_hello_round_trip():
    from sarathi_serve.common.convert import geometry_from_pb, hello_to_pb
    from sarathi_serve.common.step import WorkerGeometry

    geometry = WorkerGeometry(num_kv_blocks=4096, block_size=16, max_model_len=8192, eos_token_id=2)
    hello = hello_to_pb("worker-0", "SmolLM2-135M-Instruct", geometry)
    assert (hello.worker_id, hello.model) == ("worker-0", "SmolLM2-135M-Instruct")
    assert geometry_from_pb(hello) == geometry


def test_session_events_round_trip():
    from sarathi_serve.common.convert import session_events_from_pb, session_events_to_pb
    from sarathi_serve.common.session import RequestEvent, SessionEvents
    from sarathi_serve.common.stop_reason import StopReason

    batch = SessionEvents(
        events=[
            RequestEvent("a", (5, 6), 3, (TokenLogprobs(-0.5, ((5, -0.5),)), TokenLogprobs(-1.0))),
            RequestEvent("b", (7,), 0, stop_reason=StopReason.LENGTH),
            RequestEvent("c", stop_reason=StopReason.ABORTED),
            RequestEvent(
                "d",
                stop_reason=StopReason.ERROR,
                error_code="INVALID_ARGUMENT",
                error_message="prompt_token_ids must not be empty",
            ),
        ],
        token_request_ids=["e", "f"],
        token_ids=[11, 12],
        token_indexes=[0, 41],
    )
    assert session_events_from_pb(session_events_to_pb(batch)) == batch
    assert session_events_from_pb(session_events_to_pb(SessionEvents())) == SessionEvents()
