"""An evaluator of the chart's NetworkPolicies, enough for the rules it writes: whether
a TCP connection from one pod (or an address outside the cluster) to another is allowed.

A connection end is `{"namespace": ..., "labels": {...}}`, with namespace None for an
address outside the cluster. As in Kubernetes, a pod that no policy of a direction
selects allows everything in that direction; a connection needs both the source's
egress and the destination's ingress.
"""

from __future__ import annotations

from tests.k8s.render import NAMESPACE, Rendered, matches, pod_labels

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


def policies_for(rendered: Rendered, pod: dict) -> list[dict]:
    return [
        p
        for p in rendered.of("NetworkPolicy")
        if pod["namespace"] == NAMESPACE
        and matches(p["spec"]["podSelector"].get("matchLabels", {}), pod["labels"])
    ]


def sides(rendered: Rendered, source: dict, dest: dict, port: int) -> tuple[bool, bool]:
    """Whether `source`'s egress policies, and `dest`'s ingress policies, allow a TCP
    connection from `source` to `dest:port` (a pod no policy selects allows all)."""
    out = [p for p in policies_for(rendered, source) if "Egress" in p["spec"]["policyTypes"]]
    into = [p for p in policies_for(rendered, dest) if "Ingress" in p["spec"]["policyTypes"]]
    egress = not out or any(
        _rules_allow(p["spec"].get("egress", []), "to", dest, port) for p in out
    )
    ingress = not into or any(
        _rules_allow(p["spec"].get("ingress", []), "from", source, port) for p in into
    )
    return egress, ingress


def reachable(rendered: Rendered, source: dict, dest: dict, port: int) -> bool:
    return all(sides(rendered, source, dest, port))


def pod_of(workload: dict) -> dict:
    """A workload's pods as a connection end: their namespace and labels."""
    return {"namespace": NAMESPACE, "labels": pod_labels(workload)}
