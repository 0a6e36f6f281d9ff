"""Scheduler configuration: built once in main() from flags and environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from sarathi_serve.scheduler.policies import POLICIES

DEFAULT_PORT = 50052


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    redis_url: str | None = None  # None: no persistence (tests, benchmarks)
    redis_prefix: str = "sarathi"
    policy: str = "sarathi"
    token_budget: int = 512
    max_num_seqs: int = 128
    max_num_waiting: int = 1024
    watermark: float = 0.01
    max_stats: int = 10_000

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"unknown policy {self.policy!r}; known: {', '.join(sorted(POLICIES))}"
            )
        for name in ("token_budget", "max_num_seqs", "max_num_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> SchedulerConfig:
        env = os.environ.get
        d = cls()
        p = argparse.ArgumentParser(
            prog="sarathi-serve-scheduler", description="sarathi-serve scheduler"
        )
        p.add_argument("--host", default=env("SARATHI_SCHEDULER_HOST", d.host))
        p.add_argument("--port", type=int, default=int(env("SARATHI_SCHEDULER_PORT", d.port)))
        p.add_argument(
            "--redis-url", default=env("SARATHI_REDIS_URL"), help="omit to run without persistence"
        )
        p.add_argument("--redis-prefix", default=env("SARATHI_REDIS_PREFIX", d.redis_prefix))
        p.add_argument(
            "--policy", default=env("SARATHI_POLICY", d.policy), choices=sorted(POLICIES)
        )
        p.add_argument(
            "--token-budget", type=int, default=int(env("SARATHI_TOKEN_BUDGET", d.token_budget))
        )
        p.add_argument(
            "--max-num-seqs", type=int, default=int(env("SARATHI_MAX_NUM_SEQS", d.max_num_seqs))
        )
        p.add_argument(
            "--max-num-waiting",
            type=int,
            default=int(env("SARATHI_MAX_NUM_WAITING", d.max_num_waiting)),
        )
        a = p.parse_args(argv)
        return cls(
            host=a.host,
            port=a.port,
            redis_url=a.redis_url or None,
            redis_prefix=a.redis_prefix,
            policy=a.policy,
            token_budget=a.token_budget,
            max_num_seqs=a.max_num_seqs,
            max_num_waiting=a.max_num_waiting,
        )
