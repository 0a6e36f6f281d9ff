"""A/B routing: weights, stickiness by user (the same on every gateway), pins."""

from __future__ import annotations

import random

import pytest

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.gateway.router import Router, Variant, VariantSpec


def router(weights: dict[str, float], seed: int) -> Router[None]:
    specs = [VariantSpec(n, w, f"127.0.0.1:{5000 + i}") for i, (n, w) in enumerate(weights.items())]
    return Router([Variant(s, None) for s in specs], random.Random(seed))


def test_a_user_sticks_to_the_same_variant_on_every_gateway():
    weights = {"a": 3.0, "b": 1.0}
    one, other = router(weights, seed=1), router(weights, seed=2)  # two gateway replicas
    users = [f"user-{i}" for i in range(2000)]
    picks = [one.pick(user=u).name for u in users]
    assert picks == [other.pick(user=u).name for u in users]
    assert picks == [one.pick(user=u).name for u in users], "the same on every request"
    assert 0.70 <= picks.count("a") / len(picks) <= 0.80  # 3:1, by the hash


def test_weights_split_anonymous_traffic_and_zero_weight_gets_none():
    r = router({"a": 1.0, "b": 0.0, "c": 1.0}, seed=3)
    picks = [r.pick().name for _ in range(4000)]
    assert picks.count("b") == 0
    assert 0.45 <= picks.count("a") / len(picks) <= 0.55
    assert r.pick(pinned="b").name == "b", "a pin reaches a variant with no weight"


def test_an_unknown_pin_is_refused_by_name():
    with pytest.raises(InvalidArgument, match="variant"):
        router({"a": 1.0}, seed=0).pick(pinned="z")
