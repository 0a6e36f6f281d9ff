"""A gateway over real schedulers and null workers (no model compute): fast HTTP/gRPC tests.

Each variant is a scheduler (no Redis) with a `--null-model` worker that
"samples" at once the token `null_token(request id, output index)`, so requests
cost milliseconds and their content can be checked; the gateway is the real one,
with the real tokenizer.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from sarathi_serve.common import probes
from sarathi_serve.common.net import free_port

_PY = [sys.executable, "-m"]


class NullStack:
    def __init__(
        self,
        tmp: Path,
        *gateway_args: str,
        variants: dict[str, float] | None = None,
        tls: tuple[Path, Path] | None = None,  # (certificate, key)
        workers: int = 1,  # null workers (model replicas) per variant
        scheduler_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
    ):
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scheduler_addrs: dict[str, str] = {}
        routes = []
        for name, weight in (variants or {"default": 1.0}).items():
            addr = f"127.0.0.1:{free_port()}"
            self.scheduler_addrs[name] = addr
            routes.append({"name": name, "weight": weight, "scheduler_addr": addr})
            port = addr.split(":")[1]
            self._spawn(f"scheduler-{name}", "scheduler", "--port", port, *scheduler_args)
            self.workers[name] = [
                self._spawn(
                    f"worker-{name}-{i}",
                    "worker",
                    "--null-model",
                    "--worker-id",
                    f"worker-{name}-{i}",
                    "--scheduler-addr",
                    addr,
                    "--port",
                    str(free_port()),
                    *worker_args,
                )
                for i in range(workers)
            ]
        self.num_workers = workers
        variants_file = tmp / "variants.json"
        variants_file.write_text(json.dumps(routes))
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.verify: Path | bool = True
        scheme = "http"
        if tls is not None:
            gateway_args = (
                *gateway_args,
                "--tls-cert-file",
                str(tls[0]),
                "--tls-key-file",
                str(tls[1]),
            )
            self.verify, scheme = tls[0], "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.http_port}"
        self._spawn(
            "gateway",
            "gateway",
            "--port",
            self.grpc_addr.split(":")[1],
            "--http-port",
            str(self.http_port),
            "--variants-file",
            str(variants_file),
            *gateway_args,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, role: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept by the child)
        process = subprocess.Popen([*_PY, f"sarathi_serve.{role}", *args], stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                break
            ready = all(
                probes.leads_with_a_worker(addr, self.num_workers)
                for addr in self.scheduler_addrs.values()
            ) and _http_ok(f"{self.base_url}/health", self.verify)
            if ready:
                return
            time.sleep(0.2)
        raise RuntimeError("null stack did not start:\n" + self.log_tail())

    def log_tail(self) -> str:
        return "".join(
            f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def stats(self, variant: str = "default"):
        return probes.scheduler_stats(self.scheduler_addrs[variant], timeout=5.0)

    @property
    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.terminate()
        for p in self.processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _http_ok(url: str, verify: Path | bool) -> bool:
    context = ssl.create_default_context(cafile=verify) if isinstance(verify, Path) else verify
    try:
        return httpx.get(url, timeout=1.0, verify=context).status_code == 200
    except httpx.HTTPError:
        return False
