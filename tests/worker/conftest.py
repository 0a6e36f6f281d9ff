import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=2,
    bos_token_id=1,
    pad_token_id=0,
)

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    # a window shorter than the test contexts, so that it matters
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 6, "head_dim": 16}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # attention bias
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),  # q/k norms
}


def write_tiny_checkpoint(path, arch: str, **overrides):
    """A random-weight checkpoint folder of the architecture, written by the test itself."""
    config_cls, model_cls, extra = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model_cls(config_cls(**{**COMMON, **extra, **overrides})).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")
