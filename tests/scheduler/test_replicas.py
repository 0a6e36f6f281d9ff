"""Several model replicas (workers) behind one scheduler, over real gRPC (null workers).

New requests go to the replica with the least outstanding work; when a worker
dies mid-stream its requests move to the other replica and finish with exactly
their tokens: a null worker samples `null_token(request id, output index)`, so
each request's output is checked token by token (none missing, none repeated,
none out of order)."""

from __future__ import annotations

import threading
import time

import grpc

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.worker.model_runner import GREEDY, BatchEntry, Sequence
from sarathi_serve.worker.null_runner import (
    NULL_TOKEN_MAX,
    NULL_TOKEN_MIN,
    NullRunner,
    null_token,
)
from tests.gateway.stack import NullStack

MAX_TOKENS = 2000


def _expected(request_id: str, num_tokens: int) -> list[int]:
    return [null_token(request_id, i) for i in range(num_tokens)]


def test_null_tokens_are_a_function_of_request_and_index():
    runner = NullRunner()
    tokens = _expected("r", 1000)
    assert all(NULL_TOKEN_MIN <= t < NULL_TOKEN_MAX and t != runner.eos_token_id for t in tokens)
    assert len(set(tokens)) > 900  # a lost or repeated token changes the sequence
    assert _expected("s", 1000) != tokens
    # A prompt chunk samples nothing; the last chunk samples index 0; a request
    # recomputed elsewhere with 3 outputs already (prompt + outputs) samples index 3.
    fresh = Sequence("r", [5] * 40, 40, GREEDY)
    assert runner.execute([BatchEntry(fresh, 32)]).sampled == {}
    fresh.num_computed_tokens = 32
    assert runner.execute([BatchEntry(fresh, 8)]).sampled == {"r": tokens[0]}
    moved = Sequence("r", [5] * 40 + tokens[:3], 40, GREEDY)
    assert runner.execute([BatchEntry(moved, 43)]).sampled == {"r": tokens[3]}


def _stream(addr: str, tokens: list[int], index: int, max_tokens: int) -> None:
    with grpc.insecure_channel(addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        request = gpb.GenerateRequest(
            request_id=f"replicas-{index}",
            prompt="Hello there",
            sampling=gpb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        )
        for response in stub.Generate(request, timeout=120):
            assert response.request_id == request.request_id
            tokens.extend(response.token_ids)


def test_requests_spread_over_replicas_and_survive_a_worker_kill(tmp_path, default_model_dir):
    stack = NullStack(tmp_path, workers=2)
    try:
        stats = stack.stats()
        assert stats.num_workers == 2
        assert sorted(r.worker_id for r in stats.replicas) == [
            "worker-default-0",
            "worker-default-1",
        ]
        results: dict[int, list[int]] = {i: [] for i in range(6)}
        threads = [
            threading.Thread(target=_stream, args=(stack.grpc_addr, results[i], i, MAX_TOKENS))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(len(v) for v in results.values()) < 600:
            time.sleep(0.01)
        assert sum(len(v) for v in results.values()) >= 600, "the streams did not get going"
        running = [r.num_running + r.num_waiting for r in stack.stats().replicas]
        assert running == [3, 3], running  # least outstanding work: an even split
        stack.workers["default"][0].kill()  # mid-stream
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert [len(results[i]) for i in range(6)] == [MAX_TOKENS] * 6
        for i in range(6):  # content, index by index: none lost, repeated or reordered
            pairs = zip(results[i], _expected(f"replicas-{i}", MAX_TOKENS), strict=True)
            wrong = next((j for j, (got, want) in enumerate(pairs) if got != want), None)
            assert wrong is None, f"request {i}: token {wrong} is not null_token(id, {wrong})"
        after = stack.stats()
        assert after.num_workers == 1
        assert after.num_running == after.num_waiting == 0
    finally:
        stack.stop()
