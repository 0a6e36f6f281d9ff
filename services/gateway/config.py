"""Gateway configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.common.config import parse_config
from sarathi_serve.common.models import DEFAULT_MODEL
from sarathi_serve.gateway.router import DEFAULT_VARIANT, VariantSpec, load_variants

DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8000


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    scheduler_addr: str = "127.0.0.1:50052"
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    http_port: int = DEFAULT_HTTP_PORT  # 0: no HTTP
    gateway_id: str = ""
    resume_timeout_s: float = 60.0  # requests wait this long for a scheduler to lead again
    variants_file: str = ""
    api_keys: str = ""
    api_keys_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    max_pending_requests: int = 1024
    drain_s: float = 25.0  # SIGTERM: requests in flight have this long to finish
    max_body_bytes: int = 4 << 20
    http_keep_alive_s: int = 75  # longer than the idle timeouts of pools and proxies
    salt_cache_per_api_key: bool = False  # requests of two API keys share no cached prefix

    def __post_init__(self) -> None:
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        if self.http_keep_alive_s <= 0:
            raise ValueError(f"http_keep_alive_s must be > 0, got {self.http_keep_alive_s}")
        if self.max_pending_requests < 1:
            raise ValueError(f"max_pending_requests must be >= 1, got {self.max_pending_requests}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")

    def variants(self) -> list[VariantSpec]:
        if self.variants_file:
            return load_variants(self.variants_file)
        return [VariantSpec(DEFAULT_VARIANT, 1.0, self.scheduler_addr)]

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> GatewayConfig:
        return parse_config(cls, argv, role="gateway", helps=HELPS)


HELPS = {  # --help of the flags (`sarathi-serve up` reuses them)
    "scheduler_addr": (
        "host:port of the scheduler, or a comma-separated list (leader + standbys); "
        "shards of one model separated by ';'"
    ),
    "resume_timeout_s": "how long requests wait for a scheduler to lead again before failing",
    "model": "the default model's name or a local Hugging Face checkpoint folder",
    "gateway_id": "name of this gateway's session; empty: hostname-pid",
    "http_port": "port of the OpenAI-compatible HTTP API and /metrics; 0: off",
    "variants_file": "A/B: JSON list of {name, weight, scheduler_addr}; replaces scheduler_addr",
    "api_keys": "comma-separated API keys (Authorization: Bearer KEY); empty: open",
    "api_keys_file": "file with one API key per line",
    "tls_cert_file": "PEM certificate: serve both ports over TLS",
    "tls_key_file": "PEM private key of tls_cert_file",
    "max_pending_requests": "requests in flight beyond which new ones get 429 / RESOURCE_EXHAUSTED",
    "drain_s": "on SIGTERM, new requests get 503 / UNAVAILABLE and those in flight have this "
    "long to finish; any left then end with an error event (and [DONE])",
    "max_body_bytes": "HTTP bodies over this size get 413",
    "http_keep_alive_s": "an idle HTTP connection stays open this long; keep it above the "
    "idle timeout of whatever pools connections in front (client pools: 5 s, load "
    "balancers: 60 s), so that none reuses a connection the gateway is closing",
    "salt_cache_per_api_key": "salt the prefix cache per API key: requests of two keys "
    "never share cached prompt prefixes (so one cannot time the other's prompts)",
}
