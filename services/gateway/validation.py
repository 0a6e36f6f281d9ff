"""A public request -> (prompt token ids, sampling params), or InvalidArgument naming the field.

Both edges call it on the GenerateInput they made, so each range is checked once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from sarathi_serve.common.errors import InvalidArgument, NotFound
from sarathi_serve.common.grammar import GrammarCompiler
from sarathi_serve.common.limits import (
    MAX_CACHE_SALT_CHARS,
)
from sarathi_serve.common.sampling import (
    DEFAULT_MAX_TOKENS,
    Grammar,
    SamplingParams,
)
from sarathi_serve.gateway.generate_input import (
    ChatMessage,
    ChatPrompt,
    GenerateInput,
    Prompt,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from sarathi_serve.gateway.sampling_checks import (
    check_constraint,
    check_logit_bias,
    check_sampling,
    stop_strings,
)
from sarathi_serve.gateway.tools import template_messages

_CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
OFF_LOOP_CHARS = 16_384  # prompts longer than this are tokenized off the event loop


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    prompt_token_ids: list[int]
    sampling: SamplingParams
    stop: tuple[str, ...] = ()  # stop strings, cut from the text by the gateway
    cache_salt: str = ""
    priority: int | None = None  # None until the edge applies the caller's (auth.py)


class RequestValidator:
    def __init__(self, tokenizer: Any, model_name: str, max_model_len: int):
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        # A token stands for at most this many characters of text (byte-level BPE: bytes;
        # x2 for normalizers that compose characters): text longer than the context times
        # it cannot fit, and is refused without being tokenized.
        self.vocab_size = len(tokenizer)
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * longest * max_model_len
        self._grammars: GrammarCompiler | None = None  # made at the first constrained request

    async def prepare_async(self, request: GenerateInput) -> PreparedRequest:
        """`prepare`, on a thread for a prompt of more than OFF_LOOP_CHARS characters (the
        tokenizer releases the GIL) and for a grammar to compile: other streams go on
        meanwhile."""
        heavy = request.sampling.constraint is not None
        if not heavy and _prompt_chars(request.prompt) <= OFF_LOOP_CHARS:
            return self.prepare(request)
        return await asyncio.to_thread(self.prepare, request)

    def prepare(self, request: GenerateInput) -> PreparedRequest:
        """NotFound for another model; InvalidArgument naming the first field at fault."""
        if request.model and request.model != self.model_name:
            raise NotFound(
                f"model: {request.model!r} is not served here; "
                f"this gateway serves {self.model_name!r}"
            )
        prompt_ids = self._prompt_token_ids(request)
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidArgument(
                f"prompt: {len(prompt_ids)} tokens; the model's context is {self.max_model_len} "
                "and at least one token must be generated"
            )
        max_tokens = self._max_tokens(request, len(prompt_ids))
        sampling = self._sampling(request.sampling, max_tokens)
        stop = stop_strings(request.sampling.stop)
        if len(request.cache_salt) > MAX_CACHE_SALT_CHARS:
            raise InvalidArgument(f"cache_salt: at most {MAX_CACHE_SALT_CHARS} characters")
        return PreparedRequest(prompt_ids, sampling, stop, request.cache_salt, request.priority)

    def _prompt_token_ids(self, request: GenerateInput) -> list[int]:
        prompt = request.prompt
        num_chars = _prompt_chars(prompt)
        if num_chars > self.max_prompt_chars:
            raise InvalidArgument(
                f"{prompt.name if prompt else 'prompt'}: {num_chars} characters cannot fit "
                f"the model's context of {self.max_model_len} tokens"
            )
        if isinstance(prompt, TextPrompt):
            if not prompt.text:
                raise InvalidArgument("prompt: must not be empty")
            ids = list(self.tokenizer.encode(prompt.text, add_special_tokens=True))
        elif isinstance(prompt, ChatPrompt):
            ids = self._chat_token_ids(prompt)
        elif isinstance(prompt, TokenPrompt):
            ids = list(prompt.token_ids)
            vocab = self.vocab_size
            bad = [t for t in ids if t >= vocab]
            if bad:
                raise InvalidArgument(
                    f"prompt_token_ids: {bad[0]} is outside the vocabulary (size {vocab})"
                )
        else:
            raise InvalidArgument("prompt: one of prompt, messages or prompt_token_ids is required")
        if not ids:
            raise InvalidArgument(f"{prompt.name}: must not be empty")
        return ids

    def _chat_token_ids(self, prompt: ChatPrompt) -> list[int]:
        messages = prompt.messages
        if not messages:
            raise InvalidArgument("messages: must not be empty")
        for i, m in enumerate(messages):
            if m.role not in _CHAT_ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role: {m.role!r} is not one of {sorted(_CHAT_ROLES)}"
                )
        conversation = [_template_message(m) for m in messages]
        renders_tools = "tools" in (self.tokenizer.chat_template or "")
        conversation = template_messages(conversation, prompt.tools, renders_tools)
        tools = list(prompt.tools) if prompt.tools and renders_tools else None
        text = self.tokenizer.apply_chat_template(
            conversation, tools=tools, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _max_tokens(self, request: GenerateInput, num_prompt_tokens: int) -> int:
        """max_tokens, or its default; the prompt and it must fit the context (as vLLM)."""
        room = self.max_model_len - num_prompt_tokens
        max_tokens = request.sampling.max_tokens
        if max_tokens is None:
            return room if request.fill_context else min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise InvalidArgument(
                f"max_tokens: this model's maximum context length is {self.max_model_len} "
                f"tokens; you requested {num_prompt_tokens + max_tokens} tokens "
                f"({num_prompt_tokens} in the prompt, {max_tokens} in the completion): "
                "reduce the length of the prompt or of the completion"
            )
        return max_tokens

    def _sampling(self, opts: SamplingOptions, max_tokens: int) -> SamplingParams:
        """The options with the defaults of those left unset, checked."""
        temperature = 1.0 if opts.temperature is None else opts.temperature
        top_p = 1.0 if opts.top_p is None else opts.top_p
        repetition_penalty = 1.0 if opts.repetition_penalty is None else opts.repetition_penalty
        check_sampling(opts, max_tokens, temperature, top_p, repetition_penalty)
        vocab = self.vocab_size
        if opts.top_k > vocab:
            raise InvalidArgument(f"top_k: at most the vocabulary size ({vocab}), got {opts.top_k}")
        check_logit_bias(opts.logit_bias, vocab)
        grammar = self._grammar(opts)
        return SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=opts.top_k,
            seed=opts.seed,
            max_tokens=max_tokens,
            stop_token_ids=opts.stop_token_ids,
            ignore_eos=opts.ignore_eos,
            min_tokens=opts.min_tokens,
            min_p=opts.min_p,
            repetition_penalty=repetition_penalty,
            presence_penalty=opts.presence_penalty,
            frequency_penalty=opts.frequency_penalty,
            logprobs=opts.logprobs,
            logit_bias=tuple(sorted(opts.logit_bias)),
            grammar=grammar,
        )

    def _grammar(self, opts: SamplingOptions) -> Grammar | None:
        """The constraint's grammar, compiled once here so that a bad one is refused
        before anything is scheduled (the worker compiles it again, from its cache)."""
        constraint = opts.constraint
        if constraint is None:
            return None
        check_constraint(constraint, opts)
        if self._grammars is None:
            self._grammars = GrammarCompiler(
                self.tokenizer, self.vocab_size, self.tokenizer.eos_token_id or 0
            )
        try:
            self._grammars.compile(constraint.grammar)
        except ValueError as exc:
            raise InvalidArgument(f"{constraint.field}: {exc}") from None
        return constraint.grammar


def _template_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it (OpenAI's shape)."""
    message: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
            for id_, name, arguments in m.tool_calls
        ]
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    return message


def _prompt_chars(prompt: Prompt | None) -> int:
    """Characters of text to tokenize (0 for token ids)."""
    if isinstance(prompt, TextPrompt):
        return len(prompt.text)
    if isinstance(prompt, ChatPrompt):
        calls = sum(len(a) + len(n) for m in prompt.messages for _, n, a in m.tool_calls)
        tools = sum(len(json.dumps(t)) for t in prompt.tools)
        return sum(len(m.content) + len(m.role) for m in prompt.messages) + calls + tools
    return 0
