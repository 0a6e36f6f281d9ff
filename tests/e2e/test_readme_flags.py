"""The README's `up` flags, environment variables and CLI commands, on one real system.

`up --redis-url --model DIR --api-keys-file --workers 2` with `SARATHI_GATEWAY_API_KEYS`,
`SARATHI_LOG_FORMAT=json` and a short `--session-grace-s` (env), then `generate`,
`admin`, `bench serve`, reflection, `x-request-id`, a gateway kill and `down`.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import grpc
import httpx2 as httpx
import pytest
import redis
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sarathi_serve.common import probes
from sarathi_serve.common.run_records import pid_alive
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.e2e.oracle import PROMPTS, generate_concurrently, generate_tokens, wait_until
from tests.e2e.system import run_cli as cli
from tests.e2e.system import scheduler_metrics
from tests.redis_server import RedisServer

FILE_KEY, ENV_KEY = "key-from-file", "key-from-env"
MODEL = "SmolLM2-135M-Instruct"
GRACE_S = 3


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def system(system_factory, tmp_path_factory, redis_server, default_model_dir):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# the gateway's keys\n{FILE_KEY}\n")
    return system_factory(
        "--token-budget",
        "64",
        "--workers",
        "2",
        "--redis-url",
        redis_server.url,
        "--model",
        str(default_model_dir),
        "--api-keys-file",
        str(keys),
        env={
            "SARATHI_GATEWAY_API_KEYS": ENV_KEY,
            "SARATHI_LOG_FORMAT": "json",
            "SARATHI_SCHEDULER_SESSION_GRACE_S": str(GRACE_S),
        },
    )


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_two_workers_an_external_redis_and_a_model_dir_give_the_oracle_outputs(
    system, redis_server, expected_outputs
):
    roles = [r.role for r in system.records]
    assert "redis" not in roles, "--redis-url: up must not start a Redis of its own"
    assert roles.count("worker") == 2
    stats = system.stats()
    assert stats.num_workers == 2 and len({r.worker_id for r in stats.replicas}) == 2
    assert all(r.worker_id for r in stats.replicas), "a replica has no worker attached"

    outputs = generate_concurrently(system.gateway_addr, api_key=FILE_KEY)
    assert outputs == expected_outputs

    # both replicas computed steps, and the state is in the Redis we gave
    for worker in (r for r in system.records if r.role == "worker"):
        with urllib.request.urlopen(worker.metrics, timeout=10) as response:
            text = response.read().decode()
        steps = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("sarathi_worker_step_seconds_count")
        )
        assert steps > 0, f"worker {worker.pid} never ran a step"
    client = redis.Redis(port=redis_server.port)
    assert len(list(client.scan_iter("sarathi:out:*"))) >= len(PROMPTS)


def test_keys_from_the_file_and_the_environment_gate_both_edges(system):
    url = f"{system.base_url}/completions"
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    refused = httpx.post(url, json=body, timeout=60)
    assert refused.status_code == 401
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url, json=body, headers=_bearer("wrong"), timeout=60).status_code == 401
    for key in (FILE_KEY, ENV_KEY):
        assert httpx.post(url, json=body, headers=_bearer(key), timeout=60).status_code == 200
    with pytest.raises(grpc.RpcError) as err:
        generate_tokens(system.gateway_addr, "Hi", 2)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(generate_tokens(system.gateway_addr, "Hi", 2, api_key=ENV_KEY)) == 2
    # probes stay open
    assert httpx.get(f"http://127.0.0.1:{system.http_port}/health", timeout=10).status_code == 200


def test_generate_with_sampling_flags_and_a_key(system):
    base = ["generate", "Write a haiku about the sea.", "--addr", system.gateway_addr]
    options = [*base, "--max-tokens", "12", "--temperature", "0.8", "--top-p", "0.9"]
    options += ["--top-k", "40", "--min-tokens", "12"]
    sampled = [*options, "--seed", "7"]
    denied = cli(*sampled)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    first = cli(*sampled, "--api-key", FILE_KEY)
    second = cli(*sampled, env={"SARATHI_API_KEY": ENV_KEY})  # the key from the environment
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout and first.stdout.strip(), "a seed must repeat the text"
    other_seed = cli(*options, "--seed", "8", "--api-key", FILE_KEY)
    # without --addr: the gateway of the system `up` recorded in --run-dir
    no_addr = [*sampled[:2], *sampled[4:]]
    assert "--addr" not in no_addr
    found = cli(*no_addr, "--api-key", FILE_KEY, "--run-dir", str(system.run_dir))
    assert found.returncode == 0 and found.stdout == first.stdout, found.stderr
    assert other_seed.returncode == 0 and other_seed.stdout != first.stdout


def test_request_id_is_echoed_and_followed_through_json_logs(system):
    rid = "readme-trace-0001"
    response = httpx.post(
        f"{system.base_url}/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 3},
        headers={**_bearer(FILE_KEY), "x-request-id": rid},
        timeout=60,
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == rid
    logs = system.run_dir / "logs"

    def records(name: str) -> list[dict]:
        lines = (logs / name).read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def mentions(name: str) -> bool:
        return any(record.get("request_id") == rid for record in records(name))

    wait_until(lambda: mentions("gateway.log") and mentions("scheduler-0.log"), "log lines")
    gateway = records("gateway.log")
    assert gateway and all({"level", "logger", "msg"} <= set(record) for record in gateway)


def test_grpc_reflection_lists_the_services(system):
    wanted = {
        system.gateway_addr: "sarathi.v1.Generation",
        system.scheduler_addr: "sarathi.v1.Scheduler",
    }
    for addr, service in wanted.items():
        with grpc.insecure_channel(addr) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {service, "grpc.health.v1.Health"} <= services, (addr, services)


def test_admin_set_policy_with_a_token_budget_and_stats(system):
    swapped = cli("admin", "--run-dir", str(system.run_dir), "set-policy", "sarathi",
                  "--token-budget", "32")  # fmt: skip
    assert swapped.returncode == 0 and swapped.stdout.startswith("policy sarathi"), swapped.stderr
    assert system.stats().token_budget == 32
    tokens = generate_tokens(system.gateway_addr, PROMPTS[6], 4, api_key=FILE_KEY)
    assert len(tokens) == 4
    out = cli("admin", "--run-dir", str(system.run_dir), "stats", "--last", "5", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert len(stats["iterations"]) == 5
    assert stats["tokenBudget"] == 32 and stats["iterations"][-1]["tokenBudget"] == 32
    assert all(it["numPrefillTokens"] + it["numDecodeTokens"] <= 32 for it in stats["iterations"])
    assert "not cached" in stats["routingScore"]
    replica = stats["replicas"][0]
    assert int(replica["prefixCacheQueries"]) >= int(replica["prefixCacheHits"]) >= 0
    table = cli("admin", "--run-dir", str(system.run_dir), "stats", "--last", "3")
    assert table.returncode == 0 and "sarathi" in table.stdout
    assert "prefix cache:" in table.stdout and "routing: lowest" in table.stdout


def test_admin_set_policy_with_a_target_and_back_to_the_static_budget(system):
    run_dir = str(system.run_dir)
    swapped = cli("admin", "--run-dir", run_dir, "set-policy", "sarathi", "--target-tbt-ms", "5000")
    assert swapped.returncode == 0, swapped.stderr
    assert scheduler_metrics(system)["sarathi_scheduler_tbt_target_seconds"] == 5.0
    assert system.stats().token_budget == 32  # what the swap did not name stays
    swapped = cli("admin", "--run-dir", run_dir, "set-policy", "sarathi", "--target-tbt-ms", "0",
                  "--target-tbt-factor", "0")  # fmt: skip
    assert swapped.returncode == 0, swapped.stderr
    assert "sarathi_scheduler_tbt_target_seconds" not in scheduler_metrics(system)
    tokens = generate_tokens(system.gateway_addr, PROMPTS[6], 4, api_key=FILE_KEY)
    assert len(tokens) == 4


def test_bench_serve_against_the_running_system(system, tmp_path):
    out = tmp_path / "serve.json"
    run = cli("bench", "serve", "--url", f"http://127.0.0.1:{system.http_port}",
              "--api-key", FILE_KEY, "--rate", "inf", "--num-requests", "4",
              "--max-output-len", "8", "--classes", "live=0:1,batch=5:1",
              "--tenants", "a:1", "--json", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(out.read_text())
    found = json.dumps(summary)
    assert summary and "output_throughput" in found, summary
    assert summary["groups"]["tenant a"]["completed"] == 4  # per class and tenant
    assert "  tenant a: 4/4 done" in run.stdout


def test_gateway_killed_its_requests_are_aborted_after_the_grace(system):
    """`--session-grace-s`: a gateway that goes away (kill -9) has that long to resume
    its session; then its requests are aborted and their KV blocks freed."""
    gateway = system.record("gateway")
    request = gpb.GenerateRequest(
        prompt="Tell me a very long story.",
        sampling=gpb.SamplingOptions(max_tokens=4000, ignore_eos=True),
    )
    channel = grpc.insecure_channel(system.gateway_addr)
    call = gpb_grpc.GenerationStub(channel).Generate(
        request, timeout=300, metadata=[("authorization", f"Bearer {FILE_KEY}")]
    )
    next(call)
    wait_until(lambda: system.stats().num_running == 1, "the long request running")
    os.kill(gateway.pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        list(call)  # the client sees its gateway go
    channel.close()
    # within the grace the request waits; after it, it is aborted (4000 tokens would
    # take minutes)
    wait_until(lambda: system.stats().num_running == 0, "the request aborted", GRACE_S + 30)
    stats = system.stats()
    assert stats.num_free_kv_blocks == stats.num_total_kv_blocks
    # `up` restarted the gateway and it serves again
    system.refresh()
    assert system.record("gateway").restarts == 1
    wait_until(
        lambda: probes.probe("gateway", system.gateway_addr) == "SERVING", "gateway back", 120
    )
    assert len(generate_tokens(system.gateway_addr, "Hi", 2, api_key=FILE_KEY)) == 2


def test_down_stops_every_process(system):
    pids = [r.pid for r in system.records]
    out = cli("down", "--run-dir", str(system.run_dir))
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert cli("down", "--run-dir", str(system.run_dir)).returncode == 1  # nothing left
