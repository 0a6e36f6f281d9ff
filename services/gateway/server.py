"""gRPC edge of the gateway: the public `Generation` service.

Protobuf stops here: a GenerateRequest becomes a GenerateInput on the way in, and
each Delta a GenerateResponse on the way out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sarathi_serve.common.errors import InvalidArgument, ServiceError, retry_after, status_of
from sarathi_serve.common.grammar import ANY_OBJECT
from sarathi_serve.common.limits import MAX_CLIENT_REQUEST_ID_CHARS, request_id_problem
from sarathi_serve.common.sampling import Grammar
from sarathi_serve.gateway.auth import PRIORITY_KEY, ApiKeys
from sarathi_serve.gateway.generate_input import (
    ChatMessage,
    ChatPrompt,
    GenerateInput,
    OutputConstraint,
    Prompt,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from sarathi_serve.gateway.generation import Delta, Generation, Generator
from sarathi_serve.gateway.router import USER_KEY, VARIANT_KEY
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc

SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["Generation"].full_name
_FINISH_REASON = {
    "stop": gpb.FINISH_REASON_STOP,
    "length": gpb.FINISH_REASON_LENGTH,
    "abort": gpb.FINISH_REASON_ABORT,
}


def add_generation_service(
    server: grpc.aio.Server,
    validator: RequestValidator,
    generator: Generator,
    api_keys: ApiKeys | None = None,
) -> None:
    """Serves the public Generation service (SERVICE_NAME) on `server`. Its requests are
    parsed leniently: bytes that are no GenerateRequest (invalid UTF-8 in a string, a
    truncated field) reach `Generate` as an `Undecodable`, answered INVALID_ARGUMENT
    (grpc's own parsing would answer UNKNOWN)."""
    servicer = GenerationServicer(validator, generator, api_keys or ApiKeys(set()))
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=_lenient(gpb.GenerateRequest.FromString),
            response_serializer=gpb.GenerateResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Request bytes that did not parse, and why."""

    reason: str


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_undecodable(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc) or "DecodeError")

    return parse_or_undecodable


class GenerationServicer(gpb_grpc.GenerationServicer):
    def __init__(self, validator: RequestValidator, generator: Generator, api_keys: ApiKeys):
        self.validator = validator
        self.generator = generator
        self.api_keys = api_keys

    async def Generate(
        self, request: gpb.GenerateRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gpb.GenerateResponse]:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "request: not a valid GenerateRequest (a string field that is not UTF-8, "
                f"or a truncated field): {request.reason}",
            )  # raises: the call ends here
            return
        problem = request_id_problem(request.request_id, MAX_CLIENT_REQUEST_ID_CHARS)
        if request.request_id and problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request_id: {problem}")
        request_id = request.request_id or f"req-{uuid.uuid4().hex}"
        metadata = dict(context.invocation_metadata() or ())
        generation: Generation | None = None
        try:
            prepared = await self.validator.prepare_async(generate_input_from_pb(request))
            caller = self.api_keys.caller(str(metadata.get("authorization", "")))
            priority = caller.priority(prepared.priority, str(metadata.get(PRIORITY_KEY, "")))
            generation = await self.generator.start(
                request_id,
                replace(prepared, priority=priority),
                user=request.user or str(metadata.get(USER_KEY, "")),
                pinned=str(metadata.get(VARIANT_KEY, "")),
                caller=caller,
            )
            await context.send_initial_metadata(((VARIANT_KEY, generation.variant),))
            async for delta in generation.deltas():
                yield _response(request_id, delta)
        except ServiceError as exc:
            retry = (("retry-after", retry_after(exc)),)  # seconds, as HTTP's
            await context.abort(*status_of(exc), trailing_metadata=retry)
        finally:
            if generation is not None:
                generation.close()  # the client went away: free its KV blocks now


def generate_input_from_pb(msg: gpb.GenerateRequest) -> GenerateInput:
    """Unset optional fields (HasField) become None; the validator picks their defaults."""
    return GenerateInput(
        prompt=_prompt_from_pb(msg),
        model=msg.model,
        sampling=_sampling_from_pb(msg.sampling),  # unset: all defaults, as an empty one
        cache_salt=msg.cache_salt,
        priority=msg.priority if msg.HasField("priority") else None,
    )


def _prompt_from_pb(msg: gpb.GenerateRequest) -> Prompt | None:
    kind = msg.WhichOneof("input")
    if kind == "prompt":
        return TextPrompt(msg.prompt)
    if kind == "messages":
        return ChatPrompt(tuple(ChatMessage(m.role, m.content) for m in msg.messages.messages))
    if kind == "prompt_token_ids":
        return TokenPrompt(tuple(msg.prompt_token_ids.ids))
    return None


def _sampling_from_pb(msg: gpb.SamplingOptions) -> SamplingOptions:
    def optional(name: str) -> Any:
        return getattr(msg, name) if msg.HasField(name) else None

    return SamplingOptions(
        max_tokens=optional("max_tokens"),
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        top_k=msg.top_k,
        seed=optional("seed"),
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
        min_p=msg.min_p,
        repetition_penalty=optional("repetition_penalty"),
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        logprobs=optional("logprobs"),
        stop=tuple(msg.stop),
        logit_bias=tuple(sorted(msg.logit_bias.items())),
        constraint=_constraint_from_pb(msg) if msg.HasField("structured") else None,
    )


def _constraint_from_pb(msg: gpb.SamplingOptions) -> OutputConstraint:
    structured = msg.structured
    kind = structured.WhichOneof("kind")
    field = f"sampling.structured.{kind}"
    if kind == "json_object":
        return OutputConstraint(field, ANY_OBJECT)
    grammars = {
        "json_schema": lambda: Grammar("json_schema", structured.json_schema, structured.loose),
        "regex": lambda: Grammar("regex", structured.regex),
        "choice": lambda: Grammar("choice", json.dumps(list(structured.choice.values))),
        "grammar": lambda: Grammar("ebnf", structured.grammar),
    }
    if kind not in grammars:
        raise InvalidArgument(f"sampling.structured: set one of json_object, {', '.join(grammars)}")
    return OutputConstraint(field, grammars[kind]())


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
