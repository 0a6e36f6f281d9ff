"""Optional API keys, checked at both edges before anything reaches the scheduler
(gRPC: `common.auth.BearerInterceptor`).

Keys come from a file (one per line, `#` comments) and/or a comma-separated
list (the SARATHI_GATEWAY_API_KEYS environment variable). No keys: open access.

A line of the file may give the key a policy after it, `KEY tenant=NAME priority=N
max_concurrent=N tokens_per_minute=N`: its requests share the machine as tenant NAME
(the scheduler's `--tenant-weights` names), are served at priority N unless they ask
for a higher value, never a lower one (a key cannot jump its own class), and are held
to the limits (`quotas.py`; 429 with Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sarathi_serve.common.auth import bearer_key
from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.limits import MAX_PRIORITY, MAX_USER_CHARS, MIN_PRIORITY

PRIORITY_KEY = "x-sarathi-priority"  # the request's priority when its body has none


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    tenant: str = ""  # "": a hash of the key
    priority: int | None = None  # the default and the lowest value it is served at
    max_concurrent: int | None = None  # requests in flight at once
    tokens_per_minute: int | None = None  # prompt + max_tokens, refunded what is unused


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as far as sharing the machine goes."""

    tenant: str = ""  # "": no API key (the request's `user` stands in)
    policy: KeyPolicy = KeyPolicy()

    def priority(self, asked: int | None, header: str | None = None) -> int:
        """The priority a request is served at: the one it asked for (its body, else
        the `x-sarathi-priority` header), else its key's; never below its key's."""
        if asked is None and header:
            asked = _parse_priority(header)
        floor = self.policy.priority
        if asked is None:
            return floor or 0
        return asked if floor is None else max(asked, floor)


def _parse_priority(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidArgument(f"{PRIORITY_KEY}: expected an integer, got {text[:40]!r}") from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(f"{PRIORITY_KEY}: out of the int32 range")
    return value


def parse_key_line(line: str) -> tuple[str, KeyPolicy]:
    """`KEY [tenant=NAME] [priority=N]`; ValueError says what is wrong (never the key)."""
    key, *options = line.split()
    fields: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name not in _OPTIONS or not value:
            raise ValueError(f"expected {', '.join(_OPTIONS)}=VALUE after the key, got {option!r}")
        fields[name] = value
    tenant = fields.get("tenant", "")
    if len(tenant) > MAX_USER_CHARS:
        raise ValueError(f"tenant: at most {MAX_USER_CHARS} characters")
    priority = None
    if "priority" in fields:
        try:
            priority = _parse_priority(fields["priority"])
        except InvalidArgument as exc:
            raise ValueError(str(exc).replace(PRIORITY_KEY, "priority")) from None
    limits = {name: _positive(name, fields[name]) for name in _LIMITS if name in fields}
    return key, KeyPolicy(tenant, priority, **limits)


_LIMITS = ("max_concurrent", "tokens_per_minute")
_OPTIONS = ("tenant", "priority", *_LIMITS)


def _positive(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}: expected a whole number >= 1, got {text[:40]!r}")
    return int(text)


class ApiKeys:
    def __init__(self, keys: Mapping[str, KeyPolicy] | set[str]):
        policies = keys if isinstance(keys, Mapping) else dict.fromkeys(keys, KeyPolicy())
        self._keys = {k.encode(): policy for k, policy in policies.items()}

    @classmethod
    def load(cls, keys: str = "", keys_file: str = "") -> ApiKeys:
        found = {k.strip(): KeyPolicy() for k in keys.split(",") if k.strip()}
        if keys_file:
            lines = Path(keys_file).read_text().splitlines()
            for number, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                try:
                    key, policy = parse_key_line(line)
                except ValueError as exc:
                    raise ValueError(f"{keys_file}, line {number}: {exc}") from None
                found[key] = policy
        return cls(found)

    def caller(self, authorization: str | None) -> Caller:
        """The tenant and policy of the key in `authorization` (already allowed)."""
        key = bearer_key(authorization)
        if not key:
            return Caller()
        policy = self._policy(key.encode()) or KeyPolicy()
        return Caller(policy.tenant or tenant_of(authorization), policy)

    def _policy(self, given: bytes) -> KeyPolicy | None:
        for key, policy in self._keys.items():
            if hmac.compare_digest(given, key):
                return policy
        return None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """`authorization`: the header's value, `Bearer <key>`."""
        if not self._keys:
            return True
        given = bearer_key(authorization).encode()
        return bool(given) and self._policy(given) is not None


def tenant_of(authorization: str | None) -> str:
    """A name for the API key in `authorization` (`Bearer <key>`) that does not reveal
    it, or "" without one: the per-key part of a prefix-cache salt."""
    key = bearer_key(authorization)
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""
