"""One forward pass over a flat ragged batch of prefill chunks and decode tokens.

All scheduled tokens of all requests are concatenated into one sequence
`[1, T]` with per-token positions; paged attention (see `attention.py`) keeps
the requests apart. Logits are computed only for the rows that sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.worker import attention
from sarathi_serve.worker.attention import AttentionMetadata, PrefillChunk
from sarathi_serve.worker.kv_cache import KVCache, KVCacheSpec
from sarathi_serve.worker.sampler import Sampler

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sequence:
    """The worker's view of one request: its tokens and where their KV lives."""

    request_id: str
    token_ids: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    sampling: SamplingParams
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BatchEntry:
    sequence: Sequence
    num_tokens: int  # tokens to compute this step, from num_computed_tokens on


class ModelRunner:
    def __init__(
        self,
        model_path: Path,
        *,
        kv_cache_bytes: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        seed: int | None = None,
    ):
        from transformers import AutoModelForCausalLM

        name = attention.register()
        model = AutoModelForCausalLM.from_pretrained(
            model_path, attn_implementation=name, dtype=dtype
        )
        self.model = model.to(device)  # type: ignore[arg-type]  # transformers types `to` narrowly
        self.model.eval()
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        spec = KVCacheSpec(
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            block_size=block_size,
            dtype=dtype,
        )
        self.kv_cache = KVCache(spec, spec.num_blocks_for(kv_cache_bytes), device=device)
        self.device = torch.device(device)
        self.max_model_len = int(cfg.max_position_embeddings)
        eos = cfg.eos_token_id
        self.eos_token_id = int(eos[0] if isinstance(eos, list) else eos)
        self.sampler = Sampler(self.eos_token_id, seed)
        log.info(
            "model %s: %d layers, KV cache %d blocks x %d tokens",
            model_path,
            spec.num_layers,
            self.kv_cache.num_blocks,
            block_size,
        )

    @property
    def block_size(self) -> int:
        return self.kv_cache.spec.block_size

    @torch.inference_mode()
    def execute(self, batch: list[BatchEntry]) -> dict[str, int]:
        """Runs one step; returns the sampled token of each request that finished
        its pending tokens (last prompt chunk or a decode)."""
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        logits_rows = torch.tensor([row for row, _ in sample_rows], dtype=torch.long)
        out = self.model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            logits_to_keep=logits_rows.to(self.device),
            attn_metadata=meta,
        )
        if not sample_rows:
            return {}
        logits = out.logits[0].float().cpu()  # [S, V]
        seqs = [seq for _, seq in sample_rows]
        tokens = self.sampler.sample(
            logits,
            [s.sampling for s in seqs],
            [len(s.token_ids) - s.num_prompt_tokens for s in seqs],
        )
        return {s.request_id: t for s, t in zip(seqs, tokens, strict=True)}

    def _prepare(
        self, batch: list[BatchEntry]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[tuple[int, Sequence]]]:
        bs = self.block_size
        ids: list[int] = []
        pos_chunks: list[torch.Tensor] = []
        slot_chunks: list[torch.Tensor] = []
        decode_idx: list[int] = []
        decode_tables: list[torch.Tensor] = []
        decode_lens: list[int] = []
        prefills: list[PrefillChunk] = []
        sample_rows: list[tuple[int, Sequence]] = []
        for entry in batch:
            seq, n = entry.sequence, entry.num_tokens
            start, ctx = seq.num_computed_tokens, seq.num_computed_tokens + entry.num_tokens
            if ctx > len(seq.token_ids) or ctx > len(seq.block_ids) * bs:
                raise ValueError(f"request {seq.request_id}: plan exceeds its tokens or blocks")
            row = len(ids)
            ids.extend(seq.token_ids[start:ctx])
            table = torch.tensor(seq.block_ids, dtype=torch.long)
            pos = torch.arange(start, ctx)
            pos_chunks.append(pos)
            slot_chunks.append(table[pos // bs] * bs + pos % bs)
            if n == 1 and start > 0:
                decode_idx.append(row)
                decode_tables.append(table)
                decode_lens.append(ctx)
            else:
                key_pos = torch.arange(ctx)
                key_slots = table[key_pos // bs] * bs + key_pos % bs
                mask = None if start == 0 else key_pos[None, :] <= pos[:, None]
                prefills.append(PrefillChunk(row, row + n, key_slots, mask))
            if ctx == len(seq.token_ids):
                sample_rows.append((row + n - 1, seq))
        dev = self.device
        for chunk in prefills:
            chunk.key_slots = chunk.key_slots.to(dev)
            chunk.mask = None if chunk.mask is None else chunk.mask.to(dev)
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=torch.cat(slot_chunks).to(dev),
            decode_token_idx=torch.tensor(decode_idx, dtype=torch.long, device=dev),
            prefills=prefills,
            **{k: v.to(dev) for k, v in _decode_keys(decode_tables, decode_lens, bs).items()},
        )
        return torch.tensor(ids, device=dev), torch.cat(pos_chunks).to(dev), meta, sample_rows


def _decode_keys(tables: list[torch.Tensor], lens: list[int], bs: int) -> dict[str, torch.Tensor]:
    """Padded context slots [Sd, L] and their validity mask [Sd, 1, 1, L]."""
    if not tables:
        return {
            "decode_key_slots": torch.zeros((0, 0), dtype=torch.long),
            "decode_key_mask": torch.zeros((0, 1, 1, 0), dtype=torch.bool),
        }
    padded = torch.nn.utils.rnn.pad_sequence(tables, batch_first=True)  # [Sd, B]
    max_len = max(lens)
    slots = (padded[:, :, None] * bs + torch.arange(bs)).reshape(len(tables), -1)[:, :max_len]
    mask = torch.arange(max_len)[None, :] < torch.tensor(lens)[:, None]
    return {"decode_key_slots": slots, "decode_key_mask": mask[:, None, None, :]}
