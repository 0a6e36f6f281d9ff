"""`up --variant a=...@w --variant b=...`: an A/B test of two policies on the real model."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx2 as httpx
import redis

from tests.e2e.oracle import MAX_TOKENS, PROMPTS

MODEL = "SmolLM2-135M-Instruct"


def ab_report(system, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sarathi_serve.cli.main", "ab", "report",
         "--gateway", f"http://127.0.0.1:{system.http_port}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_two_variants_each_serve_exactly_with_their_own_state(
    system_factory, expected_outputs, tokenizer
):
    system = system_factory("--variant", "a=sarathi:64@50", "--variant", "b=vllm:64@50")
    rows = system.records
    assert sorted((r.role, r.variant) for r in rows if r.role in ("scheduler", "worker")) == [
        ("scheduler", "a"), ("scheduler", "b"), ("worker", "a"), ("worker", "b"),
    ]  # fmt: skip
    started = time.time()
    served: dict[str, list[list[int]]] = {"a": [], "b": []}
    for variant in ("a", "b"):
        for prompt in PROMPTS[:4]:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS,
                    "temperature": 0, "logprobs": 0}  # fmt: skip
            response = httpx.post(
                f"{system.base_url}/completions",
                json=body,
                headers={"x-sarathi-variant": variant},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-sarathi-variant"] == variant
            served[variant].append(response.json()["choices"][0]["text"])
    oracle = [tokenizer.decode(t, skip_special_tokens=True) for t in expected_outputs[:4]]
    assert served["a"] == served["b"] == oracle, "both policies must give the greedy outputs"

    host, port = next(r for r in rows if r.role == "redis").address.rsplit(":", 1)
    store = redis.Redis(host=host, port=int(port))
    for variant in ("a", "b"):
        assert len(list(store.scan_iter(f"sarathi-{variant}:out:*"))) == 4, variant
        assert store.get(f"sarathi-{variant}:leader") is not None
    assert not list(store.scan_iter("sarathi:*")), "no state outside the variants' prefixes"
    for record in (r for r in rows if r.role == "scheduler"):
        stats = system.stats_at(record.address)
        want = {"a": "sarathi", "b": "vllm"}[record.variant]
        assert stats.policy == want and stats.num_finished == 4 and stats.num_workers == 1

    table = ab_report(system)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["a", "4"] for line in lines), table.stdout
    assert any(line.split()[:2] == ["b", "4"] for line in lines), table.stdout
    assert any(line.startswith("b/a ") for line in lines), table.stdout
    report = json.loads(ab_report(system, "--json", "--since", str(started)).stdout)
    assert {n: v["requests"] for n, v in report["variants"].items()} == {"a": 4, "b": 4}
    assert set(report["ratios"]) == {"b"}
    assert ab_report(system, "--since", str(time.time() + 60)).returncode == 1  # none after

    # `admin` with two variants: stats show each; a swap names its variant
    run = [
        sys.executable,
        "-m",
        "sarathi_serve.cli.main",
        "admin",
        "--run-dir",
        str(system.run_dir),
    ]

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, *args], capture_output=True, text=True, timeout=60)

    stats = admin("stats", "--last", "1")
    assert stats.returncode == 0 and "[a]" in stats.stdout and "[b]" in stats.stdout, stats
    refused = admin("set-policy", "orca")
    assert refused.returncode == 1 and "--variant" in refused.stderr, refused
    swapped = admin("--variant", "b", "set-policy", "orca")
    assert swapped.returncode == 0 and swapped.stdout.count("policy orca") == 1, swapped
    policies = {r.variant: system.stats_at(r.address).policy for r in rows if r.role == "scheduler"}
    assert policies == {"a": "sarathi", "b": "orca"}, "only the named variant swapped"
