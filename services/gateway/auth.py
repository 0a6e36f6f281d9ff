"""Optional API keys, checked at both edges before anything reaches the scheduler
(gRPC: `common.auth.BearerInterceptor`).

Keys come from a file (one per line, `#` comments) and/or a comma-separated
list (the SARATHI_GATEWAY_API_KEYS environment variable). No keys: open access.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from sarathi_serve.common.auth import bearer_key


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
        given = bearer_key(authorization).encode()
        return bool(given) and any(hmac.compare_digest(given, k) for k in self._keys)


def tenant_of(authorization: str | None) -> str:
    """A name for the API key in `authorization` (`Bearer <key>`) that does not reveal
    it, or "" without one: the per-key part of a prefix-cache salt."""
    key = bearer_key(authorization)
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""
