"""The fused CPU decoder layers: each C++ op against the torch ops it replaces, and the
layers that must keep Hugging Face's forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from sarathi_serve.worker.fused_layers import fuse_decoder_layers, load_layer_ops, supports
from sarathi_serve.worker.model_runner import ModelRunner
from tests.worker.conftest import write_tiny_checkpoint


@pytest.fixture(scope="module")
def ops():
    built = load_layer_ops()
    assert built is not None, "the C++ layer ops did not build (see log)"
    return built


def hf_norm(x, weight, eps):
    norm = LlamaRMSNorm(x.shape[-1], eps)
    norm.weight.data.copy_(weight)
    return norm(x)


def test_rms_norm_and_the_fused_residual_add_match_torch(ops):
    gen = torch.Generator().manual_seed(0)
    wide = torch.randn(37, 200, generator=gen)
    x = wide[:, 8:104]  # rows with a stride: a slice of a wider buffer
    weight = torch.randn(96, generator=gen)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), hf_norm(x, weight, 1e-5))
    acc = torch.randn(37, 96, generator=gen)
    expected_sum = acc + x
    out = ops.add_rms_norm(x, acc, weight, 1e-6)
    torch.testing.assert_close(acc, expected_sum)  # the residual stream, in place
    torch.testing.assert_close(out, hf_norm(expected_sum, weight, 1e-6))


def test_rotary_in_place_matches_hf_on_a_view_of_the_fused_projection(ops):
    gen = torch.Generator().manual_seed(1)
    t, heads, kv_heads, d = 19, 4, 2, 16
    qkv = torch.randn(t, (heads + 2 * kv_heads) * d, generator=gen)
    cos, sin = torch.randn(t, d, generator=gen), torch.randn(t, d, generator=gen)
    q = qkv[:, : heads * d].view(t, heads, d)
    k = qkv[:, heads * d : (heads + kv_heads) * d].view(t, kv_heads, d)
    v_before = qkv[:, (heads + kv_heads) * d :].clone()
    exp_q, exp_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]
    )
    ops.rotary_(q, cos, sin)
    ops.rotary_(k, cos, sin)
    torch.testing.assert_close(q, exp_q[0].transpose(0, 1))
    torch.testing.assert_close(k, exp_k[0].transpose(0, 1))
    assert torch.equal(qkv[:, (heads + kv_heads) * d :], v_before)  # v untouched


def test_silu_mul_matches_torch(ops):
    gate_up = torch.randn(23, 2 * 75, generator=torch.Generator().manual_seed(2)) * 6
    gate, up = gate_up[:, :75], gate_up[:, 75:]
    torch.testing.assert_close(ops.silu_mul(gate_up), torch.nn.functional.silu(gate) * up)


def test_the_ops_refuse_what_they_cannot_compute(ops):
    with pytest.raises(RuntimeError, match="float32"):
        ops.rms_norm(torch.ones(2, 4, dtype=torch.float64), torch.ones(4), 1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(torch.ones(2, 4), torch.ones(5), 1e-6)
    with pytest.raises(RuntimeError, match="cos and sin"):
        ops.rotary_(torch.ones(3, 2, 8), torch.ones(2, 8), torch.ones(2, 8))


def test_a_layer_it_does_not_know_keeps_its_forward(tmp_path, ops):
    """A GELU MLP is not SiLU x up: the layer is left to Hugging Face, and the runner
    still matches the dense model."""
    path = write_tiny_checkpoint(tmp_path / "gelu", "llama", hidden_act="gelu")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert not any(supports(layer) for layer in model.model.layers)
    assert fuse_decoder_layers(model, ops) == 0
    runner = ModelRunner(path, kv_cache_bytes=4 << 20, block_size=4)
    assert runner.fused_layers == 0
    silu = write_tiny_checkpoint(tmp_path / "silu", "llama")
    assert ModelRunner(silu, kv_cache_bytes=4 << 20, block_size=4).fused_layers == 2
    assert ModelRunner(silu, kv_cache_bytes=4 << 20, dtype=torch.bfloat16).fused_layers == 0
