"""values.schema.json and the templates refuse bad values with a message; the values
files pass the schema and cover the features; the chart's README documents every value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.k8s.render import CHART, NAMESPACE, RELEASE, SCENARIOS, scenario_values

# Passed through to Kubernetes as they are: documented as a whole.
FREE_FORM = {"resources", "podSecurityContext", "containerSecurityContext"}


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            yield from leaves(value, path + ".")
        else:
            yield path


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
