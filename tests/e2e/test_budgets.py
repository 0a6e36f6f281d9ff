"""The sarathi policy's budget options through `up`, on the real model.

`--target-tbt-ms`: measured iteration times feed the step-time model that picks each
iteration's budget. `SARATHI_SCHEDULER_LOW_CHUNK_SIZE`: the paper's dynamic chunk
schedule, chunks shrinking as a prompt's prefill progresses.
"""

from tests.e2e.oracle import PROMPTS, generate_concurrently, generate_tokens
from tests.e2e.system import scheduler_metrics

BUDGET = 64
LONG = 6  # the longest prompt


def test_target_tbt_budget_grows_from_measured_iterations(
    system_factory, tokenizer, expected_outputs
):
    """A generous target: once the model has measured iterations, a budget above the
    static one lets a long prompt prefill in one iteration."""
    system = system_factory("--token-budget", str(BUDGET), "--target-tbt-ms", "5000")
    assert generate_concurrently(system.gateway_addr) == expected_outputs
    first = system.stats().iterations
    assert first[0].token_budget == BUDGET, "no data yet: the static budget"
    num_prompt = len(tokenizer.encode(PROMPTS[LONG]))
    assert BUDGET < num_prompt <= 4 * BUDGET
    # a new salt: the prompt is computed, not found in the prefix cache
    again = generate_tokens(system.gateway_addr, PROMPTS[LONG], cache_salt="fresh")
    assert again == expected_outputs[LONG]
    after = system.stats().iterations[len(first) :]
    assert after[0].num_prefill_tokens == num_prompt, "the whole prompt in one iteration"
    assert after[0].token_budget > BUDGET
    # the tail the target promises, in Prometheus: every decode's wait counted, none late
    metrics = scheduler_metrics(system)
    assert metrics["sarathi_scheduler_tbt_intervals_total"] > 0
    assert metrics["sarathi_scheduler_tbt_target_misses_total"] == 0
    assert metrics["sarathi_scheduler_tbt_target_excess_seconds_total"] == 0
    assert metrics["sarathi_scheduler_tbt_target_seconds"] == 5.0
    assert 0 < metrics["sarathi_scheduler_step_target_seconds"] <= 5.0


def test_a_target_factor_sets_the_target_from_measured_decode_steps(
    system_factory, expected_outputs
):
    """`--target-tbt-factor 5`: the target is 5x the measured decode step (the paper's
    strict SLO), then every iteration is fitted to it, still exact."""
    system = system_factory("--token-budget", str(BUDGET), "--target-tbt-factor", "5")
    assert "sarathi_scheduler_tbt_target_seconds" not in scheduler_metrics(system)
    for _ in range(2):  # at least 16 decode-only steps of one request
        assert generate_tokens(system.gateway_addr, PROMPTS[2]) == expected_outputs[2]
    target_s = scheduler_metrics(system)["sarathi_scheduler_tbt_target_seconds"]
    assert 5 * 0.002 < target_s < 5 * 1.0  # 5 x a decode step of 2 ms to 1 s
    seen = len(system.stats().iterations)
    assert generate_concurrently(system.gateway_addr) == expected_outputs  # and still exact
    fitted = system.stats().iterations[seen:]
    assert all(it.num_prefill_tokens + it.num_decode_tokens <= it.token_budget for it in fitted)
    metrics = scheduler_metrics(system)
    assert metrics["sarathi_scheduler_tbt_intervals_total"] > 0  # the target is kept


def test_dynamic_chunk_schedule_shrinks_chunks_as_the_prefill_progresses(
    system_factory, tokenizer, expected_outputs
):
    env = {
        "SARATHI_SCHEDULER_LOW_CHUNK_SIZE": "16",
        "SARATHI_SCHEDULER_CHUNK_SCHEDULE_MAX_TOKENS": "128",
        "SARATHI_SCHEDULER_CHUNK_SCHEDULE_STAGES": "4",  # caps 64, 48, 32, 16 per 32 tokens
    }
    system = system_factory("--token-budget", str(BUDGET), env=env)
    assert generate_tokens(system.gateway_addr, PROMPTS[LONG]) == expected_outputs[LONG]
    num_prompt = len(tokenizer.encode(PROMPTS[LONG]))
    chunks = [it.num_prefill_tokens for it in system.stats().iterations if it.num_prefill_tokens]
    # computed 0 -> cap 64; 64 -> stage 2 (32); 96 and on -> stage 3 (16)
    want = [64, 32] + [16] * ((num_prompt - 96) // 16)
    if (num_prompt - 96) % 16:
        want.append((num_prompt - 96) % 16)
    assert chunks == want
    assert generate_concurrently(system.gateway_addr) == expected_outputs
