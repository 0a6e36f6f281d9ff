"""Running generations to an OpenAI answer: an SSE stream of chunks, or one JSON body.

A stream starts only once the first output (or error) is known, so that refusals
get a real status code; it ends in `data: [DONE]`. A client that disconnects aborts
its generations: their KV blocks are freed at the scheduler's next iteration.
The endpoints (openai_completions.py) say how a delta or a whole choice looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sarathi_serve.common.errors import ServiceError, status_of
from sarathi_serve.gateway.generation import Delta, Generation, Logprob
from sarathi_serve.gateway.router import VARIANT_KEY

REQUEST_ID_HEADER = "x-request-id"

CLIENT_CLOSED_REQUEST = 499
# (index, delta, first) -> the chunk's choice, or None when there is nothing to send yet
ChoiceChunk = Callable[[int, Delta, bool], dict[str, Any] | None]


@dataclass(slots=True)
class Choice:
    """One choice run to its end."""

    text: list[str] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0


async def stream_answer(
    generations: list[Generation],
    n: int,
    header: dict[str, Any],
    include_usage: bool,
    choice_chunk: ChoiceChunk,
) -> Response:
    """An SSE stream: a chunk per delta (`header` + one choice), the usage last if asked."""
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
                choice = choice_chunk(index, delta, index not in started)
                started.add(index)
                if choice is not None:
                    chunk = {**header, "choices": [choice]}
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


async def complete_answer(
    request: Request,
    generations: list[Generation],
    n: int,
    header: dict[str, Any],
    choice_body: Callable[[int, Choice], dict[str, Any]],
) -> Response:
    """A non-streaming answer: every choice run to its end."""
    choices = await _collect(request, generations)
    if choices is None:  # nobody reads it: nginx's "client closed request"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    usage = _usage_counts(generations, sum(c.num_output_tokens for c in choices), n)
    return JSONResponse(
        {**header, "choices": [choice_body(i, c) for i, c in enumerate(choices)], "usage": usage},
        headers=_headers(generations),
    )


def base_id(generations: list[Generation]) -> str:
    """The id of the whole answer (its choices' ids are `{base}-{i}`)."""
    first = generations[0].request_id
    return first.rsplit("-", 1)[0] if len(generations) > 1 else first


def _headers(generations: list[Generation]) -> dict[str, str]:
    return {VARIANT_KEY: generations[0].variant, REQUEST_ID_HEADER: base_id(generations)}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


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


async def _collect(request: Request, generations: list[Generation]) -> list[Choice] | None:
    """Runs the generations to the end, or aborts them if the client goes away (None)."""
    choices = [Choice() for _ in generations]

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
            with contextlib.suppress(asyncio.CancelledError):
                await work  # let it end (a task cancelled is not done until it ran)
    if work.cancelled():
        return None
    work.result()
    return choices


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
