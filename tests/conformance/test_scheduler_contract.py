"""Conformance suite of the `sarathi.v1.Scheduler` contract.

Any scheduler implementation can be run against it: point
SARATHI_CONFORMANCE_SCHEDULER at one (host:port, no worker attached, no Redis
needed) and run `pytest tests/conformance`. Without it, the suite starts ours.
The suite plays both peers over real gRPC: a gateway (Session) and a worker
(Attach) that checks every plan it receives against the contract.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
import time

import grpc
import pytest

from sarathi_serve.common.net import free_port
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc

TOKEN, EOS, BLOCK, NUM_BLOCKS, MAX_LEN = 7, 2, 16, 64, 512


@pytest.fixture(scope="module")
def scheduler_addr():
    external = os.environ.get("SARATHI_CONFORMANCE_SCHEDULER")
    if external:
        yield external
        return
    addr = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sarathi_serve.scheduler",
            "--port",
            addr.split(":")[1],
            "--token-budget",
            "32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    grpc.channel_ready_future(grpc.insecure_channel(addr)).result(timeout=30)
    yield addr
    process.terminate()
    process.wait(10)


class ContractWorker(threading.Thread):
    """A worker that computes nothing and asserts the plan invariants of the contract."""

    def __init__(self, addr: str):
        super().__init__(daemon=True)
        self.stub = pb_grpc.SchedulerStub(grpc.insecure_channel(addr))
        self.outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self.tokens: dict[str, int] = {}  # request id -> tokens known (prompt + sampled)
        self.computed: dict[str, int] = {}
        self.blocks: dict[str, list[int]] = {}
        self.new_requests: list[str] = []
        self.freed: list[str] = []
        self.violations: list[str] = []
        self.max_step_tokens = 0

    def run(self) -> None:
        hello = pb.WorkerHello(
            worker_id="conformance",
            model="null",
            num_kv_blocks=NUM_BLOCKS,
            block_size=BLOCK,
            max_model_len=MAX_LEN,
            eos_token_id=EOS,
        )
        self.outbox.put(pb.WorkerMessage(hello=hello))
        try:
            for plan in self.stub.Attach(iter(self.outbox.get, None)):
                self.outbox.put(pb.WorkerMessage(result=self.step(plan)))
        except grpc.RpcError:
            pass  # the scheduler went away at the end of the module

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)

    def step(self, plan: pb.StepPlan) -> pb.StepResult:
        for rid in plan.freed_request_ids:
            self.check(rid in self.tokens, f"freed unknown request {rid}")
            for table in (self.tokens, self.computed, self.blocks):
                table.pop(rid, None)
            self.freed.append(rid)
        for new in plan.new_requests:
            self.check(
                new.request_id not in self.tokens, f"{new.request_id} sent twice without a free"
            )
            self.tokens[new.request_id] = len(new.token_ids)
            self.computed[new.request_id] = 0
            self.blocks[new.request_id] = []
            self.new_requests.append(new.request_id)
        result = pb.StepResult(step_id=plan.step_id)
        self.max_step_tokens = max(self.max_step_tokens, sum(plan.chunk_num_tokens))
        self.check(
            sum(plan.chunk_num_new_blocks) == len(plan.new_block_ids), "block ids of no chunk"
        )
        block_ids = iter(plan.new_block_ids)
        for rid, num_tokens, num_blocks in zip(
            plan.chunk_request_ids, plan.chunk_num_tokens, plan.chunk_num_new_blocks, strict=True
        ):
            new_block_ids = [next(block_ids) for _ in range(num_blocks)]
            self.check(rid in self.tokens, f"chunk of unknown request {rid}")
            if rid not in self.tokens:
                continue
            self.blocks[rid] += new_block_ids
            self.computed[rid] += num_tokens
            self.check(
                self.computed[rid] <= self.tokens[rid], f"{rid}: computes tokens it does not have"
            )
            self.check(
                len(self.blocks[rid]) * BLOCK >= self.computed[rid], f"{rid}: too few KV blocks"
            )
            if self.computed[rid] == self.tokens[rid]:
                result.request_ids.append(rid)
                result.token_ids.append(TOKEN)
                self.tokens[rid] += 1
        live = [b for blocks in self.blocks.values() for b in blocks]
        self.check(len(live) == len(set(live)), "a KV block is held by two requests")
        self.check(all(0 <= b < NUM_BLOCKS for b in live), "a block id outside the worker's cache")
        return result


class Gateway:
    """One Session stream; events sorted by request as they arrive."""

    def __init__(self, addr: str, gateway_id: str):
        self.outbox: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        self.outbox.put(pb.SessionRequest(hello=pb.SessionHello(gateway_id=gateway_id)))
        self.call = pb_grpc.SchedulerStub(grpc.insecure_channel(addr)).Session(
            iter(self.outbox.get, None)
        )
        self.batches: queue.Queue[pb.SessionEvents] = queue.Queue()
        self.violations: list[str] = []
        self.events: collections.defaultdict[str, queue.Queue[pb.RequestEvent]] = (
            collections.defaultdict(queue.Queue)
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for batch in self.call:
                self.batches.put(batch)
                packed = list(
                    zip(batch.token_request_ids, batch.token_ids, batch.token_indexes, strict=True)
                )
                named = [rid for rid, _, _ in packed] + [e.request_id for e in batch.events]
                if len(named) != len(set(named)):
                    self.violations.append(f"a request twice in one SessionEvents: {named}")
                for request_id, token, index in packed:  # as events, to read them alike
                    self.events[request_id].put(
                        pb.RequestEvent(
                            request_id=request_id, token_ids=[token], first_token_index=index
                        )
                    )
                for event in batch.events:
                    self.events[event.request_id].put(event)
        except grpc.RpcError:
            pass  # the scheduler went away at the end of the module

    def submit(self, request_id: str, prompt: list[int], **sampling: object) -> None:
        params = pb.SamplingParams(
            **{"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, **sampling}
        )
        submit = pb.Submit(request_id=request_id, prompt_token_ids=prompt, sampling=params)
        self.outbox.put(pb.SessionRequest(submit=submit))

    def abort(self, request_id: str) -> None:
        self.outbox.put(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))

    def events_until_stop(self, request_id: str, timeout: float = 30.0) -> list[pb.RequestEvent]:
        events: list[pb.RequestEvent] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                events.append(self.events[request_id].get(timeout=0.5))
            except queue.Empty:
                continue
            if events[-1].stop_reason != pb.STOP_REASON_UNSPECIFIED:
                return events
        raise AssertionError(f"{request_id} did not end within {timeout}s: {events}")


@pytest.fixture(scope="module")
def worker(scheduler_addr):
    w = ContractWorker(scheduler_addr)
    w.start()
    yield w
    w.outbox.put(None)


@pytest.fixture
def gateway(scheduler_addr, worker, request):
    return Gateway(scheduler_addr, f"conformance-{request.node.name}")


def test_a_session_is_acknowledged_at_once(gateway):
    first = gateway.batches.get(timeout=10)
    assert isinstance(first, pb.SessionEvents)


def test_tokens_stream_in_order_until_max_tokens(gateway, worker):
    gateway.submit("len", list(range(10, 50)), max_tokens=5)  # 40 tokens: more than one chunk of 32
    events = gateway.events_until_stop("len")
    tokens = [t for e in events for t in e.token_ids]
    assert tokens == [TOKEN] * 5
    indexes = [e.first_token_index for e in events if e.token_ids]
    assert indexes == sorted(indexes) and indexes[0] == 0
    assert events[-1].stop_reason == pb.STOP_REASON_LENGTH
    assert worker.new_requests.count("len") == 1, "a request's tokens go to the worker once"
    assert not worker.violations, worker.violations


def test_eos_and_stop_tokens_end_a_request(gateway):
    gateway.submit("stop", [10, 11, 12], max_tokens=50, stop_token_ids=[TOKEN])
    events = gateway.events_until_stop("stop")
    assert [t for e in events for t in e.token_ids] == [TOKEN]
    assert events[-1].stop_reason == pb.STOP_REASON_EOS


def test_abort_ends_the_request_and_frees_it_on_the_worker(gateway, worker):
    gateway.submit("abort", [10, 11, 12], max_tokens=100_000, ignore_eos=True)
    deadline = time.monotonic() + 10
    while "abort" not in worker.new_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    gateway.abort("abort")
    deadline = time.monotonic() + 10
    while "abort" not in worker.freed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "abort" in worker.freed
    assert not worker.violations, worker.violations


def test_bad_input_is_an_error_event_and_the_session_goes_on(gateway):
    gateway.submit("empty", [])
    events = gateway.events_until_stop("empty")
    assert events[-1].stop_reason == pb.STOP_REASON_ERROR
    assert events[-1].error_code == "INVALID_ARGUMENT" and events[-1].error_message
    gateway.submit("after", [10, 11], max_tokens=2)
    assert [t for e in gateway.events_until_stop("after") for t in e.token_ids] == [TOKEN, TOKEN]


def test_concurrent_requests_share_iterations_within_the_budget(scheduler_addr, gateway, worker):
    for i in range(6):
        gateway.submit(f"c{i}", list(range(10, 30 + 5 * i)), max_tokens=6)
    for i in range(6):
        assert [t for e in gateway.events_until_stop(f"c{i}") for t in e.token_ids] == [TOKEN] * 6
    stats = pb_grpc.SchedulerStub(grpc.insecure_channel(scheduler_addr)).GetStats(
        pb.GetStatsRequest(), timeout=10
    )
    assert stats.is_leader and stats.num_workers == 1 and stats.num_running == 0
    assert worker.max_step_tokens <= stats.token_budget
    assert any(it.num_prefill_tokens and it.num_decode_tokens for it in stats.iterations)
    assert not worker.violations, worker.violations
    assert not gateway.violations, gateway.violations
