"""Optional API keys, checked at both edges before anything reaches the scheduler.

Keys come from a file (one per line, `#` comments) and/or a comma-separated
list (the SARATHI_GATEWAY_API_KEYS environment variable). No keys: open access.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

_PUBLIC_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ApiKeys:
    def __init__(self, keys: set[str]):
        self._keys = {k.encode() for k in keys}

    @classmethod
    def load(cls, keys: str = "", keys_file: str = "") -> ApiKeys:
        found = {k.strip() for k in keys.split(",") if k.strip()}
        if keys_file:
            for line in Path(keys_file).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    found.add(line)
        return cls(found)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """`authorization`: the header's value, `Bearer <key>`."""
        if not self._keys:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return False
        given = key.strip().encode()
        return any(hmac.compare_digest(given, k) for k in self._keys)


def tenant_of(authorization: str | None) -> str:
    """A name for the API key in `authorization` (`Bearer <key>`) that does not reveal
    it, or "" without one: the per-key part of a prefix-cache salt."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return hashlib.sha256(key.strip().encode()).hexdigest()[:32]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """gRPC: `authorization: Bearer <key>` metadata, else UNAUTHENTICATED."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if not self.keys.enabled or details.method.startswith(_PUBLIC_METHODS):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if self.keys.allows(metadata.get("authorization")):
            return await continuation(details)
        return _DENY


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "authorization: a valid API key is required"
    )


_DENY = grpc.unary_stream_rpc_method_handler(_deny)
