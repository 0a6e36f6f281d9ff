"""The record of a running system (`system.json` in the run folder) and process liveness."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sarathi_serve.common.models import default_cache_dir

SYSTEM_FILE = "system.json"


def default_run_dir() -> Path:
    return Path(os.environ.get("SARATHI_RUN_DIR", default_cache_dir() / "run"))


@dataclass(slots=True)
class ProcessRecord:
    role: str  # redis, scheduler, worker, gateway
    pid: int
    address: str  # host:port it serves on
    log: str
    restarts: int = 0
    variant: str = ""  # A/B: the variant a scheduler or worker serves
    metrics: str = ""  # its Prometheus endpoint, if any
    shard: str = ""  # with `up --shards`: the shard of its variant a scheduler or worker serves


class _Placed(Protocol):
    """A process `up` started (a record, or `up`'s own Child): what groups it."""

    role: str
    address: str
    variant: str
    shard: str


def scheduler_sets(processes: Iterable[_Placed]) -> dict[tuple[str, str], list[str]]:
    """The schedulers' addresses per scheduler set: (variant, shard) -> leader + standbys."""
    sets: dict[tuple[str, str], list[str]] = {}
    for p in processes:
        if p.role == "scheduler":
            sets.setdefault((p.variant, p.shard), []).append(p.address)
    return sets


def set_label(variant: str, shard: str) -> str:
    """`a`, `a, shard 1`, `shard 1`, or "" for the one set of a plain system."""
    return ", ".join([*([variant] if variant else []), *([f"shard {shard}"] if shard else [])])


def write_system(run_dir: Path, processes: list[ProcessRecord]) -> None:
    tmp = run_dir / (SYSTEM_FILE + ".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in processes], indent=2))
    tmp.replace(run_dir / SYSTEM_FILE)


def read_system(run_dir: Path) -> list[ProcessRecord]:
    path = run_dir / SYSTEM_FILE
    if not path.exists():
        return []
    return [ProcessRecord(**item) for item in json.loads(path.read_text())]


def clear_system(run_dir: Path) -> None:
    (run_dir / SYSTEM_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or gone meanwhile
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # the state follows "(comm)"
