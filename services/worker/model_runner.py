"""One forward pass over a flat ragged batch of prefill chunks and decode tokens.

All scheduled tokens of all requests are concatenated into one sequence
`[1, T]` with per-token positions; paged attention (see `attention.py`) keeps
the requests apart. Logits are computed only for the rows that sample.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sarathi_serve.common.sampling import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel
from sarathi_serve.common.step import TokenLogprobs, WorkerGeometry
from sarathi_serve.worker import attention
from sarathi_serve.worker.attention import AttentionMetadata
from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.fused_layers import fuse_decoder_layers, load_layer_ops
from sarathi_serve.worker.kv_cache import KVCache, KVCacheSpec
from sarathi_serve.worker.linear import pack_linears, use_onednn
from sarathi_serve.worker.memory import measured_kv_budget
from sarathi_serve.worker.parallel import TensorParallel, check_divisible, shard_model
from sarathi_serve.worker.pipeline import (
    PipelineStage,
    StageForward,
    cut_to_stage,
    fewest_blocks,
)
from sarathi_serve.worker.sampler import Sampler, SamplingRow
from sarathi_serve.worker.step_threads import StepThreads
from sarathi_serve.worker.token_masks import TokenMasks, banned_tokens, load_grammar_compiler

log = logging.getLogger(__name__)

GREEDY = SamplingParams(temperature=0.0)


@dataclass(slots=True)
class Sequence:
    """The worker's view of one request: its tokens and where their KV lives."""

    request_id: str
    token_ids: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    sampling: SamplingParams
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    matcher: Any = None  # the grammar's state after the output so far (structured output)


@dataclass(frozen=True, slots=True)
class StepOutput:
    sampled: dict[str, int]  # request id -> token id
    logprobs: dict[str, TokenLogprobs]  # for the requests that asked


def _sampling_row(seq: Sequence) -> SamplingRow:
    prompt_len = seq.num_prompt_tokens
    if not seq.sampling.has_penalties:
        return SamplingRow(seq.sampling, len(seq.token_ids) - prompt_len)
    return SamplingRow(
        seq.sampling,
        len(seq.token_ids) - prompt_len,
        seq.token_ids[:prompt_len],
        seq.token_ids[prompt_len:],
    )


@dataclass(frozen=True, slots=True)
class BatchEntry:
    sequence: Sequence
    num_tokens: int  # tokens to compute this step, from num_computed_tokens on


def _load_model(
    model_path: Path | None,
    model: PreTrainedModel | None,
    dtype: torch.dtype,
    tp: TensorParallel,
    pp: PipelineStage,
) -> PreTrainedModel:
    """The checkpoint at `model_path` (or `model`, built in memory: benchmarks with random
    weights) on our attention, cut to this rank's layers and slice of them."""
    from transformers import AutoModelForCausalLM

    name = attention.register()
    if model is None:
        if model_path is None:
            raise ValueError("ModelRunner needs a model_path or a model")
        model = AutoModelForCausalLM.from_pretrained(
            model_path, attn_implementation=name, dtype=dtype
        )
    else:
        model.set_attn_implementation(name)
    if pp.enabled:
        cut_to_stage(model, pp)
    if tp.enabled:
        check_divisible(model.config, tp.world_size)
        shard_model(model, tp)
    return model


def _fuse_layers(model: nn.Module, wanted: bool, device: torch.device, dtype: torch.dtype) -> int:
    """CPU float32: decoder layers with fused projections and C++ elementwise ops
    (`fused_layers.py`); returns how many layers were fused (0 elsewhere)."""
    if not wanted or device.type != "cpu" or dtype != torch.float32:
        return 0
    ops = load_layer_ops()
    return 0 if ops is None else fuse_decoder_layers(model, ops)


def _kv_cache_spec(
    cfg: Any, num_layers: int, tp: TensorParallel, block_size: int, dtype: torch.dtype
) -> KVCacheSpec:
    """The KV cache of this rank's layers and heads (all of them without parallelism)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return KVCacheSpec(
        num_layers=num_layers,
        num_kv_heads=cfg.num_key_value_heads // tp.world_size,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
    )


class ModelRunner:
    def __init__(
        self,
        model_path: Path | None,
        *,
        model: PreTrainedModel | None = None,
        kv_cache_bytes: int | None,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        seed: int | None = None,
        attention_backend: str = "auto",
        linear_backend: str = "auto",
        tp: TensorParallel | None = None,
        pp: PipelineStage | None = None,
        gpu_memory_utilization: float = 0.9,
        profile_tokens: int = 2048,
        small_step_tokens: int = 0,
        fuse_layers: bool = True,
    ):
        tp, self.pp = tp or TensorParallel(), pp or PipelineStage()
        model = _load_model(model_path, model, dtype, tp, self.pp)
        self.model = model.to(device)  # type: ignore[arg-type]  # transformers types `to` narrowly
        self.forward = StageForward(self.model, self.pp) if self.pp.enabled else self.model
        self.model.eval()
        self.device = torch.device(device)
        cpu = self.device.type == "cpu"
        self.step_threads = StepThreads(small_step_tokens if cpu else 0)
        self.fused_layers = _fuse_layers(self.model, fuse_layers, self.device, dtype)
        self.linear_backend = "torch"
        if use_onednn(linear_backend, self.device, dtype):
            pack_linears(self.model)
            self.linear_backend = "onednn"
        cfg = self.model.config
        spec = _kv_cache_spec(cfg, len(self.model.model.layers), tp, block_size, dtype)
        self.backend = attention.select_backend(attention_backend, self.device, block_size)
        self.max_model_len = int(cfg.max_position_embeddings)
        eos = cfg.eos_token_id
        self.eos_token_id = int(eos[0] if isinstance(eos, list) else eos)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.sampler = Sampler(self.eos_token_id, seed)
        self.grammars = load_grammar_compiler(model_path, self.vocab_size, self.eos_token_id)
        self._token_masks = TokenMasks(self.grammars) if self.grammars else None
        if kv_cache_bytes is None:
            kv_cache_bytes = measured_kv_budget(self, spec, gpu_memory_utilization, profile_tokens)
        num_blocks = spec.num_blocks_for(kv_cache_bytes)
        if self.pp.enabled:  # stages of fewer layers fit more blocks: all use the fewest
            num_blocks = fewest_blocks(num_blocks, self.device)
        self.kv_cache = KVCache(spec, num_blocks, device=device, layout=self.backend.kv_layout)
        self.kv_cache.fill_(0.0)  # commit the pages now rather than inside the first steps
        log.info(
            "model %s: %d layers (%d fused), KV cache %d blocks x %d tokens, %s attention, "
            "%s linears",
            model_path,
            spec.num_layers,
            self.fused_layers,
            self.kv_cache.num_blocks,
            block_size,
            self.backend.name,
            self.linear_backend,
        )

    @property
    def block_size(self) -> int:
        return self.kv_cache.spec.block_size

    @property
    def geometry(self) -> WorkerGeometry:
        return WorkerGeometry(
            self.kv_cache.num_blocks,
            self.block_size,
            self.max_model_len,
            self.eos_token_id,
            self.vocab_size,
            pipeline_depth=self.pp.num_stages,  # micro-batches in flight
        )

    @torch.inference_mode()
    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        """Runs one step; samples a token for each request that finished its
        pending tokens (last prompt chunk or a decode)."""
        with self.step_threads.step(sum(entry.num_tokens for entry in batch)):
            return self._execute(batch)

    def _execute(self, batch: list[BatchEntry]) -> StepOutput:
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        constrained = [i for i, (_, seq) in enumerate(sample_rows) if seq.matcher is not None]
        matchers = [sample_rows[i][1].matcher for i in constrained]
        masks = self._start_masks(matchers) if self.pp.last else None  # where it samples
        logits_rows = torch.tensor([row for row, _ in sample_rows], dtype=torch.long)
        out = self.forward(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            logits_to_keep=logits_rows.to(self.device),
            attn_metadata=meta,
        )
        output = StepOutput({}, {})
        if sample_rows and out.logits is not None:  # (stages but the last have none)
            output = self._sample(out.logits[0], sample_rows, constrained, masks)
        return output

    def _sample(
        self,
        logits: torch.Tensor,
        sample_rows: list[tuple[int, Sequence]],
        constrained: list[int],
        masks: Future[torch.Tensor] | None,
    ) -> StepOutput:
        logits = logits.float().cpu()  # [S, V]
        seqs = [seq for _, seq in sample_rows]
        banned = None
        if masks is not None:
            banned = (constrained, banned_tokens(masks.result(), logits.shape[1]))
        tokens, logprobs = self.sampler.sample(logits, [_sampling_row(s) for s in seqs], banned)
        sampled = {s.request_id: t for s, t in zip(seqs, tokens, strict=True)}
        asked = {s.request_id: lp for s, lp in zip(seqs, logprobs, strict=True) if lp is not None}
        return StepOutput(sampled, asked)

    def _start_masks(self, matchers: list[Any]) -> Future[torch.Tensor] | None:
        if not matchers:
            return None
        if self._token_masks is None:
            raise RuntimeError("a constrained request on a worker without a grammar compiler")
        return self._token_masks.start(matchers)

    def _prepare(
        self, batch: list[BatchEntry]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[tuple[int, Sequence]]]:
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start, num_query, context_len = [], [], []
        sample_rows: list[tuple[int, Sequence]] = []
        for entry in batch:
            seq, n = entry.sequence, entry.num_tokens
            start, ctx = seq.num_computed_tokens, seq.num_computed_tokens + n
            if n < 1 or ctx > len(seq.token_ids) or ctx > len(seq.block_ids) * bs:
                raise ValueError(f"request {seq.request_id}: plan exceeds its tokens or blocks")
            query_start.append(len(ids))
            num_query.append(n)
            context_len.append(ctx)
            ids.extend(seq.token_ids[start:ctx])
            positions.extend(range(start, ctx))
            table = seq.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, ctx))
            if ctx == len(seq.token_ids):
                sample_rows.append((len(ids) - 1, seq))
        dev = self.device
        layout = BatchLayout(
            query_start=query_start,
            num_query=num_query,
            context_len=context_len,
            block_tables=[e.sequence.block_ids for e in batch],
            block_size=bs,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            device=dev,
        )
        meta = AttentionMetadata(self.kv_cache, layout, self.backend, self.backend.prepare(layout))
        return torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), meta, sample_rows
