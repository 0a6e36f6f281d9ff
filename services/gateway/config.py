"""Gateway configuration: built once in main() from flags and environment."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from sarathi_serve.common.models import DEFAULT_MODEL

DEFAULT_PORT = 50051


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    scheduler_addr: str = "127.0.0.1:50052"
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    gateway_id: str = ""

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> GatewayConfig:
        env = os.environ.get
        d = cls()
        p = argparse.ArgumentParser(
            prog="sarathi-serve-gateway", description="sarathi-serve gateway"
        )
        p.add_argument("--scheduler", default=env("SARATHI_SCHEDULER_ADDR", d.scheduler_addr))
        p.add_argument("--model", default=env("SARATHI_MODEL", d.model))
        p.add_argument("--host", default=env("SARATHI_GATEWAY_HOST", d.host))
        p.add_argument("--port", type=int, default=int(env("SARATHI_GATEWAY_PORT", d.port)))
        p.add_argument(
            "--gateway-id",
            default=env("SARATHI_GATEWAY_ID", f"{socket.gethostname()}-{os.getpid()}"),
        )
        a = p.parse_args(argv)
        return cls(
            scheduler_addr=a.scheduler,
            model=a.model,
            host=a.host,
            port=a.port,
            gateway_id=a.gateway_id,
        )
