"""Wiring: one scheduler and worker set per A/B variant and shard, the gateway's routing table,
the addresses each service dials, references between objects, volumes, metrics,
the gateway's Service, autoscaler and disruption budget, and API keys."""

from __future__ import annotations

import base64
import json
import re

from tests.k8s.render import (
    NAMESPACE,
    RELEASE,
    Rendered,
    component,
    container_of,
    labels_of,
    matches,
    pod_labels,
    pod_spec,
    pod_template,
    scheduler_sets_of,
    service_addr,
    variants_of,
)


def test_one_scheduler_and_worker_set_per_variant_and_shard(scenario: Rendered) -> None:
    values = scenario.values
    sets = scheduler_sets_of(values)
    assert len(scenario.workloads("scheduler")) == len(sets)
    assert len(scenario.workloads("worker")) == len(sets)
    prefixes = set()
    for v in sets:
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
        if not values["worker"]["autoscaling"]["keda"]["enabled"]:  # else KEDA sizes it
            assert worker["spec"]["replicas"] == v["workerReplicas"]
        worker_env = scenario.env(worker)
        addr = worker_env["SARATHI_WORKER_SCHEDULER_ADDR"]
        service = scenario.service_for(addr, "scheduler")
        assert matches(service["spec"]["selector"], pod_labels(sched))
        assert worker_env["SARATHI_WORKER_MODEL"] == values["model"]["name"]
    assert len(prefixes) == len(sets), "variants and shards must not share Redis keys"


def test_keda_scales_each_sets_workers_on_its_own_schedulers(scenario: Rendered) -> None:
    keda = scenario.values["worker"]["autoscaling"]["keda"]
    scaled = scenario.of("ScaledObject")
    sets = scheduler_sets_of(scenario.values)
    assert len(scaled) == (len(sets) if keda["enabled"] else 0)
    for one in sets if keda["enabled"] else []:
        worker = scenario.variant_workload("worker", one["name"])
        sched = scenario.variant_workload("scheduler", one["name"])
        (obj,) = [
            o for o in scaled if o["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
        ]
        assert obj["spec"]["scaleTargetRef"]["kind"] == worker["kind"]
        assert "replicas" not in worker["spec"], "KEDA's HPA owns the size"
        assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"]) == (
            keda["minReplicas"], keda["maxReplicas"],
        )  # fmt: skip
        queries = {t["name"]: t["metadata"]["query"] for t in obj["spec"]["triggers"]}
        assert set(queries) == {"waiting-requests", "oldest-waiting", "kv-usage"}
        for query in queries.values():
            pods = re.search(r'pod=~"([^"]+)"', query).group(1)
            assert re.fullmatch(pods, sched["metadata"]["name"] + "-7d9f8b6c5-x2x9q")
            others = [w for w in scenario.workloads("scheduler") if w is not sched]
            assert not any(re.fullmatch(pods, o["metadata"]["name"] + "-7d9f8b6c5-x2x9q")
                           for o in others), "a set scales on its own scheduler only"  # fmt: skip
            assert f'namespace="{NAMESPACE}"' in query
        assert all(
            t["metadata"]["serverAddress"] == keda["prometheusUrl"] for t in obj["spec"]["triggers"]
        )


def test_gateway_routing_table_lists_every_variant(scenario: Rendered) -> None:
    (gateway,) = scenario.workloads("gateway")
    env = scenario.env(gateway)
    routes = json.loads(scenario.mounted_file(gateway, env["SARATHI_GATEWAY_VARIANTS_FILE"]))
    variants = variants_of(scenario.values)
    assert [(r["name"], r["weight"]) for r in routes] == [
        (v["name"], v["weight"]) for v in variants
    ]
    for route in routes:  # each shard's scheduler Service, ";"-separated
        sets = [s for s in scheduler_sets_of(scenario.values) if s["variant"] == route["name"]]
        addrs = route["scheduler_addr"].split(";")
        assert len(addrs) == len(sets)
        for one, addr in zip(sets, addrs, strict=True):
            sched = scenario.variant_workload("scheduler", one["name"])
            service = scenario.service_for(addr, "scheduler")
            assert matches(service["spec"]["selector"], pod_labels(sched))
            assert addr == service_addr(
                service["metadata"]["name"], scenario.values["scheduler"]["port"]
            )
    assert env["SARATHI_GATEWAY_PORT"] == str(scenario.values["gateway"]["ports"]["grpc"])
    assert env["SARATHI_GATEWAY_HTTP_PORT"] == str(scenario.values["gateway"]["ports"]["http"])
    assert env["SARATHI_GATEWAY_MODEL"] == scenario.values["model"]["name"]
    if "SARATHI_GATEWAY_SCHEDULER_ADDR" in env:
        for addr in env["SARATHI_GATEWAY_SCHEDULER_ADDR"].split(";"):
            scenario.service_for(addr, "scheduler")


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
        # Deployments select their own pods (a LeaderWorkerSet labels its own).
        if workload["kind"] != "LeaderWorkerSet":
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
        annotations = pod_template(workload)["metadata"].get("annotations", {})
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


def test_pipeline_stages_are_one_pod_each_and_every_rank_is_wired_once(
    scenario: Rendered, monkeypatch
) -> None:
    """worker.pipelineParallelSize P > 1: each set's workers are a LeaderWorkerSet of
    groups of P pods that restart together; pod w of a group (LWS_WORKER_INDEX) hosts
    stage w with its tensorParallelSize GPUs as ranks. Parsed by the worker's own flag
    and environment handling, the pods of a group hold each of the P x T ranks once,
    with a device each, and all meet at the leader's declared group port."""
    from sarathi_serve.worker.config import WorkerConfig

    values = scenario.values["worker"]
    stages, tp = values["pipelineParallelSize"], values["tensorParallelSize"]
    for one in scheduler_sets_of(scenario.values):
        worker = scenario.variant_workload("worker", one["name"])
        if stages == 1:
            assert worker["kind"] == "Deployment"
            assert "args" not in container_of(worker)
            continue
        assert worker["kind"] == "LeaderWorkerSet"
        group = worker["spec"]["leaderWorkerTemplate"]
        assert (group["size"], group["restartPolicy"]) == (stages, "RecreateGroupOnPodRestart")
        container = container_of(worker)
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert gpus == (tp if values["gpu"]["enabled"] else 0)
        group_ports = [p["containerPort"] for p in container["ports"] if p["name"] == "group"]
        for name, value in scenario.env(worker).items():
            if isinstance(value, str):
                monkeypatch.setenv(name, value)
        leader = f"{worker['metadata']['name']}-0.{worker['metadata']['name']}.{NAMESPACE}"
        ranks, addrs = [], set()
        for index in range(stages):  # what LWS puts in each pod's environment
            lws = {"LWS_WORKER_INDEX": str(index), "LWS_LEADER_ADDRESS": leader}
            config = WorkerConfig.from_args([expand(a, lws) for a in container["args"]])
            assert (config.pipeline_parallel_size, config.tensor_parallel_size) == (stages, tp)
            assert config.pipeline_stage == index and config.device == ("cuda" if gpus else "cpu")
            assert config.pipeline_layers == values["pipelineLayers"]
            assert len(config.local_ranks) == tp and gpus in (0, tp), "a GPU per rank"
            ranks += list(config.local_ranks)
            addrs.add(config.group_addr)
        assert sorted(ranks) == list(range(stages * tp)), "each rank in exactly one pod"
        assert addrs == {f"{leader}:{values['pipelineGroupPort']}"}
        assert group_ports == [values["pipelineGroupPort"]]


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of a container argument."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
