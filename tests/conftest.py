import pytest

from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model
from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode


@pytest.fixture(scope="session", autouse=True)
def cpu_decode_kernel_built():
    """Builds the CPU decode kernel once, before any test starts a worker process
    (a fresh machine's first build takes about a minute; workers then load it)."""
    load_paged_decode()


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model, converted once into the user's cache folder."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)
