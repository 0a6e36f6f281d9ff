"""Open-loop workloads: when requests arrive and how long they are.

Arrivals: Poisson, gamma (burstiness = 1 / cv^2, as vLLM's benchmark), or all at
once. Lengths: a trace CSV with `num_prefill_tokens,num_decode_tokens` columns
(the paper's sharegpt / arxiv traces), or synthetic `fixed:P:D`,
`uniform:PMIN:PMAX:DMIN:DMAX`, `zipf:PMAX:DMAX[:A]`. Trace lengths are scaled
(`length_scale`) and capped for small machines; the output says so.

Repetition, as chat and agent traffic has it (what a prefix cache serves):
`prefixes="K:N"` starts every prompt with one of K system prompts of N tokens;
`turns=T` groups the requests into conversations of T turns, each turn's prompt
being the previous turn's prompt, an answer as long as that turn's output, and its
own new tokens (the answer's tokens are not the model's, so a server reuses the
conversation's prompts, not its generated tokens).

Mixes (drawn apart from lengths and arrivals, which stay those of `seed`):
`classes="interactive=0:1,batch=5:3"` gives each request a class, NAME=PRIORITY:WEIGHT
(its OpenAI `priority`); `tenants="light:1,heavy:10"` a tenant, NAME:WEIGHT (its
`user`). Results are also summarized per class and tenant.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")
VOCAB_LOW, VOCAB_HIGH = 100, 40_000  # random prompt token ids stay clear of special tokens


@dataclass(frozen=True, slots=True)
class RequestSpec:
    arrival_s: float  # offset from the start of the run
    prompt_token_ids: list[int]
    output_len: int
    priority: int = 0
    klass: str = ""  # its class's name ("": no classes)
    tenant: str = ""  # sent as the OpenAI `user` ("": none)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    lengths: str  # a CSV path or fixed:/uniform:/zipf:
    rate: float  # requests per second; inf: all at once
    num_requests: int
    arrival: str = "poisson"  # poisson | gamma
    burstiness: float = 1.0
    length_scale: float = 1.0
    max_prompt_len: int = 4096
    max_output_len: int = 1024
    min_len: int = 2
    seed: int = 0
    # Varies the prompts' tokens only (lengths and arrivals stay those of `seed`): each
    # round of a comparison sends prompts no server has seen, so a prefix cache cannot
    # serve a replayed workload from memory.
    prompt_salt: int = 0
    prefixes: str = ""  # "K:N": K shared system prompts of N tokens each
    turns: int = 1  # conversations of this many turns
    classes: str = ""  # "NAME=PRIORITY:WEIGHT,...": request classes
    tenants: str = ""  # "NAME:WEIGHT,...": tenants

    def describe(self) -> str:
        scaled = f", lengths x{self.length_scale:g}" if self.length_scale != 1 else ""
        return (
            f"{self.num_requests} requests, {self.arrival} arrivals at {self.rate:g}/s, "
            f"lengths {Path(self.lengths).name if ':' not in self.lengths else self.lengths}"
            f"{scaled}, capped at {self.max_prompt_len}/{self.max_output_len}"
            + (
                f", {self.prefixes.replace(':', ' shared prefixes of ')} tokens"
                if self.prefixes
                else ""
            )
            + (f", {self.turns} turns per conversation" if self.turns > 1 else "")
            + (f", classes {self.classes}" if self.classes else "")
            + (f", tenants {self.tenants}" if self.tenants else "")
        )


def make_requests(spec: WorkloadSpec) -> list[RequestSpec]:
    rng = np.random.default_rng(spec.seed)
    prompts, outputs = _lengths(spec, rng)
    arrivals = _arrivals(spec, rng)
    tokens = np.random.default_rng((spec.seed, spec.prompt_salt))

    def draw(n: int) -> list[int]:
        return tokens.integers(VOCAB_LOW, VOCAB_HIGH, size=int(n)).tolist()

    shared = _shared_prefixes(spec.prefixes, draw)
    mix = np.random.default_rng((spec.seed, 1 << 20))  # apart: lengths, arrivals unchanged
    classes = _pick(parse_classes(spec.classes), spec.num_requests, mix, ("", 0))
    tenants = _pick(parse_tenants(spec.tenants), spec.num_requests, mix, "")
    num_conversations = -(-spec.num_requests // max(spec.turns, 1))
    history: dict[int, list[int]] = {}  # conversation -> its last prompt + answer
    requests = []
    for i, (t, p, d) in enumerate(zip(arrivals, prompts, outputs, strict=True)):
        conversation = i % num_conversations
        start = history.get(conversation)
        if start is None:
            start = shared[rng.integers(len(shared))] if shared else []
        prompt = (start + draw(p))[: spec.max_prompt_len]
        if spec.turns > 1:
            history[conversation] = prompt + draw(d)
        (klass, priority), tenant = classes[i], tenants[i]
        requests.append(RequestSpec(float(t), prompt, int(d), priority, klass, tenant))
    return requests


def parse_classes(text: str) -> dict[tuple[str, int], float]:
    """`NAME=PRIORITY:WEIGHT,...` -> {(name, priority): weight}; ValueError names it."""
    out = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, rest = entry.partition("=")
        priority, _, weight = rest.partition(":")
        try:
            out[(name, int(priority))] = _weight(weight)
        except ValueError:
            raise ValueError(f"classes: expected NAME=PRIORITY:WEIGHT, got {entry!r}") from None
        if not name:
            raise ValueError(f"classes: expected NAME=PRIORITY:WEIGHT, got {entry!r}")
    return out


def parse_tenants(text: str) -> dict[str, float]:
    """`NAME:WEIGHT,...` -> {name: weight}; ValueError names the entry at fault."""
    out = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, weight = entry.partition(":")
        try:
            out[name] = _weight(weight)
        except ValueError:
            raise ValueError(f"tenants: expected NAME:WEIGHT, got {entry!r}") from None
        if not name:
            raise ValueError(f"tenants: expected NAME:WEIGHT, got {entry!r}")
    return out


def _weight(text: str) -> float:
    weight = float(text)
    if not weight > 0 or weight == float("inf"):
        raise ValueError(text)
    return weight


def _pick(weights: Mapping[T, float], n: int, rng: np.random.Generator, default: T) -> list[T]:
    """n draws of the keys by weight (`default` n times without any)."""
    if not weights:
        return [default] * n
    keys = list(weights)
    total = sum(weights.values())
    chosen = rng.choice(len(keys), size=n, p=[weights[k] / total for k in keys])
    return [keys[int(i)] for i in chosen]


def _shared_prefixes(text: str, draw: Callable[[int], list[int]]) -> list[list[int]]:
    if not text:
        return []
    count, _, length = text.partition(":")
    if not count.isdigit() or not length.isdigit() or int(count) < 1:
        raise ValueError(f"prefixes: expected K:N (K system prompts of N tokens), got {text!r}")
    return [draw(int(length)) for _ in range(int(count))]


def _arrivals(spec: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    n = spec.num_requests
    if not np.isfinite(spec.rate):
        return np.zeros(n)
    if spec.arrival == "poisson":
        gaps = rng.exponential(1.0 / spec.rate, size=n)
    elif spec.arrival == "gamma":
        shape = spec.burstiness
        gaps = rng.gamma(shape, 1.0 / (spec.rate * shape), size=n)
    else:
        raise ValueError(f"arrival must be poisson or gamma, got {spec.arrival!r}")
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _lengths(spec: WorkloadSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = spec.num_requests
    kind, _, rest = spec.lengths.partition(":")
    args = [float(a) for a in rest.split(":")] if rest else []
    if kind == "fixed":
        prompts, outputs = np.full(n, args[0]), np.full(n, args[1])
    elif kind == "uniform":
        prompts = rng.integers(int(args[0]), int(args[1]) + 1, size=n)
        outputs = rng.integers(int(args[2]), int(args[3]) + 1, size=n)
    elif kind == "zipf":
        a = args[2] if len(args) > 2 else 1.5
        prompts = np.minimum(rng.zipf(a, size=n) * 16, args[0])
        outputs = np.minimum(rng.zipf(a, size=n) * 8, args[1])
    else:
        prompts, outputs = _trace(Path(spec.lengths), n, rng)
        prompts, outputs = prompts * spec.length_scale, outputs * spec.length_scale
    prompts = np.clip(np.round(prompts), spec.min_len, spec.max_prompt_len).astype(int)
    outputs = np.clip(np.round(outputs), 1, spec.max_output_len).astype(int)
    return prompts, outputs


def _trace(path: Path, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = [
            (float(r["num_prefill_tokens"]), float(r["num_decode_tokens"]))
            for r in csv.DictReader(f)
        ]
    if not rows:
        raise ValueError(f"{path}: no rows with num_prefill_tokens,num_decode_tokens")
    picked = rng.choice(len(rows), size=n, replace=n > len(rows))
    table = np.asarray(rows)[picked]
    return table[:, 0], table[:, 1]
