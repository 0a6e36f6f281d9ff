"""Network policies isolate every pod of the release: the gateway is the way in (from
the allowed callers), metrics are scraped from the monitoring namespace, inside the
release only gateway -> scheduler -> Redis and each variant's workers -> its scheduler
talk, and nothing leaves but DNS (and the scheduler's external Redis, when there is one).
"""

from __future__ import annotations

from tests.k8s.netpol import MONITORING, OUTSIDE, pod_of, policies_for, reachable, sides
from tests.k8s.render import NAMESPACE, Rendered, component, labels_of


def test_network_policies(scenario: Rendered) -> None:
    values = scenario.values
    if not values["networkPolicy"]["enabled"]:
        assert not scenario.of("NetworkPolicy")
        return
    for workload in scenario.workloads():
        kinds = {
            t for p in policies_for(scenario, pod_of(workload)) for t in p["spec"]["policyTypes"]
        }
        assert kinds == {"Ingress", "Egress"}, f"{workload['metadata']['name']} is not isolated"

    ports = {
        "gateway": [values["gateway"]["ports"]["grpc"], values["gateway"]["ports"]["http"]],
        "scheduler": [values["scheduler"]["port"]],
        "worker": [values["worker"]["port"]],
        "redis": [6379],
    }
    _gateway_admits_its_callers(scenario, ports["gateway"])
    _outsiders_reach_nothing_else(scenario, ports)
    _release_pods_talk_only_as_wired(scenario, ports)
    _nothing_leaves_but_dns_and_external_redis(scenario)


def _gateway_admits_its_callers(scenario: Rendered, gateway_ports: list[int]) -> None:
    values = scenario.values
    (gateway,) = scenario.workloads("gateway")
    gateway_from = values["networkPolicy"]["gatewayFrom"]
    outsider = OUTSIDE
    if gateway_from:  # the allowed callers, e.g. an ingress controller's namespace
        ns = gateway_from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        outsider = {"namespace": ns, "labels": {}}
    for port in gateway_ports:
        assert reachable(scenario, outsider, pod_of(gateway), port)
    if gateway_from:
        assert not reachable(scenario, OUTSIDE, pod_of(gateway), gateway_ports[0])
    if values["metrics"]["enabled"]:  # /metrics is on the HTTP port
        assert reachable(scenario, MONITORING, pod_of(gateway), values["gateway"]["ports"]["http"])


def _outsiders_reach_nothing_else(scenario: Rendered, ports: dict[str, list[int]]) -> None:
    """Nothing but the gateway is reachable from outside the release (metrics aside)."""
    values = scenario.values
    metrics_port = values["metrics"]["port"]
    stranger_here = {"namespace": NAMESPACE, "labels": {"app": "other"}}
    for workload in scenario.workloads():
        if component(workload) == "gateway":
            continue
        for caller in (OUTSIDE, stranger_here, MONITORING):
            for port in ports[component(workload)]:
                assert not reachable(scenario, caller, pod_of(workload), port), (caller, port)
        if component(workload) != "redis" and values["metrics"]["enabled"]:
            assert reachable(scenario, MONITORING, pod_of(workload), metrics_port)
            assert not reachable(scenario, OUTSIDE, pod_of(workload), metrics_port)


def _release_pods_talk_only_as_wired(scenario: Rendered, ports: dict[str, list[int]]) -> None:
    """Inside the release, each side holds by itself: the source's egress policy and the
    destination's ingress policy both allow exactly these connections."""

    def talks_to(src: dict, dst: dict) -> bool:
        variant = "sarathi-serve.io/variant"
        pair = (component(src), component(dst))
        same_set = labels_of(src).get(variant) == labels_of(dst).get(variant)
        stages = scenario.values["worker"]["pipelineParallelSize"] > 1  # a group's pods
        return pair in {("gateway", "scheduler"), ("scheduler", "redis")} or (
            same_set and (pair == ("worker", "scheduler") or (pair == ("worker",) * 2 and stages))
        )

    for src in scenario.workloads():
        for dst in scenario.workloads():
            if component(dst) == "gateway":
                continue
            expected = talks_to(src, dst)
            for port in ports[component(dst)]:
                egress, ingress = sides(scenario, pod_of(src), pod_of(dst), port)
                where = f"{src['metadata']['name']} -> {dst['metadata']['name']}:{port}"
                assert egress == expected, f"egress {where}"
                assert ingress == expected, f"ingress {where}"


def _nothing_leaves_but_dns_and_external_redis(scenario: Rendered) -> None:
    for redis in scenario.workloads("redis"):
        assert not reachable(scenario, pod_of(redis), OUTSIDE, 443)

    external = scenario.values["redis"]["external"]
    if external["url"] or external["existingSecret"]:
        for sched in scenario.workloads("scheduler"):
            assert reachable(scenario, pod_of(sched), OUTSIDE, external["port"])

    # DNS works for every sarathi-serve pod; nothing else leaves the release.
    kube_dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    for workload in scenario.workloads():
        if component(workload) != "redis":
            assert reachable(scenario, pod_of(workload), kube_dns, 53)
        assert not reachable(scenario, pod_of(workload), OUTSIDE, 443)
