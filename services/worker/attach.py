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

_MAX_BACKOFF_S = 2.0


def attach_forever(
    engine: Engine, scheduler_addr: str, hello: pb.WorkerHello, stop: threading.Event
) -> None:
    """Serves plans until `stop` is set; reconnects (with a clean cache) when the stream breaks."""
    backoff = 0.1
    while not stop.is_set():
        try:
            with grpc.insecure_channel(scheduler_addr, options=CHANNEL_OPTIONS) as channel:
                _serve_stream(engine, pb_grpc.SchedulerStub(channel), hello, stop)
                backoff = 0.1
        except grpc.RpcError as exc:
            log.warning(
                "attach to %s failed: %s; retrying in %.1fs", scheduler_addr, exc.code(), backoff
            )
        engine.reset()
        stop.wait(backoff)
        backoff = min(2 * backoff, _MAX_BACKOFF_S)


def _serve_stream(
    engine: Engine, stub: pb_grpc.SchedulerStub, hello: pb.WorkerHello, stop: threading.Event
) -> None:
    outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
    outbox.put(pb.WorkerMessage(hello=hello))
    call = stub.Attach(iter(outbox.get, None), wait_for_ready=True)
    stop_watch = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
    stop_watch.start()
    log.info("attached to the scheduler as %s", hello.worker_id)
    try:
        for msg in call:
            try:
                result = result_to_pb(engine.step(plan_from_pb(msg)))
            except Exception as exc:  # a failed step is reported, never silently dropped
                log.error("step %d failed: %s", msg.step_id, traceback.format_exc())
                result = pb.StepResult(step_id=msg.step_id, error=f"{type(exc).__name__}: {exc}")
                engine.reset()
            outbox.put(pb.WorkerMessage(result=result))
    finally:
        outbox.put(None)
