"""`sarathi-serve admin`: talk to the schedulers (set-policy, stats).

Without --addr it talks to the leader of every scheduler set of the running system
(one per variant and shard): `stats` shows each, `set-policy` swaps every shard of
one variant (--variant names it when several run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from sarathi_serve.common import probes
from sarathi_serve.common.auth import InternalToken, Metadata
from sarathi_serve.common.run_records import (
    default_run_dir,
    read_system,
    scheduler_sets,
    set_label,
)
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.scheduler.config import DEFAULT_PORT
from sarathi_serve.scheduler.policies import POLICIES
from sarathi_serve.scheduler.stats import StageTimes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr", default=None, help="scheduler host:port (default: the running system's)"
    )
    p.add_argument(
        "--variant", default=None, help="only this A/B variant's schedulers (every shard of it)"
    )
    p.add_argument("--run-dir", type=Path, default=default_run_dir())
    actions = p.add_subparsers(dest="action", required=True)
    swap = actions.add_parser(
        "set-policy", help="switch the scheduling policy between two iterations"
    )
    swap.add_argument("policy", choices=sorted(POLICIES))
    swap.add_argument("--token-budget", type=int, default=None)
    swap.add_argument(
        "--target-tbt-ms", type=float, default=None, help="sarathi: SLO-driven budget (0: off)"
    )
    swap.add_argument(
        "--target-tbt-factor",
        type=float,
        default=None,
        help="sarathi: the target is this x the measured decode step, measured again (0: off)",
    )
    swap.add_argument("--max-num-seqs", type=int, default=None)
    stats = actions.add_parser("stats", help="occupancy and the last iterations")
    stats.add_argument("--last", type=int, default=10, help="iterations to show (0: all retained)")
    stats.add_argument("--json", action="store_true")


@dataclass(frozen=True, slots=True)
class SchedulerSet:
    variant: str
    shard: str
    addr: str  # its leader's (or, none leading, its first scheduler's)

    @property
    def label(self) -> str:
        return set_label(self.variant, self.shard)


def leaders(args: argparse.Namespace, token: InternalToken) -> list[SchedulerSet]:
    """--addr, else each scheduler set's leader (after a failover, not the first one)."""
    if args.addr:
        return [SchedulerSet("", "", str(args.addr))]
    groups = {
        key: addrs
        for key, addrs in scheduler_sets(read_system(args.run_dir)).items()
        if args.variant in (None, key[0])
    }
    if not groups and args.variant is None:
        return [SchedulerSet("", "", f"127.0.0.1:{DEFAULT_PORT}")]
    return [SchedulerSet(v, k, _leader(addrs, token)) for (v, k), addrs in groups.items()]


def _leader(addrs: list[str], token: InternalToken) -> str:
    for addr in addrs:
        try:
            if probes.scheduler_stats(addr, timeout=2.0, token=token).is_leader:
                return addr
        except grpc.RpcError:  # dead, or starting
            continue
    return addrs[0]


def run(args: argparse.Namespace) -> int:
    token = InternalToken.from_env(args.run_dir)
    sets = leaders(args, token)
    if not sets:
        print(f"error: no scheduler of variant {args.variant!r} runs", file=sys.stderr)
        return 1
    if args.action == "set-policy" and len({s.variant for s in sets}) > 1:
        names = sorted({s.variant for s in sets})
        print(f"error: variants {names} run: pass --variant NAME (or --addr)", file=sys.stderr)
        return 1
    status, answers = 0, []
    for one in sets:
        if len(sets) > 1 and not getattr(args, "json", False):
            print(f"[{one.label}] {one.addr}")
        try:
            with grpc.insecure_channel(one.addr) as channel:
                stub = pb_grpc.SchedulerStub(channel)
                if args.action == "set-policy":
                    _set_policy(stub, args, token.metadata)
                elif args.json:
                    answers.append({**asdict(one), "stats": _stats_json(stub, args, token)})
                else:
                    _stats(stub, args, token.metadata)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            status = 1
    if answers:  # one set: its stats; several: a list of {variant, shard, addr, stats}
        print(json.dumps(answers[0]["stats"] if len(sets) == 1 else answers, indent=2))
    return status


def _set_policy(stub: pb_grpc.SchedulerStub, args: argparse.Namespace, metadata: Metadata) -> None:
    request = pb.SetPolicyRequest(policy=args.policy)
    if args.token_budget is not None:
        request.token_budget = args.token_budget
    if args.target_tbt_ms is not None:
        request.target_tbt_ms = args.target_tbt_ms
    if args.target_tbt_factor is not None:
        request.target_tbt_factor = args.target_tbt_factor
    if args.max_num_seqs is not None:
        request.max_num_seqs = args.max_num_seqs
    reply = stub.SetPolicy(request, timeout=10, metadata=metadata)
    print(
        f"policy {reply.policy} (token budget {reply.token_budget}, max {reply.max_num_seqs} seqs) "
        f"from step {reply.first_step_id}"
    )


def _stats_json(
    stub: pb_grpc.SchedulerStub, args: argparse.Namespace, token: InternalToken
) -> dict[str, object]:
    from google.protobuf.json_format import MessageToDict

    request = pb.GetStatsRequest(max_iterations=args.last)
    reply = stub.GetStats(request, timeout=10, metadata=token.metadata)
    return MessageToDict(reply, always_print_fields_with_no_presence=True)


def _stats(stub: pb_grpc.SchedulerStub, args: argparse.Namespace, metadata: Metadata) -> None:
    request = pb.GetStatsRequest(max_iterations=args.last)
    reply = stub.GetStats(request, timeout=10, metadata=metadata)
    print(
        f"policy {reply.policy} (budget {reply.token_budget}); running {reply.num_running}, "
        f"waiting {reply.num_waiting}, finished {reply.num_finished}; KV blocks free "
        f"{reply.num_free_kv_blocks}/{reply.num_total_kv_blocks}; workers {reply.num_workers}"
    )
    for r in reply.replicas:
        hit_rate = r.prefix_cache_hits / r.prefix_cache_queries if r.prefix_cache_queries else 0
        print(
            f"  replica {r.index}: worker {r.worker_id or '(none)'}; running {r.num_running}, "
            f"waiting {r.num_waiting}; KV blocks free {r.num_free_kv_blocks}/"
            f"{r.num_total_kv_blocks}; prefix cache: {hit_rate:.1%} of "
            f"{r.prefix_cache_queries} prompt tokens hit, {r.num_cached_kv_blocks} blocks"
        )
        if r.stage_busy_seconds:
            print(f"    pipeline bubbles: {_bubbles(r.stage_busy_seconds, r.stage_idle_seconds)}")
    print(f"  routing: lowest {reply.routing_score}")
    print(
        f"{'step':>6} {'budget':>6} {'policy':>18} {'batch':>5} {'prefill':>7} {'decode':>6} "
        f"{'exec ms':>8} {'gap ms':>7}"
    )
    for it in reply.iterations:
        print(
            f"{it.step_id:>6} {it.token_budget:>6} {it.policy:>18} {it.batch_size:>5} "
            f"{it.num_prefill_tokens:>7} {it.num_decode_tokens:>6} {it.execution_ms:>8.1f} "
            f"{it.worker_wait_ms:>7.2f}"
        )


def _bubbles(busy_s: Sequence[float], idle_s: Sequence[float]) -> str:
    """Each stage's idle fraction while requests were running."""
    stages = StageTimes(list(busy_s), list(idle_s)).bubble_fractions
    return ", ".join(f"stage {i} {fraction:.1%} idle" for i, fraction in enumerate(stages))
