"""Upgrades restart only what changed: new A/B weights roll the gateway alone, a new
token budget rolls that variant's scheduler alone."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm

from tests.k8s.render import component, render, scenario_values


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
