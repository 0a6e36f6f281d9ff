"""`sarathi-serve generate PROMPT`: stream the generated text (and only that) to stdout."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from sarathi_serve.common.run_records import default_run_dir, read_system
from sarathi_serve.gateway.config import DEFAULT_PORT
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--min-tokens",
        type=int,
        default=1,
        help="tokens before end-of-sequence may stop the output (default 1: an instruct model "
        "may end a raw prompt at once; --chat gives it its chat format)",
    )
    p.add_argument(
        "--chat", action="store_true", help="apply the model's chat template to the prompt"
    )
    p.add_argument("--addr", default=None, help="gateway host:port (default: the running system's)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SARATHI_API_KEY", ""),
        help="if the gateway requires one (env SARATHI_API_KEY)",
    )
    p.add_argument(
        "--run-dir", type=Path, default=default_run_dir(), help="where `up` recorded the system"
    )


def default_addr(run_dir: Path) -> str:
    gateway = next((r for r in read_system(run_dir) if r.role == "gateway"), None)
    return gateway.address if gateway else f"127.0.0.1:{DEFAULT_PORT}"


def build_request(args: argparse.Namespace) -> gpb.GenerateRequest:
    sampling = gpb.SamplingOptions(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        min_tokens=min(args.min_tokens, args.max_tokens),
    )
    if args.top_p is not None:
        sampling.top_p = args.top_p
    if args.seed is not None:
        sampling.seed = args.seed
    if args.chat:
        messages = gpb.ChatMessages(messages=[gpb.ChatMessage(role="user", content=args.prompt)])
        return gpb.GenerateRequest(messages=messages, sampling=sampling)
    return gpb.GenerateRequest(prompt=args.prompt, sampling=sampling)


def run(args: argparse.Namespace) -> int:
    addr = args.addr or default_addr(args.run_dir)
    try:
        with grpc.insecure_channel(addr) as channel:
            metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
            stub = gpb_grpc.GenerationStub(channel)
            for response in stub.Generate(build_request(args), metadata=metadata):
                sys.stdout.write(response.text)
                sys.stdout.flush()
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    sys.stdout.write("\n")
    return 0
