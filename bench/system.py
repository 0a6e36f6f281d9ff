"""Our whole system for a benchmark: `sarathi-serve up` in a temporary run folder."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from sarathi_serve.common import probes
from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.net import free_port
from sarathi_serve.common.run_records import read_system
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc


class LocalSystem:
    def __init__(self, *up_args: str, startup_timeout_s: float = 300.0):
        self.run_dir = Path(tempfile.mkdtemp(prefix="sarathi-bench-"))
        self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}/v1"
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        argv = [
            sys.executable, "-m", "sarathi_serve.cli.main", "up", "--run-dir", str(self.run_dir),
            "--port", self.grpc_addr.rsplit(":", 1)[1], "--http-port", str(self.http_port),
            *up_args,
        ]  # fmt: skip
        self.log = open(self.run_dir / "up.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout_s
        while "sarathi-serve is up" not in (self.run_dir / "up.log").read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError((self.run_dir / "up.log").read_text()[-3000:])
            time.sleep(0.5)
        records = read_system(self.run_dir)
        scheduler = next(r for r in records if r.role == "scheduler")
        self.scheduler_addr = scheduler.address
        self.scheduler_metrics = scheduler.metrics
        self.token = InternalToken.from_env(self.run_dir)

    def set_policy(
        self,
        policy: str,
        token_budget: int,
        target_tbt_ms: float = 0.0,
        target_tbt_factor: float = 0.0,
    ) -> None:
        """Swaps the policy between trials: exactly these settings (no target: the static
        budget), whatever `up` started with."""
        self.drain()
        request = pb.SetPolicyRequest(policy=policy, token_budget=token_budget)
        if policy == "sarathi":
            request.target_tbt_ms = target_tbt_ms
            request.target_tbt_factor = target_tbt_factor
        with grpc.insecure_channel(self.scheduler_addr) as channel:
            pb_grpc.SchedulerStub(channel).SetPolicy(
                request,
                timeout=10,
                metadata=self.token.metadata,
            )

    def drain(self, timeout_s: float = 600.0) -> None:
        """Waits until no request runs or waits (between two trials)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = probes.scheduler_stats(self.scheduler_addr, timeout=5.0, token=self.token)
            if stats.num_running == 0 and stats.num_waiting == 0:
                return
            time.sleep(0.5)
        raise TimeoutError("the system did not drain")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
