"""Exact decisions of the baselines (vllm, orca, faster_transformer) on hand-built states."""

import pytest

from sarathi_serve.scheduler.block_manager import BlockManager
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


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_built_by_name(name):
    policy = make_policy(name, token_budget=64, max_num_seqs=4)
    assert policy.name == name and policy.token_budget == 64 and policy.max_num_seqs == 4
