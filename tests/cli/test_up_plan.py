"""`sarathi-serve up`'s flags turned into the processes it starts (nothing is started)."""

from __future__ import annotations

import argparse
import json

import pytest

from sarathi_serve.cli import up


def plan(tmp_path, *argv: str) -> list[up.Child]:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    args = parser.parse_args(["--run-dir", str(tmp_path), "--port", "0", "--http-port", "0", *argv])
    return up._plan_children(args, tmp_path)


def flag(child: up.Child, name: str) -> str:
    return child.argv[child.argv.index(name) + 1]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a=sarathi:256@50", up.VariantPlan("a", "sarathi", 256, 50.0)),
        ("b=vllm", up.VariantPlan("b", "vllm", 512, 1.0)),
        ("c=orca@0.25", up.VariantPlan("c", "orca", 512, 0.25)),
        ("ft=faster_transformer:64", up.VariantPlan("ft", "faster_transformer", 64, 1.0)),
    ],
)
def test_variants_parse(text, want):
    assert up.parse_variant(text) == want


@pytest.mark.parametrize(
    "text", ["=sarathi", "a=nope", "a=sarathi:x", "a=sarathi:0", "a=sarathi@-1", "a", ""]
)
def test_bad_variants_are_refused_with_the_syntax(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"NAME=POLICY\[:BUDGET\]\[@WEIGHT\]"):
        up.parse_variant(text)


def test_each_variant_gets_its_scheduler_set_workers_and_redis_prefix(tmp_path):
    children = plan(
        tmp_path,
        "--variant", "a=sarathi:256@50", "--variant", "b=vllm:128@25",
        "--schedulers", "2", "--workers", "2", "--target-tbt-ms", "300",
    )  # fmt: skip
    by_role: dict[str, list[up.Child]] = {}
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
    with pytest.raises(up.StartupError, match="--workers"):
        plan(tmp_path, "--workers", "0")


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
    from sarathi_serve.gateway.config import GatewayConfig
    from sarathi_serve.scheduler.config import SchedulerConfig

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
