"""What the gateway measures per request: Prometheus series and A/B samples.

Every series carries the model and the variant (scheduler backend) that
served the request; the latency series and the finished requests also carry the
request's `priority` and its API key's `tenant` ("" without keys), each bounded to
`MAX_LABEL_VALUES` values (later ones are "other"). The samples (one row per finished
request, bounded) feed `sarathi-serve ab report`, which needs raw values for confidence
intervals.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sarathi_serve.common.metrics import LATENCY_BUCKETS

MAX_SAMPLES_PER_VARIANT = 50_000
MAX_LABEL_VALUES = 32  # distinct priorities (and tenants) with their own series


class BoundedLabel:
    """A label's values as they come, the first `limit` distinct ones kept and the rest
    "other": a client choosing priorities cannot grow the series without bound."""

    def __init__(self, limit: int = MAX_LABEL_VALUES):
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return "other"
        self._seen.add(value)
        return value


class GatewayMetrics:
    def __init__(self, model: str, registry: CollectorRegistry | None = None):
        self.model = model
        self.registry = registry or CollectorRegistry()
        labels = ["model", "variant"]
        per_class = [*labels, "priority", "tenant"]
        self._priority, self._tenant = BoundedLabel(), BoundedLabel()
        r = self.registry
        self.requests = Counter(
            "sarathi_requests", "Finished requests", [*per_class, "finish_reason"], registry=r
        )
        self.rejected = Counter(
            "sarathi_requests_rejected", "Requests refused before they ran", [*labels, "code"],
            registry=r,
        )  # fmt: skip
        self.pending = Gauge("sarathi_requests_in_flight", "Requests in flight", labels, registry=r)
        self.prompt_tokens = Counter("sarathi_prompt_tokens", "Prompt tokens", labels, registry=r)
        self.generation_tokens = Counter(
            "sarathi_generation_tokens", "Generated tokens", labels, registry=r
        )
        self.ttft = Histogram(
            "sarathi_time_to_first_token_seconds", "Time to first token", per_class,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "sarathi_inter_token_latency_seconds", "Time between output tokens", per_class,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "sarathi_e2e_request_latency_seconds", "Request latency, submit to last token",
            per_class, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.shard_requests = Counter(
            "sarathi_shard_requests", "Requests sent to each shard of a variant",
            [*labels, "shard"], registry=r,
        )  # fmt: skip
        self.samples = RequestSamples()

    def tracker(
        self, variant: str, num_prompt_tokens: int, priority: int = 0, tenant: str = ""
    ) -> RequestTracker:
        self.pending.labels(self.model, variant).inc()
        self.prompt_tokens.labels(self.model, variant).inc(num_prompt_tokens)
        labels = (self.model, variant, self._priority(str(priority)), self._tenant(tenant))
        return RequestTracker(self, variant, labels)

    def reject(self, variant: str, code: str) -> None:
        self.rejected.labels(self.model, variant, code).inc()

    def routed(self, variant: str, shard: int) -> None:
        self.shard_requests.labels(self.model, variant, str(shard)).inc()


@dataclass(slots=True)
class RequestTracker:
    """Timestamps of one request's tokens, folded into the metrics at its end."""

    metrics: GatewayMetrics
    variant: str
    labels: tuple[str, str, str, str]  # model, variant, priority, tenant
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    done: bool = False

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        if self.last_token_at is None:
            self.first_token_at = now
            self.metrics.ttft.labels(*self.labels).observe(now - self.start)
        else:
            gap = (now - self.last_token_at) / count  # several tokens arrive after a resume
            itl = self.metrics.itl.labels(*self.labels)
            for _ in range(count):
                itl.observe(gap)
        self.last_token_at = now
        self.metrics.generation_tokens.labels(self.metrics.model, self.variant).inc(count)

    def finish(self, finish_reason: str, num_output_tokens: int) -> None:
        if self.done:
            return
        self.done = True
        now = time.perf_counter()
        self.metrics.pending.labels(self.metrics.model, self.variant).dec()
        self.metrics.requests.labels(*self.labels, finish_reason).inc()
        self.metrics.e2e.labels(*self.labels).observe(now - self.start)
        if self.first_token_at is not None and finish_reason in ("stop", "length"):
            tpot = (
                (now - self.first_token_at) / (num_output_tokens - 1)
                if num_output_tokens > 1
                else 0.0
            )
            self.metrics.samples.add(
                self.variant,
                ttft=self.first_token_at - self.start,
                tpot=tpot,
                e2e=now - self.start,
                output_tokens=num_output_tokens,
            )


class RequestSamples:
    """The latest finished requests of each variant (for `ab report`)."""

    FIELDS = ("finished_at", "ttft", "tpot", "e2e", "output_tokens")

    def __init__(self, max_per_variant: int = MAX_SAMPLES_PER_VARIANT):
        self._rows: dict[str, deque[tuple[float, ...]]] = defaultdict(
            lambda: deque(maxlen=max_per_variant)
        )

    def add(self, variant: str, ttft: float, tpot: float, e2e: float, output_tokens: int) -> None:
        self._rows[variant].append((time.time(), ttft, tpot, e2e, float(output_tokens)))

    def as_json(self) -> dict[str, dict[str, list[float]]]:
        return {
            variant: {name: [row[i] for row in rows] for i, name in enumerate(self.FIELDS)}
            for variant, rows in self._rows.items()
        }
