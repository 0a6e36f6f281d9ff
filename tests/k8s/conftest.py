"""The chart, loaded once, and a render of every values scenario, shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.k8s.render import CHART, SCENARIOS, Rendered, render, scenario_values


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def defaults(chart: helm.Chart) -> dict[str, Any]:
    return chart.values


@pytest.fixture(scope="session", params=SCENARIOS)
def scenario(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    return render(chart, scenario_values(request.param))
