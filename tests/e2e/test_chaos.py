"""The chaos soak (`python -m sarathi_serve.bench.chaos`), shortened: streaming load
while every role is killed or stopped; no stream may lose, repeat or change a token."""

import pytest

from sarathi_serve.bench import chaos


@pytest.mark.slow
def test_a_chaos_soak_loses_repeats_and_changes_nothing(tmp_path):
    result = chaos.main(
        [
            "--minutes",
            "4",
            "--fault-every-s",
            "20",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    outcomes = result["outcomes"]
    assert outcomes["lost"] == outcomes["repeated"] == outcomes["changed"] == 0, result
    assert outcomes["exact"] > 50, result
    assert {f["role"] for f in result["faults"]} >= {"worker", "leader", "redis"}, result
