"""Bearer credentials on gRPC: the servers' check, and the internal token the services
share.

The scheduler's port (gateways' sessions, workers' attaches, admin RPCs) is internal:
with a token configured it answers only calls that carry `authorization: Bearer
<token>`. The token comes from the environment (SARATHI_INTERNAL_TOKEN, or a file named
by SARATHI_INTERNAL_TOKEN_FILE, e.g. a mounted Kubernetes Secret); `up` makes one per
run and keeps it in the run directory (mode 0600) for the CLI. No token: open access.
Health and reflection stay public (probes carry no credentials).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc

TOKEN_ENV = "SARATHI_INTERNAL_TOKEN"
TOKEN_FILE_ENV = "SARATHI_INTERNAL_TOKEN_FILE"
TOKEN_FILE_NAME = "internal-token"  # in a run directory of `up`
_PUBLIC_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
Metadata = tuple[tuple[str, str], ...]


class Credentials(Protocol):
    @property
    def enabled(self) -> bool: ...

    def allows(self, authorization: str | None) -> bool:
        """`authorization`: the metadata's value, `Bearer <key>`."""
        ...


def bearer_key(authorization: str | None) -> str:
    """The key of `Bearer <key>`, or ""."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


class InternalToken:
    """The shared secret of the internal ports ("" : none, open access)."""

    def __init__(self, token: str = ""):
        self.token = token.strip()

    @classmethod
    def from_env(cls, run_dir: Path | None = None) -> InternalToken:
        """SARATHI_INTERNAL_TOKEN, else the file SARATHI_INTERNAL_TOKEN_FILE names, else
        the token of the run in `run_dir` (what the CLI finds), else none."""
        if os.environ.get(TOKEN_ENV):
            return cls(os.environ[TOKEN_ENV])
        path = os.environ.get(TOKEN_FILE_ENV)
        if path:
            return cls(Path(path).read_text())
        if run_dir is not None and (run_dir / TOKEN_FILE_NAME).is_file():
            return cls((run_dir / TOKEN_FILE_NAME).read_text())
        return cls()

    @classmethod
    def create(cls, run_dir: Path) -> InternalToken:
        """A new random token, kept in `run_dir` readable by its owner only."""
        token = cls(secrets.token_urlsafe(32))
        path = run_dir / TOKEN_FILE_NAME
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token.token)
        return token

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def allows(self, authorization: str | None) -> bool:
        if not self.token:
            return True
        return hmac.compare_digest(bearer_key(authorization).encode(), self.token.encode())

    @property
    def metadata(self) -> Metadata:
        """What a client's calls carry (nothing without a token)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class BearerInterceptor(grpc.aio.ServerInterceptor):
    """A call without credentials that `credentials` allow answers UNAUTHENTICATED."""

    def __init__(self, credentials: Credentials, what: str):
        self.credentials = credentials
        self.what = what  # named in the refusal: "a valid API key"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if (
            handler is None
            or not self.credentials.enabled
            or details.method.startswith(_PUBLIC_METHODS)
        ):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if self.credentials.allows(metadata.get("authorization")):
            return handler
        return _deny_handler(handler, f"authorization: {self.what} is required")


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses the call."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
