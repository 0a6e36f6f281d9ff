"""Token sampling for a batch of rows, each with its own parameters.

Greedy rows take the argmax. The other rows are filtered (temperature, top-k,
top-p) in one vectorized pass, then each draws with the exponential-race trick
(argmax of p / Exp(1) noise) from its own noise. A seeded row's noise depends
only on (seed, index of the token being generated): the same request draws the
same tokens in any batch, at any position, and after a recompute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sarathi_serve.common.sampling import SamplingParams

_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed


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
        logits: torch.Tensor,  # [S, V] fp32
        params: Sequence[SamplingParams],
        output_index: Sequence[int],  # [S] index of the token each row generates
    ) -> list[int]:
        logits = self._mask_early_stops(logits, params, output_index)
        tokens = logits.argmax(dim=-1)  # [S]
        rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if rows:
            probs = _filtered_probs(logits[rows], [params[i] for i in rows])  # [R, V]
            noise = torch.stack(
                [self._noise(params[i], output_index[i], probs.shape[1]) for i in rows]
            )
            tokens[rows] = (probs / noise).argmax(dim=-1)
        return tokens.tolist()

    def _mask_early_stops(
        self, logits: torch.Tensor, params: Sequence[SamplingParams], output_index: Sequence[int]
    ) -> torch.Tensor:
        """Forbids EOS and stop tokens to rows that have not reached min_tokens."""
        rows, cols = [], []
        for i, p in enumerate(params):
            if output_index[i] < p.min_tokens:
                stops = [*p.stop_token_ids, *(() if p.ignore_eos else (self.eos_token_id,))]
                rows += [i] * len(stops)
                cols += stops
        if not rows:
            return logits
        logits = logits.clone()
        logits[rows, cols] = float("-inf")
        return logits

    def _noise(self, params: SamplingParams, index: int, vocab: int) -> torch.Tensor:
        if params.seed is None:
            gen = self._unseeded
        else:
            gen = torch.Generator().manual_seed((params.seed * _SEED_STRIDE + index) % (2**63))
        return torch.empty(vocab).exponential_(generator=gen)


def _filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Softmax of temperature-scaled logits with top-k and top-p applied; [R, V]."""
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
    return scaled.softmax(dim=-1)
