"""oneDNN linears with packed weights compute what nn.Linear computes, in place."""

import pytest
import torch
from torch import nn

from sarathi_serve.worker.linear import onednn_available, pack_linears, use_onednn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch without oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (2, 7, 48), (300, 48)])
def test_packed_forward_equals_nn_linear(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = linear(x)
        pack_linears(linear)
        got = linear(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_pack_keeps_hooks_names_and_tied_embeddings():
    torch.manual_seed(0)
    embed = nn.Embedding(100, 32)
    model = nn.ModuleDict({"embed": embed, "proj": nn.Linear(32, 32), "head": nn.Linear(32, 100)})
    model["head"].weight = embed.weight  # tied, as in SmolLM
    calls = []
    model["proj"].register_forward_hook(lambda m, args, out: calls.append(out.shape))
    ids = torch.tensor([[3, 7, 11]])
    with torch.inference_mode():
        expected = model["head"](model["proj"](model["embed"](ids)))
        assert pack_linears(model) == 2
        assert pack_linears(model) == 0  # idempotent
        got = model["head"](model["proj"](model["embed"](ids)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls == [(1, 3, 32), (1, 3, 32)]  # the hook ran before and after packing
    assert embed.weight.device.type == "cpu"  # the embeddings keep the tied weight
    assert model["proj"].weight.device.type == "meta"  # the dense copy is released


def test_backend_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_onednn("auto", cpu, torch.float32)
    assert not use_onednn("auto", cuda, torch.bfloat16)
    assert not use_onednn("auto", cpu, torch.float16)
    assert not use_onednn("torch", cpu, torch.float32)
    with pytest.raises(ValueError, match="CPU device"):
        use_onednn("onednn", cuda, torch.float32)
    with pytest.raises(ValueError, match="linear backend"):
        use_onednn("mkl", cpu, torch.float32)
