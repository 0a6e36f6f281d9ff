"""Conformance suite of the `sarathi.v1.Scheduler` contract.

Any scheduler implementation can be run against it: point
SARATHI_CONFORMANCE_SCHEDULER at one (host:port, no worker attached, no Redis
needed) and run `pytest tests/conformance`. Without it, the suite starts ours.
The suite plays both peers over real gRPC: a gateway (Session) and a worker
(Attach) that checks every plan it receives against the contract.

The worker's tokens are a function of (request, output index) (`token_of`):
the null worker's hash, except where SCRIPT puts an EOS or a stop token at a
chosen index. So the gateway side checks each request's exact sequence (none
lost, repeated or reordered) and that it ends where it must, with nothing after.
A failure in either peer's thread (an RPC error, a broken plan) fails the test
at once, with that error.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from sarathi_serve.common.net import free_port
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.worker.null_runner import NULL_TOKEN_MIN, null_token

EOS, STOP, BLOCK, NUM_BLOCKS, MAX_LEN, VOCAB = 2, 5, 16, 64, 512, 1 << 20
assert max(EOS, STOP) < NULL_TOKEN_MIN  # the worker never samples them unless scripted
# request id -> {output index: token}: where the worker samples EOS or STOP
SCRIPT: dict[str, dict[int, int]] = {
    "eos": {3: EOS},
    "stop": {2: STOP},
    "ignore-eos": {1: EOS},
    "min-tokens": {1: EOS, 4: EOS},
}
SLOW_S = {"abort": 0.02}  # request id -> seconds each step of it takes on the worker
REFUSED = "refused"  # the worker fails a request with this id (a RequestFailure) once it runs


def token_of(request_id: str, index: int) -> int:
    """The token the contract worker samples at output index `index` of a request."""
    return SCRIPT.get(request_id, {}).get(index, null_token(request_id, index))


def expected(request_id: str, num_tokens: int) -> list[int]:
    return [token_of(request_id, i) for i in range(num_tokens)]


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


def read_until_closed(peer: Any, stream: Any, handle: Callable[[Any], None]) -> None:
    """Hands each message of `stream` to `handle`. Whatever ends it other than the peer's
    own close() (a CANCELLED after it) is kept in `peer.error`, raised by the test's waits."""
    try:
        for message in stream:
            handle(message)
        if not peer.closing:
            raise AssertionError("the scheduler ended the stream")
    except grpc.RpcError as exc:
        if not (peer.closing and exc.code() == grpc.StatusCode.CANCELLED):
            peer.error = exc
    except BaseException as exc:
        peer.error = exc


class ContractWorker(threading.Thread):
    """A worker that computes nothing and asserts the plan invariants of the contract."""

    def __init__(self, addr: str):
        super().__init__(daemon=True)
        self.stub = pb_grpc.SchedulerStub(grpc.insecure_channel(addr))
        self.outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self.call: Any = None  # the Attach call, to cancel
        self.closing = False
        self.error: BaseException | None = None  # what ended the thread, if not close()
        self.tokens: dict[str, int] = {}  # request id -> tokens known (prompt + sampled)
        self.prompt_len: dict[str, int] = {}
        self.computed: dict[str, int] = {}
        self.blocks: dict[str, list[int]] = {}
        self.new_requests: list[str] = []
        self.samplings: dict[str, pb.SamplingParams] = {}  # request id -> as last sent new
        self.cached_prefix: dict[str, int] = {}  # request id -> num_computed_tokens when new
        self.tables: dict[str, list[int]] = {}  # request id -> its last block table
        self.freed: list[str] = []
        self.failed: set[str] = set()  # reported as failures: the scheduler frees them no more
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
            vocab_size=VOCAB,
        )
        self.outbox.put(pb.WorkerMessage(hello=hello))
        self.call = self.stub.Attach(iter(self.outbox.get, None))
        read_until_closed(
            self, self.call, lambda plan: self.outbox.put(pb.WorkerMessage(result=self.step(plan)))
        )

    def close(self) -> None:
        """Ends the Attach stream (half-close, else cancel) and the thread."""
        self.closing = True
        self.outbox.put(None)
        self.join(10)
        if self.is_alive() and self.call is not None:
            self.call.cancel()
            self.join(10)
        assert not self.is_alive(), "the worker thread did not end"

    def raise_error(self) -> None:
        """Raises what ended the worker thread (at once, not as a later timeout)."""
        if self.error is not None:
            raise AssertionError(f"the contract worker failed: {self.error!r}") from self.error
        assert self.closing or self.is_alive(), "the contract worker thread ended"

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)

    def step(self, plan: pb.StepPlan) -> pb.StepResult:
        for rid in plan.freed_request_ids:
            self.check(rid in self.tokens, f"freed unknown request {rid}")
            for table in (self.tokens, self.prompt_len, self.computed, self.blocks):
                table.pop(rid, None)
            self.freed.append(rid)
        for new in plan.new_requests:
            self.failed.discard(new.request_id)  # a new request of the same id
            self.check(
                new.request_id not in self.tokens, f"{new.request_id} sent twice without a free"
            )
            self.check(
                list(new.token_ids[len(new.token_ids) - new.num_output_tokens :])
                == expected(new.request_id, new.num_output_tokens),
                f"{new.request_id}: sent back with outputs the worker did not sample",
            )
            self.tokens[new.request_id] = len(new.token_ids)
            self.prompt_len[new.request_id] = len(new.token_ids) - new.num_output_tokens
            # a cached prefix: whole blocks, never the last token (it is sampled from)
            self.check(
                new.num_computed_tokens % BLOCK == 0
                and new.num_computed_tokens < len(new.token_ids),
                f"{new.request_id}: a cached prefix of {new.num_computed_tokens} tokens",
            )
            self.computed[new.request_id] = new.num_computed_tokens
            self.cached_prefix[new.request_id] = new.num_computed_tokens
            self.blocks[new.request_id] = []
            self.new_requests.append(new.request_id)
            self.samplings[new.request_id] = new.sampling
        result = pb.StepResult(step_id=plan.step_id)
        self.max_step_tokens = max(self.max_step_tokens, sum(plan.chunk_num_tokens))
        self.check(
            sum(plan.chunk_num_new_blocks) == len(plan.new_block_ids), "block ids of no chunk"
        )
        block_ids = iter(plan.new_block_ids)
        time.sleep(max((SLOW_S.get(rid, 0.0) for rid in plan.chunk_request_ids), default=0.0))
        for rid, num_tokens, num_blocks in zip(
            plan.chunk_request_ids, plan.chunk_num_tokens, plan.chunk_num_new_blocks, strict=True
        ):
            new_block_ids = [next(block_ids) for _ in range(num_blocks)]
            # a plan sent before the scheduler saw a failure may still name the request
            self.check(rid in self.tokens or rid in self.failed, f"chunk of unknown request {rid}")
            if rid not in self.tokens:
                continue
            if rid == REFUSED:  # fails alone; the worker forgets it
                result.failures.add(
                    request_id=rid, error_code="INTERNAL", error_message="the worker failed"
                )
                for table in (self.tokens, self.prompt_len, self.computed, self.blocks):
                    table.pop(rid, None)
                self.failed.add(rid)
                continue
            self.blocks[rid] += new_block_ids
            self.tables[rid] = list(self.blocks[rid])
            written = {
                self.blocks[rid][pos // BLOCK]
                for pos in range(self.computed[rid], self.computed[rid] + num_tokens)
                if pos // BLOCK < len(self.blocks[rid])
            }
            others = {b for other, blocks in self.blocks.items() if other != rid for b in blocks}
            self.check(not written & others, f"{rid}: writes into a block another request holds")
            self.computed[rid] += num_tokens
            self.check(
                self.computed[rid] <= self.tokens[rid], f"{rid}: computes tokens it does not have"
            )
            self.check(
                len(self.blocks[rid]) * BLOCK >= self.computed[rid], f"{rid}: too few KV blocks"
            )
            if self.computed[rid] == self.tokens[rid]:
                result.request_ids.append(rid)
                result.token_ids.append(token_of(rid, self.tokens[rid] - self.prompt_len[rid]))
                self.tokens[rid] += 1
        live = [b for blocks in self.blocks.values() for b in blocks]
        for blocks in self.blocks.values():
            self.check(len(blocks) == len(set(blocks)), "a request holds a KV block twice")
        self.check(all(0 <= b < NUM_BLOCKS for b in live), "a block id outside the worker's cache")
        return result


class Gateway:
    """One Session stream; events sorted by request as they arrive."""

    def __init__(self, addr: str, gateway_id: str, worker: ContractWorker):
        self.worker = worker
        self.outbox: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        self.outbox.put(pb.SessionRequest(hello=pb.SessionHello(gateway_id=gateway_id)))
        self.call = pb_grpc.SchedulerStub(grpc.insecure_channel(addr)).Session(
            iter(self.outbox.get, None)
        )
        self.batches: queue.Queue[pb.SessionEvents] = queue.Queue()
        self.violations: list[str] = []
        self.closing = False
        self.error: BaseException | None = None  # what ended the reader, if not close()
        self.events: collections.defaultdict[str, queue.Queue[pb.RequestEvent]] = (
            collections.defaultdict(queue.Queue)
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        read_until_closed(self, self.call, self._take)

    def _take(self, batch: pb.SessionEvents) -> None:
        self.batches.put(batch)
        packed = list(
            zip(batch.token_request_ids, batch.token_ids, batch.token_indexes, strict=True)
        )
        named = [rid for rid, _, _ in packed] + [e.request_id for e in batch.events]
        if len(named) != len(set(named)):
            self.violations.append(f"a request twice in one SessionEvents: {named}")
        for request_id, token, index in packed:  # as events, to read them alike
            self.events[request_id].put(
                pb.RequestEvent(request_id=request_id, token_ids=[token], first_token_index=index)
            )
        for event in batch.events:
            self.events[event.request_id].put(event)

    def close(self) -> None:
        """Ends the Session stream (half-close, else cancel) and its reader."""
        self.closing = True
        self.outbox.put(None)
        self.reader.join(10)
        if self.reader.is_alive():
            self.call.cancel()
            self.reader.join(10)
        assert not self.reader.is_alive(), "the session reader did not end"

    def raise_errors(self) -> None:
        """Raises what failed in either peer's thread, at once."""
        self.worker.raise_error()
        if self.error is not None:
            raise AssertionError(f"the session failed: {self.error!r}") from self.error

    def submit(self, request_id: str, prompt: list[int], **sampling: object) -> None:
        params = pb.SamplingParams(
            **{"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, **sampling}
        )
        submit = pb.Submit(request_id=request_id, prompt_token_ids=prompt, sampling=params)
        self.outbox.put(pb.SessionRequest(submit=submit))

    def abort(self, request_id: str) -> None:
        self.outbox.put(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))

    def next_event(self, request_id: str, deadline: float) -> pb.RequestEvent | None:
        """The request's next event; None at the deadline. A failed peer raises at once."""
        while time.monotonic() < deadline:
            self.raise_errors()
            try:
                return self.events[request_id].get(timeout=0.1)
            except queue.Empty:
                continue
        self.raise_errors()
        return None

    def events_until_stop(self, request_id: str, timeout: float = 30.0) -> list[pb.RequestEvent]:
        events: list[pb.RequestEvent] = []
        deadline = time.monotonic() + timeout
        while (event := self.next_event(request_id, deadline)) is not None:
            events.append(event)
            if event.stop_reason != pb.STOP_REASON_UNSPECIFIED:
                return events
        raise AssertionError(f"{request_id} did not end within {timeout}s: {events}")

    def output(
        self, request_id: str, received: list[int] | None = None, timeout: float = 30.0
    ) -> tuple[list[int], int]:
        """The request's tokens (after those `received` already) and its stop reason;
        each event must start where the previous one ended (no gap, no overlap)."""
        tokens = list(received or [])
        events = self.events_until_stop(request_id, timeout)
        for event in events:
            if event.token_ids:
                assert event.first_token_index == len(tokens), (request_id, tokens, events)
            tokens.extend(event.token_ids)
        return tokens, events[-1].stop_reason

    def assert_ended(self, request_id: str) -> None:
        """Nothing comes for a request after its end: a probe submitted after the end
        went through whole iterations, and the request's queue stayed empty."""
        probe = f"{request_id}-probe"
        self.submit(probe, [10, 11], max_tokens=2)
        assert self.output(probe) == (expected(probe, 2), pb.STOP_REASON_LENGTH)
        assert self.events[request_id].empty(), list(self.events[request_id].queue)


@pytest.fixture(scope="module")
def worker(scheduler_addr):
    w = ContractWorker(scheduler_addr)
    w.start()
    yield w
    w.close()
    w.raise_error()
    assert not w.violations, w.violations


@pytest.fixture
def gateway(scheduler_addr, worker, request):
    g = Gateway(scheduler_addr, f"conformance-{request.node.name}", worker)
    yield g
    g.close()
    g.raise_errors()
    assert not g.violations, g.violations
    assert not worker.violations, worker.violations


def test_a_session_is_acknowledged_at_once(gateway):
    first = gateway.batches.get(timeout=10)
    # an acknowledgement, before any submit: no events, and how many workers are attached
    assert first == pb.SessionEvents(num_workers=first.num_workers), first
    assert first.HasField("num_workers")
    workers = first.num_workers
    while workers != 1:  # the contract worker attaches: the session is told
        workers = gateway.batches.get(timeout=10).num_workers


def test_tokens_stream_in_order_until_max_tokens(gateway, worker):
    gateway.submit("len", list(range(10, 50)), max_tokens=5)  # 40 tokens: more than one chunk of 32
    assert gateway.output("len") == (expected("len", 5), pb.STOP_REASON_LENGTH)
    assert worker.new_requests.count("len") == 1, "a request's tokens go to the worker once"
    gateway.assert_ended("len")
    assert not worker.violations, worker.violations


def test_eos_and_stop_tokens_end_a_request(gateway):
    gateway.submit("eos", [10, 11, 12], max_tokens=50)  # the worker samples EOS at index 3
    tokens, reason = gateway.output("eos")
    assert tokens == expected("eos", 4) and tokens[-1] == EOS
    assert reason == pb.STOP_REASON_EOS
    gateway.submit("stop", [10, 11, 12], max_tokens=50, stop_token_ids=[STOP])  # STOP at 2
    tokens, reason = gateway.output("stop")
    assert tokens == expected("stop", 3) and tokens[-1] == STOP
    assert reason == pb.STOP_REASON_EOS
    gateway.submit("ignore-eos", [10, 11, 12], max_tokens=4, ignore_eos=True)  # EOS at 1
    assert gateway.output("ignore-eos") == (expected("ignore-eos", 4), pb.STOP_REASON_LENGTH)
    gateway.submit("min-tokens", [10, 11, 12], max_tokens=50, min_tokens=3)  # EOS at 1 and 4
    assert gateway.output("min-tokens") == (expected("min-tokens", 5), pb.STOP_REASON_EOS)
    for request_id in ("eos", "stop", "ignore-eos", "min-tokens"):
        gateway.assert_ended(request_id)


def test_abort_ends_the_request_and_frees_it_on_the_worker(gateway, worker):
    gateway.submit("abort", [10, 11, 12], max_tokens=100_000, ignore_eos=True)
    first = gateway.next_event("abort", time.monotonic() + 10)  # it runs (slowly: SLOW_S)
    assert first is not None, "abort: no first token"
    assert (first.first_token_index, list(first.token_ids)) == (0, expected("abort", 1))
    gateway.abort("abort")
    tokens, reason = gateway.output("abort", received=expected("abort", 1))
    assert reason == pb.STOP_REASON_ABORTED  # the gateway is told: the request ended
    assert tokens == expected("abort", len(tokens))
    deadline = time.monotonic() + 10
    while "abort" not in worker.freed and time.monotonic() < deadline:
        gateway.raise_errors()
        time.sleep(0.01)
    assert "abort" in worker.freed
    gateway.assert_ended("abort")
    assert not worker.violations, worker.violations


def test_a_cached_prefix_starts_a_request_past_it_in_shared_blocks(gateway, worker):
    """The prefix cache on the wire: a request sharing a running request's prompt
    prefix is sent with that prefix as computed tokens, its block table starting with
    the same blocks; nobody writes into them (checked by the worker on every chunk)."""
    prefix = list(range(100, 100 + 3 * BLOCK))
    gateway.submit("owner", [*prefix, 1], max_tokens=100_000, ignore_eos=True)
    assert gateway.next_event("owner", time.monotonic() + 10) is not None  # prompt computed
    gateway.submit("reader", [*prefix, 2, 3], max_tokens=3)
    assert gateway.output("reader") == (expected("reader", 3), pb.STOP_REASON_LENGTH)
    gateway.submit("repeat", [*prefix, 1], max_tokens=2)  # all but its last block cached
    assert gateway.output("repeat") == (expected("repeat", 2), pb.STOP_REASON_LENGTH)
    gateway.abort("owner")
    gateway.output("owner", received=expected("owner", 1))
    assert worker.cached_prefix["owner"] == 0
    assert worker.cached_prefix["reader"] == worker.cached_prefix["repeat"] == 3 * BLOCK
    for rid in ("reader", "repeat"):
        assert worker.tables[rid][:3] == worker.tables["owner"][:3], rid
    assert worker.tables["repeat"][3] != worker.tables["owner"][3]
    assert not worker.violations, worker.violations


def test_bad_input_is_an_error_event_and_the_session_goes_on(gateway):
    gateway.submit("empty", [])
    events = gateway.events_until_stop("empty")
    assert events[-1].stop_reason == pb.STOP_REASON_ERROR
    assert events[-1].error_code == "INVALID_ARGUMENT" and events[-1].error_message
    gateway.submit("after", [10, 11], max_tokens=2)
    assert gateway.output("after") == (expected("after", 2), pb.STOP_REASON_LENGTH)


def test_what_the_worker_cannot_compute_is_refused_before_it_gets_there(gateway, worker):
    """Token ids against the worker's vocabulary, lengths against its context, the size
    of every field: INVALID_ARGUMENT naming it, before anything is scheduled."""
    bad = {
        "oov": ([10, VOCAB], {}),
        "oov-stop": ([10, 11], {"stop_token_ids": [VOCAB + 1]}),
        "long": (list(range(10, 10 + MAX_LEN)), {}),
        "x" * 300: ([10, 11], {}),
        "oov-bias": ([10, 11], {"logit_bias": {VOCAB: 1.0}}),
        "big-grammar": (
            [10, 11],
            {"grammar": pb.Grammar(kind=pb.GRAMMAR_KIND_REGEX, spec="a" * 70_000)},
        ),
    }
    for request_id, (prompt, sampling) in bad.items():
        gateway.submit(request_id, prompt, **sampling)
    for request_id in bad:
        (event,) = gateway.events_until_stop(request_id)
        assert event.stop_reason == pb.STOP_REASON_ERROR, (request_id, event)
        assert event.error_code == "INVALID_ARGUMENT", (request_id, event)
    assert not set(bad) & set(worker.new_requests)


def test_structured_output_and_logit_bias_reach_the_worker_as_submitted(gateway, worker):
    """The grammar (its state is the worker's, rebuilt from a recomputed request's output)
    and the logit biases travel with the request unchanged."""
    grammar = pb.Grammar(kind=pb.GRAMMAR_KIND_JSON_SCHEMA, spec='{"type": "object"}', loose=True)
    bias = {12: -100.0, 13: 2.5}
    gateway.submit("constrained", [10, 11], max_tokens=3, logit_bias=bias, grammar=grammar)
    assert gateway.output("constrained") == (expected("constrained", 3), pb.STOP_REASON_LENGTH)
    sent = worker.samplings["constrained"]
    assert sent.grammar == grammar and dict(sent.logit_bias) == bias
    assert not worker.violations, worker.violations


def test_a_request_the_worker_fails_ends_alone_with_its_error(gateway, worker):
    """A RequestFailure in a StepResult ends that request with its error; the worker has
    forgotten it, and the other requests of the step go on."""
    gateway.submit("beside", list(range(10, 20)), max_tokens=4)
    gateway.submit(REFUSED, list(range(10, 20)), max_tokens=4)
    events = gateway.events_until_stop(REFUSED)
    assert events[-1].stop_reason == pb.STOP_REASON_ERROR
    assert (events[-1].error_code, events[-1].error_message) == ("INTERNAL", "the worker failed")
    assert gateway.output("beside") == (expected("beside", 4), pb.STOP_REASON_LENGTH)
    gateway.assert_ended(REFUSED)
    assert not worker.violations, worker.violations


def test_concurrent_requests_share_iterations_within_the_budget(scheduler_addr, gateway, worker):
    for i in range(6):
        gateway.submit(f"c{i}", list(range(10, 30 + 5 * i)), max_tokens=6)
    for i in range(6):
        assert gateway.output(f"c{i}") == (expected(f"c{i}", 6), pb.STOP_REASON_LENGTH)
    stats = pb_grpc.SchedulerStub(grpc.insecure_channel(scheduler_addr)).GetStats(
        pb.GetStatsRequest(), timeout=10
    )
    assert stats.is_leader and stats.num_workers == 1 and stats.num_running == 0
    assert worker.max_step_tokens <= stats.token_budget
    assert any(it.num_prefill_tokens and it.num_decode_tokens for it in stats.iterations)
    assert not worker.violations, worker.violations
    assert not gateway.violations, gateway.violations
