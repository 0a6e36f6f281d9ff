"""The sarathi policy's exact decisions on hand-built states."""

import pytest

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.request import RequestStatus
from sarathi_serve.scheduler.state import SchedulerState
from tests.scheduler.helpers import make_request


def run_step(policy, state, blocks):
    """Schedules and marks the chunks computed, as the core does."""
    schedule = policy.schedule(state, blocks)
    for request, num_tokens in schedule.chunks:
        request.num_computed_tokens += num_tokens
    return schedule


def decoding(request_id, num_prompt_tokens, state, blocks):
    """A running request whose prompt is computed and that sampled one token."""
    req = make_request(request_id, num_prompt_tokens)
    state.waiting.append(req)
    state.admit(req)
    blocks.allocate(req, num_prompt_tokens)
    req.num_computed_tokens = num_prompt_tokens
    req.output_token_ids.append(1)
    return req


def ids(schedule):
    return [(r.request_id, n) for r, n in schedule.chunks]


def test_long_prompt_is_chunked_at_the_budget():
    policy, state, blocks = SarathiPolicy(token_budget=16), SchedulerState(), BlockManager(100, 4)
    req = make_request("long", 40)
    state.waiting.append(req)
    assert ids(run_step(policy, state, blocks)) == [("long", 16)]
    assert ids(run_step(policy, state, blocks)) == [("long", 16)]
    assert ids(run_step(policy, state, blocks)) == [("long", 8)]
    assert not req.is_prefilling


def test_decodes_first_then_running_prefill_then_new():
    policy, state, blocks = SarathiPolicy(token_budget=10), SchedulerState(), BlockManager(100, 4)
    d1 = decoding("d1", 3, state, blocks)
    partial = make_request("partial", 20)
    state.waiting.append(partial)
    state.admit(partial)
    blocks.allocate(partial, 5)
    partial.num_computed_tokens = 5
    d2 = decoding("d2", 4, state, blocks)
    state.waiting.append(make_request("new", 30))
    schedule = run_step(policy, state, blocks)
    # both decodes (in admission order), then 8 tokens: all to the unfinished prefill
    assert ids(schedule) == [("d1", 1), ("d2", 1), ("partial", 8)]
    assert [r.request_id for r in state.waiting] == ["new"]
    assert d1.num_computed_tokens == 4 and d2.num_computed_tokens == 5


def test_new_requests_fill_the_remaining_budget_fcfs():
    policy, state, blocks = SarathiPolicy(token_budget=12), SchedulerState(), BlockManager(100, 4)
    decoding("d", 3, state, blocks)
    for rid, n in (("a", 4), ("b", 10), ("c", 2)):
        state.waiting.append(make_request(rid, n))
    assert ids(run_step(policy, state, blocks)) == [("d", 1), ("a", 4), ("b", 7)]
    assert [r.request_id for r in state.waiting] == ["c"]
    assert all(r.status is RequestStatus.RUNNING for r in state.running)


def test_budget_never_exceeded_and_decodes_never_stall():
    policy, state, blocks = (
        SarathiPolicy(token_budget=8, max_num_seqs=4),
        SchedulerState(),
        BlockManager(1000, 4),
    )
    for i in range(6):  # max_tokens past the 40 steps: nobody reaches its last token
        state.waiting.append(make_request(f"r{i}", 5 + 7 * i, max_tokens=100))
    decoders: set[str] = set()
    for _ in range(40):
        schedule = run_step(policy, state, blocks)
        assert schedule.num_tokens <= 8
        scheduled = {r.request_id for r, _ in schedule.chunks}
        assert decoders <= scheduled, "a running decode was left out"
        for request, _ in schedule.chunks:
            if not request.is_prefilling and request.num_pending_tokens == 0:
                request.output_token_ids.append(1)
        decoders = {r.request_id for r in state.running if not r.is_prefilling}
    assert len(state.running) <= 4


def test_running_is_capped_by_max_num_seqs_and_budget():
    assert SarathiPolicy(token_budget=4, max_num_seqs=128).max_running == 4
    policy, state, blocks = (
        SarathiPolicy(token_budget=64, max_num_seqs=2),
        SchedulerState(),
        BlockManager(100, 4),
    )
    for rid in "abc":
        state.waiting.append(make_request(rid, 2))
    assert ids(run_step(policy, state, blocks)) == [("a", 2), ("b", 2)]


def test_admission_waits_for_kv_blocks():
    policy, state, blocks = (
        SarathiPolicy(token_budget=64),
        SchedulerState(),
        BlockManager(4, 4, watermark=0.0),
    )
    state.waiting.append(make_request("big", 20))
    assert ids(run_step(policy, state, blocks)) == []
    assert len(state.waiting) == 1


def test_decode_without_room_preempts_the_newest():
    policy, state, blocks = (
        SarathiPolicy(token_budget=16),
        SchedulerState(),
        BlockManager(2, 4, watermark=0.0),
    )
    old = decoding("old", 4, state, blocks)  # block 0 full: its next token needs a block
    new = decoding("new", 4, state, blocks)  # takes the last block
    schedule = run_step(policy, state, blocks)
    assert [r.request_id for r in schedule.preempted] == ["new"]
    assert ids(schedule) == [("old", 1)]
    assert new.status is RequestStatus.WAITING and new.num_computed_tokens == 0
    assert state.waiting[0] is new and new.num_preemptions == 1
    assert old.num_computed_tokens == 5


def test_make_policy_by_name():
    policy = make_policy("sarathi", token_budget=32, max_num_seqs=8)
    assert policy.name == "sarathi" and policy.token_budget == 32
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", token_budget=1, max_num_seqs=1)
    with pytest.raises(ValueError):
        SarathiPolicy(token_budget=0)


def test_step_time_model_recovers_an_affine_step_time():
    from sarathi_serve.scheduler.policies.step_model import StepTimeModel

    model = StepTimeModel()
    assert model.max_prefill_tokens(4, 100.0) is None  # not fitted yet
    for prefill, decode in [(0, 1), (64, 4), (128, 2), (256, 8), (32, 16), (512, 0), (0, 32),
                            (200, 10), (100, 20)]:  # fmt: skip
        model.observe(prefill, decode, 20 + 2.0 * prefill + 0.5 * decode)
    assert model.predict_ms(100, 10) == pytest.approx(225.0, rel=1e-3)
    assert model.max_prefill_tokens(10, 100.0) == 37  # (100 - 20 - 5) / 2


def test_step_time_model_stays_solvable_after_many_steps_of_one_shape():
    """Steady decoding: thousands of steps alike (a singular fit without a ridge that
    outlives the decay); the model still predicts that step."""
    from sarathi_serve.scheduler.policies.step_model import StepTimeModel

    model = StepTimeModel()
    for _ in range(5000):
        model.observe(0, 3, 60.0)
    assert model.predict_ms(0, 3) == pytest.approx(60.0, rel=0.01)


def test_slo_driven_budget_fills_the_target_and_follows_the_machine():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=100.0)
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    for i in range(4):
        decoding(f"d{i}", 4, state, blocks)
    state.waiting.append(make_request("long", 2000))
    assert policy.schedule(state, blocks).num_tokens == 256  # static budget until fitted
    for prefill in range(0, 400, 40):  # a machine where a prefill token costs 1 ms
        policy.observe(prefill, 4, 10 + 1.0 * prefill + 2.0 * 4)
    schedule = run_step(policy, state, blocks)
    # fitted to the tail guard's starting step target, 80 % of the target: (80 - 10 - 8) / 1
    assert ids(schedule)[-1] == ("long", 62)
    assert policy.last_budget == 4 + 62
    for _ in range(200):  # the machine slows down 4x (a noisy neighbour)
        policy.observe(80, 4, 4 * (10 + 80 + 8))
    # ~80 / (4 x 98 / 84) - 4 decodes: the chunk shrinks to the floor of 16
    assert policy.schedule(state, blocks).chunks[-1][1] == 16


def test_slo_budget_is_only_for_sarathi():
    with pytest.raises(ValueError, match="target_tbt_ms"):
        make_policy("vllm", token_budget=64, max_num_seqs=8, target_tbt_ms=50.0)


def test_dynamic_chunk_schedule_shrinks_chunks_as_the_prefill_progresses():
    # 4 stages of 256 computed tokens each: caps 256, 192, 128, 64
    policy = SarathiPolicy(
        token_budget=256, low_chunk_size=64, chunk_schedule_max_tokens=1024, chunk_schedule_stages=4
    )
    assert [policy.chunk_cap(c) for c in (0, 255, 256, 512, 768, 10_000)] == [
        256, 256, 192, 128, 64, 64,
    ]  # fmt: skip
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    long = make_request("long", 1000)
    state.waiting.append(long)
    chunks = [ids(run_step(policy, state, blocks))[0][1] for _ in range(4)]
    assert chunks == [256, 192, 192, 128]  # computed 0 -> 256 -> 448 -> 640 -> 768
    decoding("d", 4, state, blocks)
    assert ids(run_step(policy, state, blocks)) == [("d", 1), ("long", 63)]  # cap counts decodes


def test_swapping_policies_keeps_sarathi_options():
    policy = make_policy("sarathi", token_budget=128, max_num_seqs=8, low_chunk_size=32)
    rebuilt = make_policy("sarathi", token_budget=64, max_num_seqs=8, **policy.options())
    assert rebuilt.low_chunk_size == 32 and rebuilt.token_budget == 64
    with pytest.raises(ValueError, match="low_chunk_size"):
        make_policy("orca", token_budget=64, max_num_seqs=8, low_chunk_size=32)
