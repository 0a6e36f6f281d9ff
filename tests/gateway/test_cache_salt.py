"""`cache_salt` (vLLM's field) over HTTP, and salting per API key: requests share the
scheduler's cached prompt prefixes only with requests of the same salt (and key)."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from tests.gateway.stack import NullStack

PROMPT = "The same long system prompt, sent by two tenants. " * 8
KEYS = ("key-of-tenant-a", "key-of-tenant-b")


def _hits(stack: NullStack) -> int:
    return sum(r.prefix_cache_hits for r in stack.stats().replicas)


def _complete(client: httpx.Client, key: str = "", **body) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    reply = client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 2, **body},
        headers=headers,
    )
    assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def salted_stack(tmp_path_factory, default_model_dir):
    s = NullStack(
        tmp_path_factory.mktemp("salted"),
        "--api-keys",
        ",".join(KEYS),
        "--salt-cache-per-api-key",
    )
    yield s
    s.stop()


def test_only_requests_with_the_same_salt_share_a_prefix(http, stack):
    before = _hits(stack)
    _complete(http, cache_salt="alpha")
    _complete(http, cache_salt="beta")
    assert _hits(stack) == before, "a request reused another salt's prefix"
    _complete(http, cache_salt="alpha")
    assert _hits(stack) > before
    reply = http.post("/v1/completions", json={"prompt": "x", "cache_salt": "s" * 257})
    assert reply.status_code == 400 and "cache_salt" in reply.json()["error"]["message"]


def test_salting_per_api_key_keeps_tenants_apart(salted_stack):
    with httpx.Client(base_url=salted_stack.base_url, timeout=30) as client:
        _complete(client, KEYS[0])
        _complete(client, KEYS[1])
        assert _hits(salted_stack) == 0, "one key's requests reused the other's prefix"
        _complete(client, KEYS[0])
        assert _hits(salted_stack) > 0
