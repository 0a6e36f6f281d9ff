"""Every values scenario (the chart's defaults and each file in k8s/values/) lints clean
under `helm lint --strict` and validates object by object against the Kubernetes
OpenAPI schemas of kubernetes-validate (strict: unknown fields fail)."""

from __future__ import annotations

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.render import CHART, KUBE_VERSIONS, NAMESPACE, SCENARIOS, Rendered, scenario_values


def closed(required: list[str], **properties: dict) -> dict:
    """An object schema with exactly these properties, `required` among them."""
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": properties,
    }


def crd_schema(api_version: str, spec: dict) -> dict:
    """A custom resource of `api_version` whose spec is `spec`: kubernetes-validate has
    no schema for CRDs, so the chart's are checked against the fields they use."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api_version}, "spec": spec},
    }


STRING, OBJECT = {"type": "string"}, {"type": "object"}
# ServiceMonitor: the Prometheus Operator's.
SERVICE_MONITOR_SCHEMA = crd_schema(
    "monitoring.coreos.com/v1",
    closed(
        ["selector", "endpoints"],
        selector=OBJECT,
        namespaceSelector=OBJECT,
        endpoints={
            "type": "array",
            "minItems": 1,
            "items": closed(
                ["port"],
                port=STRING,
                path=STRING,
                interval=STRING,
                scheme={"enum": ["http", "https"]},
            ),
        },
    ),
)
# ScaledObject: KEDA's.
SCALED_OBJECT_SCHEMA = crd_schema(
    "keda.sh/v1alpha1",
    closed(
        ["scaleTargetRef", "triggers"],
        scaleTargetRef=closed(["name"], apiVersion=STRING, kind=STRING, name=STRING),
        minReplicaCount={"type": "integer", "minimum": 0},
        maxReplicaCount={"type": "integer", "minimum": 1},
        pollingInterval={"type": "integer", "minimum": 1},
        cooldownPeriod={"type": "integer", "minimum": 0},
        triggers={
            "type": "array",
            "minItems": 1,
            "items": closed(
                ["type", "metadata"],
                type={"const": "prometheus"},
                name=STRING,
                metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                metadata={
                    "type": "object",
                    "required": ["serverAddress", "query", "threshold"],
                    "additionalProperties": STRING,
                },
            ),
        },
    ),
)
# LeaderWorkerSet: the LWS controller's (sigs.k8s.io/lws); its pod template is checked
# as a core PodTemplate below.
INTEGER = {"type": "integer", "minimum": 0}
LEADER_WORKER_SET_SCHEMA = crd_schema(
    "leaderworkerset.x-k8s.io/v1",
    closed(
        ["leaderWorkerTemplate"],
        replicas=INTEGER,
        startupPolicy={"enum": ["LeaderCreated", "LeaderReady"]},
        rolloutStrategy=closed(
            ["type"],
            type={"const": "RollingUpdate"},
            rollingUpdateConfiguration=closed([], maxSurge=INTEGER, maxUnavailable=INTEGER),
        ),
        leaderWorkerTemplate=closed(
            ["size", "workerTemplate"],
            size={"type": "integer", "minimum": 1},
            restartPolicy={"enum": ["RecreateGroupOnPodRestart", "None"]},
            leaderTemplate=OBJECT,
            workerTemplate=OBJECT,
        ),
    ),
)
CRD_SCHEMAS = {
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "ScaledObject": SCALED_OBJECT_SCHEMA,
    "LeaderWorkerSet": LEADER_WORKER_SET_SCHEMA,
}


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
        if obj["kind"] in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
            if obj["kind"] == "LeaderWorkerSet":  # its pods, as Kubernetes checks them
                template = obj["spec"]["leaderWorkerTemplate"]["workerTemplate"]
                pods = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "pods"}}
                for version in KUBE_VERSIONS:
                    kubernetes_validate.validate(
                        pods | {"template": template}, version, strict=True
                    )
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
