"""Planning step n+1 before step n's result is applied (the worker computes while the
scheduler plans), and keeping two micro-batches in flight on a worker of two pipeline
stages, give every request exactly the tokens of plan-apply-plan, with real
WorkerEngines in between: stops (EOS, max_tokens, context), preemption, aborts."""

from collections import deque

import pytest

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import Request
from sarathi_serve.worker.engine import WorkerEngine
from sarathi_serve.worker.model_runner import BatchEntry, StepOutput

EOS = 2


class ContextModel:
    """A deterministic "model": the next token is a function of the whole context,
    so a decode fed the wrong token, or a token appended twice, changes what follows."""

    def __init__(self, geometry: WorkerGeometry):
        self.geometry = geometry

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        sampled = {}
        for e in batch:
            tokens = e.sequence.token_ids
            if e.sequence.num_computed_tokens + e.num_tokens == len(tokens):
                h = 0
                for t in tokens:
                    h = (h * 131 + t) % 1_000_003
                sampled[e.sequence.request_id] = h % 11 + 2
        return StepOutput(sampled, {})


class FirstStage:
    """A pipeline's first stage: computes no token; every chunk it computes must see the
    tokens the last stage has for it (it learns them later, with a later plan)."""

    def __init__(self, geometry: WorkerGeometry, last: WorkerEngine):
        self.geometry, self.last = geometry, last

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        for e in batch:
            seq, end = e.sequence, e.sequence.num_computed_tokens + e.num_tokens
            theirs = self.last.sequences.get(seq.request_id)
            if theirs is not None:  # (not yet there for a request new in this plan)
                assert seq.token_ids[:end] == theirs.token_ids[:end], seq.request_id
        return StepOutput({}, {})


class TwoStages:
    """Two pipeline stages as `micro_batches.PipelineLeader` runs them, in one process:
    the last stage samples; the first starts step k once the output of step k - 2 is
    back (at most 2 micro-batches at once) and applies the tokens of every output back
    by then. A plan that decodes a request whose token it does not have yet fails the
    first stage's check."""

    def __init__(self, geometry: WorkerGeometry):
        self.last = WorkerEngine(ContextModel(geometry), retry_alone=False)  # type: ignore[arg-type]
        self.first = WorkerEngine(FirstStage(geometry, self.last), retry_alone=False)  # type: ignore[arg-type]
        self.outputs: deque[StepResult] = deque()  # sampled, not yet seen by the first stage

    def step(self, plan):
        back = []  # the outputs of steps <= k - 2 (the real leader waits for them)
        while self.outputs and self.outputs[0].step_id <= plan.step_id - 2:
            result = self.outputs.popleft()
            back += [(result.step_id, rid, t) for rid, t in result.sampled.items()]
        self.first.apply_tokens(back)
        first = self.first.step(plan)
        result = self.last.step(plan)
        assert first.failures.keys() == result.failures.keys(), "the stages disagree"
        self.outputs.append(result)
        return result


def run(policy: str, mode: str, num_blocks: int, abort_at: dict[int, str]):
    """`mode`: "sequential" (plan, compute, apply), "ahead" (step n+1 planned before step
    n's result is applied) or "stages" (a worker of 2 pipeline stages: 2 micro-batches
    computing, a third planned ahead)."""
    core = SchedulerCore(make_policy(policy, token_budget=16, max_num_seqs=8), watermark=0.0)
    depth = 2 if mode == "stages" else 1
    geometry = WorkerGeometry(num_blocks, 4, 48, EOS, pipeline_depth=depth)
    core.attach_worker(geometry)
    stages = TwoStages(geometry) if mode == "stages" else None
    engine = stages or WorkerEngine(ContextModel(geometry))  # type: ignore[arg-type]
    for i in range(10):
        prompt = [(7 * i + j) % 40 + 3 for j in range(3 + 5 * i % 17)]
        sampling = SamplingParams(temperature=0.0, max_tokens=4 + 3 * i, ignore_eos=i % 3 == 0)
        core.add(Request(f"r{i}", prompt, sampling, "s", 0.0))
    outputs: dict[str, list[int]] = {}
    in_flight: deque = deque()

    def apply_oldest(now: float) -> None:
        for update in core.apply(in_flight.popleft(), now):
            outputs.setdefault(update.request.request_id, []).extend(update.token_ids)

    for step in range(400):
        if step in abort_at:
            core.abort(abort_at[step], float(step))
        plan = core.plan(step, float(step)).plan
        sent = plan.chunks or plan.freed_request_ids  # the replica sends no empty plan
        in_flight.append(engine.step(plan) if sent else StepResult(step))  # in order
        if len(in_flight) > {"sequential": 0, "ahead": 1, "stages": depth}[mode]:
            apply_oldest(float(step))
        if not core.has_work and not in_flight:
            break
    while in_flight:
        apply_oldest(0.0)
    assert not core.has_work
    return outputs, core.state.num_preemptions


@pytest.mark.parametrize("policy", ["sarathi", "vllm", "orca", "faster_transformer"])
@pytest.mark.parametrize("num_blocks", [200, 24])  # 24: requests are preempted
@pytest.mark.parametrize("mode", ["ahead", "stages"])
def test_pipelined_plans_give_the_same_tokens(policy, num_blocks, mode):
    aborts = {9: "r9"}
    sequential, _ = run(policy, "sequential", num_blocks, aborts)
    pipelined, preemptions = run(policy, mode, num_blocks, aborts)
    # an abort lands at a time, not a token: a prefix of the same tokens either way
    aborted_seq, aborted_pipe = sequential.pop("r9", []), pipelined.pop("r9", [])
    shorter = min(len(aborted_seq), len(aborted_pipe))
    assert aborted_seq[:shorter] == aborted_pipe[:shorter]
    assert pipelined == sequential
    assert set(sequential) == {f"r{i}" for i in range(10) if i != 9}
    stops = {"eos": 0, "length": 0}
    for i in range(10):
        tokens = sequential.get(f"r{i}", [])
        if i != 9 and tokens[-1] == EOS and i % 3:
            stops["eos"] += 1
        elif i != 9:  # ran to max_tokens, or to the model's context (48)
            prompt_len = 3 + 5 * i % 17
            assert len(tokens) == min(4 + 3 * i, 48 - prompt_len)
            stops["length"] += 1
    assert stops["eos"] and stops["length"]
    if num_blocks == 24 and policy != "faster_transformer":
        assert preemptions > 0


def test_a_request_is_not_decoded_past_its_last_token_in_flight():
    core = SchedulerCore(make_policy("sarathi", token_budget=16, max_num_seqs=8))
    core.attach_worker(WorkerGeometry(64, 4, 64, EOS))
    core.add(Request("a", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=2), "s", 0.0))
    core.add(Request("b", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=9), "s", 0.0))
    core.plan(0, 0.0)  # both prompts: their first tokens
    step1 = core.plan(1, 0.0)  # both decode: a's second (last) token
    step2 = core.plan(2, 0.0)  # planned before either result is back
    assert [c.request_id for c in step1.plan.chunks] == ["a", "b"]
    assert [c.request_id for c in step2.plan.chunks] == ["b"]


def test_a_token_of_an_earlier_incarnation_is_dropped():
    """Preempted (and even admitted again) while its step ran: the step's token belonged
    to the computation the preemption threw away."""
    core = SchedulerCore(make_policy("sarathi", token_budget=16, max_num_seqs=8))
    core.attach_worker(WorkerGeometry(64, 4, 64, EOS))
    core.add(Request("a", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=9), "s", 0.0))
    core.plan(0, 0.0)
    (request,) = core.state.running
    assert core.blocks is not None
    core.state.preempt(request, core.blocks)
    core.state.admit(request)
    assert core.apply(StepResult(0, {"a": 7}), 0.0) == []
    assert request.output_token_ids == []


def test_a_result_that_arrives_after_its_worker_detached_is_dropped():
    """The result of step n can be delivered just before the stream's end is noticed: the
    detach has already sent its requests back to be recomputed, so the result counts for
    nothing, even once a new worker has attached and the step ids go on."""
    core = SchedulerCore(make_policy("sarathi", token_budget=16, max_num_seqs=8))
    geometry = WorkerGeometry(64, 4, 64, EOS)
    core.attach_worker(geometry)
    core.add(Request("a", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=9), "s", 0.0))
    core.plan(0, 0.0)
    core.attach_worker(geometry)  # the old worker is gone, a new one attaches
    assert core.apply(StepResult(0, {"a": 7}), 0.0) == []
    planned = core.plan(1, 0.0)  # recomputed from the prompt on the new worker
    assert [r.request_id for r in planned.plan.new_requests] == ["a"]
    (update,) = core.apply(StepResult(1, {"a": 8}), 0.0)
    assert update.token_ids == (8,) and update.first_index == 0


def test_with_pipeline_stages_a_decode_goes_a_depth_after_its_token_and_prefills_go_on():
    """Two stages, micro-batches at once: a request whose input token step k samples is
    left out of step k + 1 and decodes again in step k + 2 (planned before step k's
    result is back: the worker starts step k + 2 once k's output is sampled); the next
    chunk of an unfinished prompt goes in the very next step (each stage runs the
    micro-batches in order)."""
    core = SchedulerCore(make_policy("sarathi", token_budget=8, max_num_seqs=8))
    core.attach_worker(WorkerGeometry(64, 4, 64, EOS, pipeline_depth=2))
    core.add(Request("short", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=9), "s", 0.0))
    core.add(Request("long", list(range(3, 23)), SamplingParams(max_tokens=9), "s", 0.0))
    first = core.plan(0, 0.0)  # short's prompt (its first token), long's first 5 tokens
    second = core.plan(1, 0.0)  # planned before the first's result is back
    third = core.plan(2, 0.0)  # still before it
    assert [(c.request_id, c.num_tokens) for c in first.plan.chunks] == [("short", 3), ("long", 5)]
    assert [(c.request_id, c.num_tokens) for c in second.plan.chunks] == [("long", 8)]
    assert [(c.request_id, c.num_tokens) for c in third.plan.chunks] == [("short", 1), ("long", 7)]
    assert core.plan(3, 0.0).plan.chunks == ()  # both decode in step 2: none in step 3
    assert [c.request_id for c in core.plan(4, 0.0).plan.chunks] == ["short", "long"]
