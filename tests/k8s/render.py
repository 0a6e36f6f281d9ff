"""Renders the Helm chart in k8s/sarathi-serve as `helm template` does, with the real
Helm engine (helm-python-sdk: Helm's Go SDK behind ctypes), and looks up what a render
holds: objects by kind, name and labels, containers, environments, mounted files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "sarathi-serve"
VALUES_DIR = ROOT / "k8s" / "values"
RELEASE, NAMESPACE = "llm", "serving"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SCENARIOS = ["default", *sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "LeaderWorkerSet"}


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


# --- helpers over objects --------------------------------------------------------------


def labels_of(obj: dict) -> dict[str, str]:
    return obj["metadata"].get("labels", {})


def pod_template(workload: dict) -> dict:
    """The pods' template (a LeaderWorkerSet's: every pod of a group, leader included)."""
    spec = workload["spec"]
    return (
        spec["leaderWorkerTemplate"]["workerTemplate"]
        if "leaderWorkerTemplate" in spec
        else spec["template"]
    )


def pod_spec(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def pod_labels(workload: dict) -> dict[str, str]:
    return pod_template(workload)["metadata"]["labels"]


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
            "shards": v.get("shards", sched.get("shards", 1)),
        }
        for v in listed
    ]


def scheduler_sets_of(values: dict[str, Any]) -> list[dict[str, Any]]:
    """One per variant and shard: the variant's fields, its `variant` name and the set's
    `name` (the variant's alone with one shard, `<variant>-s<k>` with several)."""
    return [
        {**v, "variant": v["name"], "name": v["name"] if v["shards"] == 1 else f"{v['name']}-s{k}"}
        for v in variants_of(values)
        for k in range(v["shards"])
    ]


def service_addr(name: str, port: int) -> str:
    return f"{name}.{NAMESPACE}.svc.cluster.local:{port}"
