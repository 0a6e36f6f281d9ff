"""`up --pipeline-parallel-size 2` on the real model (SmolLM2-135M: 30 layers, 15 a
stage, or 16 and 14 with `--pipeline-layers`; gloo on CPU): oracle outputs at token
budgets 16 and 512 (swapped live), and a stage killed mid-stream is a worker-group
failure whose requests are recomputed exactly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.oracle import generate_concurrently, wait_until
from tests.e2e.system import run_cli as cli


def stage_pids(worker_pid: int) -> list[int]:
    """The worker's pipeline-stage processes (multiprocessing children it spawned, from
    whichever of its threads)."""
    tasks = Path(f"/proc/{worker_pid}/task").iterdir()
    children = [pid for task in tasks for pid in (task / "children").read_text().split()]
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_two_pipeline_stages_through_up_give_the_oracle_outputs(system_factory, expected_outputs):
    system = system_factory(
        "--pipeline-parallel-size", "2", "--num-threads", "1", "--token-budget", "16"
    )  # fmt: skip
    assert generate_concurrently(system.gateway_addr) == expected_outputs
    assert (
        max(it.num_prefill_tokens + it.num_decode_tokens for it in system.stats().iterations) <= 16
    )
    swapped = cli("admin", "--run-dir", str(system.run_dir), "set-policy", "sarathi",
                  "--token-budget", "512")  # fmt: skip
    assert swapped.returncode == 0, swapped.stderr
    assert generate_concurrently(system.gateway_addr, stagger_s=0.05) == expected_outputs
    log = (system.run_dir / "logs" / "worker.log").read_text()
    for line in ("rank 1 of 2 joined the gloo group", "pipeline stage 0 of 2: layers 0-14",
                 "pipeline stage 1 of 2: layers 15-29"):  # fmt: skip
        assert line in log, log[-3000:]

    # a stage dies mid-stream: the group fails as a whole, `up` restarts the worker, and
    # the scheduler recomputes every running request (prompt + tokens so far)
    (stage_1,) = stage_pids(system.record("worker").pid)
    killed = []

    def on_start(i: int) -> None:
        if i == 5:
            wait_until(lambda: system.stats().num_running >= 3, "3 requests running")
            os.kill(stage_1, signal.SIGKILL)
            killed.append(stage_1)

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.05, on_start=on_start)
    assert killed and outputs == expected_outputs, "a stream lost, repeated or changed tokens"
    system.refresh()
    assert system.record("worker").restarts == 1, "the group's failure restarts the worker"
    assert len(stage_pids(system.record("worker").pid)) == 1, "with its stage anew"


def test_preemption_with_micro_batches_in_flight_and_the_bubble_metric(
    system_factory, expected_outputs
):
    """Stages of 16 and 14 layers (`--pipeline-layers`); 16 KV blocks on the longer
    stage (the group has the fewest any stage has) force preemption by recompute while
    two micro-batches are in flight; the outputs stay the oracle's. Both stages' times
    reach the scheduler: `admin stats` shows each stage's bubble fraction, the
    iterations carry each stage's time, and Prometheus has them."""
    import urllib.request

    blocks_bytes = 16 * 16 * 1536 * 16 + 4096  # 16 blocks of 16 tokens of 16 layers
    system = system_factory(
        "--pipeline-parallel-size", "2", "--pipeline-layers", "16,14", "--num-threads", "1",
        "--token-budget", "64", "--kv-cache-gb", repr(blocks_bytes / 2**30),
    )  # fmt: skip
    assert generate_concurrently(system.gateway_addr, stagger_s=0.05) == expected_outputs
    log = (system.run_dir / "logs" / "worker.log").read_text()
    for line in ("pipeline stage 0 of 2: layers 0-15", "pipeline stage 1 of 2: layers 16-29"):
        assert line in log, log[-3000:]
    stats = system.stats(max_iterations=50)
    assert stats.num_total_kv_blocks == 16
    assert stats.num_preemptions > 0, "the test meant to force preemption"
    (replica,) = stats.replicas
    assert len(replica.stage_busy_seconds) == len(replica.stage_idle_seconds) == 2
    assert all(busy > 0 for busy in replica.stage_busy_seconds)
    assert all(len(it.stage_busy_ms) == 2 for it in stats.iterations if it.batch_size)
    shown = cli("admin", "--run-dir", str(system.run_dir), "stats", "--last", "1")
    assert shown.returncode == 0 and "pipeline bubbles: stage 0 " in shown.stdout, shown.stdout
    metrics = system.record("scheduler").metrics
    assert metrics, "up records the scheduler's Prometheus endpoint"
    with urllib.request.urlopen(metrics, timeout=5) as page:
        text = page.read().decode()
    for series in ("sarathi_scheduler_pipeline_stage_busy_seconds_total",
                   "sarathi_scheduler_pipeline_bubble_ratio_bucket"):  # fmt: skip
        assert f"{series}{{" in text and 'stage="1"' in text, series
