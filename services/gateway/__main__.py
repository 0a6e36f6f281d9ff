"""`python -m sarathi_serve.gateway`: run the public gateway (gRPC + OpenAI HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health as grpc_health
from starlette.types import ASGIApp
from transformers import AutoConfig, AutoTokenizer

from sarathi_serve.common.auth import BearerInterceptor, InternalToken
from sarathi_serve.common.grpc_server import SERVER_OPTIONS, add_health_and_reflection, set_serving
from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.models import resolve_model
from sarathi_serve.gateway.auth import ApiKeys
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.gateway.generation import Generator
from sarathi_serve.gateway.metrics import GatewayMetrics
from sarathi_serve.gateway.openai_api import build_app
from sarathi_serve.gateway.router import Router, Variant
from sarathi_serve.gateway.scheduler_client import SchedulerClient
from sarathi_serve.gateway.server import SERVICE_NAME, add_generation_service
from sarathi_serve.gateway.shards import ShardSet
from sarathi_serve.gateway.validation import RequestValidator

log = logging.getLogger("sarathi_serve.gateway")


class _HttpServer(uvicorn.Server):
    """uvicorn inside our event loop; the gateway owns the signal handlers."""

    task: asyncio.Task[None]

    @classmethod
    def launch(cls, config: GatewayConfig, app: ASGIApp) -> _HttpServer:
        """Serves the OpenAI API on `config.http_port` (TLS as the gRPC port)."""
        http = cls(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.http_port,
                log_level="warning",
                access_log=False,
                ssl_certfile=config.tls_cert_file or None,
                ssl_keyfile=config.tls_key_file or None,
                timeout_graceful_shutdown=2,
                timeout_keep_alive=config.http_keep_alive_s,
            )
        )
        http.task = asyncio.create_task(http.serve())
        return http

    async def stop(self) -> None:
        self.should_exit = True
        await self.task

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: GatewayConfig) -> None:
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_model_len = int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)
    validator = RequestValidator(tokenizer, _served_name(config.model, model_dir), max_model_len)
    gateway_id = config.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
    token = InternalToken.from_env()
    variants = [
        Variant(
            spec,
            ShardSet(
                [
                    SchedulerClient(addrs, gateway_id, config.resume_timeout_s, token)
                    for addrs in spec.shards
                ]
            ),
        )
        for spec in config.variants()
    ]
    for variant in variants:
        variant.client.start()
    metrics = GatewayMetrics(validator.model_name)
    generator = Generator(
        tokenizer,
        Router(variants),
        metrics,
        config.max_pending_requests,
        salt_cache_per_api_key=config.salt_cache_per_api_key,
    )
    api_keys = ApiKeys.load(config.api_keys, config.api_keys_file)

    server, health = await _start_grpc(config, validator, generator, api_keys)
    http: _HttpServer | None = None
    if config.http_port:
        app = build_app(validator, generator, metrics, api_keys, config.max_body_bytes)
        http = _HttpServer.launch(config, app)
    await set_serving(health, [], True)  # liveness: the process answers
    readiness = asyncio.ensure_future(_follow_readiness(generator, health))
    log.info(
        "gateway serving %s on %s:%d (gRPC) and %s (HTTP); variants: %s; API keys %s",
        validator.model_name,
        config.host,
        config.port,
        f"{config.host}:{config.http_port}" if config.http_port else "off",
        ", ".join(f"{v.name}={v.spec.weight:g}@{v.spec.scheduler_addr}" for v in variants),
        "on" if api_keys.enabled else "off",
    )
    await _until_stopped(http)
    readiness.cancel()
    await set_serving(health, [SERVICE_NAME], False)  # readiness: route nothing new here
    await generator.drain(config.drain_s)
    if http is not None:
        await http.stop()
    await server.stop(grace=2.0)
    for variant in variants:
        await variant.client.close()


async def _follow_readiness(generator: Generator, health: grpc_health.aio.HealthServicer) -> None:
    """The Generation service is SERVING (the readiness probe's) while a scheduler leads
    with workers for some variant, as HTTP /health answers 200."""
    serving: bool | None = None
    while True:
        if generator.ready != serving:
            serving = generator.ready
            await set_serving(health, [SERVICE_NAME], serving, overall=False)
        await asyncio.sleep(0.5)


async def _start_grpc(
    config: GatewayConfig, validator: RequestValidator, generator: Generator, api_keys: ApiKeys
) -> tuple[grpc.aio.Server, grpc_health.aio.HealthServicer]:
    """The public Generation service (and health, reflection), on TLS if configured."""
    server = grpc.aio.server(
        options=SERVER_OPTIONS, interceptors=[BearerInterceptor(api_keys, "a valid API key")]
    )
    add_generation_service(server, validator, generator, api_keys)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    address = f"{config.host}:{config.port}"
    if config.tls_cert_file:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes())]
        )
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    return server, health


async def _until_stopped(http: _HttpServer | None) -> None:
    """Until SIGINT or SIGTERM, or the HTTP server ends by itself."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait())] + ([http.task] if http is not None else [])
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)


def _served_name(model: str, model_dir: Path) -> str:
    return model if not Path(model).exists() else model_dir.name


def main(argv: list[str] | None = None) -> None:
    setup_logging("gateway")
    asyncio.run(serve(GatewayConfig.from_args(argv)))


if __name__ == "__main__":
    main()
