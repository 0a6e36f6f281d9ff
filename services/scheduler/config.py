"""Scheduler configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.common.config import parse_config
from sarathi_serve.scheduler.policies import (
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_TOKEN_BUDGET,
    POLICIES,
    Policy,
    make_policy,
)
from sarathi_serve.scheduler.waiting import parse_tenant_weights

DEFAULT_PORT = 50052


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    redis_url: str = ""  # empty: no persistence (tests, benchmarks)
    redis_prefix: str = "sarathi"
    policy: str = "sarathi"
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_waiting: int = 1024
    watermark: float = 0.01
    max_stats: int = 10_000
    scheduler_id: str = ""  # empty: hostname-pid
    lease_ttl_ms: int = 3000  # leader lease in Redis; a standby takes over after it expires
    session_grace_s: float = 30.0  # a gateway that went away has this long to resume
    metrics_port: int = 0  # Prometheus /metrics; 0: off
    target_tbt_ms: float = 0.0  # > 0: SLO-driven token budget (sarathi policy)
    target_tbt_factor: float = 0.0  # > 0, no target_tbt_ms: the target from the decode step
    batch_priority: int = 0  # > 0: priorities >= this are batch, the TBT target is not theirs
    low_chunk_size: int = 0  # > 0: the paper's dynamic chunk schedule (sarathi policy)
    chunk_schedule_max_tokens: int = 8192
    chunk_schedule_stages: int = 16
    prefix_caching: bool = True  # reuse the KV of cached prompt prefixes (--no-prefix-caching)
    pace_plans: bool = True  # plan each step just before the one computing ends (pacing.py)
    tenant_weights: str = ""  # NAME=WEIGHT,...: shares of the waiting queue (1 unnamed)
    worker_stall_s: float = 5.0  # a step this long past 4x its predicted time: the worker hangs

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"unknown policy {self.policy!r}; known: {', '.join(sorted(POLICIES))}"
            )
        if self.worker_stall_s < 0:
            raise ValueError(f"worker_stall_s must be >= 0, got {self.worker_stall_s}")
        self.tenant_weights_by_name()  # refuses a malformed list at start
        for name in ("token_budget", "max_num_seqs", "max_num_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def make_policy(self) -> Policy:
        """The policy this scheduler starts with (one per model replica)."""
        return make_policy(
            self.policy,
            token_budget=self.token_budget,
            max_num_seqs=self.max_num_seqs,
            target_tbt_ms=self.target_tbt_ms,
            target_tbt_factor=self.target_tbt_factor,
            batch_priority=self.batch_priority,
            low_chunk_size=self.low_chunk_size,
            chunk_schedule_max_tokens=self.chunk_schedule_max_tokens,
            chunk_schedule_stages=self.chunk_schedule_stages,
        )

    def tenant_weights_by_name(self) -> dict[str, float]:
        return parse_tenant_weights(self.tenant_weights)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> SchedulerConfig:
        return parse_config(cls, argv, role="scheduler", helps=HELPS)


HELPS = {  # --help of the flags (`sarathi-serve up` reuses them)
    "redis_url": "Redis holding request state; empty: no persistence",
    "policy": f"scheduling policy: {', '.join(sorted(POLICIES))}",
    "token_budget": "tokens per iteration (the chunk size)",
    "max_num_seqs": "requests in one iteration's batch at most",
    "max_num_waiting": "queued requests beyond which submits get RESOURCE_EXHAUSTED",
    "lease_ttl_ms": "leader lease TTL; a standby takes over within about this long",
    "target_tbt_ms": "sarathi: pick each iteration's budget to keep the P99 of time between "
    "tokens under this (0: off)",
    "target_tbt_factor": "sarathi, with no --target-tbt-ms: the target is this times the "
    "measured decode step, as the paper set its strict SLO with 5 (the median of the first "
    "16 small decode-only steps; the static budget until then); 0: off",
    "batch_priority": "sarathi, with a TBT target: requests at this priority or a higher "
    "value are the batch class: the target is kept for the others only, and iterations "
    "with no decode of theirs run at the full token budget (0: no batch class)",
    "low_chunk_size": "sarathi: chunks shrink from token_budget to this as a prompt's prefill "
    "progresses (the paper's dynamic chunk schedule; 0: off)",
    "chunk_schedule_max_tokens": "dynamic chunk schedule: prefill progress of the last stage",
    "chunk_schedule_stages": "dynamic chunk schedule: number of chunk sizes",
    "prefix_caching": "reuse the KV of cached prompt prefixes (whole blocks, shared "
    "between requests with the same cache salt); --no-prefix-caching turns it off",
    "pace_plans": "plan each step shortly before the step computing ends, not as it "
    "starts, so that requests arriving meanwhile join it; --no-pace-plans: as it starts",
    "worker_stall_s": "a worker whose step runs longer than this plus 4x the time steps like "
    "it take hangs: it is dropped and its requests are recomputed on another worker "
    "(or on it when it attaches again); 0: never",
    "tenant_weights": "NAME=WEIGHT,... : tenants (an API key's tenant, else the request's "
    "user) share the waiting queue in proportion to their weights; unnamed tenants weigh 1",
    "metrics_port": "port of the Prometheus /metrics endpoint; 0: off",
    "session_grace_s": "how long a disconnected gateway's requests wait for it to resume",
}
