"""`up --tensor-parallel-size 3` (SmolLM2-135M has 3 KV heads) on the real model, with
`--num-threads 1` (one core a rank) and `--max-num-seqs 4`."""

from tests.e2e.oracle import PROMPTS, generate_concurrently


def test_tensor_parallel_group_through_up_gives_the_oracle_outputs(
    system_factory, expected_outputs
):
    system = system_factory(
        "--tensor-parallel-size", "3", "--num-threads", "1", "--max-num-seqs", "4",
        "--token-budget", "64",
    )  # fmt: skip
    assert generate_concurrently(system.gateway_addr) == expected_outputs
    iterations = system.stats().iterations
    # --max-num-seqs: 8 prompts at once, never more than 4 in a batch
    assert max(it.batch_size for it in iterations) == 4 < len(PROMPTS)
    log = (system.run_dir / "logs" / "worker.log").read_text()
    assert "1 torch threads" in log, "--num-threads did not reach the worker"
    for rank in range(3):
        assert f"rank {rank} of 3 joined the gloo group" in log, log[-2000:]
