"""Scheduling policies, chosen by name."""

from __future__ import annotations

from sarathi_serve.scheduler.policies.base import Policy, Schedule
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
    name: str, *, token_budget: int, max_num_seqs: int, target_tbt_ms: float = 0.0
) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    if cls is SarathiPolicy:
        return SarathiPolicy(token_budget, max_num_seqs, target_tbt_ms=target_tbt_ms)
    if target_tbt_ms:
        raise ValueError(f"target_tbt_ms: only the sarathi policy adapts its budget, not {name}")
    policy: Policy = cls(token_budget=token_budget, max_num_seqs=max_num_seqs)
    return policy


__all__ = ["POLICIES", "Policy", "Schedule", "make_policy"]
