"""Wiring: one scheduler and worker set per A/B variant, the gateway's routing table,
the addresses each service dials, references between objects, volumes, metrics,
the gateway's Service, autoscaler and disruption budget, and API keys."""

from __future__ import annotations

import base64
import json
import re

from tests.k8s.render import (
    RELEASE,
    Rendered,
    component,
    container_of,
    labels_of,
    matches,
    pod_labels,
    pod_spec,
    service_addr,
    variants_of,
)


def test_one_scheduler_and_worker_set_per_variant(scenario: Rendered) -> None:
    values = scenario.values
    variants = variants_of(values)
    assert len(scenario.workloads("scheduler")) == len(variants)
    assert len(scenario.workloads("worker")) == len(variants)
    prefixes = set()
    for v in variants:
        sched = scenario.variant_workload("scheduler", v["name"])
        assert sched["kind"] == "Deployment"
        assert sched["spec"]["replicas"] == values["scheduler"]["replicas"] == 2
        env = scenario.env(sched)
        assert env["SARATHI_SCHEDULER_POLICY"] == v["policy"]
        assert env["SARATHI_SCHEDULER_TOKEN_BUDGET"] == str(v["tokenBudget"])
        assert env["SARATHI_SCHEDULER_PORT"] == str(values["scheduler"]["port"])
        prefixes.add(env["SARATHI_SCHEDULER_REDIS_PREFIX"])
        # A rolling update that waits for Ready pods would hang on never-Ready standbys.
        assert sched["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"

        worker = scenario.variant_workload("worker", v["name"])
        assert worker["spec"]["replicas"] == v["workerReplicas"]
        worker_env = scenario.env(worker)
        addr = worker_env["SARATHI_WORKER_SCHEDULER_ADDR"]
        service = scenario.service_for(addr, "scheduler")
        assert matches(service["spec"]["selector"], pod_labels(sched))
        assert worker_env["SARATHI_WORKER_MODEL"] == values["model"]["name"]
    assert len(prefixes) == len(variants), "variants must not share Redis keys"


def test_gateway_routing_table_lists_every_variant(scenario: Rendered) -> None:
    (gateway,) = scenario.workloads("gateway")
    env = scenario.env(gateway)
    routes = json.loads(scenario.mounted_file(gateway, env["SARATHI_GATEWAY_VARIANTS_FILE"]))
    variants = variants_of(scenario.values)
    assert [(r["name"], r["weight"]) for r in routes] == [
        (v["name"], v["weight"]) for v in variants
    ]
    for route in routes:
        sched = scenario.variant_workload("scheduler", route["name"])
        service = scenario.service_for(route["scheduler_addr"], "scheduler")
        assert matches(service["spec"]["selector"], pod_labels(sched))
        assert route["scheduler_addr"] == service_addr(
            service["metadata"]["name"], scenario.values["scheduler"]["port"]
        )
    assert env["SARATHI_GATEWAY_PORT"] == str(scenario.values["gateway"]["ports"]["grpc"])
    assert env["SARATHI_GATEWAY_HTTP_PORT"] == str(scenario.values["gateway"]["ports"]["http"])
    assert env["SARATHI_GATEWAY_MODEL"] == scenario.values["model"]["name"]
    if "SARATHI_GATEWAY_SCHEDULER_ADDR" in env:
        scenario.service_for(env["SARATHI_GATEWAY_SCHEDULER_ADDR"], "scheduler")


def test_schedulers_reach_redis(scenario: Rendered) -> None:
    external = scenario.values["redis"]["external"]
    redis_objects = [o for o in scenario.objects if component(o) == "redis"]
    for sched in scenario.workloads("scheduler"):
        url = scenario.env(sched)["SARATHI_SCHEDULER_REDIS_URL"]
        if external["existingSecret"]:
            assert url == {
                "secretKeyRef": {
                    "name": external["existingSecret"],
                    "key": external["existingSecretKey"],
                }
            }
        elif external["url"]:
            assert url == external["url"]
        else:
            match = re.fullmatch(r"redis://([^:/]+):(\d+)/0", url)
            assert match, url
            scenario.service_for(f"{match[1]}:{match[2]}", "redis")
    if external["url"] or external["existingSecret"]:
        assert not redis_objects, "an external Redis needs no Redis objects"
        return
    (redis,) = scenario.workloads("redis")
    assert redis["kind"] == "StatefulSet"
    conf = scenario.get("ConfigMap", redis["metadata"]["name"])["data"]["redis.conf"]
    assert "appendonly yes" in conf.splitlines()
    assert "appendfsync always" in conf.splitlines()
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    data_mount = next(m for m in container_of(redis)["volumeMounts"] if m["name"] == "data")
    assert claim["metadata"]["name"] == "data" and data_mount["mountPath"] == "/data"
    assert scenario.has("Service", redis["spec"]["serviceName"])


def test_references_point_at_objects_that_exist(scenario: Rendered) -> None:
    values = scenario.values
    external_secrets = {
        values["gateway"]["auth"]["existingSecret"],
        values["gateway"]["tls"]["secretName"],
        values["redis"]["external"]["existingSecret"],
    } - {""}
    external_claims = {values["model"]["volume"]["existingClaim"]} - {""}
    for workload in scenario.workloads():
        spec = pod_spec(workload)
        assert scenario.has("ServiceAccount", spec["serviceAccountName"])
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert scenario.has("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert scenario.has("Secret", name) or name in external_secrets
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                assert scenario.has("PersistentVolumeClaim", name) or name in external_claims
        mounts = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounts <= {v["name"] for v in spec["volumes"]} | claims
        # Deployments select their own pods.
        assert matches(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))

    for service in scenario.of("Service"):
        assert scenario.pods_matching(service["spec"]["selector"]), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            pods = scenario.pods_matching(service["spec"]["selector"])
            names = {p["name"] for w in pods for p in container_of(w)["ports"]}
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    for pdb in scenario.of("PodDisruptionBudget"):
        assert scenario.pods_matching(pdb["spec"]["selector"]["matchLabels"])
    for hpa in scenario.of("HorizontalPodAutoscaler"):
        target = scenario.get("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
    for monitor in scenario.of("ServiceMonitor"):
        selected = [
            s
            for s in scenario.of("Service")
            if matches(monitor["spec"]["selector"]["matchLabels"], labels_of(s))
        ]
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_model_volume(scenario: Rendered) -> None:
    volume = scenario.values["model"]["volume"]
    for worker in scenario.workloads("worker"):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(worker)["volumes"]
            if "persistentVolumeClaim" in v
        ]
        if not volume["enabled"]:
            assert not claims
            continue
        expected = volume["existingClaim"] or f"{RELEASE}-sarathi-serve-models"
        assert claims == [expected]
        assert scenario.has("PersistentVolumeClaim", expected) != bool(volume["existingClaim"])
        mount = next(m for m in container_of(worker)["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == volume["mountPath"]
        assert mount.get("readOnly", False) == volume["readOnly"]
        # The converted default model persists on the volume unless it is read-only.
        cache = scenario.env(worker)["SARATHI_CACHE_DIR"]
        assert cache.startswith(volume["mountPath"] + "/") == (not volume["readOnly"])
    (gateway,) = scenario.workloads("gateway")
    model_is_path = scenario.values["model"]["name"].startswith("/")
    gateway_mounts = {m["name"]: m for m in container_of(gateway)["volumeMounts"]}
    assert ("models" in gateway_mounts) == (volume["enabled"] and model_is_path)
    if "models" in gateway_mounts:
        assert gateway_mounts["models"]["readOnly"] is True


def test_metrics_are_scraped_from_declared_ports(scenario: Rendered) -> None:
    enabled = scenario.values["metrics"]["enabled"]
    for workload in scenario.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if component(workload) == "redis":
            continue
        if not enabled:
            assert "prometheus.io/scrape" not in annotations
            continue
        assert annotations["prometheus.io/scrape"] == "true"
        ports = [p["containerPort"] for p in container_of(workload)["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports
        if component(workload) != "gateway":
            env = scenario.env(workload)
            role = component(workload).upper()
            assert env[f"SARATHI_{role}_METRICS_PORT"] == annotations["prometheus.io/port"]


def test_gateway_service_hpa_pdb(scenario: Rendered) -> None:
    gw = scenario.values["gateway"]
    (deployment,) = scenario.workloads("gateway")
    service = scenario.get("Service", deployment["metadata"]["name"])
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": gw["ports"]["grpc"],
        "http": gw["ports"]["http"],
    }
    hpas = scenario.of("HorizontalPodAutoscaler")
    if gw["autoscaling"]["enabled"]:
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    else:
        assert not hpas
        assert deployment["spec"]["replicas"] == gw["replicas"]
    pdbs = {p["metadata"]["name"] for p in scenario.of("PodDisruptionBudget")}
    assert deployment["metadata"]["name"] in pdbs
    for worker in scenario.workloads("worker"):
        assert worker["metadata"]["name"] in pdbs


def test_api_keys(scenario: Rendered) -> None:
    auth = scenario.values["gateway"]["auth"]
    (gateway,) = scenario.workloads("gateway")
    env = scenario.env(gateway)
    if not (auth["apiKeys"] or auth["existingSecret"]):
        assert "SARATHI_GATEWAY_API_KEYS_FILE" not in env
        assert "no API keys" in scenario.notes
        return
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == "api-keys")
    secret_name = volume["secret"]["secretName"]
    (item,) = volume["secret"]["items"]
    mount = next(m for m in container_of(gateway)["volumeMounts"] if m["name"] == "api-keys")
    assert env["SARATHI_GATEWAY_API_KEYS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    if auth["existingSecret"]:
        assert secret_name == auth["existingSecret"]
        assert not [s for s in scenario.of("Secret") if "api-keys" in s["data"]]
    else:
        secret = scenario.get("Secret", secret_name)
        keys = base64.b64decode(secret["data"][item["key"]]).decode().split()
        assert keys == auth["apiKeys"]


def test_internal_token(scenario: Rendered) -> None:
    """Every sarathi container presents the one internal token, from a Secret that exists
    (or the operator's), and a chart-made token is not empty."""
    auth = scenario.values["internalAuth"]
    refs = set()
    for role in ("gateway", "scheduler", "worker"):
        for workload in scenario.workloads(role):
            ref = scenario.env(workload)["SARATHI_INTERNAL_TOKEN"]["secretKeyRef"]
            refs.add((ref["name"], ref["key"]))
    ((name, key),) = refs
    if auth["existingSecret"]:
        assert (name, key) == (auth["existingSecret"], auth["existingSecretKey"])
        return
    token = base64.b64decode(scenario.get("Secret", name)["data"][key]).decode()
    assert len(token) >= 32 if not auth["token"] else token == auth["token"]


def test_the_gateway_drains_within_its_grace_period(scenario: Rendered) -> None:
    (gateway,) = scenario.workloads("gateway")
    grace = pod_spec(gateway)["terminationGracePeriodSeconds"]
    assert grace == scenario.values["gateway"]["terminationGracePeriodSeconds"]
    pre_stop = container_of(gateway)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and 0 < int(pre_stop[1]) <= 5
    drain = float(scenario.env(gateway)["SARATHI_GATEWAY_DRAIN_S"])
    assert drain == max(grace - int(pre_stop[1]) - 5, 0) and drain > 0
