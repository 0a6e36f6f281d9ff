"""Per-key limits: concurrent requests and tokens per minute, answered 429 + Retry-After.

An API key's line may set `max_concurrent=N` (requests in flight at once) and
`tokens_per_minute=N`. Limits are per tenant (keys of one `tenant=` share them) and per
gateway replica. Tokens are a bucket of N that refills at N per minute: a request takes
its prompt plus its `max_tokens` when it is admitted (what it may use, as OpenAI counts
it) and gets back what it did not generate when it ends. A refusal says when to retry:
the time until enough tokens are back (for a request that can never fit, a minute and
a message that says so), or a second for the concurrency limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sarathi_serve.common.errors import ResourceExhausted
from sarathi_serve.gateway.auth import KeyPolicy

Release = Callable[[int], None]  # called once with the tokens the request did not use


@dataclass(slots=True)
class _Usage:
    in_flight: int = 0
    tokens: float = 0.0  # in the bucket
    at: float = 0.0  # when `tokens` was last brought up to date


class Quotas:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def acquire(self, tenant: str, limits: KeyPolicy, num_tokens: int) -> Release:
        """Takes one request of `num_tokens` (prompt + max_tokens) from `tenant`'s
        `limits`, or raises ResourceExhausted with `retry_after_s`."""
        max_concurrent, tokens_per_minute = limits.max_concurrent, limits.tokens_per_minute
        if max_concurrent is None and tokens_per_minute is None:
            return _nothing
        now = self._clock()
        usage = self._usage.setdefault(tenant, _Usage(tokens=float(tokens_per_minute or 0), at=now))
        if max_concurrent is not None and usage.in_flight >= max_concurrent:
            raise ResourceExhausted(
                f"rate limit: {usage.in_flight} requests of this API key are in flight "
                f"(its limit is {max_concurrent}): retry when one ends",
                retry_after_s=1.0,
            )
        if tokens_per_minute is not None:
            self._refill(usage, tokens_per_minute, now)
            if num_tokens > tokens_per_minute:
                raise ResourceExhausted(
                    f"rate limit: the request needs {num_tokens} tokens (prompt + max_tokens), "
                    f"more than this API key's {tokens_per_minute} per minute: lower max_tokens",
                    retry_after_s=60.0,
                )
            if usage.tokens < num_tokens:
                wait_s = (num_tokens - usage.tokens) * 60.0 / tokens_per_minute
                raise ResourceExhausted(
                    f"rate limit: {tokens_per_minute} tokens per minute for this API key; "
                    f"{int(usage.tokens)} left, the request needs {num_tokens}",
                    retry_after_s=wait_s,
                )
            usage.tokens -= num_tokens
        usage.in_flight += 1

        def release(unused_tokens: int) -> None:
            usage.in_flight -= 1
            if tokens_per_minute is not None:
                self._refill(usage, tokens_per_minute, self._clock())
                usage.tokens = min(usage.tokens + max(unused_tokens, 0), tokens_per_minute)

        return release

    @staticmethod
    def _refill(usage: _Usage, tokens_per_minute: int, now: float) -> None:
        usage.tokens = min(
            usage.tokens + (now - usage.at) * tokens_per_minute / 60.0, tokens_per_minute
        )
        usage.at = now


def _nothing(unused_tokens: int) -> None:
    return None
