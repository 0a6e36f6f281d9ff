"""Fair sharing between tenants and priorities, over the OpenAI streaming API, with null
workers whose steps take a fixed time (a real scheduler, gateway and worker processes).

One tenant ("heavy") bursts far past what the replica serves; another ("light") sends a
request now and then. The waiting queue serves them in fair shares (waiting.py), so the
light tenant's TTFT stays near what it gets alone; first come, first served (everyone the
same tenant) puts it behind the whole burst.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import grpc
import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sarathi_serve.gateway.auth import PRIORITY_KEY
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.gateway.stack import NullStack

STEP_MS = "20"
PROMPT_TOKENS = 200  # two steps of the 128-token budget
HEAVY_PROMPT_TOKENS = 400
SCHEDULER = ("--token-budget", "128", "--max-num-seqs", "32")
LIGHT_REQUESTS, LIGHT_GAP_S = 12, 0.25  # 4 requests/s, 800 prompt tokens/s
# 20 requests/s of twice the tokens: 10x the light load, about twice what the replica
# serves (~5000 prompt tokens/s: 128 per 20 ms step, with the control plane)
HEAVY_PER_LIGHT = 5
_prompts = itertools.count()


def fresh_prompt(num_tokens: int = PROMPT_TOKENS) -> list[int]:
    """Tokens no other request starts with (nothing to reuse from the prefix cache)."""
    first = 1000 + next(_prompts)
    return [first, *range(2000, 2000 + num_tokens - 1)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = NullStack(
        tmp_path_factory.mktemp("fair"),
        scheduler_args=SCHEDULER,
        worker_args=("--null-step-ms", STEP_MS),
    )
    yield s
    s.stop()


async def ttft_ms(
    client: httpx.AsyncClient,
    user: str,
    priority: int | None = None,
    headers=None,
    prompt_tokens: int = PROMPT_TOKENS,
) -> float:
    body = {"prompt": fresh_prompt(prompt_tokens), "max_tokens": 8, "stream": True, "user": user}
    if priority is not None:
        body["priority"] = priority
    start = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = (time.perf_counter() - start) * 1e3
    assert first is not None
    return first


async def light_ttfts(stack, heavy: dict | None, light: dict) -> list[float]:
    """The light tenant's TTFTs (12 requests, 4/s), alone or while a heavy tenant sends
    10x its load in prompt tokens, past capacity (each tenant a client of its own).
    `heavy` and `light`: ttft_ms's keyword arguments (user, priority, headers)."""
    heavy_limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        httpx.AsyncClient(base_url=stack.base_url, timeout=120) as light_client,
        httpx.AsyncClient(base_url=stack.base_url, timeout=120, limits=heavy_limits) as client,
    ):
        burst: list[asyncio.Task[float]] = []
        lights: list[asyncio.Task[float]] = []
        for _ in range(LIGHT_REQUESTS):
            lights.append(asyncio.create_task(ttft_ms(light_client, **light)))
            for _ in range(HEAVY_PER_LIGHT if heavy is not None else 0):
                burst.append(
                    asyncio.create_task(ttft_ms(client, prompt_tokens=HEAVY_PROMPT_TOKENS, **heavy))
                )
                await asyncio.sleep(LIGHT_GAP_S / HEAVY_PER_LIGHT)
            if heavy is None:
                await asyncio.sleep(LIGHT_GAP_S)
        await asyncio.gather(*burst)
        return await asyncio.gather(*lights)


def median_ttft(stack, heavy: dict | None, light: dict) -> float:
    return statistics.median(asyncio.run(light_ttfts(stack, heavy, light)))


def test_a_light_tenant_keeps_its_ttft_beside_a_heavy_one(stack):
    alone = median_ttft(stack, None, {"user": "light"})
    shared = median_ttft(stack, {"user": "heavy"}, {"user": "light"})
    # the same traffic as one tenant: the light requests queue behind the backlog
    fcfs = median_ttft(stack, {"user": "everyone"}, {"user": "everyone"})
    print(f"light TTFT p50: alone {alone:.0f} ms, fair {shared:.0f} ms, one tenant {fcfs:.0f} ms")
    assert shared <= 1.5 * alone, (alone, shared)
    assert fcfs > 3 * alone, (alone, fcfs)  # the load is past capacity: the test can fail


@pytest.mark.parametrize("where", ["body", "header"])
def test_a_higher_priority_goes_ahead_of_its_own_tenant(stack, where):
    urgent = {"priority": -1} if where == "body" else {"headers": {PRIORITY_KEY: "-1"}}
    alone = median_ttft(stack, None, {"user": "light"})
    ahead = median_ttft(stack, {"user": "everyone"}, {"user": "everyone", **urgent})
    print(f"TTFT p50: alone {alone:.0f} ms, priority -1 ({where}) beside a backlog {ahead:.0f}")
    assert ahead <= 1.5 * alone, (alone, ahead)


KEYS = """\
batch-key tenant=acme priority=5  # a batch class: never served below priority 5
live-key tenant=acme
small-key tenant=small max_concurrent=1 tokens_per_minute=600
"""


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    (tmp / "keys").write_text(KEYS)
    s = NullStack(
        tmp,
        "--api-keys-file",
        str(tmp / "keys"),
        scheduler_args=SCHEDULER,
        worker_args=("--null-step-ms", STEP_MS),
    )
    yield s
    s.stop()


LIVE = {"Authorization": "Bearer live-key"}


def test_an_api_keys_tenant_and_priority_apply_to_its_requests(keyed_stack):
    """Both keys are one tenant (no fair share between them); the batch key's backlog
    asks for priority -3 and is served at its key's 5, behind the live key's requests."""
    live = {"user": "u", "headers": {"Authorization": "Bearer live-key"}}
    batch = {"user": "u", "priority": -3, "headers": {"Authorization": "Bearer batch-key"}}
    alone = median_ttft(keyed_stack, None, live)
    ahead = median_ttft(keyed_stack, batch, live)
    print(f"TTFT p50: live key alone {alone:.0f} ms, beside the batch key's backlog {ahead:.0f}")
    assert ahead <= 1.5 * alone, (alone, ahead)


def test_the_latency_series_are_per_class_and_tenant(keyed_stack):
    """The batch key's requests are counted at its priority 5, the live key's at 0, both
    as tenant acme (the series the last test's requests left behind, and one more)."""
    with httpx.Client(base_url=keyed_stack.base_url, timeout=60) as http:
        for key in ("batch-key", "live-key"):
            body = {"prompt": [5, 6, 7], "max_tokens": 3}
            done = http.post(
                "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert done.status_code == 200, done.text
        text = http.get("/metrics").text
    counts = {
        (sample.labels["priority"], sample.labels["tenant"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sarathi_time_to_first_token_seconds_count"
    }
    assert counts.get(("5", "acme"), 0) >= 1 and counts.get(("0", "acme"), 0) >= 1, counts
    assert all(tenant in ("acme", "small") for _, tenant in counts), counts


def test_a_keys_limits_answer_429_with_the_time_to_retry(keyed_stack):
    small = {"Authorization": "Bearer small-key"}
    body = {"prompt": [5, 6, 7], "max_tokens": 40, "stream": True}
    with httpx.Client(base_url=keyed_stack.base_url, timeout=60) as http:
        too_big = http.post("/v1/completions", json={**body, "max_tokens": 600}, headers=small)
        assert too_big.status_code == 429, too_big.text
        assert too_big.headers["retry-after"] == "60"
        assert "more than this API key's 600 per minute" in too_big.json()["error"]["message"]
        with http.stream("POST", "/v1/completions", json=body, headers=small) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # it runs
            second = http.post("/v1/completions", json=body, headers=small)
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            assert "in flight" in second.json()["error"]["message"]
            other = http.post("/v1/completions", json=body, headers=LIVE)  # its own limits
            assert other.status_code == 200
            assert sum(1 for line in lines if line.startswith("data: {")) == 39
        # the first used 43 of its 43 tokens; the second and the 600 were never charged
        for _ in range(40):
            done = http.post("/v1/completions", json={**body, "stream": False}, headers=small)
            if done.status_code == 429:
                break
        assert done.status_code == 429, "600 tokens a minute (10 a second back): ~16 of 43"
        assert 1 <= int(done.headers["retry-after"]) <= 5  # 43 tokens at 10 per second
    request = gpb.GenerateRequest(
        prompt_token_ids=gpb.TokenIds(ids=[5, 6, 7]), sampling=gpb.SamplingOptions(max_tokens=600)
    )
    with grpc.insecure_channel(keyed_stack.grpc_addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(request, metadata=[("authorization", "Bearer small-key")]))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.value.trailing_metadata())["retry-after"] == "60"
