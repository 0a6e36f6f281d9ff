"""Every values scenario (the chart's defaults and each file in k8s/values/) lints clean
under `helm lint --strict` and validates object by object against the Kubernetes
OpenAPI schemas of kubernetes-validate (strict: unknown fields fail)."""

from __future__ import annotations

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.render import CHART, KUBE_VERSIONS, NAMESPACE, SCENARIOS, Rendered, scenario_values

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

# ScaledObject is KEDA's CRD: checked against the fields of keda.sh/v1alpha1 it uses.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "prometheus"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {
                                "type": "object",
                                "required": ["serverAddress", "query", "threshold"],
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "ScaledObject": SCALED_OBJECT_SCHEMA}


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
