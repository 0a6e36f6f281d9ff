"""Per-key limits: concurrent requests and a token bucket per minute, with the time to
retry; a fake clock."""

import pytest

from sarathi_serve.common.errors import ResourceExhausted
from sarathi_serve.common.errors import retry_after as retry_after_header
from sarathi_serve.gateway.auth import KeyPolicy
from sarathi_serve.gateway.quotas import Quotas


def limits(max_concurrent=None, tokens_per_minute=None):
    return KeyPolicy(max_concurrent=max_concurrent, tokens_per_minute=tokens_per_minute)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_no_limits_take_nothing():
    quotas = Quotas()
    held = [quotas.acquire("t", limits(), 10**9) for _ in range(1000)]  # never refused
    # nor counted: with a limit now, the tenant has nothing in flight
    release = quotas.acquire("t", limits(max_concurrent=1), 1)
    with pytest.raises(ResourceExhausted):
        quotas.acquire("t", limits(max_concurrent=1), 1)
    release(0)
    for unlimited in held:
        unlimited(0)
    quotas.acquire("t", limits(max_concurrent=1), 1)  # releasing them took nothing back


def test_concurrent_requests_are_capped_per_tenant():
    quotas = Quotas()
    first, second = (
        quotas.acquire("a", limits(2, None), 10),
        quotas.acquire("a", limits(2, None), 10),
    )
    with pytest.raises(ResourceExhausted, match="2 requests of this API key are in flight") as e:
        quotas.acquire("a", limits(2, None), 10)
    assert retry_after_header(e.value) == "1"
    quotas.acquire("b", limits(2, None), 10)  # another tenant's own limit
    first(0)
    quotas.acquire("a", limits(2, None), 10)  # one ended: room again
    second(0)


def test_tokens_per_minute_refill_and_refund_what_was_not_generated():
    clock = Clock()
    quotas = Quotas(clock)
    release = quotas.acquire("a", limits(None, 600), 500)  # 100 left
    with pytest.raises(ResourceExhausted, match="100 left, the request needs 200") as e:
        quotas.acquire("a", limits(None, 600), 200)
    assert retry_after_header(e.value) == "10"  # 100 more tokens at 10 per second
    clock.now += 5  # +50
    with pytest.raises(ResourceExhausted):
        quotas.acquire("a", limits(None, 600), 200)
    release(300)  # generated 200 of its max_tokens: 300 back, 450 in the bucket
    quotas.acquire("a", limits(None, 600), 450)
    clock.now += 3600  # never more than a minute's worth
    quotas.acquire("a", limits(None, 600), 600)
    with pytest.raises(ResourceExhausted):
        quotas.acquire("a", limits(None, 600), 1)


def test_a_request_bigger_than_a_minute_of_tokens_is_told_so():
    with pytest.raises(ResourceExhausted, match="more than this API key's 100 per minute") as e:
        Quotas().acquire("a", limits(None, 100), 101)
    assert retry_after_header(e.value) == "60"
