"""OpenAI's error body, `{"error": {message, type, param, code}}`, for every refusal.

`param` names the field at fault: the head of a ServiceError's message ("top_p: ...")
or the location of a pydantic error; 429 and 503 ask the client to retry in a second.
"""

from __future__ import annotations

import re

import grpc
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sarathi_serve.common.errors import retry_after, status_of

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAM = re.compile(r"^[a-z_][a-z0-9_.\[\]]*$")  # "messages[0].role"
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def error_response(
    status: int, message: str, param: str | None = None, retry_after: str = "1"
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPE.get(status, "server_error"),
            "param": param,
            "code": status,
        }
    }
    headers = {"Retry-After": retry_after} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def service_error_response(exc: BaseException) -> JSONResponse:
    """A ServiceError (or any exception) as its HTTP status, naming the field at fault."""
    code, message = status_of(exc)
    head = message.split(":", 1)[0]
    param = head if ":" in message and _PARAM.match(head) else None
    return error_response(_HTTP_STATUS.get(code, 500), message, param, retry_after(exc))


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """A body pydantic refused: 400 naming the first error's field ("messages[0].role")."""
    error = exc.errors()[0]
    if error.get("type") == "json_invalid":
        return error_response(400, f"body: malformed JSON ({error.get('msg', '')})", "body")
    path = ""
    for part in error.get("loc", ())[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.match(str(part)) and part not in _TYPE_TAGS:
            path += f".{part}" if path else str(part)
    path = path or "body"
    return error_response(400, f"{path}: {error.get('msg', 'invalid')}", path)
