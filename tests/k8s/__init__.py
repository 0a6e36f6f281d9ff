"""The Helm chart in k8s/sarathi-serve, checked without a cluster.

Each values scenario (the chart's defaults and every file in k8s/values/) is rendered
with the real Helm engine (`render.py`, fixtures in `conftest.py`) and checked by
concern: lint and Kubernetes schemas (`test_lint.py`), pods (`test_pods.py`), the
addresses and references between objects (`test_wiring.py`), network reachability
(`test_network_policy.py`, over the evaluator in `netpol.py`), what an upgrade restarts
(`test_upgrades.py`), and values.schema.json and the README (`test_values.py`).
"""
