"""`to_argv` is the inverse of `parse_config`: every service's config survives the trip."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarathi_serve.common.config import add_field_argument, parse_config, to_argv
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.worker.config import WorkerConfig

ROLES = {SchedulerConfig: "scheduler", GatewayConfig: "gateway", WorkerConfig: "worker"}


@pytest.fixture(autouse=True)
def _no_sarathi_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("SARATHI_")]:
        monkeypatch.delenv(name)


def round_trip(config, **kwargs):
    cls = type(config)
    return parse_config(cls, to_argv(config, **kwargs), role=ROLES.get(cls, "test"))


@pytest.mark.parametrize(
    "config",
    [
        SchedulerConfig(
            host="0.0.0.0", port=6000, redis_url="redis://127.0.0.1:6390/0",
            redis_prefix="sarathi-a", policy="vllm", token_budget=64, max_num_seqs=8,
            watermark=0.05, scheduler_id="scheduler-a-1", lease_ttl_ms=500,
            session_grace_s=2.5, metrics_port=9100, target_tbt_ms=300.0, low_chunk_size=64,
        ),
        GatewayConfig(
            scheduler_addr="127.0.0.1:1,127.0.0.1:2", model="/models/smol", port=7000,
            http_port=0, resume_timeout_s=0.5, variants_file="/run/variants.json",
            api_keys="k1,k2", max_pending_requests=1, max_body_bytes=1 << 10,
        ),
        WorkerConfig(
            scheduler_addr="127.0.0.1:1, 127.0.0.1:2", worker_id="w-0", kv_cache_gb=0.25,
            gpu_memory_utilization=1.0, dtype="bfloat16", num_threads=2, device="cuda:0",
            tensor_parallel_size=2, null_model=True, null_step_ms=1.5, seed=-1, metrics_port=1,
        ),
    ],
    ids=lambda config: type(config).__name__,
)  # fmt: skip
def test_each_service_config_survives_to_argv_and_back(config):
    assert round_trip(config) == config
    assert round_trip(config, include=[f.name for f in dataclasses.fields(config)]) == config


@pytest.mark.parametrize("cls", list(ROLES))
def test_a_default_config_has_no_flags(cls):
    assert to_argv(cls()) == []
    assert round_trip(cls()) == cls()


def test_only_changed_fields_are_given_in_the_flag_spelling():
    config = SchedulerConfig(token_budget=64, target_tbt_ms=300.0, redis_url="redis://r/0")
    assert to_argv(config) == [
        "--redis-url", "redis://r/0", "--token-budget", "64", "--target-tbt-ms", "300.0",
    ]  # fmt: skip
    worker = WorkerConfig(null_model=True, seed=-3)
    assert to_argv(worker) == ["--null-model", "--seed=-3"]  # -3 alone would read as a flag
    assert to_argv(WorkerConfig(), include=["null_model"]) == ["--no-null-model"]


def test_an_included_field_is_pinned_against_the_environment(monkeypatch):
    monkeypatch.setenv("SARATHI_SCHEDULER_TARGET_TBT_MS", "50")
    config = SchedulerConfig()
    assert round_trip(config).target_tbt_ms == 50.0, "a field left out reads the environment"
    assert round_trip(config, include=["target_tbt_ms"]) == config


def test_unknown_fields_and_unspellable_values_are_refused():
    with pytest.raises(ValueError, match="no field tokens"):
        to_argv(SchedulerConfig(), include=["tokens"])
    with pytest.raises(TypeError, match="--seed"):
        to_argv(WorkerConfig(), include=["seed"])  # None has no flag


@dataclass(frozen=True)
class Every:
    """One field of every kind that parse_config reads."""

    name: str = "x"
    count: int = 3
    ratio: float = 0.5
    on: bool = True
    off: bool = False
    limit: int | None = None


@given(
    name=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")),
    count=st.integers(),
    ratio=st.floats(allow_nan=False),
    on=st.booleans(),
    off=st.booleans(),
    limit=st.none() | st.integers(),
)
def test_every_kind_of_field_round_trips(**fields):
    config = Every(**fields)
    assert round_trip(config) == config
    assert round_trip(config, include=["name", "count", "ratio", "on", "off"]) == config


def test_a_field_argument_of_another_command_takes_the_fields_type_and_default():
    parser = argparse.ArgumentParser()
    add_field_argument(parser, SchedulerConfig, "token_budget", "tokens per iteration")
    add_field_argument(parser, SchedulerConfig, "port", "", flag="--scheduler-port")
    add_field_argument(parser, Every, "on", "")
    assert vars(parser.parse_args([])) == {
        "token_budget": SchedulerConfig().token_budget, "scheduler_port": 50052, "on": True,
    }  # fmt: skip
    args = parser.parse_args(["--token-budget", "64", "--scheduler-port", "1", "--no-on"])
    assert (args.token_budget, args.scheduler_port, args.on) == (64, 1, False)
