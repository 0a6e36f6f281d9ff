"""`python -m sarathi_serve.gateway`: run the public gateway."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import grpc
from transformers import AutoConfig, AutoTokenizer

from sarathi_serve.common.grpc_server import SERVER_OPTIONS, add_health_and_reflection, set_serving
from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.models import resolve_model
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.gateway.scheduler_client import SchedulerClient
from sarathi_serve.gateway.server import GenerationServicer
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2, generate_pb2_grpc

log = logging.getLogger("sarathi_serve.gateway")
SERVICE_NAME = generate_pb2.DESCRIPTOR.services_by_name["Generation"].full_name


async def serve(config: GatewayConfig) -> None:
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_model_len = int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)
    validator = RequestValidator(tokenizer, _served_name(config.model, model_dir), max_model_len)
    gateway_id = config.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
    client = SchedulerClient(config.scheduler_addrs, gateway_id, config.resume_timeout_s)
    client.start()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    generate_pb2_grpc.add_GenerationServicer_to_server(
        GenerationServicer(validator, client), server
    )
    health = add_health_and_reflection(server, [SERVICE_NAME])
    address = f"{config.host}:{config.port}"
    server.add_insecure_port(address)
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    log.info(
        "gateway serving %s on %s (scheduler %s)",
        validator.model_name,
        address,
        config.scheduler_addr,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await set_serving(health, [SERVICE_NAME], False)
    await server.stop(grace=2.0)
    await client.close()


def _served_name(model: str, model_dir: Path) -> str:
    return model if not Path(model).exists() else model_dir.name


def main(argv: list[str] | None = None) -> None:
    setup_logging("gateway")
    asyncio.run(serve(GatewayConfig.from_args(argv)))


if __name__ == "__main__":
    main()
