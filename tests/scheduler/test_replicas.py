"""Several model replicas (workers) behind one scheduler, over real gRPC (null workers).

New requests go to the replica with the least outstanding work; when a worker
dies mid-stream its requests move to the other replica and finish with exactly
their number of tokens (none missing, none repeated)."""

from __future__ import annotations

import threading
import time

import grpc

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.gateway.stack import NullStack

MAX_TOKENS = 2000


def _stream(addr: str, results: dict[int, list[int]], index: int, max_tokens: int) -> None:
    with grpc.insecure_channel(addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        request = gpb.GenerateRequest(
            prompt="Hello there",
            sampling=gpb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        )
        tokens: list[int] = []
        results[index] = tokens
        for response in stub.Generate(request, timeout=120):
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
        results: dict[int, list[int]] = {}
        threads = [
            threading.Thread(target=_stream, args=(stack.grpc_addr, results, i, MAX_TOKENS))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(len(v) for v in results.values()) < 600:
            time.sleep(0.01)
        running = [r.num_running + r.num_waiting for r in stack.stats().replicas]
        assert running == [3, 3], running  # least outstanding work: an even split
        stack.workers["default"][0].kill()  # mid-stream
        for t in threads:
            t.join(120)
        assert [len(results[i]) for i in range(6)] == [MAX_TOKENS] * 6
        after = stack.stats()
        assert after.num_workers == 1
        assert after.num_running == after.num_waiting == 0
    finally:
        stack.stop()
