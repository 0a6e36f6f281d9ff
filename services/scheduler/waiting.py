"""The waiting queue: priority first, then a fair share between tenants, then arrival.

Requests carry a `priority` (vLLM's convention: lower is served first, default 0) and a
`tenant` (the gateway's API-key tenant, else the OpenAI `user`, else ""). Within one
priority the queue is start-time fair queueing (Goyal et al., SIGCOMM'96): a request's
tag is `max(virtual time, its tenant's last finish tag)`, its tenant's finish tag moves on
by the request's cost over the tenant's weight, and the queue serves the smallest tag; the
virtual time is the tag of the request admitted last. A tenant that sends ten times the
others' load queues behind its own backlog, not in front of theirs; with one tenant the
tags rise with arrival and the queue is first come, first served, as before.

A request's cost is its prompt plus up to `OUTPUT_COST_CAP` of its `max_tokens` (what it
asks of the machine, before anyone knows how long it will answer). A preempted request
keeps its tag and goes back ahead of every new request of its priority (it already waited
its turn once), the oldest first.

The same order shares each iteration's prefill budget (`share_key`): a light tenant's new
prompt is chunked before a heavy tenant's running ones, so it starts as it would alone.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping

from sarathi_serve.scheduler.request import Request

OUTPUT_COST_CAP = 256
MAX_IDLE_TENANTS = 1024  # past this many tenants known, those with nothing owed are forgotten
NEW, PREEMPTED = 1, 0  # the second part of a request's key: preempted ones go first


def parse_tenant_weights(text: str) -> dict[str, float]:
    """`NAME=WEIGHT,...` (the scheduler's --tenant-weights) as a dict; ValueError names
    the entry at fault."""
    weights: dict[str, float] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = entry.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name or not weight > 0 or weight == float("inf"):
            raise ValueError(f"tenant weight {entry!r}: expected NAME=WEIGHT with WEIGHT > 0")
        weights[name] = weight
    return weights


class WaitingQueue:
    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(weights or {})
        self._entries: list[tuple[tuple[int, int, float, int], Request]] = []
        self._finish: dict[str, float] = {}  # each tenant's last finish tag
        self._virtual_time = 0.0
        self._count = 0  # ties broken by insertion order

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[Request]:
        return (request for _, request in self._entries)

    def __getitem__(self, index: int) -> Request:
        return self._entries[index][1]

    @property
    def oldest_arrival(self) -> float:
        """When the longest-waiting request arrived (unix seconds; inf: none waits)."""
        return min((r.arrival_time for _, r in self._entries), default=math.inf)

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def share_key(self, request: Request) -> tuple[int, float, float]:
        """Whose prefill chunk goes first in an iteration, waiting or running: the lower
        priority value, then the tenant that owes the least (its last finish tag; an idle
        tenant's is the virtual time), then the older tag. With one tenant and one
        priority that is arrival order: running prefills first, as the paper's."""
        owed = max(self._virtual_time, self._finish.get(request.tenant, 0.0))
        return request.priority, owed, request.fair_tag

    def append(self, request: Request) -> None:
        """Queues a new (or recovered) request behind its tenant's earlier ones."""
        start = max(self._virtual_time, self._finish.get(request.tenant, 0.0))
        cost = len(request.prompt_token_ids) + min(request.sampling.max_tokens, OUTPUT_COST_CAP)
        self._finish[request.tenant] = start + cost / self.weight(request.tenant)
        request.fair_tag = start
        self._insert(request, NEW)

    def appendleft(self, request: Request) -> None:
        """Queues a preempted request ahead of the new ones of its priority."""
        self._insert(request, PREEMPTED)

    def popleft(self) -> Request:
        request = self._entries.pop(0)[1]
        self._virtual_time = max(self._virtual_time, request.fair_tag)
        if len(self._finish) > MAX_IDLE_TENANTS:  # an idle tenant's tag is the virtual time
            self._finish = {t: f for t, f in self._finish.items() if f > self._virtual_time}
        return request

    def remove(self, request: Request) -> None:
        for index, (_, queued) in enumerate(self._entries):
            if queued is request:
                del self._entries[index]
                return
        raise ValueError(f"request {request.request_id} is not waiting")

    def clear(self) -> None:
        self._entries.clear()

    def _insert(self, request: Request, kind: int) -> None:
        self._count += 1
        key = (request.priority, kind, request.fair_tag, self._count)
        bisect.insort(self._entries, (key, request), key=lambda entry: entry[0])
