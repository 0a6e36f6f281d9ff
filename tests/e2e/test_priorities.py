"""Priorities through the whole system, with the real model: requests of a higher
priority (a lower value) take the places of running lower ones at the running cap; the
preempted ones resume when there is room and finish with exactly their uninterrupted
greedy tokens (Hugging Face `generate`)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.e2e.oracle import PROMPTS

MAX_TOKENS = 24


def generate(addr: str, ids: list[int], priority: int, started: threading.Event):
    """The greedy tokens of one request and when its stream ended."""
    request = gpb.GenerateRequest(
        prompt_token_ids=gpb.TokenIds(ids=ids),
        sampling=gpb.SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0),
        priority=priority,
    )
    tokens: list[int] = []
    with grpc.insecure_channel(addr) as channel:
        for response in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
            tokens.extend(response.token_ids)
            started.set()
    return tokens, time.monotonic()


def test_urgent_requests_preempt_batch_ones_which_finish_with_their_own_tokens(
    system_factory, tokenizer, reference
):
    system = system_factory(
        "--max-num-seqs", "2", "--token-budget", "64", "--tenant-weights", "gold=3,free=0.5",
        "--target-tbt-ms", "5000", "--batch-priority", "5",
    )  # fmt: skip
    # two batch prompts whose answers run to MAX_TOKENS (they are running when the
    # urgent ones come), then two urgent ones
    prompts = [tokenizer.encode(PROMPTS[i]) for i in (3, 4, 2, 7)]
    expected = [reference(ids, MAX_TOKENS) for ids in prompts]
    assert all(len(tokens) == MAX_TOKENS for tokens in expected[:2])
    batch_started = [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(4) as pool:
        batch = [
            pool.submit(generate, system.gateway_addr, ids, 5, started)
            for ids, started in zip(prompts[:2], batch_started, strict=True)
        ]
        assert all(started.wait(120) for started in batch_started)  # both decode
        urgent = [
            pool.submit(generate, system.gateway_addr, ids, 0, threading.Event())
            for ids in prompts[2:]
        ]
        batch_results = [f.result() for f in batch]
        urgent_results = [f.result() for f in urgent]
    assert [tokens for tokens, _ in batch_results + urgent_results] == expected
    assert system.stats().num_preemptions >= 2, "the urgent requests meant to preempt"
    # the batch requests resumed only when the urgent ones were done
    assert max(end for _, end in urgent_results) < min(end for _, end in batch_results)
    scheduler_logs = "".join(p.read_text() for p in system.run_dir.glob("logs/scheduler*.log"))
    assert "tenant weights gold=3,free=0.5" in scheduler_logs  # up passed them on
    assert "target_tbt_ms=5000, batch_priority=5" in scheduler_logs
