"""A/B routing: several scheduler backends (variants) behind one gateway.

A request goes to a variant pinned by name, else sticks to one by a hash of its
user, else is drawn by weight. Weights need not sum to anything; a variant of
weight 0 gets only pinned requests.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.gateway.shards import split_shards

DEFAULT_VARIANT = "default"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")

C = TypeVar("C")

# Request headers (HTTP) and metadata keys (gRPC), the same on both edges:
VARIANT_KEY = "x-sarathi-variant"  # pins a request to a variant (and names it in answers)
USER_KEY = "x-sarathi-user"  # the sticky routing key when the request has no `user`


@dataclass(frozen=True, slots=True)
class VariantSpec:
    name: str
    weight: float
    scheduler_addr: str

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"variant name {self.name!r}: use [a-z0-9-_.]")
        if not self.weight >= 0:
            raise ValueError(f"variant {self.name}: weight must be >= 0, got {self.weight}")
        if not self.shards:
            raise ValueError(f"variant {self.name}: scheduler_addr is required")

    @property
    def shards(self) -> list[list[str]]:
        """Each shard's scheduler addresses (leader + standbys): `a,b;c,d` is two."""
        return split_shards(self.scheduler_addr)


def load_variants(path: str | Path) -> list[VariantSpec]:
    """Reads `[{"name": ..., "weight": ..., "scheduler_addr": ...}, ...]`."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of variants")
    specs = [
        VariantSpec(str(e["name"]), float(e.get("weight", 1.0)), str(e["scheduler_addr"]))
        for e in entries
    ]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: variant names repeat: {names}")
    if sum(s.weight for s in specs) <= 0:
        raise ValueError(f"{path}: at least one variant needs a weight > 0")
    return specs


@dataclass(frozen=True, slots=True)
class Variant(Generic[C]):
    spec: VariantSpec
    client: C

    @property
    def name(self) -> str:
        return self.spec.name


class Router(Generic[C]):
    def __init__(self, variants: Sequence[Variant[C]], rng: random.Random | None = None):
        if not variants:
            raise ValueError("at least one variant is needed")
        self.variants = list(variants)
        self._by_name = {v.name: v for v in variants}
        self._total = sum(v.spec.weight for v in variants)
        self._rng = rng or random.Random()

    def pick(self, user: str = "", pinned: str = "") -> Variant[C]:
        if pinned:
            if pinned not in self._by_name:
                raise InvalidArgument(f"variant: {pinned!r} is not one of {sorted(self._by_name)}")
            return self._by_name[pinned]
        if len(self.variants) == 1:
            return self.variants[0]
        point = (_unit_hash(user) if user else self._rng.random()) * self._total
        for variant in self.variants:
            point -= variant.spec.weight
            if point < 0:
                return variant
        return next(v for v in reversed(self.variants) if v.spec.weight > 0)


def _unit_hash(key: str) -> float:
    """A stable point in [0, 1) for a key (the same on every gateway replica)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
