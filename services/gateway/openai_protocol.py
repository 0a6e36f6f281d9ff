"""OpenAI request bodies (pydantic, strict types) and their translation to the public contract.

Types and protobuf-size bounds are checked here; every semantic range is
checked once, by RequestValidator, for both the HTTP and the gRPC edge.
Unknown fields are ignored (clients send extras); fields we cannot honour are
refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.protocol import generate_pb2 as gpb

U32 = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
Number = StrictFloat | StrictInt
MAX_N = 16
MAX_PROMPTS = 64


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _SamplingFields(_Body):
    model: StrictStr | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Annotated[StrictInt, Field(ge=-1, le=2**32 - 1)] | None = None  # -1: off (vLLM)
    min_p: Number | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**64 - 1)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[U32] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    repetition_penalty: Number | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    best_of: StrictInt | None = None
    user: StrictStr | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    min_tokens: U32 = 0
    logit_bias: dict[str, Any] | None = None

    def sampling_options(self, max_tokens: int | None, logprobs: int | None) -> gpb.SamplingOptions:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidArgument("best_of: not supported (only best_of == n)")
        if self.logit_bias:
            raise InvalidArgument("logit_bias: not supported")
        opts = gpb.SamplingOptions(
            top_k=max(self.top_k or 0, 0),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            stop_token_ids=self.stop_token_ids or [],
            stop=[self.stop] if isinstance(self.stop, str) else (self.stop or []),
        )
        optional = {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "logprobs": logprobs,
        }
        for name, value in optional.items():
            if value is not None:
                setattr(opts, name, value)
        for name in ("min_p", "presence_penalty", "frequency_penalty"):
            if getattr(self, name) is not None:
                setattr(opts, name, getattr(self, name))
        return opts

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[U32] | list[list[U32]]
    max_tokens: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = 16
    logprobs: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None

    def to_requests(self) -> list[gpb.GenerateRequest]:
        """One public request per prompt (a choice per prompt and per n)."""
        if self.suffix:
            raise InvalidArgument("suffix: not supported")
        if self.echo and self.logprobs is not None:
            raise InvalidArgument("echo: not supported together with logprobs")
        prompts = self._prompts()
        options = self.sampling_options(self.max_tokens, self.logprobs)
        return [
            gpb.GenerateRequest(
                model=self.model or "", sampling=options, user=self.user or "", **prompt
            )
            for prompt in prompts
        ]

    def _prompts(self) -> list[dict[str, Any]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [{"prompt": prompt}]
        if not prompt:
            raise InvalidArgument("prompt: must not be empty")
        if isinstance(prompt[0], int):
            return [{"prompt_token_ids": gpb.TokenIds(ids=prompt)}]
        if len(prompt) > MAX_PROMPTS:
            raise InvalidArgument(f"prompt: at most {MAX_PROMPTS} prompts, got {len(prompt)}")
        if isinstance(prompt[0], str):
            return [{"prompt": p} for p in prompt]
        return [{"prompt_token_ids": gpb.TokenIds(ids=p)} for p in prompt]


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_tokens: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def to_request(self, max_model_len: int) -> gpb.GenerateRequest:
        if self.tools:
            raise InvalidArgument("tools: not supported")
        if self.response_format and self.response_format.get("type") != "text":
            raise InvalidArgument("response_format: only {'type': 'text'} is supported")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("top_logprobs: needs logprobs: true")
        max_tokens = self.max_completion_tokens
        if max_tokens is None:
            max_tokens = self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = gpb.ChatMessages(
            messages=[gpb.ChatMessage(role=m.role, content=m.text) for m in self.messages]
        )
        return gpb.GenerateRequest(
            model=self.model or "",
            messages=messages,
            # Unset: as many as the context holds (the scheduler stops at its end).
            sampling=self.sampling_options(
                max_model_len if max_tokens is None else max_tokens, logprobs
            ),
            user=self.user or "",
        )
