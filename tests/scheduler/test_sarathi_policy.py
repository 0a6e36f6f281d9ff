"""The sarathi policy's exact decisions on hand-built states."""

import pytest

from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.policies.step_model import StepShape, StepTimeModel
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
    assert model.max_prefill_tokens(StepShape(num_decode=4), 100.0) is None  # not fitted yet
    for prefill, decode in [(0, 1), (64, 4), (128, 2), (256, 8), (32, 16), (512, 0), (0, 32),
                            (200, 10), (100, 20)]:  # fmt: skip
        model.observe(StepShape(prefill, decode), 20 + 2.0 * prefill + 0.5 * decode)
    assert model.predict_ms(StepShape(100, 10)) == pytest.approx(225.0, rel=1e-3)
    assert model.max_prefill_tokens(StepShape(num_decode=10), 100.0) == 37  # (100 - 20 - 5) / 2


def test_step_time_model_stays_solvable_after_many_steps_of_one_shape():
    """Steady decoding: thousands of steps alike (a singular fit without a ridge that
    outlives the decay); the model still predicts that step."""
    from sarathi_serve.scheduler.policies.step_model import StepTimeModel

    model = StepTimeModel()
    for _ in range(5000):
        model.observe(StepShape(0, 3), 60.0)
    assert model.predict_ms(StepShape(0, 3)) == pytest.approx(60.0, rel=0.01)


def test_slo_driven_budget_fills_the_target_and_follows_the_machine():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=100.0)
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    for i in range(4):
        decoding(f"d{i}", 4, state, blocks)
    state.waiting.append(make_request("long", 2000))
    assert policy.schedule(state, blocks).num_tokens == 256  # static budget until fitted
    for prefill in range(0, 400, 40):  # a machine where a prefill token costs 1 ms
        policy.observe(StepShape(prefill, 4), 10 + 1.0 * prefill + 2.0 * 4)
    schedule = run_step(policy, state, blocks)
    # fitted to the tail guard's starting step target, 80 % of the target: (80 - 10 - 8) / 1
    assert ids(schedule)[-1] == ("long", 62)
    assert policy.last_budget == 4 + 62
    for _ in range(200):  # the machine slows down 4x (a noisy neighbour)
        policy.observe(StepShape(80, 4), 4 * (10 + 80 + 8))
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


def test_a_batch_class_runs_at_the_full_budget_until_an_interactive_request_decodes():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=100.0, batch_priority=5)
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    for i in range(4):
        decoding(f"batch{i}", 4, state, blocks).priority = 5
    state.waiting.append(make_request("long", 2000))
    for prefill in range(0, 400, 40):  # a prefill token costs 1 ms: 100 ms fits ~62
        policy.observe(StepShape(prefill, 4), 10 + 1.0 * prefill + 2.0 * 4)
    batch_alone = run_step(policy, state, blocks)
    assert batch_alone.num_slo_decodes == 0 and ids(batch_alone)[-1] == ("long", 252)
    decoding("live", 4, state, blocks)  # priority 0: interactive
    mixed = run_step(policy, state, blocks)
    # fitted to the starting step target of 80 ms: about 80 - 10 - 5 x 2 prefill tokens
    assert mixed.num_slo_decodes == 1 and ids(mixed)[-1] == ("long", 57)
    # the guard counts the interactive decode alone, and nothing of batch-only iterations
    policy.observe(StepShape(57, 5, num_slo_decodes=1), 200.0, interval_ms=200.0)
    policy.observe(StepShape(252, 4, num_slo_decodes=0), 300.0, interval_ms=300.0)
    assert (policy.guard.num_intervals, policy.guard.num_missed) == (1, 1)
    # without a batch class every decode is held to the target
    every = SarathiPolicy(token_budget=256, target_tbt_ms=100.0)
    every.step_model = policy.step_model
    assert every.schedule(state, blocks).num_slo_decodes is None
    assert make_policy("sarathi", token_budget=64, max_num_seqs=8, **policy.options())


def test_the_core_hands_the_interactive_decodes_of_a_step_back_to_the_policy():
    policy = SarathiPolicy(token_budget=64, target_tbt_ms=100.0, batch_priority=1)
    core = SchedulerCore(policy)
    core.attach_worker(WorkerGeometry(64, 4, 64, 2))
    for request_id, priority in (("live", 0), ("batch", 3)):
        request = make_request(request_id, 4)
        request.priority = priority
        core.add(request)
    first = core.plan(0, now=0.0)  # both prefill
    core.apply(StepResult(0, {"live": 7, "batch": 7}), now=0.1)
    second = core.plan(1, now=0.1)  # both decode, one of them interactive
    assert (first.shape.num_slo_decodes, second.shape.num_slo_decodes) == (0, 1)
    core.observe(second, 150.0, 150.0)
    assert (policy.guard.num_intervals, policy.guard.num_missed) == (1, 1)


def test_a_negative_batch_priority_is_refused():
    with pytest.raises(ValueError, match="batch_priority"):
        SarathiPolicy(target_tbt_ms=100.0, batch_priority=-1)


def test_the_step_model_charges_attention_by_context():
    """A machine where a chunk's attention grows with its context: the fit recovers it,
    and the tokens that fit a target shrink for a chunk late in a long prompt."""
    model = StepTimeModel()
    for prefill in (32, 64, 128, 256):
        for start in (0, 256, 512, 1024):
            for decodes, context in ((0, 0), (8, 300), (16, 1200)):
                shape = StepShape(
                    prefill, decodes, StepShape.chunk_context(start, prefill), decodes * context
                )
                ms = 20 + 1.0 * prefill + 0.5 * decodes
                ms += 0.4 * shape.prefill_context / 1024 + 2.0 * shape.decode_context / 1024
                model.observe(shape, ms)
    late = StepShape(128, 16, StepShape.chunk_context(1024, 128), 16 * 1200)
    assert model.predict_ms(late) == pytest.approx(20 + 128 + 8 + 0.4 * 136 + 2.0 * 18.75, 1e-3)
    decodes = StepShape(num_decode=16, decode_context=16 * 1200)  # 20 + 8 + 37.5 ms
    early, deep = (model.max_prefill_tokens(decodes, 300.0, start) for start in (0, 1024))
    assert early is not None and deep is not None
    # cost(n) = 65.5 + n (1 + 0.4 s / 1024) + 0.2 n^2 / 1024 <= 300: 224 at s = 0, 163 at 1024
    assert (early, deep) == (224, 163)


def test_batch_decodes_wait_an_iteration_when_they_would_push_interactive_ones_past():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=100.0, batch_priority=5)
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    live = decoding("live", 4, state, blocks)
    batch = [decoding(f"batch{i}", 4, state, blocks) for i in range(30)]
    for request in batch:
        request.priority = 5
    state.waiting.append(make_request("long", 2000))
    for prefill in range(0, 400, 40):  # 10 ms + 1 ms a prefill token + 2 ms a decode
        for decodes in (4, 20):
            policy.observe(StepShape(prefill, decodes), 10 + 1.0 * prefill + 2.0 * decodes)
    schedule = run_step(policy, state, blocks)
    # 80 ms of step target: 10 + 16 prefill tokens leave room for 27 decodes of 31
    decoded = [r for r, _ in schedule.chunks if r.request_id != "long"]
    assert live in decoded and len(decoded) == 27, len(decoded)
    assert [r.request_id for r in batch if r not in decoded] == [
        "batch26",
        "batch27",
        "batch28",
        "batch29",
    ]
    assert ids(schedule)[-1][0] == "long"
    # batch alone: every decode, at the full budget
    state.running.remove(live)
    assert len(policy.schedule(state, blocks).chunks) == 30 + 1


def test_each_chunk_is_fitted_at_its_own_context():
    """The budget was once solved at the context of the prefill first in line only: a short
    new prompt of a higher priority first (context 0), then a chunk late in a long prompt
    filled the rest as if it started at 0 too, and the step ran ~100 ms past its target
    (seen with a batch class past capacity). Each chunk is now fitted at its own context
    beside what the step already holds: the planned step's predicted time stays within
    the step target."""
    policy = SarathiPolicy(token_budget=512, target_tbt_ms=400.0)
    model = policy.step_model
    for prefill in (32, 64, 128, 256):
        for start in (0, 512, 1024):
            for decodes in (0, 8):
                shape = StepShape(prefill, decodes, StepShape.chunk_context(start, prefill))
                ms = 20 + 1.0 * prefill + 2.0 * decodes + shape.prefill_context / 256
                model.observe(shape, ms)
    state, blocks = SchedulerState(), BlockManager(4000, 4)
    for i in range(8):
        decoding(f"d{i}", 4, state, blocks)
    long = make_request("long", 2000)
    long.priority = 1
    state.waiting.append(long)
    state.admit(long)
    blocks.allocate(long, 1200)
    long.num_computed_tokens = 1200  # late in its prompt
    state.waiting.append(make_request("short", 40))  # priority 0: first in line
    schedule = policy.schedule(state, blocks)
    target = policy.guard.step_target_ms
    (short, n_short), (late, n_late) = schedule.chunks[8:]
    assert (short.request_id, n_short, late.request_id) == ("short", 40, "long")
    assert model.predict_ms(StepShape.of(schedule.chunks)) <= target + 1.0
    # solved at context 0, the long prompt's chunk would have been far longer
    at_zero = model.max_prefill_tokens(StepShape.of(schedule.chunks[:9]), target, 0)
    assert at_zero is not None and at_zero > 2 * n_late, (at_zero, n_late)


def test_until_the_fit_is_ready_the_mean_cost_per_token_keeps_the_target():
    model = StepTimeModel()
    assert model.max_prefill_tokens(StepShape(num_decode=4), 100.0) is None  # nothing seen
    model.observe(StepShape(100), 200.0)  # 2 ms a token, one step seen: not fitted yet
    assert not model.ready
    assert model.max_prefill_tokens(StepShape(num_decode=4), 100.0) == 100 // 2 - 4


def test_shapes_add_up_chunk_by_chunk():
    """The policy fits each chunk beside the shape it adds up chunk by chunk; the sum
    is the shape of the whole iteration, as the core computes it."""
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    chunks = [(decoding(f"d{i}", 10 * (i + 1), state, blocks), 1) for i in range(3)]
    prompt = make_request("p", 300)
    prompt.num_computed_tokens = 100
    chunks.append((prompt, 64))
    whole = StepShape.of(chunks, num_slo_decodes=2)
    summed = StepShape(num_slo_decodes=2)
    for chunk in chunks:
        summed += StepShape.of([chunk])
    assert summed == whole
    assert (whole.num_decode, whole.decode_context) == (3, 60)
    assert whole.prefill_context == StepShape.chunk_context(100, 64)


def test_an_admission_that_preempts_refits_beside_what_is_left():
    policy = SarathiPolicy(token_budget=512, max_num_seqs=3, target_tbt_ms=400.0)
    model = policy.step_model
    for prefill in (32, 64, 128, 256):
        for decodes in (1, 3):
            model.observe(StepShape(prefill, decodes), 20 + 1.0 * prefill + 2.0 * decodes)
    state, blocks = SchedulerState(), BlockManager(1000, 4)
    live = [decoding(f"live{i}", 4, state, blocks) for i in range(2)]
    batch = decoding("batch", 4, state, blocks)
    batch.priority = 5
    state.waiting.append(make_request("new", 1000))
    state.waiting.append(make_request("next", 1000))
    schedule = policy.schedule(state, blocks)
    assert schedule.preempted == [batch]
    assert ids(schedule)[:2] == [("live0", 1), ("live1", 1)] and batch not in state.running
    assert ids(schedule)[2][0] == "new" and len(schedule.chunks) == 3
    assert model.predict_ms(StepShape.of(schedule.chunks)) <= policy.guard.step_target_ms + 1
    assert live[0].status is RequestStatus.RUNNING
