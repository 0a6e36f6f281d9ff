"""The tail guard keeps the P99 of intervals (time between tokens as clients see it)
at the target, on a simulated machine whose steps are noisy and carry a fixed cost
outside the step that the step-time model never sees."""

import random

import numpy as np
import pytest

from sarathi_serve.scheduler.policies.sarathi import MIN_PREFILL_TOKENS, SarathiPolicy
from sarathi_serve.scheduler.policies.step_model import StepShape
from sarathi_serve.scheduler.policies.tail import TailGuard

TARGET_MS = 400.0
DECODES = 24


def run(policy: SarathiPolicy, rng: random.Random, steps: int, outside_ms: float) -> list[float]:
    """Iterations of DECODES decodes plus the prefill the policy's fit allows (a backlog
    of prompts: it always has some), on a machine of 60 ms + 0.5 ms per prefill token +
    3 ms per decode, with +-20 % noise; the interval adds `outside_ms`."""
    intervals = []
    for _ in range(steps):
        fit = policy.step_model.max_prefill_tokens(
            StepShape(num_decode=DECODES), policy.guard.step_target_ms
        )
        prefill = policy.token_budget if fit is None else max(min(fit, 1024), MIN_PREFILL_TOKENS)
        execution = (60 + 0.5 * prefill + 3 * DECODES) * rng.uniform(0.8, 1.2)
        interval = execution + outside_ms * rng.uniform(0.5, 1.5)
        policy.observe(StepShape(prefill, DECODES), execution, interval)
        intervals.append(interval)
    return intervals


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def test_the_p99_interval_settles_at_the_target_not_far_below_it():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=TARGET_MS)
    intervals = run(policy, random.Random(1), 3000, outside_ms=40.0)
    settled = intervals[1000:]
    assert p99(settled) <= 1.05 * TARGET_MS
    assert np.median(settled) >= 0.6 * TARGET_MS  # the budget is still used
    # fitting the step to the target itself (no guard) misses at the tail
    unguarded = SarathiPolicy(token_budget=256, target_tbt_ms=TARGET_MS)
    unguarded.guard = TailGuard(TARGET_MS, quantile=0.5)  # the median residual: about 0
    assert p99(run(unguarded, random.Random(1), 3000, outside_ms=40.0)[1000:]) > 1.1 * TARGET_MS


def test_it_follows_a_machine_that_gets_slower_outside_the_step():
    policy = SarathiPolicy(token_budget=256, target_tbt_ms=TARGET_MS)
    rng = random.Random(2)
    run(policy, rng, 1500, outside_ms=10.0)
    before = policy.guard.step_target_ms
    later = run(policy, rng, 3000, outside_ms=120.0)[1500:]
    assert policy.guard.step_target_ms < before - 60  # it gave the new overhead back
    assert p99(later) <= 1.05 * TARGET_MS


def test_misses_are_counted_per_decode_and_only_shaped_steps_set_the_margin():
    guard = TailGuard(100.0)
    assert guard.step_target_ms == 80.0  # START, until residuals are seen
    guard.observe(150.0, 90.0, 0, 10)  # decodes alone: counted, no residual
    assert (guard.num_intervals, guard.num_missed, guard.missed_by_ms) == (10, 10, 500.0)
    guard.observe(50.0, 40.0, 32, 0)  # nobody decoding waited on it
    guard.observe(50.0, None, 32, 4)  # the model was not fitted: no residual
    assert guard.num_intervals == 14 and guard.margin_ms() is None
    for _ in range(99):  # shaped steps: 10 ms over the prediction, one in 100 is 30 over
        guard.observe(90.0, 80.0, 32, 4)
    guard.observe(110.0, 80.0, 32, 4)
    assert guard.margin_ms() == 10.0 and guard.step_target_ms == 90.0
    guard.observe(130.0, 80.0, 32, 400)  # a miss of many decodes weighs more
    assert guard.margin_ms() == 50.0 and guard.step_target_ms == 50.0


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5])
def test_a_quantile_outside_0_1_is_refused(quantile):
    with pytest.raises(ValueError, match="quantile"):
        TailGuard(100.0, quantile=quantile)


def test_a_target_factor_sets_the_target_from_the_measured_decode_step():
    policy = SarathiPolicy(token_budget=256, target_tbt_factor=5.0)
    assert policy.guard is None
    for i in range(15):
        policy.observe(StepShape(0, 2), 80.0 + i % 3)  # small decode-only steps, about 80 ms
        policy.observe(StepShape(200, 8), 600.0)  # mixed steps are modelled, not sampled
    assert policy.guard is None  # 15 samples: still the static budget
    policy.observe(StepShape(0, 1), 81.0)
    assert policy.guard is not None and policy.target_tbt_ms == 5 * 81.0
    assert policy.options()["target_tbt_factor"] == 5.0


def test_target_factor_is_only_for_sarathi_and_not_negative():
    from sarathi_serve.scheduler.policies import make_policy

    with pytest.raises(ValueError, match="target_tbt_factor"):
        make_policy("vllm", token_budget=64, max_num_seqs=8, target_tbt_factor=5.0)
    with pytest.raises(ValueError, match="target_tbt_factor"):
        SarathiPolicy(target_tbt_factor=-1.0)


def test_a_schedulers_target_factor_is_for_sarathi_alone():
    """The scheduler's default is the static budget (docs/benchmarks.md (e): why); a
    factor measures sarathi's target, and a baseline given one is refused by name, as it
    is given a target (`up` passes a factor to sarathi variants only)."""
    from sarathi_serve.scheduler.config import SchedulerConfig

    static = SchedulerConfig().make_policy()
    assert isinstance(static, SarathiPolicy) and static.target_tbt_factor == 0
    policy = SchedulerConfig(target_tbt_factor=5).make_policy()
    assert isinstance(policy, SarathiPolicy) and policy.target_tbt_factor == 5
    with pytest.raises(ValueError, match="target_tbt_factor: only the sarathi policy"):
        SchedulerConfig(policy="vllm", target_tbt_factor=5).make_policy()


def test_shaped_steps_may_spend_the_misses_that_decode_only_steps_leave():
    guard = TailGuard(100.0)
    assert guard.shaped_quantile() == 0.99  # nothing seen
    for _ in range(100):  # a light load: 3 of 4 intervals come from decodes alone
        for _ in range(3):
            guard.observe(50.0, 45.0, 0, 4)
        guard.observe(90.0, 80.0, 32, 4)
    assert guard.shaped_quantile() == pytest.approx(0.96)  # 1 % of all is 4 % of these
    for _ in range(2):  # decodes alone over the target spend the allowance first
        guard.observe(150.0, 140.0, 0, 4)
    assert guard.shaped_quantile() == pytest.approx(1 - (0.01 * 1608 - 8) / 400)
    for _ in range(10):
        guard.observe(150.0, 140.0, 0, 4)
    assert guard.shaped_quantile() == 0.99  # never stricter than asked
    busy = TailGuard(100.0)
    for _ in range(100):  # past capacity: every step shaped
        busy.observe(90.0, 80.0, 32, 4)
    assert busy.shaped_quantile() == 0.99
    sparse = TailGuard(100.0)
    for _ in range(100):  # shaped steps rare: never below MIN_QUANTILE
        for _ in range(30):
            sparse.observe(50.0, 45.0, 0, 4)
        sparse.observe(90.0, 80.0, 32, 4)
    assert sparse.shaped_quantile() == 0.9


def test_on_a_light_load_the_p99_of_all_intervals_stays_at_the_target_with_more_prefill(
    monkeypatch,
):
    """Decode-only steps (far under the target) between shaped ones: the shaped steps'
    margin is set for the P99 of all intervals, not of theirs alone."""

    def light(policy: SarathiPolicy, rng: random.Random) -> tuple[list[float], list[int]]:
        intervals, prefills = [], []
        for i in range(4000):
            if i % 4:  # decodes alone
                execution = (60 + 3 * DECODES) * rng.uniform(0.8, 1.2)
                interval = execution + 40 * rng.uniform(0.5, 1.5)
                policy.observe(StepShape(0, DECODES), execution, interval)
                intervals.append(interval)
                continue
            intervals.extend(run(policy, rng, 1, outside_ms=40.0))
            fit = policy.step_model.max_prefill_tokens(
                StepShape(num_decode=DECODES), policy.guard.step_target_ms
            )
            prefills.append(fit or 0)
        return intervals[1000:], prefills[250:]

    spent, spent_prefill = light(
        SarathiPolicy(token_budget=256, target_tbt_ms=TARGET_MS), random.Random(3)
    )
    assert p99(spent) <= 1.05 * TARGET_MS
    monkeypatch.setattr("sarathi_serve.scheduler.policies.tail.MIN_QUANTILE", 0.99)
    strict, strict_prefill = light(
        SarathiPolicy(token_budget=256, target_tbt_ms=TARGET_MS), random.Random(3)
    )
    assert p99(strict) < p99(spent)
    assert np.mean(spent_prefill) > 1.03 * np.mean(strict_prefill)
