"""The Kubernetes manifests: built with kustomize, valid against the Kubernetes schemas, and
consistent with the streamer's settings, the sharding rule and the trainer's command line.

Schemas: kubernetes-validate (PyPI) ships the Kubernetes OpenAPI schemas inside the package, so
validation is offline; strict mode refuses unknown fields. The ServiceMonitor is a CRD that it
does not know: it is validated against a hand-written strict subset in schemas/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from deploy_paths import DEPLOY, setting_env_names
from k8s_resources import KUBERNETES_VERSION, Resource, find, pod_spec, real_build, real_kustomize
from kustomize_lite import build

K8S = DEPLOY / "k8s"
OVERLAY = K8S / "overlays" / "example"
SERVICEMONITOR_SCHEMA = Path(__file__).resolve().parent / "schemas" / "servicemonitor-subset.json"


@pytest.fixture(scope="module")
def overlay() -> list[Resource]:
    return build(OVERLAY)


def containers(resource: Resource) -> Iterator[dict[str, Any]]:
    pod = pod_spec(resource)
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in {"Deployment", "StatefulSet", "CronJob"}]


def key(resource: Resource) -> tuple[str, str, str]:
    meta = resource["metadata"]
    return (resource["kind"], meta.get("namespace", ""), meta["name"])


# --- build -----------------------------------------------------------------------------------


def test_python_build_matches_real_kustomize(overlay: list[Resource]) -> None:
    command = real_kustomize()
    if command is None:
        pytest.skip(
            "SKIPPED LOUDLY: neither kustomize nor kubectl is installed; the manifests are "
            "built by tests/deploy/kustomize_lite.py only (the other tests still run on it)"
        )
    for directory in (OVERLAY, K8S / "base", K8S / "dev"):
        real = {key(r): r for r in real_build(command, directory)}
        ours = {key(r): r for r in (overlay if directory == OVERLAY else build(directory))}
        assert sorted(ours) == sorted(real), directory
        for k, resource in real.items():
            assert ours[k] == resource, k


def test_overlay_has_everything(overlay: list[Resource]) -> None:
    assert sorted(key(r) for r in overlay) == sorted(
        [
            ("Namespace", "", "tickcast"),
            ("ServiceAccount", "tickcast", "tickcast"),
            ("ConfigMap", "tickcast", "tickcast-streamer"),
            ("ConfigMap", "tickcast", "tickcast-trainer"),
            ("ConfigMap", "tickcast", "tickcast-mosquitto"),
            ("Secret", "tickcast", "tickcast-credentials"),
            ("StatefulSet", "tickcast", "tickcast-streamer"),
            ("Service", "tickcast", "tickcast-streamer"),
            ("PodDisruptionBudget", "tickcast", "tickcast-streamer"),
            ("ServiceMonitor", "tickcast", "tickcast-streamer"),
            ("CronJob", "tickcast", "tickcast-trainer"),
            ("Deployment", "tickcast", "tickcast-redis"),
            ("Service", "tickcast", "tickcast-redis"),
            ("Deployment", "tickcast", "tickcast-mosquitto"),
            ("Service", "tickcast", "tickcast-mosquitto"),
        ]
    )
    streamer = find(overlay, "StatefulSet", "tickcast-streamer")
    assert [c["image"] for c in containers(streamer)] == [
        "registry.example.com/tickcast/streamer:0.1.0"
    ]


# --- schemas ---------------------------------------------------------------------------------


def validate(resource: Resource) -> None:
    if resource["kind"] == "ServiceMonitor":
        jsonschema.validate(resource, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", ["overlays/example", "base", "dev"])
def test_manifests_validate_against_kubernetes_schemas(directory: str) -> None:
    resources = build(K8S / directory)
    assert resources
    for resource in resources:
        validate(resource)


def test_validation_can_fail(overlay: list[Resource]) -> None:
    """Strict schemas refuse a misspelt field and a wrong type; so does the ServiceMonitor's."""
    streamer = json.loads(json.dumps(find(overlay, "StatefulSet", "tickcast-streamer")))
    pod_spec(streamer)["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(streamer)
    pdb = json.loads(json.dumps(find(overlay, "PodDisruptionBudget", "tickcast-streamer")))
    pdb["spec"]["maxUnavailable"] = {"one": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pdb)
    monitor = json.loads(json.dumps(find(overlay, "ServiceMonitor", "tickcast-streamer")))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


# --- the streamer's settings and sharding ---------------------------------------------------


def streamer_environment(resources: list[Resource], pod_name: str) -> dict[str, str]:
    """The TICKCAST_* environment the kubelet would give the streamer pod ``pod_name``."""
    statefulset = find(resources, "StatefulSet", "tickcast-streamer")
    (container,) = containers(statefulset)
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(find(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
        else:
            secret_ref = ref["secretKeyRef"]
            data = find(resources, "Secret", secret_ref["name"]).get("stringData", {})
            if secret_ref["key"] in data:
                env[item["name"]] = data[secret_ref["key"]]
            else:
                assert secret_ref.get("optional") is True, item["name"]
    return env


def test_every_env_name_is_a_streamer_setting(overlay: list[Resource]) -> None:
    env = streamer_environment(overlay, "tickcast-streamer-0")
    assert sorted(set(env) - setting_env_names()) == []
    statefulset = find(overlay, "StatefulSet", "tickcast-streamer")
    (container,) = containers(statefulset)
    declared = {item["name"] for item in container["env"]}
    declared |= set(find(overlay, "ConfigMap", "tickcast-streamer")["data"])
    assert sorted(declared - setting_env_names()) == []


def test_shards_cover_every_symbol_once(
    overlay: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replica loads its settings as in the pod; together they take every symbol once."""
    from streamer.settings import load_settings

    statefulset = find(overlay, "StatefulSet", "tickcast-streamer")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    taken: list[str] = []
    for ordinal in range(replicas):
        for name in [k for k in os.environ if k.startswith("TICKCAST_")]:
            monkeypatch.delenv(name)
        pod = f"tickcast-streamer-{ordinal}"
        for name, value in streamer_environment(overlay, pod).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("HOSTNAME", pod)
        settings = load_settings()
        assert settings.shard_count == replicas
        assert settings.shard() == ordinal
        assert settings.metrics_host == "0.0.0.0" and settings.instance == pod
        assert settings.model_registry == settings.redis_url
        mine = [f"{ex}:{s}" for ex, symbols in settings.feeds().items() for s in symbols]
        assert mine, f"shard {ordinal} has no symbol: it would never become ready"
        taken.extend(mine)
    assert sorted(taken) == sorted(settings.symbols)


def test_probes_and_service_use_the_metrics_port(overlay: list[Resource]) -> None:
    statefulset = find(overlay, "StatefulSet", "tickcast-streamer")
    (container,) = containers(statefulset)
    config = find(overlay, "ConfigMap", "tickcast-streamer")["data"]
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == (
        "metrics",
        int(config["TICKCAST_METRICS_PORT"]),
    )
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    service = find(overlay, "Service", "tickcast-streamer")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    pdb = find(overlay, "PodDisruptionBudget", "tickcast-streamer")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = find(overlay, "ServiceMonitor", "tickcast-streamer")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_pods_are_locked_down(overlay: list[Resource]) -> None:
    for workload in workloads(overlay):
        pod = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


# --- the trainer -----------------------------------------------------------------------------


def test_trainer_cronjob_publishes_to_the_streamers_registry(overlay: list[Resource]) -> None:
    from trainer.cli import build_parser

    cronjob = find(overlay, "CronJob", "tickcast-trainer")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    backfill, train = containers(cronjob)
    env = {item["name"]: item for item in train["env"]}
    streamer_env = {
        item["name"]: item
        for item in containers(find(overlay, "StatefulSet", "tickcast-streamer")).__next__()["env"]
    }
    # the trainer's registry and Redis are the secret the streamers read their registry from
    assert env["REDIS_URL"]["valueFrom"] == streamer_env["TICKCAST_MODEL_REGISTRY"]["valueFrom"]
    parser = build_parser()
    args = parser.parse_args([a.replace("$(REDIS_URL)", "redis://r:6379/0") for a in train["args"]])
    assert (args.command, args.registry, args.pull_redis) == (
        "train",
        "redis://r:6379/0",
        "redis://r:6379/0",
    )
    mounts = {m["name"]: m["mountPath"] for m in train["volumeMounts"]}
    assert str(args.config).startswith(mounts["config"] + "/")
    config_map = find(overlay, "ConfigMap", "tickcast-trainer")
    assert Path(args.config).name in config_map["data"]
    assert str(args.store).startswith(mounts["state"] + "/")
    fill = parser.parse_args(backfill["args"])
    assert (fill.command, fill.store) == ("backfill", args.store)
    # the backfilled symbols are the ones the training config trains on
    config = config_map["data"][Path(args.config).name]
    import tomllib

    assert fill.symbols.split(",") == tomllib.loads(config)["data"]["symbols"]


def test_config_copies_are_identical(overlay: list[Resource]) -> None:
    trainer = find(overlay, "ConfigMap", "tickcast-trainer")["data"]["retrain.toml"]
    assert trainer == (DEPLOY / "retrain.toml").read_text()
    mosquitto = find(overlay, "ConfigMap", "tickcast-mosquitto")["data"]["mosquitto.conf"]
    assert mosquitto == (DEPLOY / "docker" / "mosquitto.conf").read_text()
