"""What the scheduler does with a request that cannot be computed: it refuses what it can
tell at admission (whoever submits), ends a request the worker refused with the worker's
error, and bounds the retries of a request whose steps keep failing as a whole."""

import pytest

from sarathi_serve.common.errors import InvalidArgument, ServiceError
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.request import Request, StopReason
from sarathi_serve.scheduler.sessions import batch_by_session
from sarathi_serve.scheduler.stopping import MAX_FAILED_STEPS
from tests.scheduler.helpers import make_request

GEOMETRY = WorkerGeometry(64, 4, 64, eos_token_id=2, vocab_size=100)


def make_core(geometry=GEOMETRY):
    core = SchedulerCore(SarathiPolicy(token_budget=32), watermark=0.0)
    core.attach_worker(geometry)
    return core


def request(request_id="r", prompt=(10, 11, 12), **sampling):
    return Request(request_id, list(prompt), SamplingParams(temperature=0.0, **sampling), "s", 0.0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (request(request_id=""), "request_id: must not be empty"),
        (request(request_id="x" * 257), "request_id: at most 256 characters, got 257"),
        (request(request_id="a\nb"), "request_id: printable characters only"),
        (request(prompt=()), "prompt_token_ids: must not be empty"),
        (request(prompt=[5] * 64), "prompt_token_ids: 64 tokens; the model's context is 64"),
        (request(prompt=[5, 100]), "prompt_token_ids: 100 is outside the vocabulary (size 100)"),
        (request(stop_token_ids=(1, 2**31)), "stop_token_ids: 2147483648 is outside"),
        (request(stop_token_ids=tuple(range(65))), "stop_token_ids: at most 64, got 65"),
        (request(top_k=101), "top_k: at most the vocabulary size (100), got 101"),
    ],
)
def test_admission_refuses_what_no_worker_could_compute(bad, message):
    core = make_core()
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        core.add(bad)
    assert not core.requests


def test_admission_before_any_worker_checks_what_it_can():
    core = SchedulerCore(SarathiPolicy(token_budget=32))
    core.add(request(prompt=[5, 100_000]))  # no vocabulary known yet: the worker checks it
    with pytest.raises(InvalidArgument, match="request_id"):
        core.add(request(request_id="x" * 300))
    salted = request("salted")
    salted.cache_salt = "s" * 257
    with pytest.raises(InvalidArgument, match="cache_salt: at most 256 characters"):
        core.add(salted)
    crowd = request("crowd")
    crowd.tenant = "t" * 257
    with pytest.raises(InvalidArgument, match="tenant: at most 256 characters"):
        core.add(crowd)


def test_a_request_the_worker_refused_ends_with_its_error_and_the_others_go_on():
    core = make_core()
    core.add(make_request("good", 3))
    core.add(make_request("bad", 3))
    planned = core.plan(0, now=0.0)
    error = InvalidArgument("token id 7 is outside the vocabulary (size 5)")
    updates = core.apply(StepResult(0, {"good": 7}, failures={"bad": error}), now=1.0)
    assert [(u.request.request_id, u.token_ids, u.stop_reason) for u in updates] == [
        ("good", (7,), None),
        ("bad", (), StopReason.ERROR),
    ]
    assert "bad" not in core.requests and core.requests["good"].output_token_ids == [7]
    assert planned.plan.chunks
    assert core.plan(1, now=1.0).plan.freed_request_ids == ()  # the worker forgot it itself
    (event,) = [e for e in batch_by_session(updates)["s"].events if e.request_id == "bad"]
    assert (event.error_code, event.error_message) == ("INVALID_ARGUMENT", str(error))


def test_the_kv_of_a_failed_request_is_not_offered_to_others():
    core = make_core()
    prompt = list(range(20, 29))  # two full blocks of 4, and one token
    core.add(request("first", prompt))
    core.plan(0, now=0.0)  # the whole prompt: its two full blocks are cached
    assert core.cached_prefix_tokens(request("probe", prompt)) == 8
    core.apply(StepResult(0, failures={"first": ServiceError("worker failed")}), now=1.0)
    assert core.cached_prefix_tokens(request("probe", prompt)) == 0


def test_a_request_in_every_failed_step_ends_after_a_bounded_number():
    core = make_core()
    core.add(make_request("poison", 3))
    for attempt in range(1, MAX_FAILED_STEPS + 1):
        planned = core.plan(attempt, now=float(attempt))
        assert [c.request_id for c in planned.plan.chunks] == ["poison"]
        failed = core.charge_failed_step(planned.plan.step_id, now=float(attempt))
        core.detach_worker()  # the worker reported the step failed: it reconnects
        core.attach_worker(GEOMETRY)
        if attempt < MAX_FAILED_STEPS:
            assert failed == [] and core.requests["poison"].num_failed_steps == attempt
    assert [r.request_id for r in failed] == ["poison"] and "poison" not in core.requests
    assert failed[0].stop_reason is StopReason.ERROR
    assert "failed every step with this request" in str(failed[0].error)
    (event,) = batch_by_session([], failed)["s"].events
    assert event.error_code == "INTERNAL"
