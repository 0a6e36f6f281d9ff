"""The Helm chart in k8s/sarathi-serve, checked without a cluster.

Each values scenario (the chart's defaults and every file in k8s/values/) is
rendered with the real Helm engine (helm-python-sdk, Helm's Go SDK behind
ctypes), linted, validated object by object against the Kubernetes OpenAPI
schemas shipped by kubernetes-validate (strict: unknown fields fail), and
checked for the wiring the services need: probes, security contexts, network
reachability, A/B variants and the addresses each service dials.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "sarathi-serve"
VALUES_DIR = ROOT / "k8s" / "values"
RELEASE, NAMESPACE = "llm", "serving"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SCENARIOS = ["default", *sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))]
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
MIN_MODEL_LOAD_S = 600

# ServiceMonitor is a CRD (Prometheus Operator): kubernetes-validate has no
# schema for it, so it is checked against this minimal one instead.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


# --- rendering -----------------------------------------------------------------------


class Rendered:
    """The objects of one render, with lookups by kind, name and labels."""

    def __init__(self, values: dict[str, Any], manifests: dict[str, str]) -> None:
        self.values = values
        self.notes = next((v for k, v in manifests.items() if k.endswith("NOTES.txt")), "")
        self.objects = [
            doc
            for path, text in sorted(manifests.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["metadata"]["name"] == name for o in self.of(kind))

    def workloads(self, component: str | None = None) -> list[dict]:
        return [
            o
            for o in self.objects
            if o["kind"] in WORKLOAD_KINDS
            and (component is None or labels_of(o)["app.kubernetes.io/component"] == component)
        ]

    def variant_workload(self, component: str, variant: str) -> dict:
        found = [
            w
            for w in self.workloads(component)
            if labels_of(w).get("sarathi-serve.io/variant") == variant
        ]
        assert len(found) == 1, f"{component} of variant {variant}: {len(found)} workloads"
        return found[0]

    def env(self, workload: dict, container: str | None = None) -> dict[str, Any]:
        """A container's environment: envFrom ConfigMaps, then env (value or valueFrom)."""
        c = container_of(workload, container)
        env: dict[str, Any] = {}
        for source in c.get("envFrom", []):
            ref = source["configMapRef"]["name"]
            env.update(self.get("ConfigMap", ref)["data"])
        for var in c.get("env", []):
            env[var["name"]] = var.get("value", var.get("valueFrom"))
        return env

    def mounted_file(self, workload: dict, path: str) -> str:
        """The text of a file that a ConfigMap volume puts at `path` in the first container."""
        spec = pod_spec(workload)
        for mount in container_of(workload)["volumeMounts"]:
            if path.startswith(mount["mountPath"].rstrip("/") + "/"):
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
                return self.get("ConfigMap", volume["configMap"]["name"])["data"][key]
        raise AssertionError(f"nothing is mounted at {path}")

    def service_for(self, address: str, component: str) -> dict:
        """The Service that `host:port` names; its selector must pick `component` pods."""
        host, port = address.rsplit(":", 1)
        suffix = f".{NAMESPACE}.svc.cluster.local"
        assert host.endswith(suffix) or "." not in host, f"{address}: not this namespace"
        service = self.get("Service", host.removesuffix(suffix))
        assert int(port) in [p["port"] for p in service["spec"]["ports"]], address
        pods = self.pods_matching(service["spec"]["selector"])
        assert pods, f"{address}: the Service selects no pods"
        assert {labels_of(w)["app.kubernetes.io/component"] for w in pods} == {component}
        return service

    def pods_matching(self, selector: dict[str, str]) -> list[dict]:
        return [w for w in self.workloads() if matches(selector, pod_labels(w))]


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    """Renders as `helm template`; `.values` are the merged values the templates saw."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return Rendered(chart.merge_values(values), manifests)


def scenario_values(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def defaults(chart: helm.Chart) -> dict[str, Any]:
    return chart.values


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    return render(chart, scenario_values(request.param))


# --- helpers over objects --------------------------------------------------------------


def labels_of(obj: dict) -> dict[str, str]:
    return obj["metadata"].get("labels", {})


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def container_of(workload: dict, name: str | None = None) -> dict:
    containers = pod_spec(workload)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def component(workload: dict) -> str:
    return labels_of(workload).get("app.kubernetes.io/component", "")


def variants_of(values: dict[str, Any]) -> list[dict[str, Any]]:
    """What the chart promises for `variants`, with its defaults filled in."""
    sched, worker = values["scheduler"], values["worker"]
    listed = values["variants"] or [{"name": "default", "weight": 100}]
    return [
        {
            "name": v["name"],
            "weight": v["weight"],
            "policy": v.get("policy", sched["policy"]),
            "tokenBudget": v.get("tokenBudget", sched["tokenBudget"]),
            "workerReplicas": v.get("workerReplicas", worker["replicas"]),
        }
        for v in listed
    ]


def service_addr(name: str, port: int) -> str:
    return f"{name}.{NAMESPACE}.svc.cluster.local:{port}"


# Passed through to Kubernetes as they are: documented as a whole.
FREE_FORM = {"resources", "podSecurityContext", "containerSecurityContext"}


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            yield from leaves(value, path + ".")
        else:
            yield path


# --- lint and schema validation -------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_helm_lint_strict_is_clean(name: str, kube_version: str) -> None:
    report = helm.lint(
        CHART,
        scenario_values(name),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_every_object_validates_against_kubernetes_schemas(scenario: Rendered) -> None:
    assert scenario.objects
    for obj in scenario.objects:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["name"] and len(obj["metadata"]["name"]) <= 63
        assert "namespace" not in obj["metadata"], "the release namespace applies"


def test_validation_is_strict() -> None:
    """The check above would catch a misspelt field."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPrt": 1}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBE_VERSIONS[-1], strict=True)


def test_object_names_are_unique(scenario: Rendered) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in scenario.objects]
    assert len(keys) == len(set(keys))


# --- pods: security, resources, probes ------------------------------------------------


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


# --- wiring: variants, addresses, references -------------------------------------------


def test_one_scheduler_and_worker_set_per_variant(scenario: Rendered) -> None:
    values = scenario.values
    variants = variants_of(values)
    assert len(scenario.workloads("scheduler")) == len(variants)
    assert len(scenario.workloads("worker")) == len(variants)
    prefixes = set()
    for v in variants:
        sched = scenario.variant_workload("scheduler", v["name"])
        assert sched["kind"] == "Deployment"
        assert sched["spec"]["replicas"] == values["scheduler"]["replicas"] == 2
        env = scenario.env(sched)
        assert env["SARATHI_SCHEDULER_POLICY"] == v["policy"]
        assert env["SARATHI_SCHEDULER_TOKEN_BUDGET"] == str(v["tokenBudget"])
        assert env["SARATHI_SCHEDULER_PORT"] == str(values["scheduler"]["port"])
        prefixes.add(env["SARATHI_SCHEDULER_REDIS_PREFIX"])
        # A rolling update that waits for Ready pods would hang on never-Ready standbys.
        assert sched["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"

        worker = scenario.variant_workload("worker", v["name"])
        assert worker["spec"]["replicas"] == v["workerReplicas"]
        worker_env = scenario.env(worker)
        addr = worker_env["SARATHI_WORKER_SCHEDULER_ADDR"]
        service = scenario.service_for(addr, "scheduler")
        assert matches(service["spec"]["selector"], pod_labels(sched))
        assert worker_env["SARATHI_WORKER_MODEL"] == values["model"]["name"]
    assert len(prefixes) == len(variants), "variants must not share Redis keys"


def test_gateway_routing_table_lists_every_variant(scenario: Rendered) -> None:
    (gateway,) = scenario.workloads("gateway")
    env = scenario.env(gateway)
    routes = json.loads(scenario.mounted_file(gateway, env["SARATHI_GATEWAY_VARIANTS_FILE"]))
    variants = variants_of(scenario.values)
    assert [(r["name"], r["weight"]) for r in routes] == [
        (v["name"], v["weight"]) for v in variants
    ]
    for route in routes:
        sched = scenario.variant_workload("scheduler", route["name"])
        service = scenario.service_for(route["scheduler_addr"], "scheduler")
        assert matches(service["spec"]["selector"], pod_labels(sched))
        assert route["scheduler_addr"] == service_addr(
            service["metadata"]["name"], scenario.values["scheduler"]["port"]
        )
    assert env["SARATHI_GATEWAY_PORT"] == str(scenario.values["gateway"]["ports"]["grpc"])
    assert env["SARATHI_GATEWAY_HTTP_PORT"] == str(scenario.values["gateway"]["ports"]["http"])
    assert env["SARATHI_GATEWAY_MODEL"] == scenario.values["model"]["name"]
    if "SARATHI_GATEWAY_SCHEDULER_ADDR" in env:
        scenario.service_for(env["SARATHI_GATEWAY_SCHEDULER_ADDR"], "scheduler")


def test_schedulers_reach_redis(scenario: Rendered) -> None:
    external = scenario.values["redis"]["external"]
    redis_objects = [o for o in scenario.objects if component(o) == "redis"]
    for sched in scenario.workloads("scheduler"):
        url = scenario.env(sched)["SARATHI_SCHEDULER_REDIS_URL"]
        if external["existingSecret"]:
            assert url == {
                "secretKeyRef": {
                    "name": external["existingSecret"],
                    "key": external["existingSecretKey"],
                }
            }
        elif external["url"]:
            assert url == external["url"]
        else:
            match = re.fullmatch(r"redis://([^:/]+):(\d+)/0", url)
            assert match, url
            scenario.service_for(f"{match[1]}:{match[2]}", "redis")
    if external["url"] or external["existingSecret"]:
        assert not redis_objects, "an external Redis needs no Redis objects"
        return
    (redis,) = scenario.workloads("redis")
    assert redis["kind"] == "StatefulSet"
    conf = scenario.get("ConfigMap", redis["metadata"]["name"])["data"]["redis.conf"]
    assert "appendonly yes" in conf.splitlines()
    assert "appendfsync always" in conf.splitlines()
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    data_mount = next(m for m in container_of(redis)["volumeMounts"] if m["name"] == "data")
    assert claim["metadata"]["name"] == "data" and data_mount["mountPath"] == "/data"
    assert scenario.has("Service", redis["spec"]["serviceName"])


def test_references_point_at_objects_that_exist(scenario: Rendered) -> None:
    values = scenario.values
    external_secrets = {
        values["gateway"]["auth"]["existingSecret"],
        values["gateway"]["tls"]["secretName"],
        values["redis"]["external"]["existingSecret"],
    } - {""}
    external_claims = {values["model"]["volume"]["existingClaim"]} - {""}
    for workload in scenario.workloads():
        spec = pod_spec(workload)
        assert scenario.has("ServiceAccount", spec["serviceAccountName"])
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert scenario.has("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert scenario.has("Secret", name) or name in external_secrets
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                assert scenario.has("PersistentVolumeClaim", name) or name in external_claims
        mounts = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounts <= {v["name"] for v in spec["volumes"]} | claims
        # Deployments select their own pods.
        assert matches(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))

    for service in scenario.of("Service"):
        assert scenario.pods_matching(service["spec"]["selector"]), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            pods = scenario.pods_matching(service["spec"]["selector"])
            names = {p["name"] for w in pods for p in container_of(w)["ports"]}
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    for pdb in scenario.of("PodDisruptionBudget"):
        assert scenario.pods_matching(pdb["spec"]["selector"]["matchLabels"])
    for hpa in scenario.of("HorizontalPodAutoscaler"):
        target = scenario.get("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
    for monitor in scenario.of("ServiceMonitor"):
        selected = [
            s
            for s in scenario.of("Service")
            if matches(monitor["spec"]["selector"]["matchLabels"], labels_of(s))
        ]
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_model_volume(scenario: Rendered) -> None:
    volume = scenario.values["model"]["volume"]
    for worker in scenario.workloads("worker"):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(worker)["volumes"]
            if "persistentVolumeClaim" in v
        ]
        if not volume["enabled"]:
            assert not claims
            continue
        expected = volume["existingClaim"] or f"{RELEASE}-sarathi-serve-models"
        assert claims == [expected]
        assert scenario.has("PersistentVolumeClaim", expected) != bool(volume["existingClaim"])
        mount = next(m for m in container_of(worker)["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == volume["mountPath"]
        assert mount.get("readOnly", False) == volume["readOnly"]
        # The converted default model persists on the volume unless it is read-only.
        cache = scenario.env(worker)["SARATHI_CACHE_DIR"]
        assert cache.startswith(volume["mountPath"] + "/") == (not volume["readOnly"])
    (gateway,) = scenario.workloads("gateway")
    model_is_path = scenario.values["model"]["name"].startswith("/")
    gateway_mounts = {m["name"]: m for m in container_of(gateway)["volumeMounts"]}
    assert ("models" in gateway_mounts) == (volume["enabled"] and model_is_path)
    if "models" in gateway_mounts:
        assert gateway_mounts["models"]["readOnly"] is True


def test_metrics_are_scraped_from_declared_ports(scenario: Rendered) -> None:
    enabled = scenario.values["metrics"]["enabled"]
    for workload in scenario.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if component(workload) == "redis":
            continue
        if not enabled:
            assert "prometheus.io/scrape" not in annotations
            continue
        assert annotations["prometheus.io/scrape"] == "true"
        ports = [p["containerPort"] for p in container_of(workload)["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports
        if component(workload) != "gateway":
            env = scenario.env(workload)
            role = component(workload).upper()
            assert env[f"SARATHI_{role}_METRICS_PORT"] == annotations["prometheus.io/port"]


def test_gateway_service_hpa_pdb(scenario: Rendered) -> None:
    gw = scenario.values["gateway"]
    (deployment,) = scenario.workloads("gateway")
    service = scenario.get("Service", deployment["metadata"]["name"])
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": gw["ports"]["grpc"],
        "http": gw["ports"]["http"],
    }
    hpas = scenario.of("HorizontalPodAutoscaler")
    if gw["autoscaling"]["enabled"]:
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    else:
        assert not hpas
        assert deployment["spec"]["replicas"] == gw["replicas"]
    pdbs = {p["metadata"]["name"] for p in scenario.of("PodDisruptionBudget")}
    assert deployment["metadata"]["name"] in pdbs
    for worker in scenario.workloads("worker"):
        assert worker["metadata"]["name"] in pdbs


def test_api_keys(scenario: Rendered) -> None:
    auth = scenario.values["gateway"]["auth"]
    (gateway,) = scenario.workloads("gateway")
    env = scenario.env(gateway)
    if not (auth["apiKeys"] or auth["existingSecret"]):
        assert "SARATHI_GATEWAY_API_KEYS_FILE" not in env
        assert "no API keys" in scenario.notes
        return
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == "api-keys")
    secret_name = volume["secret"]["secretName"]
    (item,) = volume["secret"]["items"]
    mount = next(m for m in container_of(gateway)["volumeMounts"] if m["name"] == "api-keys")
    assert env["SARATHI_GATEWAY_API_KEYS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    if auth["existingSecret"]:
        assert secret_name == auth["existingSecret"]
        assert not scenario.of("Secret")
    else:
        secret = scenario.get("Secret", secret_name)
        keys = base64.b64decode(secret["data"][item["key"]]).decode().split()
        assert keys == auth["apiKeys"]


# --- network policies --------------------------------------------------------------------

OUTSIDE = {"namespace": "elsewhere", "labels": {"app": "client"}}
MONITORING = {"namespace": "monitoring", "labels": {"app": "prometheus"}}


def _peer_allows(peer: dict, source: dict) -> bool:
    if "ipBlock" in peer:
        return source["namespace"] is None  # only outside-cluster addresses
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    if ns_sel is None and source["namespace"] != NAMESPACE:
        return False
    if ns_sel is not None:
        ns_labels = {"kubernetes.io/metadata.name": source["namespace"]}
        if not matches(ns_sel.get("matchLabels", {}), ns_labels):
            return False
    return pod_sel is None or matches(pod_sel.get("matchLabels", {}), source["labels"])


def _rules_allow(rules: list[dict], peer_key: str, other: dict, port: int) -> bool:
    for rule in rules:
        ports = rule.get("ports")
        if ports and port not in [p["port"] for p in ports]:
            continue
        peers = rule.get(peer_key)
        if not peers or any(_peer_allows(p, other) for p in peers):
            return True
    return False


def _policies_for(rendered: Rendered, pod: dict) -> list[dict]:
    return [
        p
        for p in rendered.of("NetworkPolicy")
        if pod["namespace"] == NAMESPACE
        and matches(p["spec"]["podSelector"].get("matchLabels", {}), pod["labels"])
    ]


def sides(rendered: Rendered, source: dict, dest: dict, port: int) -> tuple[bool, bool]:
    """Whether `source`'s egress policies, and `dest`'s ingress policies, allow a TCP
    connection from `source` to `dest:port` (a pod no policy selects allows all)."""
    out = [p for p in _policies_for(rendered, source) if "Egress" in p["spec"]["policyTypes"]]
    into = [p for p in _policies_for(rendered, dest) if "Ingress" in p["spec"]["policyTypes"]]
    egress = not out or any(
        _rules_allow(p["spec"].get("egress", []), "to", dest, port) for p in out
    )
    ingress = not into or any(
        _rules_allow(p["spec"].get("ingress", []), "from", source, port) for p in into
    )
    return egress, ingress


def reachable(rendered: Rendered, source: dict, dest: dict, port: int) -> bool:
    return all(sides(rendered, source, dest, port))


def _pod(workload: dict) -> dict:
    return {"namespace": NAMESPACE, "labels": pod_labels(workload)}


def test_network_policies(scenario: Rendered) -> None:
    values = scenario.values
    if not values["networkPolicy"]["enabled"]:
        assert not scenario.of("NetworkPolicy")
        return
    for workload in scenario.workloads():
        kinds = {
            t for p in _policies_for(scenario, _pod(workload)) for t in p["spec"]["policyTypes"]
        }
        assert kinds == {"Ingress", "Egress"}, f"{workload['metadata']['name']} is not isolated"

    ports = {
        "gateway": [values["gateway"]["ports"]["grpc"], values["gateway"]["ports"]["http"]],
        "scheduler": [values["scheduler"]["port"]],
        "worker": [values["worker"]["port"]],
        "redis": [6379],
    }
    metrics_port = values["metrics"]["port"]
    (gateway,) = scenario.workloads("gateway")
    gateway_from = values["networkPolicy"]["gatewayFrom"]
    outsider = OUTSIDE
    if gateway_from:  # the allowed callers, e.g. an ingress controller's namespace
        ns = gateway_from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        outsider = {"namespace": ns, "labels": {}}
    for port in ports["gateway"]:
        assert reachable(scenario, outsider, _pod(gateway), port)
    if gateway_from:
        assert not reachable(scenario, OUTSIDE, _pod(gateway), ports["gateway"][0])
    if values["metrics"]["enabled"]:  # /metrics is on the HTTP port
        assert reachable(scenario, MONITORING, _pod(gateway), values["gateway"]["ports"]["http"])

    # Nothing but the gateway is reachable from outside the release (metrics aside).
    stranger_here = {"namespace": NAMESPACE, "labels": {"app": "other"}}
    for workload in scenario.workloads():
        if component(workload) == "gateway":
            continue
        for caller in (OUTSIDE, stranger_here, MONITORING):
            for port in ports[component(workload)]:
                assert not reachable(scenario, caller, _pod(workload), port), (caller, port)
        if component(workload) != "redis" and values["metrics"]["enabled"]:
            assert reachable(scenario, MONITORING, _pod(workload), metrics_port)
            assert not reachable(scenario, OUTSIDE, _pod(workload), metrics_port)

    # Inside the release, each side holds by itself: the source's egress policy and the
    # destination's ingress policy both allow exactly these connections.
    def talks_to(src: dict, dst: dict) -> bool:
        variant = "sarathi-serve.io/variant"
        pair = (component(src), component(dst))
        return pair in {("gateway", "scheduler"), ("scheduler", "redis")} or (
            pair == ("worker", "scheduler") and labels_of(src)[variant] == labels_of(dst)[variant]
        )

    for src in scenario.workloads():
        for dst in scenario.workloads():
            if component(dst) == "gateway":
                continue
            expected = talks_to(src, dst)
            for port in ports[component(dst)]:
                egress, ingress = sides(scenario, _pod(src), _pod(dst), port)
                where = f"{src['metadata']['name']} -> {dst['metadata']['name']}:{port}"
                assert egress == expected, f"egress {where}"
                assert ingress == expected, f"ingress {where}"
    for redis in scenario.workloads("redis"):
        assert not reachable(scenario, _pod(redis), OUTSIDE, 443)

    external = values["redis"]["external"]
    if external["url"] or external["existingSecret"]:
        for sched in scenario.workloads("scheduler"):
            assert reachable(scenario, _pod(sched), OUTSIDE, external["port"])

    # DNS works for every sarathi-serve pod; nothing else leaves the release.
    kube_dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    for workload in scenario.workloads():
        if component(workload) != "redis":
            assert reachable(scenario, _pod(workload), kube_dns, 53)
        assert not reachable(scenario, _pod(workload), OUTSIDE, 443)


# --- upgrades ----------------------------------------------------------------------------


def _reweighted(values: dict[str, Any], weights: list[int]) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    for variant, weight in zip(changed["variants"], weights, strict=True):
        variant["weight"] = weight
    return changed


def test_changing_weights_rolls_the_gateway_only(chart: helm.Chart) -> None:
    values = scenario_values("ab")
    before = render(chart, values)
    after = render(chart, _reweighted(values, [90, 10]))

    (gw_before,) = before.workloads("gateway")
    (gw_after,) = after.workloads("gateway")
    assert gw_before["spec"]["template"] != gw_after["spec"]["template"]
    routes = json.loads(after.mounted_file(gw_after, "/etc/sarathi-serve/routing/variants.json"))
    assert [r["weight"] for r in routes] == [90, 10]

    for role in ("worker", "scheduler"):
        for old in before.workloads(role):
            new = after.get(old["kind"], old["metadata"]["name"])
            assert old == new, f"{old['metadata']['name']} would restart"
    for cm in before.of("ConfigMap"):
        if component(cm) != "gateway":
            assert cm == after.get("ConfigMap", cm["metadata"]["name"])


def test_changing_a_token_budget_rolls_that_variants_scheduler(chart: helm.Chart) -> None:
    values = scenario_values("ab")
    changed = copy.deepcopy(values)
    changed["variants"][0]["tokenBudget"] = 1024
    before, after = render(chart, values), render(chart, changed)
    first, second = (v["name"] for v in values["variants"])
    template = lambda r, v: r.variant_workload("scheduler", v)["spec"]["template"]
    assert template(before, first) != template(after, first)
    assert template(before, second) == template(after, second)


# --- values.schema.json and template checks ------------------------------------------------

BAD_VALUES = {
    "negative scheduler replicas": {"scheduler": {"replicas": -1}},
    "zero scheduler replicas": {"scheduler": {"replicas": 0}},
    "negative worker replicas": {"worker": {"replicas": -2}},
    "unknown policy": {"scheduler": {"policy": "fifo"}},
    "unknown variant policy": {"variants": [{"name": "a", "weight": 100, "policy": "lifo"}]},
    "weight above 100": {"variants": [{"name": "a", "weight": 101}]},
    "negative weight": {"variants": [{"name": "a", "weight": -1}, {"name": "b", "weight": 101}]},
    "fractional weight": {"variants": [{"name": "a", "weight": 99.5}]},
    "variant without weight": {"variants": [{"name": "a"}]},
    "variant name not a DNS label": {"variants": [{"name": "Variant_A", "weight": 100}]},
    "variant name too long": {"variants": [{"name": "a" * 21, "weight": 100}]},
    "unknown variant key": {"variants": [{"name": "a", "weight": 100, "weigth": 3}]},
    "port above 65535": {"gateway": {"ports": {"grpc": 70000}}},
    "port zero": {"scheduler": {"port": 0}},
    "port as text": {"worker": {"port": "http"}},
    "metrics port out of range": {"metrics": {"port": 65536}},
    "misspelt top-level key": {"gatewy": {"replicas": 1}},
    "misspelt nested key": {"worker": {"gpu": {"enable": True}}},
    "bad dtype": {"worker": {"dtype": "int4"}},
    "gpu memory utilization above 1": {"worker": {"gpuMemoryUtilization": 1.5}},
    "zero token budget": {"scheduler": {"tokenBudget": 0}},
    "bad service type": {"gateway": {"service": {"type": "Ingress"}}},
    "redis url without scheme": {"redis": {"external": {"url": "redis-host:6379"}}},
    "api key with a comma": {"gateway": {"auth": {"apiKeys": ["a,b"]}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="schema"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


BAD_COMBINATIONS = {
    "weights not adding up to 100": (
        {"variants": [{"name": "a", "weight": 60}, {"name": "b", "weight": 30}]},
        "add up to 90",
    ),
    "duplicate variant names": (
        {"variants": [{"name": "a", "weight": 50}, {"name": "a", "weight": 50}]},
        "listed twice",
    ),
    "names too long for Kubernetes": (
        {"fullnameOverride": "x" * 40, "variants": [{"name": "y" * 20, "weight": 100}]},
        "longer than 63",
    ),
}


@pytest.mark.parametrize(
    ("values", "message"), BAD_COMBINATIONS.values(), ids=BAD_COMBINATIONS.keys()
)
def test_templates_reject_bad_combinations(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_values_files_cover_gpu_ab_external_redis_and_service_monitor(chart: helm.Chart) -> None:
    merged = [chart.merge_values(scenario_values(name)) for name in SCENARIOS]
    assert any(v["worker"]["gpu"]["enabled"] for v in merged)
    assert any(len(v["variants"]) >= 2 for v in merged)
    assert any(v["redis"]["external"]["existingSecret"] for v in merged)
    assert any(v["metrics"]["serviceMonitor"]["enabled"] for v in merged)
    assert any(v["gateway"]["auth"]["apiKeys"] for v in merged)
    assert any(v["gateway"]["tls"]["secretName"] for v in merged)


def test_values_files_pass_the_schema(chart: helm.Chart) -> None:
    for name in SCENARIOS:
        values = scenario_values(name)
        errors = []
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as exc:
            errors.append(str(exc))
        assert errors == [], f"{name}: {errors}"
        # and the schema is really applied to this file: one bad key breaks it
        with pytest.raises(helm.HelmValuesError, match="/scheduler/replicas"):
            chart.validate_schema({**values, "scheduler": {"replicas": -1}})


def test_readme_documents_every_value(defaults: dict[str, Any]) -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))
    missing = [key for key in leaves(defaults) if key not in documented]
    assert not missing, f"README.md does not document: {missing}"
    stale = [key for key in documented if key not in set(leaves(defaults))]
    assert not stale, f"README.md documents values that do not exist: {stale}"
