"""The worker's end of the Attach stream: dial the scheduler, run plans, reconnect."""

from __future__ import annotations

import logging
import queue
import threading
import traceback

import grpc

from sarathi_serve.common.convert import plan_from_pb, result_to_pb
from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.worker.parallel import Engine

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 1.0


def attach_forever(
    engine: Engine, scheduler_addrs: list[str], hello: pb.WorkerHello, stop: threading.Event
) -> None:
    """Serves plans until `stop` is set. When the stream breaks (or a standby
    answers UNAVAILABLE), it forgets its sequences and dials the next address;
    the leader recomputes whatever was running here."""
    backoff, attempt = 0.05, 0
    while not stop.is_set():
        addr = scheduler_addrs[attempt % len(scheduler_addrs)]
        try:
            with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as channel:
                if _serve_stream(engine, pb_grpc.SchedulerStub(channel), hello, stop):
                    backoff = 0.05
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                log.warning("attach to %s ended: %s %s", addr, exc.code().name, exc.details())
        engine.reset()
        attempt += 1
        stop.wait(backoff)
        backoff = min(2 * backoff, _MAX_BACKOFF_S)


def _serve_stream(
    engine: Engine, stub: pb_grpc.SchedulerStub, hello: pb.WorkerHello, stop: threading.Event
) -> bool:
    """Runs plans until the stream ends; True if the scheduler sent any."""
    outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
    outbox.put(pb.WorkerMessage(hello=hello))
    call = stub.Attach(iter(outbox.get, None))
    stop_watch = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
    stop_watch.start()
    served = False
    try:
        for msg in call:
            if not served:
                log.info("attached to the scheduler as %s", hello.worker_id)
                served = True
            try:
                result = result_to_pb(engine.step(plan_from_pb(msg)))
            except Exception as exc:  # a failed step is reported, never silently dropped
                log.error("step %d failed: %s", msg.step_id, traceback.format_exc())
                result = pb.StepResult(step_id=msg.step_id, error=f"{type(exc).__name__}: {exc}")
                engine.reset()
            outbox.put(pb.WorkerMessage(result=result))
    finally:
        outbox.put(None)
    return served
