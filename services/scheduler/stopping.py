"""When a request stops: after the token it just sampled (by its parameters and the
worker's geometry), or after too many steps that failed with it."""

from __future__ import annotations

from collections.abc import Callable

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.scheduler.iteration import PlannedStep
from sarathi_serve.scheduler.request import Request, StopReason

MAX_FAILED_STEPS = 3  # failed steps a request may be in before it ends with an error


def stop_reason(request: Request, token: int, geometry: WorkerGeometry) -> StopReason | None:
    """Why `request` stops after `token` (already in its output), or None: it goes on."""
    params = request.sampling
    num_output = len(request.output_token_ids)
    if num_output >= params.min_tokens and (
        token in params.stop_token_ids or (token == geometry.eos_token_id and not params.ignore_eos)
    ):
        return StopReason.EOS
    if num_output >= params.max_tokens:
        return StopReason.LENGTH
    if len(request.prompt_token_ids) + num_output >= geometry.max_model_len:
        return StopReason.CONTEXT
    return None


def charge_failed_step(
    planned: PlannedStep, fail: Callable[[Request, ServiceError, float], None], now: float
) -> list[Request]:
    """A step failed as a whole (the worker reported it): each of its requests has been in
    one more failed step, and those in MAX_FAILED_STEPS of them end with an error (`fail`,
    returned), so that a request that breaks every step it is in cannot retry forever."""
    failed = []
    for request, incarnation in planned.rows.values():
        if request.is_finished or request.num_preemptions != incarnation:
            continue
        request.num_failed_steps += 1
        if request.num_failed_steps >= MAX_FAILED_STEPS:
            message = f"the worker failed every step with this request ({MAX_FAILED_STEPS})"
            fail(request, ServiceError(message), now)
            failed.append(request)
    return failed
