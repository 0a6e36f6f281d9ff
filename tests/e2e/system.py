"""Starts the real system (`sarathi-serve up`) in a temporary run folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from sarathi_serve.common import probes
from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.net import free_port
from sarathi_serve.common.run_records import ProcessRecord, read_system


class RunningSystem:
    def __init__(
        self,
        run_dir: Path,
        *extra_args: str,
        env: dict[str, str] | None = None,
        startup_timeout: float = 240.0,
    ):
        self.run_dir = run_dir
        self.gateway_addr = f"127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}/v1"
        argv = [
            sys.executable,
            "-m",
            "sarathi_serve.cli.main",
            "up",
            "--run-dir",
            str(run_dir),
            "--port",
            self.gateway_addr.rsplit(":", 1)[1],
            "--http-port",
            str(self.http_port),
            "--scheduler-port",
            str(free_port()),
            "--worker-port",
            str(free_port()),
            "--kv-cache-gb",
            "0.25",
            "--drain-s",  # a stop with streams in flight ends within `stop`'s timeout
            "5",
            *extra_args,
        ]
        self.output: list[str] = []
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        up = threading.Event()
        threading.Thread(target=self._read_output, args=(up,), daemon=True).start()
        deadline = time.monotonic() + startup_timeout
        while not up.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    "sarathi-serve up failed:\n" + "".join(self.output) + self._logs()
                )
        self.refresh()

    def _read_output(self, up: threading.Event) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "sarathi-serve is up" in line:
                up.set()

    def _logs(self) -> str:
        logs = self.run_dir / "logs"
        if not logs.exists():
            return ""
        return "".join(
            f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log"))
        )

    def refresh(self) -> None:
        """Re-reads the process records (`up` rewrites them when it restarts one)."""
        self.records = read_system(self.run_dir)
        self.processes = {r.role: r for r in self.records}

    def record(self, role: str) -> ProcessRecord:
        return self.processes[role]

    @property
    def schedulers(self) -> list[ProcessRecord]:
        return [r for r in self.records if r.role == "scheduler"]

    @property
    def scheduler_addr(self) -> str:
        """The leading scheduler's address."""
        for record in self.schedulers:
            try:
                if self.stats_at(record.address, timeout=2.0).is_leader:
                    return record.address
            except Exception:  # a dead or starting scheduler
                continue
        raise RuntimeError("no scheduler leads")

    @property
    def token(self) -> InternalToken:
        """The internal token `up` made for this run (the scheduler asks for it)."""
        return InternalToken.from_env(self.run_dir)

    def stats_at(self, address: str, timeout: float = 2.0, max_iterations: int = 1):
        return probes.scheduler_stats(address, timeout, max_iterations, self.token)

    def stats(self, max_iterations: int = 0):
        return self.stats_at(self.scheduler_addr, max_iterations=max_iterations)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def run_cli(*args: str, timeout: float = 180, env: dict[str, str] | None = None):
    """`sarathi-serve ARGS` as a user runs it; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "sarathi_serve.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def scheduler_metrics(system) -> dict[str, float]:
    """The scheduler's Prometheus series of the sarathi policy, by name."""
    status = run_cli("status", "--json", "--run-dir", str(system.run_dir))
    url = next(r["metrics"] for r in json.loads(status.stdout) if r["role"] == "scheduler")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^(\w+)\{policy="sarathi"\} (\S+)$', text, re.M)
    return {name: float(value) for name, value in found}
