"""Local port helpers."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on it now (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server does
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


class PortPicker:
    """Hands out ports that are free now and that it has not handed out before.

    A port is picked at random below the kernel's ephemeral range: a port the kernel
    chose with bind(0) can be chosen again the moment the probing socket closes, and an
    ephemeral port can be taken by any outgoing connection before the process it was
    meant for gets to bind it. Both races made spawned services collide.
    """

    def __init__(self, low: int = 10000, high: int | None = None, rng: random.Random | None = None):
        self._low = low
        self._high = _ephemeral_range()[0] - 1 if high is None else high
        if self._high <= self._low:  # an unusual range: take the ports above it
            self._low, self._high = _ephemeral_range()[1] + 1, 65535
        self._rng = rng or random.Random()
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def take(self, host: str = "127.0.0.1") -> int:
        with self._lock:
            for _ in range(1000):
                port = self._rng.randint(self._low, self._high)
                if port not in self._given and port_free(host, port):
                    self._given.add(port)
                    return port
        raise RuntimeError(f"no free port in {self._low}-{self._high} on {host}")


_PICKER = PortPicker()  # one per process, so no two callers here get the same port


def free_port(host: str = "127.0.0.1") -> int:
    """A free port no other caller in this process has been given."""
    return _PICKER.take(host)
