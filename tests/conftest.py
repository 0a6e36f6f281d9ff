import os
from pathlib import Path

import pytest

from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model
from sarathi_serve.worker import prepare_cpu_kernels


@pytest.fixture(scope="session", autouse=True)
def cpu_decode_kernel_built():
    """Builds the CPU decode kernel once, before any test starts a worker process
    (a fresh machine's first build takes about a minute; workers then load it)."""
    prepare_cpu_kernels()


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model, converted once into the user's cache folder."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def _skips(terminalreporter) -> list[tuple[str, str]]:
    """(node id, reason) of every test or module skipped in this run."""
    out = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr  # a skip's: (path, line, "Skipped: reason")
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        out.append((report.nodeid, reason.removeprefix("Skipped: ")))
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Names every skipped test with its reason (`-ra` groups them by line, without the
    test's name), so that a skip a CI machine hides (no traces beside the checkout, torch
    without oneDNN, no CUDA) is seen; with SARATHI_SKIPPED_FILE set, also writes them
    there, one `node id: reason` a line (an empty file: none skipped). `.ci/run` prints it."""
    skips = _skips(terminalreporter)
    if skips:
        terminalreporter.section(f"skipped tests ({len(skips)})", sep="-", yellow=True)
        for nodeid, reason in skips:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}")
    path = os.environ.get("SARATHI_SKIPPED_FILE")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(f"{nodeid}: {reason}\n" for nodeid, reason in skips))
