"""Greedy outputs through the whole system equal Hugging Face `generate`, token for token.

Real processes (Redis, scheduler, worker, gateway), the real default model. The
prompts are sent concurrently and staggered so that prefill chunks and decodes
share iterations; several prompts are longer than the smaller token budgets.
"""

import pytest

from tests.e2e.oracle import PROMPTS, generate_concurrently


@pytest.mark.parametrize("token_budget", [16, 64, 512])
def test_greedy_outputs_equal_hf_generate(
    system_factory, tokenizer, expected_outputs, token_budget
):
    assert max(len(tokenizer.encode(p)) for p in PROMPTS) > 64, (
        "some prompts must exceed the budgets"
    )
    system = system_factory("--token-budget", str(token_budget))
    outputs = generate_concurrently(system.gateway_addr)
    for i, (got, want) in enumerate(zip(outputs, expected_outputs, strict=True)):
        assert got == want, f"prompt {i} (budget {token_budget}): {got} != {want}"

    iterations = system.stats().iterations
    assert iterations
    assert all(it.num_prefill_tokens + it.num_decode_tokens <= token_budget for it in iterations)
    assert all(it.token_budget == token_budget and it.policy == "sarathi" for it in iterations)
    mixed = [it for it in iterations if it.num_prefill_tokens and it.num_decode_tokens]
    assert mixed, "no iteration mixed prefill and decode tokens"
    if token_budget <= 64:  # the long prompts were cut into budget-sized chunks
        assert any(
            it.num_prefill_tokens + it.num_decode_tokens == token_budget for it in iterations
        )


def test_preempted_requests_finish_with_the_same_tokens(system_factory, expected_outputs):
    """A KV cache too small for all prompts at once forces preemption by recompute."""
    blocks_bytes = 16 * 16 * 46080 + 4096  # 16 blocks of 16 tokens of this model (+ slack)
    system = system_factory("--token-budget", "64", "--kv-cache-gb", repr(blocks_bytes / 2**30))
    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.05)
    assert outputs == expected_outputs
    stats = system.stats()
    assert stats.num_total_kv_blocks == 16
    assert stats.num_preemptions > 0, "the test meant to force preemption"
    assert stats.num_free_kv_blocks == 16
