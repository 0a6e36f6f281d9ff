"""Exact decisions of the baselines (vllm, orca, faster_transformer) on hand-built states."""

import pytest

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.policies import POLICIES, make_policy
from sarathi_serve.scheduler.state import SchedulerState
from tests.scheduler.helpers import make_request
from tests.scheduler.test_sarathi_policy import decoding, ids, run_step


def state_with(running_decodes=(), waiting=()):
    state, blocks = SchedulerState(), BlockManager(1000, 4, watermark=0.0)
    for rid, n in running_decodes:
        decoding(rid, n, state, blocks)
    for rid, n in waiting:
        state.waiting.append(make_request(rid, n))
    return state, blocks


def test_vllm_runs_whole_prompts_first_and_stalls_decodes():
    policy = make_policy("vllm", token_budget=64, max_num_seqs=8)
    state, blocks = state_with([("d1", 3), ("d2", 5)], [("a", 40), ("b", 20), ("c", 30)])
    # prefill-only iteration: a and b fit in 64 tokens, c does not; decodes wait
    assert ids(run_step(policy, state, blocks)) == [("a", 40), ("b", 20)]
    assert ids(run_step(policy, state, blocks)) == [("c", 30)]
    for r in state.running:  # a, b, c sampled their first token
        if r.request_id in "abc":
            r.output_token_ids.append(1)
    # nothing waits: everybody decodes
    assert ids(run_step(policy, state, blocks)) == [
        ("d1", 1),
        ("d2", 1),
        ("a", 1),
        ("b", 1),
        ("c", 1),
    ]


def test_vllm_takes_a_prompt_longer_than_the_budget_alone():
    policy = make_policy("vllm", token_budget=16, max_num_seqs=8)
    state, blocks = state_with([], [("long", 50), ("short", 4)])
    assert ids(run_step(policy, state, blocks)) == [("long", 50)]
    assert ids(run_step(policy, state, blocks)) == [("short", 4)]


def test_orca_mixes_decodes_with_whole_prompts():
    policy = make_policy("orca", token_budget=32, max_num_seqs=8)
    state, blocks = state_with([("d1", 3)], [("a", 20), ("b", 20), ("c", 5)])
    # decodes first, then whole prompts that fit: a (20); b would exceed 32
    assert ids(run_step(policy, state, blocks)) == [("d1", 1), ("a", 20)]
    state.running[1].output_token_ids.append(1)
    # the budget bounds prefill tokens: b and c (25) fit together
    assert ids(run_step(policy, state, blocks)) == [("d1", 1), ("a", 1), ("b", 20), ("c", 5)]


def test_orca_never_chunks_a_prompt():
    policy = make_policy("orca", token_budget=8, max_num_seqs=8)
    state, blocks = state_with([("d1", 3)], [("long", 30)])
    schedule = run_step(policy, state, blocks)
    assert ids(schedule) == [("d1", 1), ("long", 30)]  # the first prompt of an iteration runs whole


def test_faster_transformer_runs_a_batch_to_completion():
    policy = make_policy("faster_transformer", token_budget=100, max_num_seqs=2)
    state, blocks = state_with([], [("a", 5), ("b", 7), ("c", 3)])
    assert ids(run_step(policy, state, blocks)) == [("a", 5), ("b", 7)]  # batch of max_num_seqs
    for r in state.running:
        r.output_token_ids.append(1)
    assert ids(run_step(policy, state, blocks)) == [("a", 1), ("b", 1)]  # c waits for the batch
    state.running[0].output_token_ids.append(1)
    a = state.running[0]
    state.remove(a)  # a finishes; b still runs, so c still waits
    blocks.free(a)
    assert ids(run_step(policy, state, blocks)) == [("b", 1)]
    b = state.running[0]
    state.remove(b)
    blocks.free(b)
    assert ids(run_step(policy, state, blocks)) == [("c", 3)]


def test_running_partial_prefills_are_finished_whole_after_a_swap():
    """A request chunked under sarathi keeps going under any baseline."""
    sarathi = make_policy("sarathi", token_budget=8, max_num_seqs=8)
    state, blocks = state_with([], [("long", 30)])
    assert ids(run_step(sarathi, state, blocks)) == [("long", 8)]
    for name in ("vllm", "orca", "faster_transformer"):
        s2, b2 = state_with([], [("long", 30)])
        run_step(sarathi, s2, b2)
        assert ids(run_step(make_policy(name, token_budget=8, max_num_seqs=8), s2, b2)) == [
            ("long", 22)
        ]


# Each policy's whole plan for one small state (budget 16, at most 3 running): a decode
# (d, 1 token out), then prompts a (10), b (30: longer than the budget), c (4), each done
# after 3 output tokens; c waits for a free seat (max_num_seqs).
PLANS = {
    "sarathi": [  # chunked prefills beside the decodes, within the budget
        [("d", 1), ("a", 10), ("b", 5)],
        [("d", 1), ("a", 1), ("b", 14)],
        [("a", 1), ("b", 11), ("c", 4)],
        [("b", 1), ("c", 1)],
        [("b", 1), ("c", 1)],
    ],
    "vllm": [  # whole prompts first, decodes stall
        [("a", 10)],
        [("b", 30)],
        [("d", 1), ("a", 1), ("b", 1)],
        [("d", 1), ("a", 1), ("b", 1)],
        [("c", 4)],
        [("c", 1)],
        [("c", 1)],
    ],
    "orca": [  # decodes with whole prompts
        [("d", 1), ("a", 10)],
        [("d", 1), ("a", 1), ("b", 30)],
        [("a", 1), ("b", 1), ("c", 4)],
        [("b", 1), ("c", 1)],
        [("c", 1)],
    ],
    "faster_transformer": [  # a batch runs to completion before the next starts
        [("d", 1)],
        [("d", 1)],
        [("a", 10)],
        [("a", 1)],
        [("a", 1)],
        [("b", 30)],
        [("b", 1)],
        [("b", 1)],
        [("c", 4)],
        [("c", 1)],
        [("c", 1)],
    ],
}


def drain(policy, state, blocks, num_outputs=3, max_steps=30):
    """Runs `policy` as the core would until nothing is left: a chunk that completes a
    prompt samples its first token, a request leaves with `num_outputs` tokens. The plan."""
    plan = []
    while state.running or state.waiting:
        assert len(plan) < max_steps, plan
        schedule = run_step(policy, state, blocks)
        plan.append(ids(schedule))
        for request, _ in schedule.chunks:
            if not request.is_prefilling:
                request.output_token_ids.append(1)
            if len(request.output_token_ids) >= num_outputs:
                state.remove(request)
                blocks.free(request)
    assert blocks.num_free_blocks == blocks.num_blocks  # every block came back
    return plan


def small_state():
    return state_with([("d", 3)], [("a", 10), ("b", 30), ("c", 4)])


def test_the_plans_differ():
    assert len({str(plan) for plan in PLANS.values()}) == len(PLANS) == len(POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_built_by_name(name):
    """make_policy(name) builds the policy the name means: it drains a small mixed state
    with that policy's own plan, under the budget and max_num_seqs it was given."""
    policy = make_policy(name, token_budget=16, max_num_seqs=3)
    assert policy.name == name and policy.token_budget == 16 and policy.max_num_seqs == 3
    assert drain(policy, *small_state()) == PLANS[name]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_starts_from_the_schedulers_default_config(name):
    """`sarathi-serve up --policy NAME` starts each scheduler with these flags (the rest at
    their defaults, chunk_schedule_* included): the scheduler must build NAME from them."""
    assert SchedulerConfig(policy=name).make_policy().name == name
    argv = ["--policy", name, "--token-budget", "16", "--max-num-seqs", "3"]
    config = SchedulerConfig.from_args([*argv, "--target-tbt-ms", "0.0"])
    policy = config.make_policy()
    assert policy.name == name and policy.token_budget == 16 and policy.max_num_seqs == 3
    assert drain(policy, *small_state()) == PLANS[name]


def test_the_scheduler_passes_its_sarathi_options_on():
    config = SchedulerConfig.from_args(
        ["--target-tbt-ms", "50", "--low-chunk-size", "64", "--chunk-schedule-max-tokens",
         "4096", "--chunk-schedule-stages", "4"]
    )  # fmt: skip
    policy = config.make_policy()
    assert (policy.name, policy.target_tbt_ms, policy.low_chunk_size) == ("sarathi", 50.0, 64)
    assert (policy.chunk_schedule_max_tokens, policy.chunk_schedule_stages) == (4096, 4)


@pytest.mark.parametrize("name", sorted(set(POLICIES) - {"sarathi"}))
@pytest.mark.parametrize(
    "option",
    [
        {"target_tbt_ms": 50.0},
        {"low_chunk_size": 8},
        {"chunk_schedule_max_tokens": 1024},
        {"chunk_schedule_stages": 4},
    ],
)
def test_a_baseline_refuses_a_sarathi_only_option(name, option):
    with pytest.raises(ValueError, match="only the sarathi policy"):
        make_policy(name, token_budget=16, max_num_seqs=3, **option)
