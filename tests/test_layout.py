"""The code's shape, held: small modules and functions, protobuf only at the edges, one
definition of each shared idea. (What `../shared/STYLE.md` asks, checked on every run.)"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60

# Where protobuf messages may be built or read: the servicers, the ends of the
# internal streams, the CLI's and probes' gRPC clients, the one conversion module,
# and the generated package itself.
PROTOBUF_EDGES = {
    "common/convert.py",  # every dataclass <-> protobuf conversion
    "common/probes.py",  # health / GetStats client
    "cli/admin.py",  # admin client (GetStats, SetPolicy)
    "cli/generate.py",  # Generate client
    "gateway/server.py",  # the public Generate servicer
    "gateway/scheduler_client.py",  # the gateway's end of the Session stream
    "scheduler/server.py",  # the Scheduler servicer
    "scheduler/workers.py",  # the scheduler's end of the Attach stream
    "worker/attach.py",  # the worker's end of the Attach stream
}


def _modules() -> list[tuple[str, ast.Module, int]]:
    modules = []
    for path in sorted(SERVICES.rglob("*.py")):
        name = path.relative_to(SERVICES).as_posix()
        if name.startswith("protocol/"):
            continue  # generated code and its generator
        text = path.read_text()
        modules.append((name, ast.parse(text), len(text.splitlines())))
    return modules


def test_modules_are_small():
    big = {name: n for name, _, n in _modules() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {big}"


def test_functions_are_small():
    long = {}
    for name, tree, _ in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{name}:{node.name}"] = size
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_protobuf_stays_at_the_edges():
    inside = {}
    for name, tree, _ in _modules():
        protocol = {i for i in _imports(tree) if i.startswith("sarathi_serve.protocol.")}
        if protocol and name not in PROTOBUF_EDGES:
            inside[name] = sorted(protocol)
    assert not inside, f"protobuf imported inside the services (convert at the edge): {inside}"
    missing = {name for name in PROTOBUF_EDGES if not (SERVICES / name).exists()}
    assert not missing, f"edges listed here that no longer exist: {missing}"


def test_shared_ideas_are_defined_once():
    for idea in ("StopReason", "WorkerGeometry", "SamplingParams", "RequestEvent"):
        where = [
            name
            for name, tree, _ in _modules()
            for node in tree.body
            if isinstance(node, ast.ClassDef) and node.name == idea
        ]
        assert len(where) == 1, f"{idea} is defined in {where}"


def test_the_cli_uses_no_worker_internals():
    public = {
        "sarathi_serve.worker",
        "sarathi_serve.worker.config",
    }  # the package's API, its config
    for name, tree, _ in _modules():
        if name.startswith("cli/"):
            modules = {i.rsplit(".", 1)[0] for i in _imports(tree)}
            internals = {m for m in modules if m.startswith("sarathi_serve.worker.")} - public
            assert not internals, f"{name} imports {internals}: use sarathi_serve.worker's API"
