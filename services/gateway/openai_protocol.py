"""OpenAI request bodies (pydantic, strict types) and their translation to GenerateInput.

Types and the bounds of generate.proto's fields are checked here, and its values
carried as its wire would (32-bit floats, UTF-8 strings), so that both edges hand
RequestValidator the same input; every semantic range is checked once, there.
Unknown fields are ignored (clients send extras); fields we cannot honour are
refused by name rather than silently dropped.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.limits import MAX_PRIORITY, MIN_PRIORITY
from sarathi_serve.gateway import generate_input as gi
from sarathi_serve.gateway.openai_structured import (
    CONSTRAINT_FIELDS,
    logit_bias,
    output_constraint,
)
from sarathi_serve.gateway.tools import ToolUse, tool_use

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
    cache_salt: StrictStr | None = None  # vLLM's field: prefixes are shared per salt
    priority: Annotated[StrictInt, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    min_tokens: U32 = 0
    logit_bias: Any = None
    response_format: Any = None
    structured_outputs: Any = None  # vLLM's extras
    guided_json: Any = None  # vLLM's older names
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None

    def _check_names_utf8(self) -> None:
        for field in ("model", "user", "cache_salt"):
            _check_utf8(field, getattr(self, field) or "")

    def sampling_options(self, max_tokens: int | None, logprobs: int | None) -> gi.SamplingOptions:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidArgument("best_of: not supported (only best_of == n)")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return gi.SamplingOptions(
            max_tokens=max_tokens,
            temperature=_optional_f32(self.temperature),
            top_p=_optional_f32(self.top_p),
            top_k=max(self.top_k or 0, 0),
            seed=self.seed,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            min_p=_f32(0.0 if self.min_p is None else self.min_p),
            repetition_penalty=_optional_f32(self.repetition_penalty),
            presence_penalty=_f32(0.0 if self.presence_penalty is None else self.presence_penalty),
            frequency_penalty=_f32(
                0.0 if self.frequency_penalty is None else self.frequency_penalty
            ),
            logprobs=logprobs,
            stop=_check_utf8("stop", *stop),
            logit_bias=logit_bias(self.logit_bias),
            constraint=self._constraint(),
        )

    def _constraint(self) -> gi.OutputConstraint | None:
        constraint = output_constraint({name: getattr(self, name) for name in CONSTRAINT_FIELDS})
        if constraint is not None:
            _check_utf8(constraint.field, constraint.grammar.spec)
        return constraint

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[U32] | list[list[U32]]
    max_tokens: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = 16
    logprobs: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None

    def to_inputs(self) -> list[gi.GenerateInput]:
        """One public request per prompt (a choice per prompt and per n)."""
        if self.suffix:
            raise InvalidArgument("suffix: not supported")
        if self.echo and self.logprobs is not None:
            raise InvalidArgument("echo: not supported together with logprobs")
        prompts = self._prompts()
        options = self.sampling_options(self.max_tokens, self.logprobs)
        texts = [p.text for p in prompts if isinstance(p, gi.TextPrompt)]
        _check_utf8("prompt", *texts)
        self._check_names_utf8()
        salt = self.cache_salt or ""
        return [
            gi.GenerateInput(prompt, self.model or "", options, salt, priority=self.priority)
            for prompt in prompts
        ]

    def _prompts(self) -> list[gi.Prompt]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [gi.TextPrompt(prompt)]
        if not prompt:
            raise InvalidArgument("prompt: must not be empty")
        if isinstance(prompt[0], int):
            return [gi.TokenPrompt(tuple(prompt))]
        if len(prompt) > MAX_PROMPTS:
            raise InvalidArgument(f"prompt: at most {MAX_PROMPTS} prompts, got {len(prompt)}")
        if isinstance(prompt[0], str):
            return [gi.TextPrompt(p) for p in prompt]
        return [gi.TokenPrompt(tuple(p)) for p in prompt]


class FunctionCallIn(_Body):
    name: StrictStr
    arguments: StrictStr


class ToolCallIn(_Body):
    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn that called tools
    tool_call_id: StrictStr | None = None  # a tool turn: the call it answers

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
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool = True  # false: a required answer holds one call

    def tool_use(self) -> ToolUse | None:
        return tool_use(self.tools, self.tool_choice, self.parallel_tool_calls)

    def to_input(self) -> gi.GenerateInput:
        use = self.tool_use()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("top_logprobs: needs logprobs: true")
        max_tokens = self.max_completion_tokens
        if max_tokens is None:
            max_tokens = self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = tuple(_chat_message(i, m) for i, m in enumerate(self.messages))
        options = self.sampling_options(max_tokens, logprobs)
        forced = use.constraint() if use else None
        if forced is not None:
            if options.constraint is not None:
                raise InvalidArgument(
                    f"tool_choice: cannot be combined with {options.constraint.field}"
                )
            options = replace(options, constraint=forced)
        self._check_names_utf8()
        salt = self.cache_salt or ""
        # max_tokens unset: as many as the context holds
        tools = tuple(t.as_openai() for t in use.shown) if use else ()
        _check_utf8("tools", json.dumps(tools, ensure_ascii=False) if tools else "")
        prompt = gi.ChatPrompt(messages, tools)
        return gi.GenerateInput(
            prompt, self.model or "", options, salt, fill_context=True, priority=self.priority
        )


def _chat_message(index: int, m: ChatMessage) -> gi.ChatMessage:
    calls = tuple((c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    texts = [m.role, m.text, m.tool_call_id or "", *(t for call in calls for t in call)]
    _check_utf8(f"messages[{index}]", *texts)
    return gi.ChatMessage(m.role, m.text, calls, m.tool_call_id or "")


def _f32(value: float) -> float:
    """The value as generate.proto's `float` carries it: rounded to 32 bits, inf past them."""
    return array("f", [value])[0]


def _optional_f32(value: float | None) -> float | None:
    return None if value is None else _f32(value)


def _check_utf8(field: str, *texts: str) -> tuple[str, ...]:
    """The texts, or InvalidArgument (400) naming `field` for a lone surrogate (JSON
    may hold "\\ud800"), which is not Unicode text: UTF-8 and generate.proto's
    `string` cannot carry it."""
    for text in texts:
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{field}: not valid Unicode text (a lone surrogate at character {exc.start})"
            ) from None
    return texts
