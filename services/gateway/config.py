"""Gateway configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.common.config import parse_config, split_addrs
from sarathi_serve.common.models import DEFAULT_MODEL

DEFAULT_PORT = 50051


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    scheduler_addr: str = "127.0.0.1:50052"
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    gateway_id: str = ""
    resume_timeout_s: float = 60.0  # requests wait this long for a scheduler to lead again

    @property
    def scheduler_addrs(self) -> list[str]:
        return split_addrs(self.scheduler_addr)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> GatewayConfig:
        return parse_config(cls, argv, role="gateway", helps=_HELPS)


_HELPS = {
    "scheduler_addr": "host:port of the scheduler, or a comma-separated list (leader + standbys)",
    "resume_timeout_s": "how long requests wait for a scheduler to lead again before failing",
    "model": "the default model's name or a local Hugging Face checkpoint folder",
    "gateway_id": "name of this gateway's session; empty: hostname-pid",
}
