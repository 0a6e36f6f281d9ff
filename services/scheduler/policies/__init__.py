"""Scheduling policies, chosen by name."""

from __future__ import annotations

import dataclasses

from sarathi_serve.scheduler.policies.base import (
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_TOKEN_BUDGET,
    Policy,
    Schedule,
)
from sarathi_serve.scheduler.policies.baselines import (
    FasterTransformerPolicy,
    OrcaPolicy,
    VllmPolicy,
)
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy

POLICIES: dict[str, type] = {
    "sarathi": SarathiPolicy,
    "vllm": VllmPolicy,
    "orca": OrcaPolicy,
    "faster_transformer": FasterTransformerPolicy,
}


def make_policy(
    name: str, *, token_budget: int, max_num_seqs: int, **sarathi_options: float
) -> Policy:
    """`sarathi_options`: SarathiPolicy's target_tbt_ms, low_chunk_size,
    chunk_schedule_max_tokens, chunk_schedule_stages (falsy values: the defaults).
    A baseline refuses any of them set to other than the default: it has none."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    options = {k: v for k, v in sarathi_options.items() if v}
    if cls is SarathiPolicy:
        return SarathiPolicy(token_budget, max_num_seqs, **options)  # type: ignore[arg-type]
    defaults = {f.name: f.default for f in dataclasses.fields(SarathiPolicy)}
    changed = [k for k, v in options.items() if k not in defaults or v != defaults[k]]
    if changed:
        raise ValueError(f"{', '.join(changed)}: only the sarathi policy has these, not {name}")
    policy: Policy = cls(token_budget=token_budget, max_num_seqs=max_num_seqs)
    return policy


__all__ = [
    "DEFAULT_MAX_NUM_SEQS",
    "DEFAULT_TOKEN_BUDGET",
    "POLICIES",
    "Policy",
    "Schedule",
    "make_policy",
]
