import pytest

from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model, converted once into the user's cache folder."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)
