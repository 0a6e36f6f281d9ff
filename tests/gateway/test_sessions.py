"""Gateway sessions and the scheduler's limits, over real processes with null workers.

- A gateway whose session drops resumes its requests within `--session-grace-s`
  (the catch-up from the count it received, then the rest, every token in place);
  one that does not come back has its requests aborted after the grace.
- The gateway's scheduler client sends its queued aborts before it closes.
- `--max-num-waiting` answers 429 / RESOURCE_EXHAUSTED; no leader answers 503 /
  UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import grpc
import httpx2 as httpx
import pytest

from sarathi_serve.common import probes
from sarathi_serve.common.net import free_port
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.gateway.scheduler_client import SchedulerClient
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.worker.null_runner import null_token
from tests.e2e.oracle import wait_until
from tests.gateway.stack import NullStack

GRACE_S = 2.0
STEP_MS = 20  # a null step: 50 tokens a second per request
MODEL = "SmolLM2-135M-Instruct"


class Scheduler:
    """A scheduler (no Redis) and one null worker whose steps take STEP_MS."""

    def __init__(self, tmp, *flags: str):
        self.addr = f"127.0.0.1:{free_port()}"
        logs = tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.processes = [
            self._spawn(logs / "scheduler.log", "scheduler", "--port", self.addr.split(":")[1],
                        *flags),
            self._spawn(logs / "worker.log", "worker", "--null-model", "--null-step-ms",
                        str(STEP_MS), "--scheduler-addr", self.addr, "--port", str(free_port())),
        ]  # fmt: skip
        wait_until(lambda: probes.leads_with_a_worker(self.addr, 1), "a leader with a worker")

    @staticmethod
    def _spawn(log_path, role: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(log_path, "wb")  # noqa: SIM115 (kept by the child)
        argv = [sys.executable, "-m", f"sarathi_serve.{role}", *args]
        return subprocess.Popen(argv, stdout=log, stderr=log)

    def stats(self):
        return probes.scheduler_stats(self.addr, timeout=5.0)

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.wait(10)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    s = Scheduler(tmp_path_factory.mktemp("grace"), "--session-grace-s", str(GRACE_S))
    yield s
    s.stop()


class Session:
    """One Session stream of a gateway, read on a thread: tokens by index, ends."""

    def __init__(self, addr: str, gateway_id: str):
        self.channel = grpc.insecure_channel(addr)
        self.outbox: list[pb.SessionRequest] = []
        self.ready = threading.Condition()
        self.tokens: dict[str, dict[int, int]] = {}
        self.ends: dict[str, pb.RequestEvent] = {}
        self.error: BaseException | None = None
        self._send(pb.SessionRequest(hello=pb.SessionHello(gateway_id=gateway_id)))
        self.call = pb_grpc.SchedulerStub(self.channel).Session(self._requests())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _send(self, message: pb.SessionRequest) -> None:
        with self.ready:
            self.outbox.append(message)
            self.ready.notify()

    def _requests(self):
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.outbox)
                message = self.outbox.pop(0)
            if message is None:
                return
            yield message

    def _read(self) -> None:
        try:
            for batch in self.call:
                for rid, token, index in zip(
                    batch.token_request_ids, batch.token_ids, batch.token_indexes, strict=True
                ):
                    self._got(rid, index, [token])
                for event in batch.events:
                    self._got(event.request_id, event.first_token_index, event.token_ids)
                    if event.stop_reason != pb.STOP_REASON_UNSPECIFIED:
                        self.ends[event.request_id] = event
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except Exception as exc:  # a broken check: fails the test's next wait at once
            self.error = exc

    def _got(self, rid: str, first: int, tokens) -> None:
        got = self.tokens.setdefault(rid, {})
        for i, token in enumerate(tokens, first):
            assert i not in got, f"{rid}: token {i} sent twice"
            got[i] = token

    def submit(self, rid: str, max_tokens: int) -> pb.Submit:
        submit = pb.Submit(
            request_id=rid,
            prompt_token_ids=[101, 102, 103],
            sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True, top_p=1.0),
        )
        self._send(pb.SessionRequest(submit=submit))
        return submit

    def resume(self, submit: pb.Submit, received: int) -> None:
        self._send(pb.SessionRequest(resume=pb.Resume(submit=submit, num_received_tokens=received)))

    def wait(self, condition, what: str, timeout: float = 30.0) -> None:
        def check() -> bool:
            if self.error is not None:
                raise AssertionError(f"session failed: {self.error}")
            return condition()

        wait_until(check, what, timeout)

    def drop(self) -> None:
        """The connection goes away (no goodbye)."""
        self.call.cancel()
        self.channel.close()
        self.reader.join(10)


def test_a_dropped_session_resumes_within_the_grace_with_every_token(scheduler):
    first = Session(scheduler.addr, "gw-resume")
    submit = first.submit("resumed", max_tokens=120)
    first.wait(lambda: len(first.tokens.get("resumed", {})) >= 5, "5 tokens")
    first.drop()
    received = len(first.tokens["resumed"])
    assert sorted(first.tokens["resumed"]) == list(range(received))
    time.sleep(GRACE_S / 4)  # gone for a while, back within the grace
    assert scheduler.stats().num_running == 1, "the request waits for its gateway"

    second = Session(scheduler.addr, "gw-resume")
    second.resume(submit, received)
    second.wait(lambda: "resumed" in second.ends, "the resumed request to end", 60)
    assert second.ends["resumed"].stop_reason == pb.STOP_REASON_LENGTH
    got = {**first.tokens["resumed"], **second.tokens["resumed"]}
    assert min(second.tokens["resumed"]) == received, "the catch-up starts where it stopped"
    assert [got[i] for i in range(120)] == [null_token("resumed", i) for i in range(120)]
    assert len(got) == 120
    second.drop()


def test_a_gateway_that_does_not_come_back_has_its_requests_aborted(scheduler):
    gone = Session(scheduler.addr, "gw-gone")
    gone.submit("abandoned", max_tokens=100_000)  # would run for half an hour
    gone.wait(lambda: "abandoned" in gone.tokens, "a first token")
    gone.drop()
    dropped_at = time.monotonic()
    wait_until(lambda: scheduler.stats().num_running == 0, "the abort", GRACE_S + 30)
    assert time.monotonic() - dropped_at >= GRACE_S * 0.9, "aborted before its grace ended"
    stats = scheduler.stats()
    assert stats.num_free_kv_blocks == stats.num_total_kv_blocks


def test_the_client_sends_its_queued_aborts_before_it_closes(tmp_path):
    patient = Scheduler(tmp_path, "--session-grace-s", "300")
    try:

        async def scenario() -> None:
            client = SchedulerClient([patient.addr], "gw-close")
            client.start()
            sampling = SamplingParams(max_tokens=100_000, ignore_eos=True)
            queues = [await client.submit(f"long-{i}", [101, 102], sampling) for i in range(64)]
            for events in queues:
                await asyncio.wait_for(events.get(), 30)
            for i in range(len(queues)):
                client.abort(f"long-{i}")
            await client.close()

        asyncio.run(scenario())
        # freed at once, not after the 300 s grace of a gateway that went away
        wait_until(lambda: patient.stats().num_running == 0, "the abort", 30)
        stats = patient.stats()
        assert stats.num_running == stats.num_waiting == 0
        assert stats.num_free_kv_blocks == stats.num_total_kv_blocks
    finally:
        patient.stop()


def test_a_full_scheduler_queue_answers_429_and_resource_exhausted(tmp_path, monkeypatch):
    monkeypatch.setenv("SARATHI_SCHEDULER_MAX_NUM_SEQS", "1")
    monkeypatch.setenv("SARATHI_SCHEDULER_MAX_NUM_WAITING", "1")
    monkeypatch.setenv("SARATHI_WORKER_NULL_STEP_MS", str(STEP_MS))
    stack = NullStack(tmp_path)
    channel = grpc.insecure_channel(stack.grpc_addr)
    try:
        stub = gpb_grpc.GenerationStub(channel)
        long = gpb.GenerateRequest(
            prompt="Hi", sampling=gpb.SamplingOptions(max_tokens=4000, ignore_eos=True)
        )
        held = [stub.Generate(long, timeout=120) for _ in range(2)]  # one runs, one waits
        wait_until(lambda: stack.stats().num_waiting == 1, "a request waiting")
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        refused = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        request = gpb.GenerateRequest(prompt="Hi", sampling=gpb.SamplingOptions(max_tokens=2))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request, timeout=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in held:
            call.cancel()  # both are aborted
        wait_until(lambda: stack.stats().num_running + stack.stats().num_waiting == 0, "aborts")
    finally:
        channel.close()
        stack.stop()


def test_no_leader_answers_503_and_unavailable(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"
    grpc_port, http_port = free_port(), free_port()
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
    gateway = subprocess.Popen(
        [sys.executable, "-m", "sarathi_serve.gateway", "--scheduler-addr", nobody,
         "--port", str(grpc_port), "--http-port", str(http_port)],
        stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 503
            except httpx.HTTPError:
                return False

        wait_until(up, "the gateway answering /health (503 without a leader)", 120)
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        refused = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and nobody in error["message"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = gpb.GenerateRequest(prompt="Hi", sampling=gpb.SamplingOptions(max_tokens=2))
            with pytest.raises(grpc.RpcError) as err:
                list(gpb_grpc.GenerationStub(channel).Generate(request, timeout=60))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.terminate()
        gateway.wait(10)
