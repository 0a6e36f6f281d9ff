"""The CLI and the system as a user meets it.

up, status, generate, cancellation, errors, down."""

import json
import signal
import time

import grpc
import pytest

from sarathi_serve.common.run_records import pid_alive
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.e2e.system import run_cli as cli


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory("--token-budget", "64")


def test_generate_streams_a_sensible_answer(system):
    out = cli(
        "generate",
        "What is the capital of France?",
        "--addr",
        system.gateway_addr,
        "--max-tokens",
        "32",
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    chat = cli(
        "generate", "--chat", "What is the capital of France?", "--addr", system.gateway_addr
    )
    assert chat.returncode == 0 and "Paris" in chat.stdout


def test_generate_reports_bad_input_clearly(system):
    out = cli("generate", "hello", "--addr", system.gateway_addr, "--max-tokens", "0")
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "max_tokens" in out.stderr
    assert out.stdout.strip() == ""


def test_status_lists_every_process(system):
    out = cli("status", "--json", "--run-dir", str(system.run_dir))
    rows = {row["role"]: row for row in json.loads(out.stdout)}
    assert set(rows) == {"up", "redis", "scheduler", "worker", "gateway"}
    assert all(rows[r]["health"] == "SERVING" for r in ("redis", "worker", "gateway"))
    assert rows["scheduler"]["health"] == "LEADER"
    assert rows["gateway"]["address"] == system.gateway_addr
    table = cli("status", "--run-dir", str(system.run_dir)).stdout
    assert table.splitlines()[0].split()[:4] == ["ROLE", "PID", "ADDRESS", "HEALTH"]


def test_usage_and_finish_reasons(system):
    with grpc.insecure_channel(system.gateway_addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        req = gpb.GenerateRequest(
            prompt="Count: one, two,", sampling=gpb.SamplingOptions(max_tokens=5, temperature=0)
        )
        responses = list(stub.Generate(req, timeout=60))
        assert responses[-1].finish_reason == gpb.FINISH_REASON_LENGTH
        assert (
            responses[-1].usage.completion_tokens == 5 == sum(len(r.token_ids) for r in responses)
        )
        assert all(r.finish_reason == gpb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
        eos = gpb.GenerateRequest(
            prompt="Count: one, two,",
            sampling=gpb.SamplingOptions(
                max_tokens=50, temperature=0, stop_token_ids=[responses[1].token_ids[0]]
            ),
        )
        stopped = list(stub.Generate(eos, timeout=60))
        assert (
            stopped[-1].finish_reason == gpb.FINISH_REASON_STOP
            and stopped[-1].usage.completion_tokens == 2
        )


def test_cancelled_request_frees_its_kv_blocks(system):
    with grpc.insecure_channel(system.gateway_addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        req = gpb.GenerateRequest(
            prompt="Tell me a very long story.",
            sampling=gpb.SamplingOptions(max_tokens=2000, ignore_eos=True),
        )
        call = stub.Generate(req, timeout=120)
        for _ in range(3):
            next(call)
        busy = system.stats()
        assert busy.num_running == 1 and busy.num_free_kv_blocks < busy.num_total_kv_blocks
        call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = system.stats()
        if stats.num_running == 0 and stats.num_free_kv_blocks == stats.num_total_kv_blocks:
            break
        time.sleep(0.05)
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_kv_blocks == stats.num_total_kv_blocks


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process(system_factory, sig):
    system = system_factory("--token-budget", "32")
    pids = [r.pid for r in system.processes.values()]
    system.process.send_signal(sig)
    assert system.process.wait(60) == 0
    assert "sarathi-serve stopped" in "".join(system.output)
    assert not any(pid_alive(pid) for pid in pids)
    assert cli("status", "--run-dir", str(system.run_dir)).returncode == 1


def test_request_and_tokens_are_in_redis(system):
    import redis

    from sarathi_serve.scheduler.store import unpack_tokens

    with grpc.insecure_channel(system.gateway_addr) as channel:
        req = gpb.GenerateRequest(
            request_id="persist-check",
            prompt="The three primary colors are",
            sampling=gpb.SamplingOptions(max_tokens=6, temperature=0),
        )
        streamed = [
            t
            for r in gpb_grpc.GenerationStub(channel).Generate(req, timeout=60)
            for t in r.token_ids
        ]
    host, port = system.record("redis").address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port))
    assert unpack_tokens(client.get("sarathi:out:persist-check")) == streamed
    stored = client.hgetall("sarathi:req:persist-check")
    assert stored[b"status"] == b"finished" and stored[b"stop_reason"] == b"length"
    assert not client.sismember("sarathi:inflight", "persist-check")


def test_logprobs_and_penalties_through_the_system(system):
    with grpc.insecure_channel(system.gateway_addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        req = gpb.GenerateRequest(
            prompt="Once upon a time",
            sampling=gpb.SamplingOptions(max_tokens=6, temperature=0, logprobs=2),
        )
        responses = list(stub.Generate(req, timeout=60))
        tokens = [t for r in responses for t in r.token_ids]
        logprobs = [lp for r in responses for lp in r.logprobs]
        assert [lp.token_id for lp in logprobs] == tokens
        assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in logprobs)
        assert all(lp.top[0].token_id == lp.token_id for lp in logprobs)  # greedy = most likely
        assert all(lp.token for lp in logprobs)
        penalized = gpb.GenerateRequest(
            prompt="Once upon a time",
            sampling=gpb.SamplingOptions(max_tokens=6, temperature=0, repetition_penalty=100.0),
        )
        repeat_free = [t for r in stub.Generate(penalized, timeout=60) for t in r.token_ids]
        assert len(set(repeat_free)) == len(repeat_free)  # a huge penalty forbids any repeat


def test_every_service_exposes_prometheus_metrics(system):
    import urllib.request

    generated = cli("generate", "Hi", "--addr", system.gateway_addr, "--max-tokens", "4")
    assert generated.returncode == 0, generated.stderr
    rows = json.loads(cli("status", "--json", "--run-dir", str(system.run_dir)).stdout)
    endpoints = {row["role"]: row["metrics"] for row in rows if row["metrics"]}
    assert set(endpoints) == {"scheduler", "worker", "gateway"}
    expected = {
        "gateway": ["sarathi_time_to_first_token_seconds_bucket{", 'variant="default"'],
        "scheduler": [
            'sarathi_scheduler_running_requests{policy="sarathi"}',
            "sarathi_scheduler_kv_usage_ratio",
            "sarathi_scheduler_preemptions_total",
            'sarathi_scheduler_queue_seconds_count{policy="sarathi"} ',
            'sarathi_scheduler_tokens_total{kind="decode",policy="sarathi"}',
            'sarathi_scheduler_worker_wait_seconds_count{policy="sarathi"} ',
            'sarathi_scheduler_is_leader{scheduler_id="scheduler-0"} 1.0',
            'sarathi_scheduler_prefix_cache_queries_total{policy="sarathi"}',
            'sarathi_scheduler_prefix_cache_hits_total{policy="sarathi"}',
            'sarathi_scheduler_prefix_cache_blocks{policy="sarathi"}',
        ],
        "worker": ["sarathi_worker_step_seconds_count ", "sarathi_worker_kv_blocks "],
    }
    for role, url in endpoints.items():
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for series in expected[role]:
            assert series in text, (role, series)
