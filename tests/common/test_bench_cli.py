"""The `sarathi-serve bench` entry points, in their quickest forms, through the real CLI.

`bench serve` and `bench compare` need a running system: the e2e tests cover them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sarathi_serve.bench.worker import QUICK_GRID
from sarathi_serve.common.models import DEFAULT_MODEL
from tests.worker.conftest import write_tiny_checkpoint

CLI = [sys.executable, "-m", "sarathi_serve.cli.main", "bench"]


def run_bench(args, timeout, env=None):
    """Runs `sarathi-serve bench ARGS`; its stdout."""
    done = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bench_fleet_reports_each_replicas_rate_against_its_ideal(tmp_path):
    """Two shards of two null workers each (20 ms steps), 4 requests per replica, routed
    by the gateway's shard score: each replica's iterations counted apart (by the
    replica index in the scheduler's stats), every one near its ideal rate (a 2-core
    machine running little else), the requests split evenly."""
    path = tmp_path / "fleet.json"
    argv = ["--replicas", "4", "--shards", "2", "--running", "4", "--step-ms", "20"]
    stdout = run_bench(["fleet", *argv, "--seconds", "2", "--json", str(path)], timeout=240)
    report = json.loads(path.read_text())
    assert report["config"] == {"replicas": "4", "shards": 2, "running": 4, "step_ms": 20.0,
                                "seconds": 2.0}  # fmt: skip
    (row,) = report["results"]
    assert (row["replicas"], row["shards"], row["requests_per_shard"]) == (4, 2, [8, 8])
    assert 0.5 <= row["ideal_rate_min"] <= row["ideal_rate_mean"] <= 1.0
    assert 0 < row["tokens_per_s"] <= 4 * 4 * 1e3 / 20 * 1.05
    assert len(row["scheduler_cpu_ms_per_iteration"]) == 2 and row["worker_wait_ms"] >= 0
    assert "requests per shard" in stdout


def test_bench_control_plane_writes_its_rows(tmp_path):
    """A scheduler, a null worker whose steps take 5 ms and redis-server, as processes:
    one row with Redis off and one with it on, each measured over a second."""
    path = tmp_path / "out" / "control-plane.json"
    argv = ["--running", "2", "--step-ms", "5", "--seconds", "1", "--json", str(path)]
    stdout = run_bench(["control-plane", *argv], timeout=180)
    report = json.loads(path.read_text())
    assert report["config"] == {"running": [2], "step_ms": [5.0], "seconds": 1.0}
    assert report["environment"]["cpus"] >= 1
    rows = report["results"]
    assert [(r["redis"], r["running"], r["step_ms"]) for r in rows] == [
        (False, 2, 5.0),
        (True, 2, 5.0),
    ]
    for row in rows:
        assert row["iterations_per_s"] > 0 and row["ms_per_iteration"] > 0
        assert row["iterations_per_s"] * row["ms_per_iteration"] == pytest.approx(1e3)
        # the worker's measured step holds the null step's sleep, the iteration holds it
        assert 5.0 * 0.95 <= row["worker_ms"] <= row["ms_per_iteration"]
        assert row["iterations_per_s"] <= 1e3 / 5.0
        assert row["exposed_ms"] == pytest.approx(row["ms_per_iteration"] - row["worker_ms"])
        assert row["scheduler_cpu_ms"] > 0 and row["scheduling_ms"] > 0
        assert row["worker_wait_ms"] >= 0
    off, on = rows
    assert on["persist_ms"] > max(0.02, 5 * off["persist_ms"])  # the Redis round trip
    assert "Redis on" in stdout.splitlines()[-1]


def tiny_llama(path):
    """A random-weight Llama small enough for the quick grid's cells to take milliseconds
    (positions up to the grid's 1024-token contexts plus a 512-token chunk)."""
    write_tiny_checkpoint(path, "llama", max_position_embeddings=2048)
    return path


def check_worker_report(report, stdout, model):
    config = report["config"]
    assert (config["model"], config["quick"], config["repeats"]) == (model, True, 1)
    assert config["threads"] >= 1 and config["attention"] and config["linears"]
    assert report["environment"]["torch"] == torch.__version__
    steps = report["steps"]
    assert [(s["decode_tokens"], s["prefill_tokens"], s["context"]) for s in steps] == QUICK_GRID
    packed = config["linears"] == "onednn"  # the second floor: HF with our packed linears
    for step in steps:
        assert step["ours_ms"] > 0 and step["floor_ms"] > 0
        assert step["ratio"] == pytest.approx(step["ours_ms"] / step["floor_ms"])
        if packed:
            assert step["packed_floor_ms"] > 0
            assert step["packed_ratio"] == pytest.approx(step["ours_ms"] / step["packed_floor_ms"])
        else:
            assert step["packed_floor_ms"] is None and step["packed_ratio"] is None
    assert [d["batch_size"] for d in report["decode"]] == [1, 8, 32, 64]
    for row in report["decode"]:
        assert row["ours_tps"] > 0 and row["hf_generate_tps"] > 0
        assert row["ratio"] == pytest.approx(row["ours_tps"] / row["hf_generate_tps"])
    assert report["worst_step_ratio"] == max(s["ratio"] for s in steps)
    assert stdout.splitlines()[-1].startswith("worst step ratio (ours / floor):")


def test_bench_worker_quick_on_a_tiny_model(tmp_path):
    model = str(tiny_llama(tmp_path / "tiny-llama"))
    path = tmp_path / "out" / "worker.json"
    argv = ["--quick", "--repeats", "1", "--model", model, "--json", str(path)]
    stdout = run_bench(["worker", *argv], timeout=580)
    check_worker_report(json.loads(path.read_text()), stdout, model)


@pytest.mark.slow  # the documented quick run: ~4 min idle, over 15 min on a busy 2-core box
@pytest.mark.timeout(3600)
def test_bench_worker_quick_on_the_default_model(tmp_path):
    path = tmp_path / "worker.json"
    stdout = run_bench(["worker", "--quick", "--repeats", "1", "--json", str(path)], 3500)
    check_worker_report(json.loads(path.read_text()), stdout, DEFAULT_MODEL)
