"""/v1/completions and /v1/chat/completions: a body -> validated requests -> n choices each.

Each endpoint says how one choice looks (a streamed delta, or the whole choice);
openai_answers.py runs the generations into the stream or the body.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.limits import MAX_CLIENT_REQUEST_ID_CHARS, request_id_problem
from sarathi_serve.gateway.auth import PRIORITY_KEY, ApiKeys
from sarathi_serve.gateway.generation import Delta, Generation, Generator, Logprob
from sarathi_serve.gateway.openai_answers import (
    REQUEST_ID_HEADER,
    Choice,
    ChoiceChunk,
    base_id,
    complete_answer,
    stream_answer,
)
from sarathi_serve.gateway.openai_chat import ChatChoices
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from sarathi_serve.gateway.router import USER_KEY, VARIANT_KEY
from sarathi_serve.gateway.validation import PreparedRequest, RequestValidator


class OpenAICompletions:
    """The two generating endpoints; both validate through the gRPC edge's validator."""

    def __init__(self, validator: RequestValidator, generator: Generator, api_keys: ApiKeys):
        self.validator = validator
        self.generator = generator
        self.api_keys = api_keys

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        prepared = [await self.validator.prepare_async(r) for r in body.to_inputs()]
        echoes = [
            self._prompt_text(body, i, p) if body.echo else "" for i, p in enumerate(prepared)
        ]
        generations = await self._start(request, body.n, body.user or "", prepared, "cmpl")
        request_id = base_id(generations)
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

        def choice_body(index: int, choice: Choice) -> dict[str, Any]:
            return {
                "index": index,
                "text": echoes[index // body.n] + "".join(choice.text),
                "logprobs": _completion_logprobs(choice.logprobs) if with_logprobs else None,
                "finish_reason": choice.finish_reason,
            }

        return await _answer(request, body, generations, header, choice_chunk, choice_body)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        prepared = [await self.validator.prepare_async(body.to_input())]
        generations = await self._start(request, body.n, body.user or "", prepared, "chatcmpl")
        header = {
            "id": base_id(generations),
            "object": "chat.completion.chunk" if body.stream else "chat.completion",
            "created": int(time.time()),
            "model": self.validator.model_name,
        }

        shapes = ChatChoices(body.tool_use(), body.logprobs)
        return await _answer(request, body, generations, header, shapes.chunk, shapes.body)

    async def _start(
        self,
        request: Request,
        n: int,
        user: str,
        prepared: Sequence[PreparedRequest],
        prefix: str,
    ) -> list[Generation]:
        """Admits n choices per prompt; all or none (a refusal closes those started)."""
        base = request.headers.get(REQUEST_ID_HEADER) or f"{prefix}-{uuid.uuid4().hex}"
        problem = request_id_problem(base, MAX_CLIENT_REQUEST_ID_CHARS)
        if problem:
            raise InvalidArgument(f"{REQUEST_ID_HEADER}: {problem}")
        user = user or request.headers.get(USER_KEY, "")
        pinned = request.headers.get(VARIANT_KEY, "")
        caller = self.api_keys.caller(request.headers.get("authorization"))
        header_priority = request.headers.get(PRIORITY_KEY)
        generations: list[Generation] = []
        try:
            for p in prepared:
                for j in range(n):
                    seed = p.sampling.seed
                    sampling = replace(p.sampling, seed=seed + j) if seed is not None else None
                    choice = replace(
                        p,
                        sampling=sampling or p.sampling,
                        priority=caller.priority(p.priority, header_priority),
                    )
                    request_id = base if len(prepared) * n == 1 else f"{base}-{len(generations)}"
                    generation = await self.generator.start(
                        request_id, choice, user, pinned, caller
                    )
                    generations.append(generation)
        except BaseException:
            for g in generations:
                g.close()
            raise
        return generations

    def _prompt_text(self, body: CompletionRequest, index: int, prepared: PreparedRequest) -> str:
        if isinstance(body.prompt, str):
            return body.prompt
        if isinstance(body.prompt[0], str):
            return str(body.prompt[index])
        return str(self.validator.tokenizer.decode(prepared.prompt_token_ids))


async def _answer(
    request: Request,
    body: CompletionRequest | ChatCompletionRequest,
    generations: list[Generation],
    header: dict[str, Any],
    choice_chunk: ChoiceChunk,
    choice_body: Callable[[int, Choice], dict[str, Any]],
) -> Response:
    """An SSE stream of chunks, or one JSON body once every choice ended."""
    if body.stream:
        return await stream_answer(generations, body.n, header, body.include_usage, choice_chunk)
    return await complete_answer(request, generations, body.n, header, choice_body)


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
