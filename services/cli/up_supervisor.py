"""`sarathi-serve up`'s children: start them, wait until they serve, restart, stop.

Children are started in their own session so that Ctrl-C reaches only the
supervisor, which then stops them role by role (STOP_ORDER).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sarathi_serve.common import probes
from sarathi_serve.common.run_records import ProcessRecord, scheduler_sets, write_system

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
HANG_S = 10.0  # a child that answered its probe once, then not for this long, hangs
PROBE_EVERY_S = 2.0
ANSWERS = ("SERVING", "LEADER", "STANDBY")  # a probe answered: alive and making progress
STOP_ORDER = ("gateway", "worker", "scheduler", "redis")  # the clients' side first


class StartupError(RuntimeError):
    pass


@dataclass
class Child:
    """A process `up` starts: its command line, where it serves, and its log."""

    role: str
    argv: list[str]
    address: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    variant: str = ""  # A/B: the variant a scheduler or worker serves
    metrics: str = ""  # its Prometheus endpoint
    shard: str = ""  # with --shards: the shard of its variant it serves
    started_at: float = field(default=0.0)
    stop_timeout_s: float = STOP_TIMEOUT_S  # from SIGTERM to SIGKILL
    answered: bool = False  # its probe answered since it (re)started (it is past loading)
    silent_since: float | None = None  # since when its probe has not answered

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started_at = time.monotonic()
        self.answered, self.silent_since = False, None

    def hangs(self, state: str, now: float) -> bool:
        """Takes a probe's answer; True once the child, alive and seen serving since it
        started, has not answered for HANG_S (stopped, deadlocked, or a worker whose step
        never ends: its health says NOT_SERVING)."""
        if state in ANSWERS:
            self.answered, self.silent_since = True, None
            return False
        if not self.answered:
            return False  # still starting (a worker loads its model before it serves)
        if self.silent_since is None:
            self.silent_since = now
        return now - self.silent_since >= HANG_S

    def record(self) -> ProcessRecord:
        assert self.process is not None
        return ProcessRecord(
            self.role,
            self.process.pid,
            self.address,
            str(self.log_path),
            self.restarts,
            self.variant,
            self.metrics,
            self.shard,
        )


def start_all(children: list[Child], stop: threading.Event) -> None:
    """Starts the children in order and returns once each serves and every scheduler
    set (one per variant and shard) leads with its workers attached (StartupError
    otherwise)."""
    for child in children:
        child.start()
        if child.role == "redis":  # the schedulers need it at once
            _wait_ready(child, stop)
    for child in children:
        if child.role != "scheduler":  # a standby scheduler is never SERVING
            _wait_ready(child, stop)
    by_set = scheduler_sets(children)
    deadline = time.monotonic() + READY_TIMEOUT_S

    def ready(addrs: list[str]) -> bool:
        return any(probes.leads_with_a_worker(a, min_workers=workers) for a in addrs)

    workers = sum(c.role == "worker" for c in children) // max(len(by_set), 1)
    while not all(ready(addrs) for addrs in by_set.values()):
        _check_alive(children, stop, deadline)
        time.sleep(0.2)


def _wait_ready(child: Child, stop: threading.Event) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while probes.probe(child.role, child.address) not in ("SERVING", "LEADER"):
        _check_alive([child], stop, deadline)
        time.sleep(0.2)


def _check_alive(children: list[Child], stop: threading.Event, deadline: float) -> None:
    if stop.is_set():
        raise StartupError("interrupted")
    for child in children:
        assert child.process is not None
        if child.process.poll() is not None:
            tail = child.log_path.read_text(errors="replace").splitlines()[-15:]
            raise StartupError(
                f"{child.role} exited with code {child.process.returncode}:\n  " + "\n  ".join(tail)
            )
    if time.monotonic() > deadline:
        raise StartupError(f"not ready after {READY_TIMEOUT_S:.0f}s; see the logs")


def supervise(children: list[Child], run_dir: Path, stop: threading.Event) -> None:
    """Restarts a child that exits, or that hangs (killed first), until `stop` is set."""
    last_probe = time.monotonic()
    while not stop.wait(0.5):
        if time.monotonic() - last_probe >= PROBE_EVERY_S:
            last_probe = time.monotonic()
            kill_hung(children, last_probe)
        for child in children:
            assert child.process is not None
            if child.process.poll() is None:
                continue
            print(
                f"{child.role} exited with code {child.process.returncode}; restarting",
                file=sys.stderr,
                flush=True,
            )
            if time.monotonic() - child.started_at < 2.0:
                time.sleep(2.0)  # crash loop: do not spin
            child.restarts += 1
            child.start()
            write_system(run_dir, records(children))


def kill_hung(children: list[Child], now: float) -> None:
    """Probes every running child; kills (SIGKILL) those that hang, to be restarted."""
    for child in children:
        assert child.process is not None
        if child.process.poll() is not None:
            continue
        if child.hangs(probes.probe(child.role, child.address), now):
            print(
                f"{child.role} hangs (no answer to its health probe for {HANG_S:.0f}s); killing it",
                file=sys.stderr,
                flush=True,
            )
            child.process.kill()
            child.process.wait()


def records(children: list[Child]) -> list[ProcessRecord]:
    """The supervisor and its started children, for `system.json`."""
    supervisor = ProcessRecord("up", os.getpid(), "-", "-")
    return [supervisor, *(c.record() for c in children if c.process is not None)]


def stop_all(children: list[Child]) -> None:
    """Stops one role at a time, in STOP_ORDER; the children of a role all at once."""
    for role in STOP_ORDER:
        running = [
            (c, c.process)
            for c in children
            if c.role == role and c.process is not None and c.process.poll() is None
        ]
        for _, process in running:
            process.terminate()
        started = time.monotonic()
        for child, process in running:
            try:
                process.wait(max(started + child.stop_timeout_s - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
