"""What the gateway measures per request: Prometheus series and A/B samples.

Every series carries the model and the variant (scheduler backend) that
served the request. The samples (one row per finished request, bounded) feed
`sarathi-serve ab report`, which needs raw values for confidence intervals.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sarathi_serve.common.metrics import LATENCY_BUCKETS

MAX_SAMPLES_PER_VARIANT = 50_000


class GatewayMetrics:
    def __init__(self, model: str, registry: CollectorRegistry | None = None):
        self.model = model
        self.registry = registry or CollectorRegistry()
        labels = ["model", "variant"]
        r = self.registry
        self.requests = Counter(
            "sarathi_requests", "Finished requests", [*labels, "finish_reason"], registry=r
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
            "sarathi_time_to_first_token_seconds", "Time to first token", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "sarathi_inter_token_latency_seconds", "Time between output tokens", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "sarathi_e2e_request_latency_seconds", "Request latency, submit to last token",
            labels, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.samples = RequestSamples()

    def tracker(self, variant: str, num_prompt_tokens: int) -> RequestTracker:
        self.pending.labels(self.model, variant).inc()
        self.prompt_tokens.labels(self.model, variant).inc(num_prompt_tokens)
        return RequestTracker(self, variant)

    def reject(self, variant: str, code: str) -> None:
        self.rejected.labels(self.model, variant, code).inc()


@dataclass(slots=True)
class RequestTracker:
    """Timestamps of one request's tokens, folded into the metrics at its end."""

    metrics: GatewayMetrics
    variant: str
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    done: bool = False

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        labels = (self.metrics.model, self.variant)
        if self.last_token_at is None:
            self.first_token_at = now
            self.metrics.ttft.labels(*labels).observe(now - self.start)
        else:
            gap = (now - self.last_token_at) / count  # several tokens arrive after a resume
            itl = self.metrics.itl.labels(*labels)
            for _ in range(count):
                itl.observe(gap)
        self.last_token_at = now
        self.metrics.generation_tokens.labels(*labels).inc(count)

    def finish(self, finish_reason: str, num_output_tokens: int) -> None:
        if self.done:
            return
        self.done = True
        now = time.perf_counter()
        labels = (self.metrics.model, self.variant)
        self.metrics.pending.labels(*labels).dec()
        self.metrics.requests.labels(*labels, finish_reason).inc()
        self.metrics.e2e.labels(*labels).observe(now - self.start)
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
