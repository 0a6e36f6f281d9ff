"""What the scheduler accepts, whoever submits it: the gateways check the same and more,
but the scheduler's port is reachable by anything inside the cluster, and one request
the worker cannot compute must not reach it."""

from __future__ import annotations

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.limits import (
    MAX_CACHE_SALT_CHARS,
    MAX_GRAMMAR_CHARS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_STOP_TOKEN_IDS,
    MAX_USER_CHARS,
    request_id_problem,
)
from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.scheduler.request import Request


def check_request(request: Request, geometry: WorkerGeometry | None) -> None:
    """InvalidArgument naming the field at fault. `geometry`: the replica's worker's (None
    before any worker attached: the worker checks token ids again before it computes)."""
    problem = request_id_problem(request.request_id)
    if problem:
        raise InvalidArgument(f"request_id: {problem}")
    prompt, sampling = request.prompt_token_ids, request.sampling
    if not prompt:
        raise InvalidArgument("prompt_token_ids: must not be empty")
    if len(request.cache_salt) > MAX_CACHE_SALT_CHARS:
        raise InvalidArgument(f"cache_salt: at most {MAX_CACHE_SALT_CHARS} characters")
    if len(request.tenant) > MAX_USER_CHARS:
        raise InvalidArgument(f"tenant: at most {MAX_USER_CHARS} characters")
    if len(sampling.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgument(
            f"stop_token_ids: at most {MAX_STOP_TOKEN_IDS}, got {len(sampling.stop_token_ids)}"
        )
    if len(sampling.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidArgument(f"logit_bias: at most {MAX_LOGIT_BIAS_ENTRIES} entries")
    if sampling.grammar is not None and len(sampling.grammar.spec) > MAX_GRAMMAR_CHARS:
        raise InvalidArgument(f"grammar: at most {MAX_GRAMMAR_CHARS} characters")
    if geometry is None:
        return
    if len(prompt) >= geometry.max_model_len:
        raise InvalidArgument(
            f"prompt_token_ids: {len(prompt)} tokens; the model's context is "
            f"{geometry.max_model_len} and at least one token must be generated"
        )
    vocab = geometry.vocab_size
    if not vocab:
        return
    biased = tuple(token_id for token_id, _ in sampling.logit_bias)
    fields = (
        ("prompt_token_ids", prompt),
        ("stop_token_ids", sampling.stop_token_ids),
        ("logit_bias", biased),
    )
    for field, ids in fields:
        if ids and max(ids) >= vocab:
            raise InvalidArgument(f"{field}: {max(ids)} is outside the vocabulary (size {vocab})")
    if sampling.top_k > vocab:
        raise InvalidArgument(f"top_k: at most the vocabulary size ({vocab}), got {sampling.top_k}")
