"""The ranges of a request's sampling options: InvalidArgument naming the first field out of
its range (NaN never is in one). Checked once, by RequestValidator, for both edges."""

from __future__ import annotations

import math

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.limits import (
    MAX_GRAMMAR_CHARS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_STOP_TOKEN_IDS,
)
from sarathi_serve.common.sampling import MAX_LOGIT_BIAS, MAX_LOGPROBS
from sarathi_serve.gateway.generate_input import OutputConstraint, SamplingOptions

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 512


def check_constraint(constraint: OutputConstraint, opts: SamplingOptions) -> None:
    if len(constraint.grammar.spec) > MAX_GRAMMAR_CHARS:
        raise InvalidArgument(
            f"{constraint.field}: at most {MAX_GRAMMAR_CHARS} characters, "
            f"got {len(constraint.grammar.spec)}"
        )
    for name, value in (("ignore_eos", opts.ignore_eos), ("min_tokens", opts.min_tokens)):
        if value:
            raise InvalidArgument(f"{name}: cannot be combined with {constraint.field}")


def check_logit_bias(bias: tuple[tuple[int, float], ...], vocab: int) -> None:
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidArgument(
            f"logit_bias: at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(bias)}"
        )
    for token_id, value in bias:
        if not 0 <= token_id < vocab:
            raise InvalidArgument(
                f"logit_bias: {token_id} is outside the vocabulary (size {vocab})"
            )
        if not (math.isfinite(value) and -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS):
            raise InvalidArgument(f"logit_bias[{token_id}]: must be in [-100, 100], got {value}")


def check_sampling(
    opts: SamplingOptions,
    max_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
) -> None:
    """InvalidArgument naming the first field out of its range (NaN never is in one)."""
    if max_tokens < 1:
        raise InvalidArgument(f"max_tokens: must be >= 1, got {max_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidArgument(f"temperature: must be >= 0, got {temperature}")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InvalidArgument(f"top_p: must be in (0, 1], got {top_p}")
    if len(opts.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgument(
            f"stop_token_ids: at most {MAX_STOP_TOKEN_IDS}, got {len(opts.stop_token_ids)}"
        )
    if opts.min_tokens > max_tokens:
        raise InvalidArgument(
            f"min_tokens: must be <= max_tokens ({max_tokens}), got {opts.min_tokens}"
        )
    checks = [
        ("min_p", opts.min_p, 0.0 <= opts.min_p <= 1.0, "in [0, 1]"),
        ("repetition_penalty", repetition_penalty, repetition_penalty > 0, "> 0"),
        ("presence_penalty", opts.presence_penalty, -2 <= opts.presence_penalty <= 2, "in [-2, 2]"),
        (
            "frequency_penalty",
            opts.frequency_penalty,
            -2 <= opts.frequency_penalty <= 2,
            "in [-2, 2]",
        ),
    ]
    for name, value, ok, expected in checks:
        if not (math.isfinite(value) and ok):
            raise InvalidArgument(f"{name}: must be {expected}, got {value}")
    if opts.logprobs is not None and opts.logprobs > MAX_LOGPROBS:
        raise InvalidArgument(f"logprobs: at most {MAX_LOGPROBS}, got {opts.logprobs}")


def stop_strings(stop: tuple[str, ...]) -> tuple[str, ...]:
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    for i, s in enumerate(stop):
        if not s:
            raise InvalidArgument(f"stop[{i}]: must not be empty")
        if len(s) > MAX_STOP_STRING_CHARS:
            raise InvalidArgument(
                f"stop[{i}]: at most {MAX_STOP_STRING_CHARS} characters, got {len(s)}"
            )
    return stop
