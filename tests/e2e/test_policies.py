"""`sarathi-serve up --policy P` for each of the paper's baselines, on the real model.

Each starts the whole system with the policy from the first iteration (not a live
swap), and its greedy outputs must equal Hugging Face `generate`, token for token.
The iteration stats show each policy's batching shape.
"""

import pytest

from tests.e2e.oracle import generate_concurrently

BUDGET = 64


def _mixed(it) -> bool:
    return bool(it.num_prefill_tokens and it.num_decode_tokens)


SHAPES = {
    # prefill-prioritizing: an iteration runs prompts only or decodes only
    "vllm": lambda its: not any(_mixed(it) for it in its),
    # whole prompts mixed with decodes
    "orca": lambda its: any(_mixed(it) for it in its),
    # request-level batches: nobody joins a running batch
    "faster_transformer": lambda its: not any(_mixed(it) for it in its),
}


@pytest.mark.parametrize("policy", sorted(SHAPES))
def test_up_with_a_baseline_policy_gives_the_oracle_outputs(
    system_factory, tokenizer, expected_outputs, policy
):
    system = system_factory("--policy", policy, "--token-budget", str(BUDGET))
    stats = system.stats()
    assert stats.policy == policy and stats.token_budget == BUDGET
    outputs = generate_concurrently(system.gateway_addr)
    for i, (got, want) in enumerate(zip(outputs, expected_outputs, strict=True)):
        assert got == want, f"prompt {i} under {policy}: {got} != {want}"
    iterations = system.stats().iterations
    assert iterations and {it.policy for it in iterations} == {policy}
    assert SHAPES[policy](iterations), f"{policy}: unexpected batching shape"
    # none of the baselines chunks a prompt: the longest one runs whole, past the budget
    assert any(it.num_prefill_tokens > BUDGET for it in iterations)
    assert system.stats().num_running == 0
