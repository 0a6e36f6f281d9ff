"""Errors that cross service boundaries, and their one mapping to gRPC status codes."""

from __future__ import annotations

import math

import grpc


class ServiceError(Exception):
    """An error a client can act on; `code` is the gRPC status to answer with."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str = "", retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when to try again (HTTP Retry-After)


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


_BY_CODE_NAME = {
    cls.code.name: cls for cls in (InvalidArgument, ResourceExhausted, Unavailable, NotFound)
}


def error_from_code(code_name: str, message: str) -> ServiceError:
    """Rebuilds an error carried as (status code name, message) over a stream."""
    cls = _BY_CODE_NAME.get(code_name, ServiceError)
    return cls(message)


def retry_after(exc: BaseException) -> str:
    """The Retry-After value of a refusal (whole seconds, at least 1): HTTP's header
    and the gateway's `retry-after` gRPC trailing metadata."""
    return str(max(math.ceil(getattr(exc, "retry_after_s", 1.0)), 1))


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a server answers for `exc`."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
