"""OpenAI-compatible HTTP edge: /v1/completions, /v1/chat/completions, /v1/models.

Also /health and /metrics (Prometheus), which need no API key, and /ab/samples (the
A/B report's raw samples). Streams are Server-Sent Events (openai_answers.py); every
refusal is OpenAI's error body (openai_errors.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.gateway.auth import ApiKeys
from sarathi_serve.gateway.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from sarathi_serve.gateway.generation import Generator
from sarathi_serve.gateway.metrics import GatewayMetrics
from sarathi_serve.gateway.openai_completions import OpenAICompletions
from sarathi_serve.gateway.openai_errors import (
    error_response,
    service_error_response,
    validation_error_response,
)
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from sarathi_serve.gateway.validation import RequestValidator

_PUBLIC_PATHS = ("/health", "/metrics")  # served without an API key


def build_app(
    validator: RequestValidator,
    generator: Generator,
    metrics: GatewayMetrics,
    api_keys: ApiKeys,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ASGIApp:
    app = FastAPI(title="sarathi-serve", docs_url=None, redoc_url=None, openapi_url=None)
    _add_refusals(app, api_keys)
    _add_info_routes(app, validator, generator, metrics)
    _add_completion_routes(app, OpenAICompletions(validator, generator, api_keys))
    return BodyLimit(app, max_body_bytes)


def _add_refusals(app: FastAPI, api_keys: ApiKeys) -> None:
    """Bad bodies, ServiceErrors and missing API keys become OpenAI error bodies."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown paths (404) and methods (405) in OpenAI's error shape too."""
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.middleware("http")
    async def _auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        public = request.url.path in _PUBLIC_PATHS
        if not public and not api_keys.allows(request.headers.get("authorization")):
            return error_response(401, "authorization: a valid API key is required")
        return await call_next(request)


def _add_info_routes(
    app: FastAPI, validator: RequestValidator, generator: Generator, metrics: GatewayMetrics
) -> None:
    created = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if generator.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ab/samples")
    async def ab_samples() -> JSONResponse:
        return JSONResponse({"model": metrics.model, "variants": metrics.samples.as_json()})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {
            "id": validator.model_name,
            "object": "model",
            "created": created,
            "owned_by": "sarathi-serve",
            "max_model_len": validator.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})


def _add_completion_routes(app: FastAPI, api: OpenAICompletions) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await api.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await api.chat_completions(body, request)
