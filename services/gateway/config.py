"""Gateway configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.common.config import parse_config
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
        return parse_config(cls, argv, role="gateway", helps=_HELPS)


_HELPS = {
    "scheduler_addr": "host:port of the scheduler",
    "model": "the default model's name or a local Hugging Face checkpoint folder",
    "gateway_id": "name of this gateway's session; empty: hostname-pid",
}
