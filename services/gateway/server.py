"""gRPC edge of the gateway: the public `Generation` service."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.errors import ServiceError, error_from_code, status_of
from sarathi_serve.gateway.detokenizer import IncrementalDetokenizer
from sarathi_serve.gateway.scheduler_client import SchedulerClient
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.protocol import scheduler_pb2 as pb

log = logging.getLogger(__name__)

_FINISH_REASON = {
    pb.STOP_REASON_EOS: gpb.FINISH_REASON_STOP,
    pb.STOP_REASON_LENGTH: gpb.FINISH_REASON_LENGTH,
    pb.STOP_REASON_CONTEXT: gpb.FINISH_REASON_LENGTH,
    pb.STOP_REASON_ABORTED: gpb.FINISH_REASON_ABORT,
}


class GenerationServicer(gpb_grpc.GenerationServicer):
    def __init__(self, validator: RequestValidator, client: SchedulerClient):
        self.validator = validator
        self.client = client

    async def Generate(
        self, request: gpb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gpb.GenerateResponse]:
        request_id = request.request_id or f"req-{uuid.uuid4().hex}"
        try:
            prepared = self.validator.prepare(request)
            events = await self.client.submit(
                request_id, prepared.prompt_token_ids, prepared.sampling
            )
        except ServiceError as exc:
            await context.abort(*status_of(exc))
        detokenizer = IncrementalDetokenizer(self.validator.tokenizer, prepared.prompt_token_ids)
        num_generated = 0
        finished = False
        try:
            while not finished:
                event = await events.get()
                if event.stop_reason == pb.STOP_REASON_ERROR:
                    finished = True
                    await context.abort(
                        *status_of(error_from_code(event.error_code, event.error_message))
                    )
                num_generated += len(event.token_ids)
                text = detokenizer.add(event.token_ids)
                finished = event.stop_reason != pb.STOP_REASON_UNSPECIFIED
                response = gpb.GenerateResponse(
                    request_id=request_id,
                    token_ids=event.token_ids,
                    logprobs=self._public_logprobs(event),
                )
                if finished:
                    text += detokenizer.flush()
                    response.finish_reason = _FINISH_REASON[event.stop_reason]
                    response.usage.prompt_tokens = len(prepared.prompt_token_ids)
                    response.usage.completion_tokens = num_generated
                response.text = text
                yield response
        finally:
            if finished:
                self.client.release(request_id)
            else:  # the client went away: free its KV blocks now
                self.client.abort(request_id)

    def _public_logprobs(self, event: pb.RequestEvent) -> list[gpb.TokenLogprob]:
        decode = self.validator.tokenizer.decode
        return [
            gpb.TokenLogprob(
                token_id=token,
                token=decode([token]),
                logprob=lp.logprob,
                top=[
                    gpb.TopLogprob(token_id=t, token=decode([t]), logprob=v)
                    for t, v in zip(lp.top_token_ids, lp.top_logprobs, strict=True)
                ],
            )
            for token, lp in zip(event.token_ids, event.logprobs, strict=False)
        ]
