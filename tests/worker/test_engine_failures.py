"""One request never fails a step for the others (WorkerEngine): input out of range fails
that request alone, a batch that raises is retried request by request, and a step whose
every request fails alone fails as a whole (a worker fault)."""

import pytest

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import NewRequest, ScheduledChunk, StepPlan, WorkerGeometry
from sarathi_serve.worker.engine import WorkerEngine
from sarathi_serve.worker.model_runner import BatchEntry, StepOutput

GEOMETRY = WorkerGeometry(
    num_kv_blocks=16, block_size=4, max_model_len=32, eos_token_id=0, vocab_size=100
)
GREEDY = SamplingParams(temperature=0.0)


class Model:
    """Samples the sum of a request's tokens mod 100; raises for a batch that holds a
    request of `poison`, like an embedding lookup of a token it has no row for."""

    def __init__(self, poison=()):
        self.geometry = GEOMETRY
        self.poison = set(poison)
        self.batches: list[list[str]] = []

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        ids = [e.sequence.request_id for e in batch]
        self.batches.append(ids)
        if self.poison & set(ids):
            raise IndexError("index out of range in self")
        return StepOutput(
            {e.sequence.request_id: sum(e.sequence.token_ids) % 100 for e in batch}, {}
        )


def new(request_id, tokens, cached=0):
    return NewRequest(request_id, tuple(tokens), 0, GREEDY, cached)


def chunk(request_id, num_tokens, blocks):
    return ScheduledChunk(request_id, num_tokens, tuple(blocks))


def test_requests_out_of_range_fail_alone_before_anything_runs():
    model = Model()
    engine = WorkerEngine(model)
    plan = StepPlan(
        0,
        new_requests=(
            new("ok", [1, 2, 3]),
            new("oov", [1, 100, 3]),  # token 100 of a vocabulary of 100
            new("long", [1] * 33),  # past the context of 32
            new("cached", [1, 2], cached=2),  # no token left to compute
            new("past-blocks", [4, 5, 6]),
            new("bad-block", [7, 8]),
        ),
        chunks=(
            chunk("ok", 3, [0]),
            chunk("oov", 3, [1]),
            chunk("long", 4, [2]),
            chunk("cached", 1, [3]),
            chunk("past-blocks", 3, []),  # 3 tokens, no KV block for them
            chunk("bad-block", 2, [16]),  # block 16 of 16
            chunk("ghost", 1, []),  # a request the worker never heard of
        ),
    )
    result = engine.step(plan)
    assert result.sampled == {"ok": 6}
    assert model.batches == [["ok"]]
    assert set(result.failures) == {"oov", "long", "cached", "past-blocks", "bad-block", "ghost"}
    assert "token id 100 is outside the vocabulary (size 100)" in str(result.failures["oov"])
    assert result.failures["oov"].code.name == "INVALID_ARGUMENT"
    assert result.failures["ghost"].code.name == "INTERNAL"
    assert set(engine.sequences) == {"ok"}  # the failed ones are forgotten
    # the survivor goes on decoding in the next step
    result = engine.step(StepPlan(1, chunks=(chunk("ok", 1, []),)))
    assert result.sampled == {"ok": 12} and not result.failures


def test_a_batch_that_raises_is_retried_one_request_at_a_time():
    model = Model(poison={"bad"})
    engine = WorkerEngine(model)
    plan = StepPlan(
        0,
        new_requests=(new("a", [1, 2]), new("bad", [3, 4]), new("b", [5, 6])),
        chunks=(chunk("a", 2, [0]), chunk("bad", 2, [1]), chunk("b", 2, [2])),
    )
    result = engine.step(plan)
    assert result.sampled == {"a": 3, "b": 11}
    assert list(result.failures) == ["bad"]
    assert "IndexError: index out of range in self" in str(result.failures["bad"])
    assert isinstance(result.failures["bad"], ServiceError)
    assert model.batches == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]
    assert engine.sequences["a"].num_computed_tokens == 2 and "bad" not in engine.sequences


def test_a_step_whose_every_request_fails_alone_fails_as_a_whole():
    engine = WorkerEngine(Model(poison={"x", "y"}))
    plan = StepPlan(
        0,
        new_requests=(new("x", [1]), new("y", [2])),
        chunks=(chunk("x", 1, [0]), chunk("y", 1, [1])),
    )
    with pytest.raises(RuntimeError, match="every request of the step failed alone"):
        engine.step(plan)
    alone = WorkerEngine(Model(poison={"x"}))
    with pytest.raises(IndexError):  # one request: nothing to tell apart
        alone.step(StepPlan(0, new_requests=(new("x", [1]),), chunks=(chunk("x", 1, [0]),)))


def test_a_pipeline_stage_fails_the_batch_as_a_whole():
    """retry_alone=False (a pipeline stage): its peers wait for the whole batch's hidden
    states, so a batch that raises is a worker fault, never retried request by request."""
    model = Model(poison={"b"})
    engine = WorkerEngine(model, retry_alone=False)
    plan = StepPlan(
        0, (new("a", [1, 2]), new("b", [3, 4])), (chunk("a", 2, [0]), chunk("b", 2, [1]))
    )
    with pytest.raises(IndexError):
        engine.step(plan)
    assert model.batches == [["a", "b"]]


def test_a_stage_applies_sampled_tokens_only_to_the_incarnation_that_sampled_them():
    """A stage but the last learns tokens later (micro_batches.py): a token sampled in
    step 1 for a request the scheduler sent anew in step 2 (preempted and recomputed
    while step 1 ran) belongs to the old one; -1 drops a request the last stage failed."""
    stage = Model()
    stage.execute = lambda batch: StepOutput({}, {})  # a first stage samples nothing
    engine = WorkerEngine(stage, retry_alone=False)
    engine.step(
        StepPlan(0, (new("a", [1, 2]), new("b", [5])), (chunk("a", 2, [0]), chunk("b", 1, [1])))
    )
    engine.step(StepPlan(2, (new("a", [1, 2, 3]),), (), ("a",)))  # freed, sent anew
    engine.apply_tokens([(1, "a", 9), (1, "b", 6)])
    assert engine.sequences["a"].token_ids == [1, 2, 3]  # step 1's token was the old a's
    assert engine.sequences["b"].token_ids == [5, 6]
    engine.apply_tokens([(2, "a", 4), (3, "b", -1)])
    assert engine.sequences["a"].token_ids == [1, 2, 3, 4]
    assert "b" not in engine.sequences
