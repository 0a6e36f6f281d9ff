"""OpenAI-compatible HTTP edge: /v1/completions, /v1/chat/completions, /v1/models.

Streams are Server-Sent Events ending in `data: [DONE]`. A streaming response
starts only once the first output (or error) is known, so refusals (bad input,
full queue, no scheduler) get a real status code. A client that disconnects
aborts its requests: their KV blocks are freed at the scheduler's next iteration.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sarathi_serve.common.errors import ServiceError, status_of
from sarathi_serve.gateway.auth import ApiKeys
from sarathi_serve.gateway.generation import Delta, Generation, Generator, Logprob
from sarathi_serve.gateway.metrics import GatewayMetrics
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from sarathi_serve.gateway.router import USER_KEY, VARIANT_KEY
from sarathi_serve.gateway.validation import PreparedRequest, RequestValidator

REQUEST_ID_HEADER = "x-request-id"
DEFAULT_MAX_BODY_BYTES = 4 << 20

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAM = re.compile(r"^[a-z_][a-z0-9_.\[\]]*$")  # "messages[0].role"
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPE.get(status, "server_error"),
            "param": param,
            "code": status,
        }
    }
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _service_error_response(exc: BaseException) -> JSONResponse:
    code, message = status_of(exc)
    head = message.split(":", 1)[0]
    param = head if ":" in message and _PARAM.match(head) else None
    return error_response(_HTTP_STATUS.get(code, 500), message, param)


def _validation_error_response(exc: RequestValidationError) -> JSONResponse:
    error = exc.errors()[0]
    if error.get("type") == "json_invalid":
        return error_response(400, f"body: malformed JSON ({error.get('msg', '')})", "body")
    path = ""
    for part in error.get("loc", ())[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.match(str(part)) and part not in _TYPE_TAGS:
            path += f".{part}" if path else str(part)
    path = path or "body"
    return error_response(400, f"{path}: {error.get('msg', 'invalid')}", path)


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"body: larger than {self.max_bytes} bytes"
        await error_response(413, message, "body")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0


def build_app(
    validator: RequestValidator,
    generator: Generator,
    metrics: GatewayMetrics,
    api_keys: ApiKeys,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ASGIApp:
    app = FastAPI(title="sarathi-serve", docs_url=None, redoc_url=None, openapi_url=None)
    api = _OpenAI(validator, generator)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error_response(exc)

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
        return _service_error_response(exc)

    @app.middleware("http")
    async def _auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        public = request.url.path in ("/health", "/metrics")
        if not public and not api_keys.allows(request.headers.get("authorization")):
            return error_response(401, "authorization: a valid API key is required")
        return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if generator.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ab/samples")
    async def ab_samples() -> JSONResponse:
        return JSONResponse({"model": metrics.model, "variants": metrics.samples.as_json()})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {
            "id": validator.model_name,
            "object": "model",
            "created": created,
            "owned_by": "sarathi-serve",
            "max_model_len": validator.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await api.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await api.chat_completions(body, request)

    return BodyLimit(app, max_body_bytes)


class _OpenAI:
    def __init__(self, validator: RequestValidator, generator: Generator):
        self.validator = validator
        self.generator = generator

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        prepared = [self.validator.prepare(r) for r in body.to_inputs()]
        echoes = [
            self._prompt_text(body, i, p) if body.echo else "" for i, p in enumerate(prepared)
        ]
        generations = await self._start(request, body.n, body.user or "", prepared, "cmpl")
        request_id = _base_id(generations)
        header = {"id": request_id, "object": "text_completion", "created": int(time.time())}
        header["model"] = self.validator.model_name
        with_logprobs = body.logprobs is not None

        def choice_chunk(index: int, delta: Delta, first: bool) -> dict[str, Any]:
            echo = echoes[index // body.n] if first else ""
            return {
                "index": index,
                "text": echo + delta.text,
                "logprobs": _completion_logprobs(delta.logprobs) if with_logprobs else None,
                "finish_reason": delta.finish_reason,
            }

        return await self._answer(
            request,
            body,
            generations,
            header,
            choice_chunk,
            lambda i, c: {
                "index": i,
                "text": echoes[i // body.n] + "".join(c.text),
                "logprobs": _completion_logprobs(c.logprobs) if with_logprobs else None,
                "finish_reason": c.finish_reason,
            },
        )

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        prepared = [self.validator.prepare(body.to_input(self.validator.max_model_len))]
        generations = await self._start(request, body.n, body.user or "", prepared, "chatcmpl")
        header = {
            "id": _base_id(generations),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.validator.model_name,
        }

        def choice_chunk(index: int, delta: Delta, first: bool) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant"} if first else {}
            if delta.text or first:
                message["content"] = delta.text
            return {
                "index": index,
                "delta": message,
                "logprobs": _chat_logprobs(delta.logprobs) if body.logprobs else None,
                "finish_reason": delta.finish_reason,
            }

        if body.stream:
            header["object"] = "chat.completion.chunk"
        return await self._answer(
            request,
            body,
            generations,
            header,
            choice_chunk,
            lambda i, c: {
                "index": i,
                "message": {"role": "assistant", "content": "".join(c.text)},
                "logprobs": _chat_logprobs(c.logprobs) if body.logprobs else None,
                "finish_reason": c.finish_reason,
            },
        )

    async def _answer(
        self,
        request: Request,
        body: CompletionRequest | ChatCompletionRequest,
        generations: list[Generation],
        header: dict[str, Any],
        choice_chunk: Callable[[int, Delta, bool], dict[str, Any]],
        choice_body: Callable[[int, _Choice], dict[str, Any]],
    ) -> Response:
        """An SSE stream of chunks, or one JSON body once every choice ended."""
        if body.stream:
            return await self._stream(
                request, generations, body.n, header, body.include_usage, choice_chunk
            )
        return await _complete(request, generations, body.n, header, choice_body)

    async def _start(
        self,
        request: Request,
        n: int,
        user: str,
        prepared: Sequence[PreparedRequest],
        prefix: str,
    ) -> list[Generation]:
        """Admits n choices per prompt; all or none (a refusal closes those started)."""
        base_id = request.headers.get(REQUEST_ID_HEADER) or f"{prefix}-{uuid.uuid4().hex}"
        user = user or request.headers.get(USER_KEY, "")
        pinned = request.headers.get(VARIANT_KEY, "")
        generations: list[Generation] = []
        try:
            for p in prepared:
                for j in range(n):
                    seed = p.sampling.seed
                    sampling = replace(p.sampling, seed=seed + j) if seed is not None else None
                    choice = replace(p, sampling=sampling) if sampling else p
                    request_id = (
                        base_id if len(prepared) * n == 1 else f"{base_id}-{len(generations)}"
                    )
                    generations.append(await self.generator.start(request_id, choice, user, pinned))
        except BaseException:
            for g in generations:
                g.close()
            raise
        return generations

    async def _stream(
        self,
        request: Request,
        generations: list[Generation],
        n: int,
        header: dict[str, Any],
        include_usage: bool,
        choice_chunk: Callable[[int, Delta, bool], dict[str, Any]],
    ) -> Response:
        deltas = _merged(generations)
        try:  # the first output decides the status code
            first = await _next_or_none(deltas)
        except BaseException:
            await deltas.aclose()
            raise

        async def events() -> AsyncIterator[bytes]:
            started: set[int] = set()
            outputs = [0] * len(generations)
            item = first
            try:
                while item is not None:
                    index, delta = item
                    outputs[index] = delta.num_output_tokens
                    chunk = {
                        **header,
                        "choices": [choice_chunk(index, delta, index not in started)],
                    }
                    started.add(index)
                    if include_usage:
                        chunk["usage"] = None
                    yield _sse(chunk)
                    item = await _next_or_none(deltas)
                if include_usage:
                    usage = _usage_counts(generations, sum(outputs), n)
                    yield _sse({**header, "choices": [], "usage": usage})
            except ServiceError as exc:
                code, message = status_of(exc)
                yield _sse({"error": {"message": message, "type": code.name, "code": code.name}})
            finally:
                await deltas.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers=_headers(generations)
        )

    def _prompt_text(self, body: CompletionRequest, index: int, prepared: PreparedRequest) -> str:
        if isinstance(body.prompt, str):
            return body.prompt
        if isinstance(body.prompt[0], str):
            return str(body.prompt[index])
        return str(self.validator.tokenizer.decode(prepared.prompt_token_ids))


def _base_id(generations: list[Generation]) -> str:
    first = generations[0].request_id
    return first.rsplit("-", 1)[0] if len(generations) > 1 else first


def _headers(generations: list[Generation]) -> dict[str, str]:
    return {VARIANT_KEY: generations[0].variant, REQUEST_ID_HEADER: _base_id(generations)}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _complete(
    request: Request,
    generations: list[Generation],
    n: int,
    header: dict[str, Any],
    choice_body: Callable[[int, _Choice], dict[str, Any]],
) -> JSONResponse:
    """A non-streaming answer: every choice run to its end."""
    choices = await _collect(request, generations)
    usage = _usage_counts(generations, sum(c.num_output_tokens for c in choices), n)
    return JSONResponse(
        {**header, "choices": [choice_body(i, c) for i, c in enumerate(choices)], "usage": usage},
        headers=_headers(generations),
    )


def _usage_counts(generations: list[Generation], completion: int, n: int) -> dict[str, int]:
    prompt = sum(g.num_prompt_tokens for g in generations[::n])  # each prompt counts once
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _merged(generations: list[Generation]) -> AsyncGenerator[tuple[int, Delta], None]:
    """The deltas of several generations as they come, tagged with their index."""
    iterators = [g.deltas().__aiter__() for g in generations]
    pending = {asyncio.ensure_future(it.__anext__()): i for i, it in enumerate(iterators)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                index = pending.pop(task)
                try:
                    delta = task.result()
                except StopAsyncIteration:
                    continue
                yield index, delta
                pending[asyncio.ensure_future(iterators[index].__anext__())] = index
    finally:
        for task in pending:
            task.cancel()
        for g in generations:
            g.close()


async def _next_or_none(
    deltas: AsyncIterator[tuple[int, Delta]],
) -> tuple[int, Delta] | None:
    try:
        return await deltas.__anext__()
    except StopAsyncIteration:
        return None


async def _collect(request: Request, generations: list[Generation]) -> list[_Choice]:
    """Runs the generations to the end, or aborts them if the client goes away."""
    choices = [_Choice() for _ in generations]

    async def gather() -> None:
        async for index, delta in _merged(generations):
            choice = choices[index]
            choice.text.append(delta.text)
            choice.logprobs.extend(delta.logprobs)
            choice.finish_reason = delta.finish_reason
            choice.num_output_tokens = delta.num_output_tokens

    work = asyncio.ensure_future(gather())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()  # the client left: the generations abort
    if work.cancelled():
        raise asyncio.CancelledError
    work.result()
    return choices


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _completion_logprobs(logprobs: list[Logprob]) -> dict[str, Any]:
    offsets, offset = [], 0
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{token: v for _, token, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _chat_logprobs(logprobs: list[Logprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [
                    {"token": token, "logprob": v, "bytes": list(token.encode())}
                    for _, token, v in lp.top
                ],
            }
            for lp in logprobs
        ]
    }
