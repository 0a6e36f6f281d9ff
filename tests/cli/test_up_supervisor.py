"""`sarathi-serve up` stops its children role by role, the clients' side first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sarathi_serve.cli import up_supervisor
from sarathi_serve.cli.up_supervisor import STOP_ORDER, Child, stop_all


class FakeProcess:
    """Records the signals it gets; a stubborn one ignores SIGTERM."""

    def __init__(self, name: str, events: list[str], *, running=True, stubborn=False):
        self.name, self.events, self.running, self.stubborn = name, events, running, stubborn

    def poll(self):
        return None if self.running else 0

    def terminate(self):
        self.events.append(f"terminate {self.name}")
        self.running = self.running and self.stubborn

    def kill(self):
        self.events.append(f"kill {self.name}")
        self.running = False

    def wait(self, timeout=None):
        if self.running and timeout is not None:
            raise subprocess.TimeoutExpired(self.name, timeout)
        return 0


def child(role: str, name: str, events: list[str], **kwargs) -> Child:
    c = Child(role, [], "-", Path(f"{name}.log"))
    c.process = FakeProcess(name, events, **kwargs)  # type: ignore[assignment]
    return c


def test_stop_order_is_gateways_workers_schedulers_redis():
    assert STOP_ORDER == ("gateway", "worker", "scheduler", "redis")


def test_children_are_stopped_one_role_at_a_time_and_a_stubborn_one_is_killed(monkeypatch):
    monkeypatch.setattr(up_supervisor, "STOP_TIMEOUT_S", 0.01)
    events: list[str] = []
    children = [
        child("redis", "redis", events),
        child("scheduler", "scheduler-0", events),
        child("scheduler", "scheduler-1", events, running=False),  # exited: left alone
        child("worker", "worker-0", events, stubborn=True),
        child("gateway", "gateway", events),
        child("worker", "worker-1", events),
    ]
    stop_all(children)
    assert events == [
        "terminate gateway",
        "terminate worker-0",
        "terminate worker-1",
        "kill worker-0",
        "terminate scheduler-0",
        "terminate redis",
    ]
    assert all(c.process is not None and c.process.poll() == 0 for c in children)


def test_a_child_that_stops_answering_after_it_served_is_killed(monkeypatch):
    events: list[str] = []
    worker = child("worker", "worker", events)
    loading = child("worker", "loading", events)
    states = {"worker": "SERVING", "loading": "UNREACHABLE"}
    monkeypatch.setattr(up_supervisor.probes, "probe", lambda role, addr: states[addr])
    worker.address, loading.address = "worker", "loading"
    children = [worker, loading]
    up_supervisor.kill_hung(children, now=0.0)
    states["worker"] = "UNREACHABLE"  # SIGSTOP: its health no longer answers
    up_supervisor.kill_hung(children, now=1.0)
    up_supervisor.kill_hung(children, now=1.0 + up_supervisor.HANG_S - 0.1)
    assert events == []  # not yet: a probe may miss once
    up_supervisor.kill_hung(children, now=1.0 + up_supervisor.HANG_S)
    assert events == ["kill worker"]  # the one still loading its model is left alone
    assert not worker.hangs("SERVING", now=100.0)  # an answer resets the clock
    assert not worker.hangs("NOT_SERVING", now=101.0)
    assert worker.hangs("NOT_SERVING", now=101.0 + up_supervisor.HANG_S)  # a stuck step
