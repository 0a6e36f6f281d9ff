"""Each service's flags (`python -m sarathi_serve.<role> --help`) and its log lines."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from sarathi_serve.common.logs import JsonFormatter


@pytest.mark.parametrize(
    ("role", "flags"),
    [
        ("scheduler", ["--token-budget", "--max-num-waiting", "--session-grace-s",
                       "--low-chunk-size", "--target-tbt-ms", "--redis-url"]),
        ("worker", ["--kv-cache-gb", "--num-threads", "--tensor-parallel-size",
                    "--linear-backend", "--attention-backend", "--null-model"]),
        ("gateway", ["--api-keys-file", "--max-pending-requests", "--tls-cert-file",
                     "--variants-file", "--http-port"]),
    ],
)  # fmt: skip
def test_every_service_documents_its_flags_and_environment(role, flags):
    out = subprocess.run(
        [sys.executable, "-m", f"sarathi_serve.{role}", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for flag in flags:
        assert flag in text, flag
        env = f"SARATHI_{role.upper()}_{flag[2:].replace('-', '_').upper()}"
        assert env in text.replace(" ", "").replace("(env", " (env"), env


def test_a_bad_flag_value_is_refused_before_anything_starts():
    out = subprocess.run(
        [sys.executable, "-m", "sarathi_serve.scheduler", "--policy", "nope"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "unknown policy 'nope'" in out.stderr


def test_text_and_json_log_lines():
    record = logging.LogRecord("sarathi_serve.x", logging.INFO, __file__, 1, "hi %s", ("y",), None)
    record.request_id = "r-1"
    line = JsonFormatter("gateway").format(record)
    entry = json.loads(line)
    want = {"level": "INFO", "role": "gateway", "logger": "sarathi_serve.x", "msg": "hi y"}
    assert entry | {"ts": ""} == {"ts": "", **want, "request_id": "r-1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    out = subprocess.run(
        [sys.executable, "-c",
         "from sarathi_serve.common.logs import setup_logging; import logging; "
         "setup_logging('worker'); logging.getLogger('sarathi_serve.w').warning('a %d', 1)"],
        capture_output=True, text=True, timeout=60, env={"SARATHI_LOG_FORMAT": "text"},
    )  # fmt: skip
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING worker sarathi_serve\.w: a 1\n", out.stderr
    ), out.stderr
