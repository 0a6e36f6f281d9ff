"""`sarathi-serve`: up, down, status, generate, admin, ab, bench."""

from __future__ import annotations

import argparse
import sys

from sarathi_serve.bench import compare as bench_compare
from sarathi_serve.bench import control_plane as bench_control_plane
from sarathi_serve.bench import fleet as bench_fleet
from sarathi_serve.bench import serving as bench_serving
from sarathi_serve.bench import worker as bench_worker
from sarathi_serve.cli import ab, admin, generate, status, up


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sarathi-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up.add_arguments(commands.add_parser("up", help="start Redis, scheduler, worker and gateway"))
    status.add_down_arguments(commands.add_parser("down", help="stop the running system"))
    status.add_arguments(
        commands.add_parser("status", help="list the processes of the running system")
    )
    generate.add_arguments(commands.add_parser("generate", help="stream a completion to stdout"))
    admin.add_arguments(commands.add_parser("admin", help="scheduler admin: set-policy, stats"))
    ab.add_arguments(commands.add_parser("ab", help="A/B tests of scheduler variants: report"))
    benches = commands.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bench_kinds = benches.add_subparsers(dest="bench", required=True)
    bench_worker.add_arguments(
        bench_kinds.add_parser("worker", help="worker step time vs a bare HF forward")
    )
    bench_control_plane.add_arguments(
        bench_kinds.add_parser("control-plane", help="scheduler iterations/s with a null worker")
    )
    bench_fleet.add_arguments(
        bench_kinds.add_parser("fleet", help="null fleets: achieved / ideal iteration rate")
    )
    bench_serving.add_arguments(
        bench_kinds.add_parser("serve", help="open-loop load against a running server")
    )
    bench_compare.add_arguments(
        bench_kinds.add_parser("compare", help="configurations side by side, or their capacity")
    )
    args = parser.parse_args(argv)
    if args.command == "bench":
        handler = {
            "worker": bench_worker.run,
            "control-plane": bench_control_plane.run,
            "fleet": bench_fleet.run,
            "serve": bench_serving.run,
            "compare": bench_compare.run,
        }[args.bench]
    else:
        handler = {
            "up": up.run,
            "down": status.run_down,
            "status": status.run,
            "generate": generate.run,
            "admin": admin.run,
            "ab": ab.run,
        }[args.command]
    sys.exit(handler(args))


if __name__ == "__main__":
    main()
