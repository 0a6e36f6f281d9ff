"""The worker's end of the Attach stream: dial the scheduler, run plans, reconnect."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterator

import grpc

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.convert import hello_to_pb, plan_from_pb, result_to_pb
from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS
from sarathi_serve.common.step import StepPlan, StepResult, WorkerGeometry
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.worker.submit import Engine

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 1.0


def attach_forever(
    engine: Engine,
    scheduler_addrs: list[str],
    worker_id: str,
    model: str,
    geometry: WorkerGeometry,
    stop: threading.Event,
    token: InternalToken | None = None,
) -> None:
    """Serves plans until `stop` is set, introducing itself on each stream as
    `worker_id` serving `model` with `geometry`, with `token` as its credentials. When
    the stream breaks (or a standby answers UNAVAILABLE), it forgets its sequences and
    dials the next address; the leader recomputes whatever was running here."""
    hello = hello_to_pb(worker_id, model, geometry)
    backoff, attempt = 0.05, 0
    while not stop.is_set():
        addr = scheduler_addrs[attempt % len(scheduler_addrs)]
        try:
            with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as channel:
                stub = pb_grpc.SchedulerStub(channel)
                if _serve_stream(engine, stub, hello, stop, token or InternalToken()):
                    backoff = 0.05
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                log.warning("attach to %s ended: %s %s", addr, exc.code().name, exc.details())
        engine.reset()
        attempt += 1
        stop.wait(backoff)
        backoff = min(2 * backoff, _MAX_BACKOFF_S)


def _serve_stream(
    engine: Engine,
    stub: pb_grpc.SchedulerStub,
    hello: pb.WorkerHello,
    stop: threading.Event,
    token: InternalToken,
) -> bool:
    """Runs plans until the stream ends; True if the scheduler sent any."""
    outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
    outbox.put(pb.WorkerMessage(hello=hello))
    call = stub.Attach(iter(outbox.get, None), metadata=token.metadata)
    stop_watch = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
    stop_watch.start()
    plans = _Prefetch(call)
    served = False
    last_result_at: list[float] = []  # when the latest result left (none yet)

    def deliver(result: StepResult) -> None:  # on this thread, or a pipeline's output thread
        message = result_to_pb(result)
        message.worker_wait_ms = waits.pop(result.step_id, 0.0)
        outbox.put(pb.WorkerMessage(result=message))
        last_result_at[:] = [time.perf_counter()]

    waits: dict[int, float] = {}  # step id -> how long the worker waited for its plan
    try:
        while (item := plans.next()) is not None:
            received_at = time.perf_counter()
            step_id, plan = item
            if not served:
                log.info("attached to the scheduler as %s", hello.worker_id)
                served = True
            if last_result_at:  # the control plane this worker waited for
                waits[step_id] = max(received_at - last_result_at[0], 0.0) * 1e3
            try:
                if isinstance(plan, Exception):
                    raise plan
                engine.submit(plan, deliver)
            except Exception as exc:  # a failed step is reported, never silently dropped
                log.error("step %d failed: %s", step_id, traceback.format_exc())
                deliver(StepResult(step_id, error=f"{type(exc).__name__}: {exc}"))
                engine.reset()
    finally:
        outbox.put(None)
    return served


class _Prefetch:
    """Reads and converts the next plans on a thread of its own while a step runs: the
    scheduler sends plan n+1 before step n ends, and the worker starts it at once."""

    def __init__(self, call: Iterator[pb.StepPlan]):
        self._plans: queue.Queue[tuple[int, StepPlan | Exception] | BaseException | None] = (
            queue.Queue()
        )
        threading.Thread(target=self._read, args=(call,), daemon=True).start()

    def _read(self, call: Iterator[pb.StepPlan]) -> None:
        try:
            for msg in call:
                try:
                    self._plans.put((msg.step_id, plan_from_pb(msg)))
                except Exception as exc:  # a malformed plan fails its step
                    self._plans.put((msg.step_id, exc))
            self._plans.put(None)
        except BaseException as exc:  # the stream broke: raised in the serving thread
            self._plans.put(exc)

    def next(self) -> tuple[int, StepPlan | Exception] | None:
        """The next plan (or the error converting it); None at the end of the stream."""
        item = self._plans.get()
        if isinstance(item, BaseException):
            raise item
        return item
