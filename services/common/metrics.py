"""Prometheus plumbing shared by the services: one registry per process, no globals."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

# Seconds: from a fast decode step on a GPU to a long prefill queue on a CPU.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serves `/metrics` on its own port (scheduler, worker); 0 disables it."""
    if port:
        start_http_server(port, addr=host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", host, port)
