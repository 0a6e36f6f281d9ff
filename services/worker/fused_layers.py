"""Llama-like decoder layers on CPU with fused projections and one-pass elementwise ops.

Hugging Face's decoder layer runs q, k and v as three products and gate and up as two,
and spends 4-8 torch ops on each RMSNorm, rotary embedding and SiLU x up. On the
development machine's CPU a batch-1 decode step of the default model spent about 15 %
of its time outside the matmuls that way, and three small products cost more than
one of their combined size. `fuse_decoder_layers` rewrites each supported layer in
place: one `qkv_proj` and one `gate_up_proj` (weights concatenated at load; under tensor
parallelism, of this rank's shards), and a forward that calls the C++ ops of
`layer_ops.cpp` around them and our paged attention (`attention.attend`) directly.
`o_proj` and `down_proj` stay the model's own modules, so tensor parallelism's
all-reduce hooks on them still run.

Supported: Llama, Mistral, Qwen2 and Qwen3 layers with SiLU MLPs (Qwen3's per-head
q/k norms run as its own modules). Anything else keeps its Hugging Face forward.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sarathi_serve.worker.attention import AttentionMetadata, attend
from sarathi_serve.worker.cpu_build import build_cpu_extension

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("layer_ops.cpp")
# decoder layer class -> how its attention finds its sliding window
WINDOW_RULES = {
    "LlamaDecoderLayer": "none",
    "MistralDecoderLayer": "config",  # config.sliding_window for every layer
    "Qwen2DecoderLayer": "layer",  # self_attn.sliding_window (None on full-attention layers)
    "Qwen3DecoderLayer": "layer",
}
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj")
NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def load_layer_ops(cache_dir: Path | None = None) -> ModuleType | None:
    """The compiled ops, or None where they cannot be built here."""
    ops = build_cpu_extension("sarathi_layer_ops", SOURCE, cache_dir)
    if ops is None:
        log.warning("CPU layer ops unavailable; decoder layers keep their torch ops")
    return ops


def _concat_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One linear whose output is the parts' outputs side by side."""
    weight = torch.cat([p.weight.detach() for p in parts])
    biases = [p.bias for p in parts]
    fused = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=biases[0] is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([b.detach() for b in biases if b is not None]))
    fused.requires_grad_(False)
    return fused


def supports(layer: Any) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if type(layer).__name__ not in WINDOW_RULES or attn is None or mlp is None:
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return (
        all(type(n).__name__ in NORMS for n in norms)
        and getattr(getattr(mlp, "config", None), "hidden_act", None) in ("silu", "swish")
        and all(isinstance(getattr(attn, n, None), nn.Linear) for n in ATTN_PROJECTIONS)
        and all(isinstance(getattr(mlp, n, None), nn.Linear) for n in MLP_PROJECTIONS)
    )


class FusedDecoderLayer:
    """The replacement `forward` of one decoder layer (hidden states [1, T, hidden])."""

    def __init__(self, layer: Any, ops: ModuleType):  # Any: HF's modules, read by name
        attn, mlp = layer.self_attn, layer.mlp
        self.ops = ops
        self.layer_idx = int(attn.layer_idx)
        self.head_dim = int(attn.head_dim)
        self.q_size = attn.q_proj.out_features
        self.kv_size = attn.k_proj.out_features
        self.scale = float(attn.scaling)
        rule = WINDOW_RULES[type(layer).__name__]
        self.window: int | None = {
            "none": None,
            "config": getattr(attn.config, "sliding_window", None),
            "layer": getattr(attn, "sliding_window", None),
        }[rule]
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        attn.qkv_proj = _concat_linear([attn.q_proj, attn.k_proj, attn.v_proj])
        mlp.gate_up_proj = _concat_linear([mlp.gate_proj, mlp.up_proj])
        for owner, names in ((attn, ATTN_PROJECTIONS), (mlp, MLP_PROJECTIONS)):
            for name in names:
                delattr(owner, name)
        self.qkv_proj, self.o_proj = attn.qkv_proj, attn.o_proj
        self.gate_up_proj, self.down_proj = mlp.gate_up_proj, mlp.down_proj
        self.norm_in, self.norm_post = layer.input_layernorm, layer.post_attention_layernorm

    def __call__(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_metadata: AttentionMetadata | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attn_metadata is None or position_embeddings is None:
            raise ValueError("a fused decoder layer needs attn_metadata= and position embeddings")
        ops, d = self.ops, self.head_dim
        x = hidden_states[0]  # [T, hidden]
        t = x.shape[0]
        h = ops.rms_norm(x, self.norm_in.weight, self.norm_in.variance_epsilon)
        qkv = self.qkv_proj(h)
        q = qkv[:, : self.q_size].view(t, -1, d)
        k = qkv[:, self.q_size : self.q_size + self.kv_size].view(t, -1, d)
        v = qkv[:, self.q_size + self.kv_size :].view(t, -1, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        ops.rotary_(q, cos[0], sin[0])
        ops.rotary_(k, cos[0], sin[0])
        a = attend(attn_metadata, self.layer_idx, q, k, v, self.scale, self.window)
        residual = self.o_proj(a.reshape(t, -1))
        h = ops.add_rms_norm(x, residual, self.norm_post.weight, self.norm_post.variance_epsilon)
        out = self.down_proj(ops.silu_mul(self.gate_up_proj(h)))
        out += residual
        return out[None]


def fuse_decoder_layers(model: nn.Module, ops: ModuleType) -> int:
    """Rewrites every supported decoder layer of `model` in place (see the module's
    docstring); returns how many. Call before `pack_linears`, on float32 CPU weights."""
    fused = 0
    for layer in list(model.modules()):
        if "forward" not in layer.__dict__ and supports(layer):
            layer.forward = FusedDecoderLayer(layer, ops)  # type: ignore[method-assign]
            fused += 1
    return fused
