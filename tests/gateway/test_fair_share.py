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

import httpx2 as httpx
import pytest

from sarathi_serve.gateway.auth import PRIORITY_KEY
from tests.gateway.stack import NullStack

STEP_MS = "20"
PROMPT_TOKENS = 200  # two steps of the 128-token budget
SCHEDULER = ("--token-budget", "128", "--max-num-seqs", "32")
LIGHT_REQUESTS, LIGHT_GAP_S = 12, 0.25  # 4 requests/s
HEAVY_PER_LIGHT = 10  # 40 requests/s: about twice what the replica serves
_prompts = itertools.count()


def fresh_prompt() -> list[int]:
    """Tokens no other request starts with (nothing to reuse from the prefix cache)."""
    first = 1000 + next(_prompts)
    return [first, *range(2000, 2000 + PROMPT_TOKENS - 1)]


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
    client: httpx.AsyncClient, user: str, priority: int | None = None, headers=None
) -> float:
    body = {"prompt": fresh_prompt(), "max_tokens": 8, "stream": True, "user": user}
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
    10x as many requests, past capacity (each tenant a client of its own). `heavy` and
    `light`: ttft_ms's keyword arguments (user, priority, headers)."""
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
                burst.append(asyncio.create_task(ttft_ms(client, **heavy)))
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


def test_an_api_keys_tenant_and_priority_apply_to_its_requests(keyed_stack):
    """Both keys are one tenant (no fair share between them); the batch key's backlog
    asks for priority -3 and is served at its key's 5, behind the live key's requests."""
    live = {"user": "u", "headers": {"Authorization": "Bearer live-key"}}
    batch = {"user": "u", "priority": -3, "headers": {"Authorization": "Bearer batch-key"}}
    alone = median_ttft(keyed_stack, None, live)
    ahead = median_ttft(keyed_stack, batch, live)
    print(f"TTFT p50: live key alone {alone:.0f} ms, beside the batch key's backlog {ahead:.0f}")
    assert ahead <= 1.5 * alone, (alone, ahead)
