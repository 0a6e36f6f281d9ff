"""Pods: locked-down security contexts, resources, gRPC health probes, the services'
configuration from the rendered environment, and GPUs only where they are enabled."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import helm_python as helm
import pytest

from tests.k8s.render import (
    Rendered,
    component,
    container_of,
    pod_spec,
    render,
    scenario_values,
)

MIN_MODEL_LOAD_S = 600


def test_every_container_runs_locked_down(scenario: Rendered) -> None:
    for workload in scenario.workloads():
        spec = pod_spec(workload)
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True
        assert pod_ctx["runAsUser"] > 0
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        mounts_emptydir = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            where = f"{workload['metadata']['name']}/{c['name']}"
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx.get("privileged") is not True, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in mounts_emptydir, f"{where}: writable /tmp"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where


def test_sarathi_containers_run_the_service_modules_with_writable_caches(
    scenario: Rendered,
) -> None:
    for workload in scenario.workloads():
        role = component(workload)
        if role == "redis":
            continue
        c = container_of(workload)
        assert c["command"] == ["python", "-m", f"sarathi_serve.{role}"]
        env = scenario.env(workload)
        assert env[f"SARATHI_{role.upper()}_HOST"] == "0.0.0.0"
        assert env["HOME"] == "/tmp"
        if role != "scheduler":  # gateway and workers resolve the model
            cache = env["SARATHI_CACHE_DIR"]
            mount = max(
                (m for m in c["volumeMounts"] if cache.startswith(m["mountPath"])),
                key=lambda m: len(m["mountPath"]),
            )
            assert not mount.get("readOnly"), f"{cache} must be writable"


def test_probes_use_grpc_health(scenario: Rendered) -> None:
    values = scenario.values
    sched_port = values["scheduler"]["port"]
    for sched in scenario.workloads("scheduler"):
        c = container_of(sched)
        # Ready only on the leader: the Service then routes to the leader alone.
        assert c["readinessProbe"]["grpc"] == {
            "port": sched_port,
            "service": "sarathi.v1.Scheduler",
        }
        # The overall status "" is NOT_SERVING on a live standby (set_serving sets it
        # with the service's): a gRPC "" liveness probe would restart standbys forever.
        assert "grpc" not in c["livenessProbe"]
        assert c["livenessProbe"]["tcpSocket"]["port"] in ("grpc", sched_port)

    for worker in scenario.workloads("worker"):
        c = container_of(worker)
        port = values["worker"]["port"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port, "service": ""}, probe
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_MODEL_LOAD_S

    tls = bool(values["gateway"]["tls"]["secretName"])
    for gateway in scenario.workloads("gateway"):
        c = container_of(gateway)
        for probe in ("startupProbe", "readinessProbe"):
            if tls:  # the kubelet's gRPC probes cannot speak TLS
                assert c[probe]["tcpSocket"]["port"] == "grpc"
            else:
                assert c[probe]["grpc"] == {
                    "port": values["gateway"]["ports"]["grpc"],
                    "service": "sarathi.v1.Generation",
                }

    for workload in scenario.workloads():
        c = container_of(workload)
        assert "readinessProbe" in c and "livenessProbe" in c
        declared = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                check = c[probe].get("grpc") or c[probe].get("tcpSocket")
                if check:
                    port = check["port"]
                    assert port in declared or port in declared.values(), (probe, port)


def test_services_accept_the_rendered_configuration(
    scenario: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarathi_serve.gateway.config import GatewayConfig
    from sarathi_serve.scheduler.config import SchedulerConfig
    from sarathi_serve.worker.config import WorkerConfig

    configs: dict[str, Any] = {
        "gateway": GatewayConfig,
        "scheduler": SchedulerConfig,
        "worker": WorkerConfig,
    }
    for workload in scenario.workloads():
        role = component(workload)
        if role not in configs:
            continue
        cls = configs[role]
        prefix = f"SARATHI_{role.upper()}_"
        env = {k: v for k, v in scenario.env(workload).items() if isinstance(v, str)}
        fields = {prefix + f.name.upper() for f in dataclasses.fields(cls)}
        # parse_config ignores unknown variables: a misspelt one would go unnoticed.
        unknown = {k for k in env if k.startswith(prefix)} - fields
        assert not unknown, f"{role}: no such config fields: {unknown}"
        with monkeypatch.context() as m:
            for name in [k for k in os.environ if k.startswith("SARATHI_")]:
                m.delenv(name)
            for name, value in env.items():
                m.setenv(name, value)
            config = cls.from_args([])
        assert config.host == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in container_of(workload)["ports"]}
        assert config.port == next(iter(ports.values()))
        if role != "gateway":
            assert config.metrics_port == ports.get("metrics", 0)


def test_gpu_requests_only_where_enabled(scenario: Rendered) -> None:
    worker = scenario.values["worker"]
    for workload in scenario.workloads():
        resources = container_of(workload)["resources"]
        is_gpu_worker = component(workload) == "worker" and worker["gpu"]["enabled"]
        if is_gpu_worker:
            gpus = worker["tensorParallelSize"]
            assert resources["limits"]["nvidia.com/gpu"] == gpus
            assert resources["requests"]["nvidia.com/gpu"] == gpus
            assert scenario.env(workload)["SARATHI_WORKER_DEVICE"] == "cuda"
            assert container_of(workload)["image"].endswith("-cuda")
            shm = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "shm")
            assert shm["emptyDir"]["medium"] == "Memory"
        else:
            assert "nvidia.com/gpu" not in json.dumps(resources)
            assert not container_of(workload)["image"].endswith("-cuda")


def test_gpu_values_file_requests_gpus(chart: helm.Chart) -> None:
    rendered = render(chart, scenario_values("gpu"))
    workers = rendered.workloads("worker")
    assert workers
    for w in workers:
        assert container_of(w)["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(w)["tolerations"])
