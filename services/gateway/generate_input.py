"""A public generate request as the gateway's core reads it, made at each edge.

The gRPC servicer converts `generate.proto`'s GenerateRequest into it, the HTTP edge
converts an OpenAI body; `RequestValidator` checks it once for both. A field that
protobuf declares `optional` is None here when unset, so that its default is chosen
in one place (the validator). The request id and the end user, which trace and route
a request rather than say what to generate, stay with each edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sarathi_serve.common.sampling import Grammar


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    # an assistant turn's tool calls: (id, function name, arguments as JSON text)
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    tool_call_id: str = ""  # a tool turn: the call it answers


@dataclass(frozen=True, slots=True)
class TextPrompt:
    """Raw text, tokenized with the model's special tokens."""

    name: ClassVar[str] = "prompt"  # the field an error names
    text: str


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A conversation, rendered by the model's chat template."""

    name: ClassVar[str] = "messages"
    messages: tuple[ChatMessage, ...]
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI-shaped functions the template shows


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """An already tokenized prompt."""

    name: ClassVar[str] = "prompt_token_ids"
    token_ids: tuple[int, ...]


Prompt = TextPrompt | ChatPrompt | TokenPrompt


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """Structured output as the client asked for it: `field` is what an error names."""

    field: str  # e.g. "response_format", "structured_outputs.regex", "sampling.structured"
    grammar: Grammar


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Sampling as the client asked for it: unchecked, None where left unset."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    stop: tuple[str, ...] = ()  # stop strings, cut from the text by the gateway
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), unchecked
    constraint: OutputConstraint | None = None


@dataclass(frozen=True, slots=True)
class GenerateInput:
    """What to generate: a prompt (None: the client sent none), for a model ("": the
    served one), with these sampling options."""

    prompt: Prompt | None
    model: str = ""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    cache_salt: str = ""  # shares cached prompt prefixes only with the same salt
    # max_tokens unset: as many as the context holds (OpenAI chat), not DEFAULT_MAX_TOKENS
    fill_context: bool = False
    priority: int | None = None  # lower is served first (vLLM's); None: auth.Caller's
