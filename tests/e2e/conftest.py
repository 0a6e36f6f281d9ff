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
def reference(default_model_dir):
    """Hugging Face greedy `generate` of the default model: reference(ids, max_tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir).eval()

    def generate(ids: list[int], max_tokens: int = 12) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
        return out[0, len(ids) :].tolist()

    return generate
