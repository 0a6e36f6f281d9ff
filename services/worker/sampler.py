"""Token sampling for a batch of rows, each with its own parameters, vectorized.

Order of processing, as in vLLM: logit biases, the grammar's token mask (structured
output: the rows whose grammar forbids a token get -inf there), EOS/stop tokens masked
below `min_tokens`, repetition / frequency / presence penalties, then greedy rows take
the argmax
and the others are filtered (temperature, top-k, top-p, min-p) and draw with
the exponential-race trick (argmax of p / Exp(1) noise). A seeded row's noise
depends only on (seed, index of the token being generated): the same request
draws the same tokens in any batch, at any position, and after a recompute.
Logprobs come from the model's raw distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import TokenLogprobs

_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed


@dataclass(frozen=True, slots=True)
class SamplingRow:
    params: SamplingParams
    output_index: int  # index of the token this row generates
    prompt_token_ids: Sequence[int] = ()  # read only when the row has penalties
    output_token_ids: Sequence[int] = ()


class Sampler:
    def __init__(self, eos_token_id: int, seed: int | None = None):
        self.eos_token_id = eos_token_id
        self._unseeded = torch.Generator()
        if seed is None:
            self._unseeded.seed()
        else:
            self._unseeded.manual_seed(seed)

    def sample(
        self,
        logits: torch.Tensor,
        rows: Sequence[SamplingRow],
        banned: tuple[list[int], torch.Tensor] | None = None,
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """logits: [S, V] fp32, one row per entry of `rows`. banned: the constrained
        rows' indices and their [R, V] bool masks of the tokens their grammars forbid."""
        raw = logits
        logits = _apply_logit_bias(logits, rows)
        if banned is not None:
            logits = _apply_banned(logits, *banned)
        logits = self._mask_early_stops(logits, rows)
        logits = _apply_penalties(logits, rows)
        tokens = logits.argmax(dim=-1)  # [S]
        random = [i for i, row in enumerate(rows) if not row.params.is_greedy]
        if random:
            probs = _filtered_probs(logits[random], [rows[i].params for i in random])  # [R, V]
            noise = self._noise([rows[i] for i in random], probs.shape[1])
            tokens[random] = (probs / noise).argmax(dim=-1)
        return tokens.tolist(), _logprobs(raw, tokens, rows)

    def _mask_early_stops(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Forbids EOS and stop tokens to rows that have not reached min_tokens."""
        masked_rows, masked_cols = [], []
        for i, row in enumerate(rows):
            p = row.params
            if row.output_index < p.min_tokens:
                stops = [*p.stop_token_ids, *(() if p.ignore_eos else (self.eos_token_id,))]
                masked_rows += [i] * len(stops)
                masked_cols += stops
        if not masked_rows:
            return logits
        logits = logits.clone()
        logits[masked_rows, masked_cols] = float("-inf")
        return logits

    def _noise(self, rows: Sequence[SamplingRow], vocab: int) -> torch.Tensor:
        """[R, V] Exp(1) noise: per (seed, index) for seeded rows, shared stream otherwise."""
        noise = torch.empty(len(rows), vocab)
        unseeded = [i for i, row in enumerate(rows) if row.params.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), vocab).exponential_(
                generator=self._unseeded
            )
        for i, row in enumerate(rows):
            seed = row.params.seed
            if seed is not None:
                gen = torch.Generator().manual_seed(
                    (seed * _SEED_STRIDE + row.output_index) % (2**63)
                )
                noise[i].exponential_(generator=gen)
        return noise


def _apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    biased = [(i, row.params.logit_bias) for i, row in enumerate(rows) if row.params.logit_bias]
    if not biased:
        return logits
    logits = logits.clone()
    vocab = logits.shape[1]
    for i, bias in biased:
        ids = torch.tensor([t for t, _ in bias if t < vocab], dtype=torch.long)
        values = torch.tensor([b for t, b in bias if t < vocab], dtype=logits.dtype)
        logits[i].index_add_(0, ids, values)
    return logits


def _apply_banned(logits: torch.Tensor, idx: list[int], banned: torch.Tensor) -> torch.Tensor:
    logits = logits.clone()
    logits[idx] = logits[idx].masked_fill_(banned, float("-inf"))
    return logits


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    idx = [i for i, row in enumerate(rows) if row.params.has_penalties]
    if not idx:
        return logits
    vocab = logits.shape[1]
    sub = [rows[i] for i in idx]
    counts = _token_counts([r.output_token_ids for r in sub], vocab)  # [P, V]
    seen = (_token_counts([r.prompt_token_ids for r in sub], vocab) > 0) | (counts > 0)
    rep = torch.tensor([r.params.repetition_penalty for r in sub])[:, None]
    freq = torch.tensor([r.params.frequency_penalty for r in sub])[:, None]
    pres = torch.tensor([r.params.presence_penalty for r in sub])[:, None]
    penalized = logits[idx]
    penalized = torch.where(
        seen, torch.where(penalized > 0, penalized / rep, penalized * rep), penalized
    )
    penalized = penalized - freq * counts - pres * (counts > 0).float()
    logits = logits.clone()
    logits[idx] = penalized
    return logits


def _token_counts(token_lists: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """[len(token_lists), V] occurrences of each token id, in one scatter."""
    width = max((len(t) for t in token_lists), default=0)
    padded = torch.full((len(token_lists), width), vocab, dtype=torch.long)  # pad -> spare column
    for i, tokens in enumerate(token_lists):
        if tokens:
            padded[i, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    counts = torch.zeros(len(token_lists), vocab + 1)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=counts.dtype))
    return counts[:, :vocab]


def _filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Softmax of temperature-scaled logits with top-k, top-p and min-p applied; [R, V]."""
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
    scaled = logits / temps[:, None]
    top_ks = torch.tensor([p.top_k for p in params])
    top_ps = torch.tensor([p.top_p for p in params], dtype=logits.dtype)
    if bool((top_ks > 0).any()) or bool((top_ps < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # [R, V]
        rank = torch.arange(scaled.shape[1])[None, :]
        drop = (top_ks[:, None] > 0) & (rank >= top_ks[:, None])
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= top_ps[:, None]  # keeps at least the top token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(1, order, sorted_logits)
    probs = scaled.softmax(dim=-1)
    min_ps = torch.tensor([p.min_p for p in params], dtype=logits.dtype)
    if bool((min_ps > 0).any()):
        floor = min_ps[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs


def _logprobs(
    raw: torch.Tensor, tokens: torch.Tensor, rows: Sequence[SamplingRow]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(rows)
    if not wanted:
        return out
    logp = raw[wanted].log_softmax(dim=-1)  # [W, V]
    chosen = logp.gather(1, tokens[wanted][:, None])[:, 0].tolist()
    max_top = max(rows[i].params.logprobs or 0 for i in wanted)
    top_values, top_ids = (
        logp.topk(max_top, dim=-1) if max_top else (logp[:, :0], logp[:, :0].long())
    )
    for j, i in enumerate(wanted):
        n = rows[i].params.logprobs or 0
        top = tuple(zip(top_ids[j, :n].tolist(), top_values[j, :n].tolist(), strict=True))
        out[i] = TokenLogprobs(chosen[j], top)
    return out
