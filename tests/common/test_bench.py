"""The benchmark package's pure parts: workloads, summaries, histogram quantiles."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sarathi_serve.bench.serving import RequestResult, _histogram_quantile, summarize
from sarathi_serve.bench.workload import WorkloadSpec, make_requests

TRACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces"


def test_poisson_arrivals_have_the_asked_rate_and_are_reproducible():
    spec = WorkloadSpec("fixed:32:8", rate=4.0, num_requests=2000, seed=3)
    requests = make_requests(spec)
    gaps = np.diff([r.arrival_s for r in requests])
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.08)
    assert [r.prompt_token_ids for r in make_requests(spec)[:3]] == [
        r.prompt_token_ids for r in requests[:3]
    ]
    assert all(len(r.prompt_token_ids) == 32 and r.output_len == 8 for r in requests)


def test_prompt_salt_changes_the_tokens_only():
    """Each round of a comparison gets fresh prompts (no prefix cache can replay them)
    with the lengths and arrival times of the same seed."""
    spec = WorkloadSpec("uniform:4:64:2:9", rate=2.0, num_requests=50, seed=3)
    first = make_requests(spec)
    second = make_requests(dataclasses.replace(spec, prompt_salt=1))
    assert [(r.arrival_s, len(r.prompt_token_ids), r.output_len) for r in first] == [
        (r.arrival_s, len(r.prompt_token_ids), r.output_len) for r in second
    ]
    assert all(a.prompt_token_ids != b.prompt_token_ids for a, b in zip(first, second, strict=True))


def test_shared_prefixes_start_every_prompt_with_one_of_k():
    spec = WorkloadSpec("fixed:20:4", rate=2.0, num_requests=40, seed=1, prefixes="3:50")
    requests = make_requests(spec)
    starts = {tuple(r.prompt_token_ids[:50]) for r in requests}
    assert len(starts) == 3 and all(len(r.prompt_token_ids) == 70 for r in requests)
    assert len({tuple(r.prompt_token_ids[50:]) for r in requests}) == 40  # own tokens
    with pytest.raises(ValueError, match="K:N"):
        make_requests(dataclasses.replace(spec, prefixes="three"))


def test_each_turn_resends_its_conversation_so_far():
    spec = WorkloadSpec("fixed:10:5", rate=2.0, num_requests=12, seed=2, turns=3)
    requests = make_requests(spec)
    conversations = [requests[c::4] for c in range(4)]  # 12 requests, 4 conversations
    for turns in conversations:
        assert [len(r.prompt_token_ids) for r in turns] == [10, 25, 40]
        for before, after in itertools.pairwise(turns):
            assert after.prompt_token_ids[: len(before.prompt_token_ids)] == before.prompt_token_ids
            assert after.arrival_s >= before.arrival_s
    plain = make_requests(dataclasses.replace(spec, turns=1))
    assert [len(r.prompt_token_ids) for r in plain] == [10] * 12


def test_gamma_burstiness_changes_the_spread_not_the_rate():
    bursty = WorkloadSpec(
        "fixed:8:8", rate=2.0, num_requests=4000, arrival="gamma", burstiness=0.25
    )
    gaps = np.diff([r.arrival_s for r in make_requests(bursty)])
    assert np.mean(gaps) == pytest.approx(0.5, rel=0.1)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(2.0, rel=0.15)  # cv = 1/sqrt(shape)


@pytest.mark.skipif(not TRACES.exists(), reason="the paper's traces are not beside the checkout")
def test_trace_lengths_are_scaled_and_capped():
    spec = WorkloadSpec(
        str(TRACES / "sharegpt_8k.csv"), rate=1.0, num_requests=500, length_scale=0.125,
        max_prompt_len=512, max_output_len=64,
    )  # fmt: skip
    requests = make_requests(spec)
    prompts = [len(r.prompt_token_ids) for r in requests]
    assert max(prompts) <= 512 and max(r.output_len for r in requests) <= 64
    assert 100 < np.median(prompts) < 400  # sharegpt's median 1730 x 0.125 ~ 216


def test_summary_uses_vllm_names_and_definitions():
    results = [
        RequestResult(10, 3, ok=True, output_len=3, ttft=0.1, e2el=0.5, itl=[0.2, 0.2]),
        RequestResult(20, 5, ok=True, output_len=5, ttft=0.3, e2el=1.1, itl=[0.2] * 4),
        RequestResult(30, 5, error="HTTP 429"),
    ]
    s = summarize(results, duration=2.0, slo_tpot_ms=150)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert s["total_output_tokens"] == 8 and s["output_throughput"] == 4.0
    assert s["median_ttft_ms"] == pytest.approx(200.0)
    assert s["mean_tpot_ms"] == pytest.approx(200.0)
    assert s["p99_itl_ms"] == pytest.approx(200.0)
    assert s["request_goodput"] == 0.0 and s["errors"] == ["HTTP 429"]


def test_histogram_quantile_interpolates_like_promql():
    buckets = {
        'q_bucket{le="0.1",policy="a"}': 10.0,
        'q_bucket{le="1.0",policy="a"}': 30.0,
        'q_bucket{le="+Inf",policy="a"}': 40.0,
    }
    assert _histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.9 * (20 - 10) / 20)
    assert math.isnan(_histogram_quantile({}, 0.5))


def test_cache_cost_bench_fills_the_cache_and_times_both_cases():
    from sarathi_serve.bench import cache_cost

    rows = cache_cost.main(["--num-blocks", "600", "--running", "8", "--iterations", "5"])
    assert [r["cache"] for r in rows] == ["empty", "full"] * 2
    full = [r for r in rows if r["cache"] == "full"]
    assert all(r["cached_blocks"] >= 0.9 * 600 - 8 * 5 for r in full), rows
    assert all(r["ms"] > 0 for r in rows)


def test_the_chaos_soak_tells_each_outcome_apart():
    from sarathi_serve.bench.chaos import Stream, classify

    def grpc(output, finished=True, error="", hang_up=None):
        return Stream(0, "grpc", 0.0, hang_up, list(output), finished=finished, error=error)

    want = [5, 6, 7]
    assert classify(grpc([5, 6, 7]), want) == "exact"
    assert classify(grpc([5, 6]), want) == "lost"
    assert classify(grpc([5, 6, 7, 7]), want) == "repeated"
    assert classify(grpc([5, 9, 7]), want) == "changed"
    assert classify(grpc([5], finished=False, error="UNAVAILABLE"), want) == "interrupted"
    assert classify(grpc([5, 8], finished=False, error="UNAVAILABLE"), want) == "changed"
    assert classify(grpc([5, 6], finished=False, hang_up=2), want) == "hung up"
    http = Stream(0, "http", 0.0, None, ["Par", "is."], finished=True)
    assert classify(http, ["Paris", "."]) == "exact"
    assert classify(http, ["Paris", ". It"]) == "lost"


def test_structured_bench_times_both_sets(tmp_path):
    from sarathi_serve.bench import structured

    result = structured.main(
        ["--running", "4", "--steps", "2", "--rounds", "1", "--out", str(tmp_path / "mask")]
    )
    assert [len(ts) for ts in result["steps_ms"].values()] == [2, 2]
    assert result["constrained_requests"] == 4 and result["ratio"] > 0
    assert (tmp_path / "mask.json").exists() and (tmp_path / "mask.png").exists()


def test_threads_bench_times_every_case(tmp_path, capsys):
    from sarathi_serve.bench import threads

    out = tmp_path / "threads.json"
    assert threads.main(["--rounds", "1", "--threads", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == list(threads.CASES)
    assert all(ms > 0 for row in results.values() for ms in row.values())
    assert "loaded and stepped on one other thread (the worker)" in capsys.readouterr().out


def test_classes_and_tenants_are_drawn_by_weight_leaving_lengths_and_arrivals():
    spec = WorkloadSpec("uniform:10:50:2:8", rate=2.0, num_requests=400, seed=3)
    plain = make_requests(spec)
    mixed = make_requests(
        dataclasses.replace(spec, classes="live=0:1,batch=5:3", tenants="light:1,heavy:9")
    )
    assert [(r.arrival_s, len(r.prompt_token_ids), r.output_len) for r in mixed] == [
        (r.arrival_s, len(r.prompt_token_ids), r.output_len) for r in plain
    ]
    assert {(r.klass, r.priority) for r in mixed} == {("live", 0), ("batch", 5)}
    assert 0.65 < sum(r.klass == "batch" for r in mixed) / 400 < 0.85
    assert 0.85 < sum(r.tenant == "heavy" for r in mixed) / 400 < 0.95
    assert all((r.klass, r.priority, r.tenant) == ("", 0, "") for r in plain)


@pytest.mark.parametrize(
    "field, text",
    [("classes", "live=0"), ("classes", "=0:1"), ("classes", "live=x:1"),
     ("classes", "live=0:-1"), ("tenants", "heavy"), ("tenants", ":2"), ("tenants", "a:inf")],
)  # fmt: skip
def test_a_bad_mix_names_its_syntax(field, text):
    spec = dataclasses.replace(WorkloadSpec("fixed:4:2", rate=1.0, num_requests=2), **{field: text})
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        make_requests(spec)


def test_results_are_summarized_per_class_and_tenant():
    def done(klass, tenant, ttft, itl):
        return RequestResult(8, 3, True, 3, ttft, 1.0, itl, klass=klass, tenant=tenant)

    results = [done("live", "a", 0.1, [0.05, 0.05]), done("batch", "a", 2.0, [0.5, 0.5]),
               RequestResult(8, 3, klass="batch", tenant="b", error="HTTP 429")]  # fmt: skip
    groups = summarize(results, 10.0)["groups"]
    assert set(groups) == {"class live", "class batch", "tenant a", "tenant b"}
    assert groups["class live"]["median_ttft_ms"] == pytest.approx(100.0)
    assert groups["class batch"]["p99_itl_ms"] == pytest.approx(500.0)
    assert (groups["class batch"]["requests"], groups["class batch"]["completed"]) == (2, 1)
    assert "groups" not in summarize([done("", "", 0.1, [])], 1.0)


def test_the_pipeline_bubble_figures_come_from_the_scheduler_counters():
    """`server_figures` over a run: each stage's idle / (busy + idle), from the
    Prometheus series the scheduler exports (its own registry, rendered and parsed)."""
    from prometheus_client import generate_latest

    from sarathi_serve.bench.serving import parse_metrics, server_figures
    from sarathi_serve.scheduler.metrics import SchedulerMetrics

    metrics = SchedulerMetrics("s0")
    metrics.stages("sarathi", [10.0, 30.0], [0.0, 10.0])
    before = parse_metrics(generate_latest(metrics.registry).decode())
    metrics.stages("sarathi", [30.0, 10.0], [10.0, 30.0])
    metrics.stages("vllm", [30.0, 30.0], [30.0, 0.0])
    after = parse_metrics(generate_latest(metrics.registry).decode())
    fractions = server_figures(before, after)["pipeline_bubble_fraction"]
    assert fractions == pytest.approx([40 / 100, 30 / 70])
    assert "pipeline_bubble_fraction" not in server_figures(after, after)


def test_the_tbt_target_a_run_ended_with_is_reported():
    from sarathi_serve.bench.serving import parse_metrics, server_figures

    after = parse_metrics('sarathi_scheduler_tbt_target_seconds{policy="sarathi"} 0.315\n')
    assert server_figures({}, after)["tbt_target_ms"] == pytest.approx(315.0)
    assert "tbt_target_ms" not in server_figures({}, {})  # a static budget: no target


def test_a_config_names_a_static_budget_a_target_or_a_factor():
    import argparse

    from sarathi_serve.bench.compare import Config

    static, target, factor = (
        Config.parse(t) for t in ("sarathi:512", "sarathi:512:300", "sarathi:256:x5")
    )
    assert (static.token_budget, static.target_tbt_ms, static.target_tbt_factor) == (512, 0, 0)
    assert (target.target_tbt_ms, target.target_tbt_factor) == (300, 0)
    assert (factor.token_budget, factor.target_tbt_ms, factor.target_tbt_factor) == (256, 0, 5)
    assert Config.parse("peer=http://h:1").url == "http://h:1"
    with pytest.raises(argparse.ArgumentTypeError, match="xFACTOR"):
        Config.parse("fast:512")
