"""`sarathi-serve status` and `sarathi-serve down`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from sarathi_serve.common import probes
from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.run_records import (
    ProcessRecord,
    default_run_dir,
    pid_alive,
    read_system,
    set_label,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--run-dir", type=Path, default=default_run_dir())


def run(args: argparse.Namespace) -> int:
    records = read_system(args.run_dir)
    token = InternalToken.from_env(args.run_dir)

    def health(record: ProcessRecord) -> str:
        alive = pid_alive(record.pid)
        if record.role == "up" or not alive:
            return "RUNNING" if alive else "EXITED"
        return probes.probe(record.role, record.address, token)

    with ThreadPoolExecutor(max(len(records), 1)) as pool:  # a probe may wait its timeout
        rows = [
            {**asdict(r), "health": h}
            for r, h in zip(records, pool.map(health, records), strict=True)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if rows else 1
    if not rows:
        print(f"no system is running from {args.run_dir} (start one with `sarathi-serve up`)")
        return 1
    header = ("ROLE", "PID", "ADDRESS", "HEALTH", "RESTARTS")
    table = [
        header,
        *(
            (
                r["role"]
                + (f" [{label}]" if (label := set_label(r["variant"], r["shard"])) else ""),
                str(r["pid"]),
                r["address"],
                r["health"],
                str(r["restarts"]),
            )
            for r in rows
        ),
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_down_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, default=default_run_dir())


def run_down(args: argparse.Namespace) -> int:
    supervisor = next((r for r in read_system(args.run_dir) if r.role == "up"), None)
    if supervisor is None or not pid_alive(supervisor.pid):
        print("no system is running", file=sys.stderr)
        return 1
    os.kill(supervisor.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60  # `up` gives each role up to 10 s
    while pid_alive(supervisor.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(
        "stopped" if not pid_alive(supervisor.pid) else "still stopping; see `sarathi-serve status`"
    )
    return 0


def _role(row: dict[str, str]) -> str:
    """`scheduler`, or with its set: `scheduler [a, shard 1]`."""
    label = set_label(row["variant"], row["shard"])
    return row["role"] + (f" [{label}]" if label else "")
