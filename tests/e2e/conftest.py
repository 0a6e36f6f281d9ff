import shutil

import pytest

from tests.e2e.system import RunningSystem


@pytest.fixture(scope="session", autouse=True)
def _needs_redis():
    if shutil.which("redis-server") is None:
        pytest.fail("end-to-end tests need redis-server: apt-get install -y redis-server")


@pytest.fixture(scope="module")
def system_factory(tmp_path_factory, default_model_dir):
    """Starts systems for a test module and stops them all at its end."""
    started = []

    def start(*args, env=None):
        system = RunningSystem(tmp_path_factory.mktemp("run"), *args, env=env)
        started.append(system)
        return system

    yield start
    for system in started:
        system.stop()


@pytest.fixture(scope="session")
def expected_outputs(default_model_dir, tokenizer):
    from tests.e2e.oracle import hf_reference

    return hf_reference(default_model_dir, tokenizer)


@pytest.fixture(scope="session")
def hf_model(default_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_dir).eval()


@pytest.fixture(scope="session")
def constrained_reference(hf_model, tokenizer):
    """Greedy `generate` under a grammar: constrained_reference(ids, grammar, max_tokens)."""
    from sarathi_serve.common.grammar import GrammarCompiler
    from tests.e2e.oracle import hf_constrained

    compiler = GrammarCompiler(tokenizer, hf_model.config.vocab_size, hf_model.config.eos_token_id)

    def generate(ids: list[int], grammar, max_tokens: int = 40) -> list[int]:
        return hf_constrained(hf_model, compiler, ids, grammar, max_tokens)

    return generate


@pytest.fixture(scope="session")
def reference(hf_model):
    """Hugging Face greedy `generate` of the default model: reference(ids, max_tokens)."""
    import torch

    model = hf_model

    def generate(ids: list[int], max_tokens: int = 12) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
        return out[0, len(ids) :].tolist()

    return generate
