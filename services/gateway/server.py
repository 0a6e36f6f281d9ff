"""gRPC edge of the gateway: the public `Generation` service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.errors import ServiceError, status_of
from sarathi_serve.gateway.generation import Delta, Generation, Generator
from sarathi_serve.gateway.router import USER_KEY, VARIANT_KEY
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc

_FINISH_REASON = {
    "stop": gpb.FINISH_REASON_STOP,
    "length": gpb.FINISH_REASON_LENGTH,
    "abort": gpb.FINISH_REASON_ABORT,
}


class GenerationServicer(gpb_grpc.GenerationServicer):
    def __init__(self, validator: RequestValidator, generator: Generator):
        self.validator = validator
        self.generator = generator

    async def Generate(
        self, request: gpb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gpb.GenerateResponse]:
        request_id = request.request_id or f"req-{uuid.uuid4().hex}"
        metadata = dict(context.invocation_metadata() or ())
        generation: Generation | None = None
        try:
            prepared = self.validator.prepare(request)
            generation = await self.generator.start(
                request_id,
                prepared,
                user=request.user or str(metadata.get(USER_KEY, "")),
                pinned=str(metadata.get(VARIANT_KEY, "")),
            )
            await context.send_initial_metadata(((VARIANT_KEY, generation.variant),))
            async for delta in generation.deltas():
                yield _response(request_id, delta)
        except ServiceError as exc:
            await context.abort(*status_of(exc))
        finally:
            if generation is not None:
                generation.close()  # the client went away: free its KV blocks now


def _response(request_id: str, delta: Delta) -> gpb.GenerateResponse:
    response = gpb.GenerateResponse(
        request_id=request_id,
        text=delta.text,
        token_ids=delta.token_ids,
        logprobs=[
            gpb.TokenLogprob(
                token_id=lp.token_id,
                token=lp.token,
                logprob=lp.logprob,
                top=[gpb.TopLogprob(token_id=t, token=s, logprob=v) for t, s, v in lp.top],
            )
            for lp in delta.logprobs
        ],
    )
    if delta.finish_reason is not None:
        response.finish_reason = _FINISH_REASON[delta.finish_reason]
        response.usage.prompt_tokens = delta.num_prompt_tokens
        response.usage.completion_tokens = delta.num_output_tokens
    return response
