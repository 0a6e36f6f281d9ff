"""The worker reads plans ahead on a thread of its own (the scheduler sends plan n+1
while step n runs): in order, a malformed plan failing only its own step, and a broken
stream raised in the serving thread."""

import threading

import pytest

from sarathi_serve.common.step import StepPlan
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.worker.attach import _Prefetch


class Broken(Exception):
    pass


def stream(gate: threading.Event):
    yield pb.StepPlan(
        step_id=0, chunk_request_ids=["a"], chunk_num_tokens=[3], chunk_num_new_blocks=[0]
    )
    # malformed: a block id that belongs to no chunk
    yield pb.StepPlan(step_id=1, new_block_ids=[5])
    yield pb.StepPlan(step_id=2, freed_request_ids=["a"])
    gate.wait(5)
    raise Broken("stream reset")


def test_plans_arrive_in_order_and_errors_where_they_belong():
    gate = threading.Event()
    plans = _Prefetch(stream(gate))
    step_id, plan = plans.next()
    assert step_id == 0 and isinstance(plan, StepPlan) and plan.chunks[0].num_tokens == 3
    step_id, plan = plans.next()
    assert step_id == 1 and isinstance(plan, ValueError)
    step_id, plan = plans.next()
    assert step_id == 2 and isinstance(plan, StepPlan) and plan.freed_request_ids == ("a",)
    gate.set()
    with pytest.raises(Broken):
        plans.next()


def test_the_end_of_the_stream_is_none():
    plans = _Prefetch(iter([pb.StepPlan(step_id=7)]))
    assert plans.next()[0] == 7
    assert plans.next() is None
