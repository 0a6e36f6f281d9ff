"""Generate the Python code of the `sarathi.v1` contracts: the one command.

    python -m sarathi_serve.protocol.codegen          # (re)write the modules
    python -m sarathi_serve.protocol.codegen --check  # exit 1 when they are stale

The `.proto` sources live in `protos/sarathi/v1/`. protoc is given a virtual
include path so that the generated modules import each other as
`sarathi_serve.protocol.*` without any rewriting of the generated code.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_DIR = REPO_ROOT / "protos" / "sarathi" / "v1"
VIRTUAL_PREFIX = "sarathi_serve/protocol"


def generate(out_root: Path) -> list[Path]:
    """Runs protoc over every contract; returns the generated files."""
    from grpc_tools import protoc  # dev dependency, needed only here

    sources = sorted(PROTO_DIR.glob("*.proto"))
    if not sources:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={VIRTUAL_PREFIX}={PROTO_DIR}",
        f"--proto_path={include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{VIRTUAL_PREFIX}/{src.name}" for src in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_root / VIRTUAL_PREFIX).glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated modules that differ from what protoc makes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh} | {p.name for p in PACKAGE_DIR.glob("*_pb2*.py*")}
        stale = []
        for name in sorted(names):
            new, old = Path(tmp) / VIRTUAL_PREFIX / name, PACKAGE_DIR / name
            if not (new.exists() and old.exists() and filecmp.cmp(new, old, shallow=False)):
                stale.append(name)
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated protobuf code: " + ", ".join(stale), file=sys.stderr)
            print("run: make protos", file=sys.stderr)
            return 1
        return 0
    for old in PACKAGE_DIR.glob("*_pb2*.py*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (PACKAGE_DIR / path.name).write_bytes(path.read_bytes())
            print(f"wrote services/protocol/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
