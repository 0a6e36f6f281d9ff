"""Live policy swap under load: sarathi -> vllm -> sarathi loses nothing."""

import subprocess
import sys

from tests.e2e.oracle import PROMPTS, generate_concurrently


def set_policy(scheduler_addr: str, policy: str, run_dir, *flags: str) -> str:
    """`admin --addr` with the run folder for its internal token."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sarathi_serve.cli.main",
            "admin",
            "--addr",
            scheduler_addr,
            "--run-dir",
            str(run_dir),
            "set-policy",
            policy,
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_swap_sarathi_vllm_sarathi_under_load(system_factory, tokenizer, expected_outputs):
    budget = 32
    system = system_factory("--token-budget", str(budget))
    swaps = {3: ["vllm"], 7: ["sarathi", "--target-tbt-factor", "0"]}  # before prompt i
    assert len(tokenizer.encode(PROMPTS[6])) > budget  # a long prompt arrives under vllm
    replies = []

    def on_start(i: int) -> None:
        if i in swaps:
            replies.append(
                set_policy(system.scheduler_addr, swaps[i][0], system.run_dir, *swaps[i][1:])
            )

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.5, on_start=on_start)
    assert outputs == expected_outputs, "a request was lost, restarted or duplicated"
    assert replies[0].startswith("policy vllm") and replies[1].startswith("policy sarathi")

    iterations = system.stats().iterations
    order = [it.policy for it in iterations]
    first_vllm, last_vllm = order.index("vllm"), len(order) - 1 - order[::-1].index("vllm")
    assert set(order[:first_vllm]) == {"sarathi"} and order[-1] == "sarathi"
    assert set(order[first_vllm : last_vllm + 1]) == {"vllm"}
    under_vllm = iterations[first_vllm : last_vllm + 1]
    # vllm runs whole prompts in prefill-only iterations, beyond sarathi's budget
    assert any(it.num_decode_tokens == 0 and it.num_prefill_tokens > budget for it in under_vllm)
    # sarathi never exceeds its budget (the static one, or the one a target fitted) ...
    assert all(
        it.num_prefill_tokens + it.num_decode_tokens <= it.token_budget
        for it in iterations
        if it.policy == "sarathi"
    )
    # ... and swapped back with `--target-tbt-factor 0`, it keeps the static one
    assert {it.token_budget for it in iterations[last_vllm + 1 :]} == {budget}
    assert system.stats().num_running == 0
