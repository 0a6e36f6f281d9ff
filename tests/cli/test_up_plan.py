"""`sarathi-serve up`'s flags turned into the processes it starts (nothing is started)."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from sarathi_serve.cli import up
from sarathi_serve.cli.up_plan import VariantPlan, parse_variant, plan_children
from sarathi_serve.cli.up_supervisor import STOP_TIMEOUT_S, Child, StartupError
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.policies import DEFAULT_MAX_NUM_SEQS, DEFAULT_TOKEN_BUDGET
from sarathi_serve.worker.config import WorkerConfig

CONFIGS = {"scheduler": SchedulerConfig, "worker": WorkerConfig, "gateway": GatewayConfig}


def plan(tmp_path, *argv: str) -> list[Child]:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    args = parser.parse_args(["--run-dir", str(tmp_path), "--port", "0", "--http-port", "0", *argv])
    return plan_children(args, tmp_path)


def flag(child: Child, name: str) -> str:
    return child.argv[child.argv.index(name) + 1]


def child_config(child: Child):
    """What the child makes of its argv: its service's own parser (`python -m <module>`)."""
    assert child.argv[1:3] == ["-m", f"sarathi_serve.{child.role}"]
    return CONFIGS[child.role].from_args(child.argv[3:])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a=sarathi:256@50", VariantPlan("a", "sarathi", 256, 50.0)),
        ("b=vllm", VariantPlan("b", "vllm", 512, 1.0)),
        ("c=orca@0.25", VariantPlan("c", "orca", 512, 0.25)),
        ("ft=faster_transformer:64", VariantPlan("ft", "faster_transformer", 64, 1.0)),
    ],
)
def test_variants_parse(text, want):
    assert parse_variant(text) == want


@pytest.mark.parametrize(
    "text", ["=sarathi", "a=nope", "a=sarathi:x", "a=sarathi:0", "a=sarathi@-1", "a", ""]
)
def test_bad_variants_are_refused_with_the_syntax(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"NAME=POLICY\[:BUDGET\]\[@WEIGHT\]"):
        parse_variant(text)


def test_each_variant_gets_its_scheduler_set_workers_and_redis_prefix(tmp_path):
    children = plan(
        tmp_path,
        "--variant", "a=sarathi:256@50", "--variant", "b=vllm:128@25",
        "--schedulers", "2", "--workers", "2", "--target-tbt-ms", "300",
    )  # fmt: skip
    by_role: dict[str, list[Child]] = {}
    for child in children:
        by_role.setdefault(child.role, []).append(child)
    assert [len(by_role[r]) for r in ("redis", "scheduler", "worker", "gateway")] == [1, 4, 4, 1]
    for name, policy, budget, tbt in (
        ("a", "sarathi", "256", "300.0"),
        ("b", "vllm", "128", "0.0"),
    ):
        schedulers = [c for c in by_role["scheduler"] if c.variant == name]
        assert len(schedulers) == 2
        assert {flag(c, "--redis-prefix") for c in schedulers} == {f"sarathi-{name}"}
        assert {flag(c, "--policy") for c in schedulers} == {policy}
        assert {flag(c, "--token-budget") for c in schedulers} == {budget}
        assert {flag(c, "--target-tbt-ms") for c in schedulers} == {tbt}  # sarathi only
        workers = [c for c in by_role["worker"] if c.variant == name]
        assert len(workers) == 2
        addrs = ",".join(c.address for c in schedulers)
        assert {flag(c, "--scheduler-addr") for c in workers} == {addrs}
    routes = json.loads((tmp_path / "variants.json").read_text())
    assert [(r["name"], r["weight"]) for r in routes] == [("a", 50.0), ("b", 25.0)]
    gateway = by_role["gateway"][0]
    assert flag(gateway, "--variants-file") == str(tmp_path / "variants.json")
    addresses = [c.address for c in children]
    assert len(set(addresses)) == len(addresses), "two processes were given one port"


def test_without_variants_one_set_and_the_given_redis(tmp_path):
    children = plan(tmp_path, "--redis-url", "redis://127.0.0.1:6390/0", "--policy", "orca")
    assert [c.role for c in children] == ["scheduler", "worker", "gateway"]
    scheduler, worker, gateway = children
    assert flag(scheduler, "--redis-url") == "redis://127.0.0.1:6390/0"
    assert flag(scheduler, "--redis-prefix") == "sarathi"
    assert flag(scheduler, "--policy") == "orca"
    assert (
        flag(gateway, "--scheduler-addr") == scheduler.address == flag(worker, "--scheduler-addr")
    )


def test_bad_counts_are_refused(tmp_path):
    for argv in (["--workers", "0"], ["--shards", "0"]):
        with pytest.raises(StartupError, match="--workers"):
            plan(tmp_path, *argv)
    with pytest.raises(StartupError, match="--null-model"):
        plan(tmp_path, "--null-step-ms", "15")


def test_each_shard_is_a_scheduler_set_with_its_workers_state_and_a_gateway_route(tmp_path):
    children = plan(
        tmp_path, "--variant", "a=sarathi@1", "--variant", "b=vllm@1",
        "--shards", "2", "--schedulers", "2", "--workers", "2",
    )  # fmt: skip
    routes = {
        r["name"]: r["scheduler_addr"] for r in json.loads((tmp_path / "variants.json").read_text())
    }
    for name in ("a", "b"):
        shard_addrs = []
        for shard in ("0", "1"):
            group = [c for c in children if (c.variant, c.shard) == (name, shard)]
            schedulers = [c for c in group if c.role == "scheduler"]
            workers = [c for c in group if c.role == "worker"]
            assert (len(schedulers), len(workers)) == (2, 2)
            assert {flag(c, "--redis-prefix") for c in schedulers} == {f"sarathi-{name}-s{shard}"}
            addrs = ",".join(c.address for c in schedulers)
            assert {flag(c, "--scheduler-addr") for c in workers} == {addrs}
            assert len({c.log_path for c in group}) == 4
            shard_addrs.append(addrs)
        assert routes[name] == ";".join(shard_addrs)
    addresses = [c.address for c in children]
    assert len(set(addresses)) == len(addresses), "two processes were given one port"


def test_null_workers_and_their_step_time_reach_every_worker(tmp_path):
    children = plan(tmp_path, "--null-model", "--null-step-ms", "15", "--workers", "3")
    workers = [child_config(c) for c in children if c.role == "worker"]
    assert [(w.null_model, w.null_step_ms) for w in workers] == [(True, 15.0)] * 3
    (gateway,) = [c for c in children if c.role == "gateway"]
    assert flag(gateway, "--scheduler-addr").count(";") == 0, "one shard: one scheduler set"


def test_a_busy_scheduler_port_moves_to_a_free_one_and_http_can_be_off(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        children = plan(tmp_path, "--scheduler-port", str(port), "--http-port", "0")
    scheduler = next(c for c in children if c.role == "scheduler")
    assert flag(scheduler, "--port") != str(port), "the busy port was planned"
    gateway = next(c for c in children if c.role == "gateway")
    assert flag(gateway, "--http-port") == "0" and gateway.metrics == ""


def test_the_documented_defaults():
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.port, args.http_port, args.scheduler_port, args.worker_port) == (
        50051, 8000, 50052, 50053,
    )  # fmt: skip
    assert (args.policy, args.token_budget, args.max_num_seqs, args.kv_cache_gb) == (
        "sarathi", 512, 128, 1.0,
    )  # fmt: skip
    assert GatewayConfig().max_pending_requests == 1024  # README: back-pressure
    assert SchedulerConfig().max_num_waiting == 1024
    assert SchedulerConfig().session_grace_s == 30.0
    assert args.drain_s == GatewayConfig().drain_s == 25.0  # README: shutdown
    assert SchedulerConfig().worker_stall_s == 5.0 and WorkerConfig().hang_s == 300.0
    # the same numbers as the services' own defaults: defined once, there
    assert (args.token_budget, args.max_num_seqs) == (DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_NUM_SEQS)
    assert (args.port, args.http_port) == (GatewayConfig().port, GatewayConfig().http_port)
    assert (args.scheduler_port, args.worker_port) == (SchedulerConfig().port, WorkerConfig().port)
    assert parse_variant("a=vllm").token_budget == DEFAULT_TOKEN_BUDGET


@pytest.fixture
def environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("SARATHI_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_each_child_parses_its_argv_into_the_config_up_planned(tmp_path, environment):
    children = plan(
        tmp_path,
        "--redis-url", "redis://127.0.0.1:6390/0", "--policy", "vllm", "--token-budget", "64",
        "--max-num-seqs", "8", "--kv-cache-gb", "0.25", "--num-threads", "2",
        "--tensor-parallel-size", "2", "--model", "/models/smol",
        "--api-keys-file", str(tmp_path / "keys.txt"),
    )  # fmt: skip
    scheduler, worker, gateway = (child_config(c) for c in children)
    assert scheduler == SchedulerConfig(
        port=int(children[0].address.rsplit(":", 1)[1]),
        redis_url="redis://127.0.0.1:6390/0", policy="vllm", token_budget=64, max_num_seqs=8,
        scheduler_id="scheduler-0", metrics_port=scheduler.metrics_port,
    )  # fmt: skip
    assert children[0].metrics == f"http://127.0.0.1:{scheduler.metrics_port}/metrics"
    assert worker == WorkerConfig(
        scheduler_addr=children[0].address, model="/models/smol", port=worker.port,
        kv_cache_gb=0.25, num_threads=2, tensor_parallel_size=2, metrics_port=worker.metrics_port,
    )  # fmt: skip
    assert children[1].address == f"127.0.0.1:{worker.port}"
    assert gateway == GatewayConfig(
        scheduler_addr=children[0].address, model="/models/smol", port=0, http_port=0,
        api_keys_file=str(tmp_path / "keys.txt"),
    )  # fmt: skip


def test_the_environment_sets_only_what_up_leaves_to_a_service(tmp_path, environment):
    environment.setenv("SARATHI_WORKER_KV_CACHE_GB", "4")  # up's --kv-cache-gb 1 wins
    environment.setenv("SARATHI_SCHEDULER_TARGET_TBT_MS", "99")  # up's 0.0 wins
    environment.setenv("SARATHI_SCHEDULER_SESSION_GRACE_S", "3")  # up leaves it
    environment.setenv("SARATHI_GATEWAY_API_KEYS", "k")  # up leaves it
    scheduler, worker, gateway = (
        child_config(c) for c in plan(tmp_path, "--redis-url", "redis://r/0")
    )
    assert (worker.kv_cache_gb, scheduler.target_tbt_ms) == (up.KV_CACHE_GB, 0.0)
    assert (scheduler.session_grace_s, gateway.api_keys) == (3.0, "k")


def test_the_readme_switches_for_pacing_and_small_step_threads_reach_the_children(
    tmp_path, environment
):
    scheduler, worker, _ = (child_config(c) for c in plan(tmp_path, "--redis-url", "redis://r/0"))
    assert (scheduler.pace_plans, worker.small_step_tokens) == (True, 32)  # on by default
    environment.setenv("SARATHI_SCHEDULER_PACE_PLANS", "0")
    environment.setenv("SARATHI_WORKER_SMALL_STEP_TOKENS", "0")
    scheduler, worker, _ = (child_config(c) for c in plan(tmp_path, "--redis-url", "redis://r/0"))
    assert (scheduler.pace_plans, worker.small_step_tokens) == (False, 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-parallel-size", "0"], "tensor_parallel_size must be >= 1"),
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1"),
        (["--kv-cache-gb", "-1"], "kv_cache_gb must be >= 0"),
        (["--tenant-weights", "gold=0"], "tenant weight 'gold=0'"),
    ],
)
def test_a_bad_service_value_is_refused_before_anything_starts(tmp_path, argv, message):
    with pytest.raises(StartupError, match=message):
        plan(tmp_path, "--redis-url", "redis://r/0", *argv)


def test_prefix_cache_flags_reach_the_scheduler_and_the_gateway(tmp_path):
    on = {c.role: child_config(c) for c in plan(tmp_path, "--redis-url", "redis://x:1/0")}
    assert on["scheduler"].prefix_caching and not on["gateway"].salt_cache_per_api_key
    argv = ("--redis-url", "redis://x:1/0", "--no-prefix-caching", "--salt-cache-per-api-key")
    off = {c.role: child_config(c) for c in plan(tmp_path, *argv)}
    assert not off["scheduler"].prefix_caching and off["gateway"].salt_cache_per_api_key


def test_tenant_weights_reach_the_scheduler(tmp_path):
    argv = ("--redis-url", "redis://x:1/0", "--tenant-weights", "gold=3,free=0.5")
    scheduler = next(child_config(c) for c in plan(tmp_path, *argv) if c.role == "scheduler")
    assert scheduler.tenant_weights_by_name() == {"gold": 3.0, "free": 0.5}


def test_a_batch_class_reaches_a_sarathi_scheduler(tmp_path):
    argv = ("--redis-url", "redis://x:1/0", "--target-tbt-ms", "400", "--batch-priority", "5")
    scheduler = next(child_config(c) for c in plan(tmp_path, *argv) if c.role == "scheduler")
    assert (scheduler.target_tbt_ms, scheduler.batch_priority) == (400.0, 5)
    assert scheduler.make_policy().batch_priority == 5


def test_the_drain_reaches_the_gateway_and_up_waits_for_it(tmp_path, environment):
    children = plan(tmp_path, "--drain-s", "7")
    gateway = next(c for c in children if c.role == "gateway")
    assert GatewayConfig.from_args(gateway.argv[3:]).drain_s == 7.0
    assert gateway.stop_timeout_s == 7.0 + STOP_TIMEOUT_S  # SIGKILL only after the drain
    assert all(c.stop_timeout_s == STOP_TIMEOUT_S for c in children if c.role != "gateway")


def test_pipeline_stages_reach_every_worker(tmp_path):
    children = plan(tmp_path, "--pipeline-parallel-size", "2", "--tensor-parallel-size", "3")
    workers = [child_config(c) for c in children if c.role == "worker"]
    assert [(w.pipeline_parallel_size, w.tensor_parallel_size) for w in workers] == [(2, 3)]
