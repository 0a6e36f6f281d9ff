"""`sarathi-serve bench compare` in a quick form: two of our policies and a peer by URL
(a null-worker gateway), one tiny workload, real processes; its JSON, table and plots."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.gateway.stack import NullStack


def test_bench_compare_runs_every_config_and_writes_its_report(tmp_path, default_model_dir):
    peer = NullStack(tmp_path / "peer")
    out = tmp_path / "cmp" / "quick"
    try:
        run = subprocess.run(
            [sys.executable, "-m", "sarathi_serve.cli.main", "bench", "compare",
             "--config", "sarathi:64", "--config", "sarathi:64:300", "--config", "sarathi:64:x5",
             "--config", "vllm:64",
             "--config", f"peer={peer.base_url}",
             "--rates", "inf", "--num-requests", "3", "--lengths", "fixed:24:4",
             "--classes", "live=0:1,batch=5:1", "--tenants", "a:1",
             "--up-args", "--kv-cache-gb 0.25", "--out", str(out)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        peer.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    runs = {r["config"]: r for r in report["runs"]}
    assert set(runs) == {"sarathi:64", "sarathi:64:300", "sarathi:64:x5", "vllm:64", "peer"}
    for name, r in runs.items():
        assert (r["completed"], r["failed"]) == (3, 0), name
        assert r["output_throughput"] > 0 and r["median_ttft_ms"] > 0, name
    assert runs["sarathi:64"]["server"] and runs["vllm:64"]["server"], "our scheduler's figures"
    # each config exactly as named, whatever the policy before it had
    assert runs["sarathi:64:300"]["server"]["tbt_target_ms"] == 300
    assert "tbt_target_ms" not in runs["sarathi:64"]["server"]  # the static budget
    table = out.with_suffix(".txt").read_text()
    assert table.splitlines()[0].split()[:3] == ["config", "rate", "done"]
    assert all(name in table for name in runs)
    assert list(out.parent.glob("quick-*.png")), "no plot written"
    for r in runs.values():  # per class and tenant (the peer took the priorities too)
        groups = r["groups"]
        assert groups["tenant a"]["completed"] == 3
        assert sum(g["requests"] for n, g in groups.items() if n.startswith("class ")) == 3
    assert "  tenant a: 3/3 done" in table
