"""Sizes every service enforces on what it is sent, whoever sends it."""

from __future__ import annotations

MAX_REQUEST_ID_CHARS = 256  # ids go into logs and Redis keys
MAX_CLIENT_REQUEST_ID_CHARS = 128  # a client's id: the gateway appends "-<choice>" for n > 1
MAX_STOP_TOKEN_IDS = 64
MAX_CACHE_SALT_CHARS = 256
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's logit_bias: token id -> bias
MAX_GRAMMAR_CHARS = 65_536  # a JSON schema, regex, choice list or EBNF grammar
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1  # an int32, as on gRPC
MAX_USER_CHARS = 256  # the end user (OpenAI `user`, gRPC `user`, x-sarathi-user): routing, logs


def request_id_problem(request_id: str, max_chars: int = MAX_REQUEST_ID_CHARS) -> str:
    """Why `request_id` is refused ("" when it is fine)."""
    if not request_id:
        return "must not be empty"
    if len(request_id) > max_chars:
        return f"at most {max_chars} characters, got {len(request_id)}"
    if not request_id.isprintable():
        return "printable characters only (no control characters or line breaks)"
    return ""
