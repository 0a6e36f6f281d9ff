"""The worker introduces itself with its runner's geometry, then reads plans ahead on a
thread of its own (the scheduler sends plan n+1 while step n runs): in order, a malformed
plan failing only its own step, and a broken stream raised in the serving thread."""

import threading

import pytest

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.step import StepPlan, WorkerGeometry
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.worker.attach import _Prefetch, attach_forever


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


class _EndedCall:
    """An Attach stream that the scheduler ends at once."""

    def __iter__(self):
        return iter(())

    def cancel(self):
        pass


def test_the_worker_introduces_itself_with_its_geometry(monkeypatch):
    stop = threading.Event()
    sent: list[pb.WorkerMessage] = []
    metadatas = []
    resets = []

    class Stub:
        def __init__(self, channel):
            pass

        def Attach(self, messages, metadata=()):
            sent.append(next(messages))
            metadatas.append(metadata)
            stop.set()
            return _EndedCall()

    class Engine:
        def step(self, plan):
            raise AssertionError("no plan was sent")

        def reset(self):
            resets.append(True)

    monkeypatch.setattr(pb_grpc, "SchedulerStub", Stub)
    geometry = WorkerGeometry(
        num_kv_blocks=9, block_size=4, max_model_len=64, eos_token_id=2, vocab_size=320
    )
    token = InternalToken("s3cret")
    attach_forever(Engine(), ["127.0.0.1:1"], "w-1", "tiny", geometry, stop, token)
    assert [m.WhichOneof("kind") for m in sent] == ["hello"]
    assert sent[0].hello == pb.WorkerHello(
        worker_id="w-1",
        model="tiny",
        num_kv_blocks=9,
        block_size=4,
        max_model_len=64,
        eos_token_id=2,
        vocab_size=320,
        pipeline_depth=1,
    )
    assert metadatas == [(("authorization", "Bearer s3cret"),)]  # the scheduler's credentials
    assert resets == [True]  # a stream that ended forgets the worker's sequences
