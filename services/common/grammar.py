"""Structured output: a request's Grammar compiled for the model's tokenizer (xgrammar).

The one place grammars are compiled, for the gateway (which refuses a bad one before
anything is scheduled) and for the worker (which keeps a matcher per constrained
request and masks, every step, the tokens that cannot continue its output).

Why xgrammar: on the development machine's cores, filling the token masks of 32 JSON
schema requests at staggered positions took 0.25 ms p50 per step with xgrammar against
1.18 ms with llguidance (SmolLM2's 49,152-token vocabulary; docs/performance.md).

JSON is generated compact on one line (`", "` and `": "` as separators): a schema that
allowed any whitespace lets a small model pad its output with blank lines until
max_tokens, which no client wants. For the same reason an integer the schema leaves
unbounded is held to the 64-bit range (19 digits): past it JSON numbers stop being
portable anyway (RFC 8259, section 6), and a model that repeats a digit would otherwise
write one number until max_tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sarathi_serve.common.sampling import Grammar

# xgrammar's messages start with a timestamp and a C++ source location
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")
_MAX_MESSAGE = 300  # characters of an error message (some quote the whole schema)
_CACHE_BYTES = 256 << 20  # compiled grammars kept for reuse (a schema repeats across requests)
ANY_OBJECT = Grammar("json_schema", '{"type": "object"}', loose=True)  # OpenAI's json_object


class GrammarCompiler:
    """Compiles Grammars for one tokenizer; repeated ones come from a bounded cache."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_id: int):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[eos_token_id]
        )
        self._xgr = xgr
        self._compiler = xgr.GrammarCompiler(info, cache_limit_bytes=_CACHE_BYTES)
        self.vocab_size = vocab_size

    def compile(self, grammar: Grammar) -> Any:
        """The compiled grammar, or ValueError with what is wrong with it."""
        compiler = self._compiler
        try:
            if grammar.kind == "json_schema":
                schema = _bounded_integers(json.loads(grammar.spec))
                return compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, strict_mode=not grammar.loose
                )
            if grammar.kind == "regex":
                return compiler.compile_regex(grammar.spec)
            if grammar.kind == "choice":
                return compiler.compile_grammar(choice_ebnf(json.loads(grammar.spec)))
            return compiler.compile_grammar(grammar.spec)
        except (RuntimeError, TypeError, UnicodeError, json.JSONDecodeError) as exc:
            raise ValueError(_message(exc)) from None

    def matcher(self, grammar: Grammar, output_token_ids: Sequence[int] = ()) -> Any:
        """A matcher at the state after `output_token_ids` (a recomputed request's output
        so far): the state is a function of the tokens. ValueError when they do not fit."""
        matcher = self._xgr.GrammarMatcher(self.compile(grammar))
        for i, token in enumerate(output_token_ids):
            if not matcher.accept_token(token):
                raise ValueError(f"output token {i} ({token}) does not match the grammar")
        return matcher

    def new_bitmask(self, rows: int) -> Any:
        """An int32 [rows, ceil(vocab / 32)] bitmask for `fill_next_token_bitmask`."""
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)


def choice_ebnf(choices: Sequence[str]) -> str:
    """An EBNF grammar whose outputs are exactly the given strings."""
    if not isinstance(choices, list) or not choices:
        raise TypeError("choice: a non-empty list of strings is needed")
    if not all(isinstance(c, str) and c for c in choices):
        raise TypeError("choice: every choice must be a non-empty string")
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas


def _bounded_integers(schema: Any) -> Any:
    """The schema with the 64-bit range on every integer that has no bound of its own."""
    if isinstance(schema, list):
        return [_bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYS else _bounded_integers(v) for k, v in schema.items()}
    if out.get("type") == "integer" and not any(b in out for b in _BOUNDS):
        out.update(_INT64)
    return out


def _message(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    first = _LOCATION.sub("", lines[0]).strip() if lines else type(exc).__name__
    return first if len(first) <= _MAX_MESSAGE else first[: _MAX_MESSAGE - 3] + "..."
