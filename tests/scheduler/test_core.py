"""SchedulerCore driven by fake worker results (no network, no model)."""

import pytest

from sarathi_serve.common.errors import InvalidArgument, ResourceExhausted
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.request import Request, StopReason
from tests.scheduler.helpers import make_request

EOS = 2


def make_core(token_budget=8, num_blocks=64, block_size=4, max_model_len=64, **kwargs):
    core = SchedulerCore(SarathiPolicy(token_budget=token_budget), **kwargs)
    core.attach_worker(WorkerGeometry(num_blocks, block_size, max_model_len, EOS))
    return core


def fake_step(core, step_id, token=7):
    """Plans a step and samples `token` for every request that completed its pending tokens."""
    planned = core.plan(step_id, now=float(step_id))
    sampled = {
        c.request_id: token
        for c in planned.plan.chunks
        if core.requests[c.request_id].num_pending_tokens == 0
    }
    return planned, core.apply(StepResult(step_id, sampled), now=float(step_id))


def test_new_request_is_sent_once_then_by_id_with_new_blocks_only():
    core = make_core(token_budget=8, block_size=4)
    core.add(make_request("a", 10))
    p0, u0 = fake_step(core, 0)
    assert [r.request_id for r in p0.plan.new_requests] == ["a"]
    assert p0.plan.new_requests[0].token_ids == tuple(range(10, 20))
    assert p0.plan.chunks[0].num_tokens == 8 and len(p0.plan.chunks[0].new_block_ids) == 2
    assert u0 == [] and p0.num_prefill_tokens == 8 and p0.admitted[0].request_id == "a"
    p1, u1 = fake_step(core, 1)
    assert p1.plan.new_requests == ()
    assert p1.plan.chunks[0].num_tokens == 2 and len(p1.plan.chunks[0].new_block_ids) == 1
    assert [u.token_ids for u in u1] == [(7,)]
    p2, _ = fake_step(core, 2)
    assert p2.num_decode_tokens == 1 and p2.num_prefill_tokens == 0
    assert p2.plan.chunks[0].new_block_ids == ()  # token 11 still fits block 2


def test_stops_at_max_tokens_and_frees_on_the_worker():
    core = make_core()
    core.add(make_request("a", 3, max_tokens=2))
    _, u0 = fake_step(core, 0)
    _, u1 = fake_step(core, 1)
    assert [u.stop_reason for u in u0 + u1] == [None, StopReason.LENGTH]
    assert "a" not in core.requests and core.blocks.num_free_blocks == 64
    p2, _ = fake_step(core, 2)
    assert p2.plan.freed_request_ids == ("a",)
    assert not core.has_work


def test_stops_at_eos_unless_ignored_and_at_stop_tokens():
    core = make_core()
    core.add(make_request("eos", 3))
    core.add(
        Request(
            "ign", [1, 2, 3], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), "s", 0.0
        )
    )
    core.add(
        Request("stop", [1, 2], SamplingParams(temperature=0, stop_token_ids=(EOS,)), "s", 0.0)
    )
    _, updates = fake_step(core, 0, token=EOS)
    reasons = {u.request.request_id: u.stop_reason for u in updates}
    assert reasons == {"eos": StopReason.EOS, "ign": None, "stop": StopReason.EOS}


def test_context_length_stop():
    core = make_core(max_model_len=5)
    core.add(make_request("a", 4, max_tokens=100))
    _, updates = fake_step(core, 0)
    assert updates[0].stop_reason is StopReason.CONTEXT


def test_abort_frees_blocks_at_once_and_drops_late_tokens():
    core = make_core()
    core.add(make_request("a", 6))
    planned = core.plan(0, 0.0)
    assert core.blocks.num_free_blocks < 64
    core.abort("a", 0.5)
    assert core.blocks.num_free_blocks == 64
    assert core.apply(StepResult(0, {"a": 7}), 1.0) == []  # the step was in flight
    assert core.plan(1, 1.0).plan.freed_request_ids == ("a",)
    assert planned.plan.chunks[0].request_id == "a"


def test_validation_and_back_pressure():
    core = make_core(max_model_len=16, max_num_waiting=2)
    with pytest.raises(InvalidArgument, match="context"):
        core.add(make_request("long", 16))
    with pytest.raises(InvalidArgument, match="empty"):
        core.add(make_request("empty", 0))
    core.add(make_request("a", 2))
    core.add(make_request("b", 2))
    with pytest.raises(ResourceExhausted):
        core.add(make_request("c", 2))


def test_worker_loss_requeues_running_requests_for_recompute():
    core = make_core(token_budget=16)
    core.add(make_request("a", 4, max_tokens=10))
    fake_step(core, 0)
    fake_step(core, 1)
    req = core.requests["a"]
    assert req.output_token_ids == [7, 7]
    core.detach_worker()
    assert req.num_computed_tokens == 0 and not req.on_worker and core.state.waiting[0] is req
    core.attach_worker(WorkerGeometry(64, 4, 64, EOS))
    planned, updates = fake_step(core, 2)
    new = planned.plan.new_requests[0]
    assert new.token_ids == (10, 11, 12, 13, 7, 7) and new.num_output_tokens == 2
    assert planned.plan.freed_request_ids == ()  # the new worker never had it
    assert [u.token_ids for u in updates] == [(7,)]
