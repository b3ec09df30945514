"""The Redis Cluster overlay (deploy/k8s/overlays/redis-cluster): it builds (as real kustomize
builds it, where kubectl or kustomize is installed), validates against the Kubernetes schemas,
and its streamers and trainer are configured for the cluster it deploys."""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
from deploy_paths import DEPLOY
from k8s_resources import KUBERNETES_VERSION, Resource, find, pod_spec, real_build, real_kustomize
from kustomize_lite import build

from streamer.core.redis_url import RedisMode, parse_redis_url

OVERLAY = DEPLOY / "k8s" / "overlays" / "redis-cluster"


@pytest.fixture(scope="module")
def overlay() -> list[Resource]:
    return build(OVERLAY)


def test_the_overlay_builds_as_kustomize_does_and_validates(overlay: list[Resource]) -> None:
    for resource in overlay:
        if resource["kind"] != "ServiceMonitor":  # a CRD: checked with the example overlay
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    command = real_kustomize()
    if command is None:
        pytest.skip("SKIPPED LOUDLY: no kustomize or kubectl to compare the build with")
    real = real_build(command, OVERLAY)
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(real, key=key) == sorted(overlay, key=key)


def test_the_streamers_and_the_trainer_use_the_cluster_it_deploys(
    overlay: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.settings import load_settings
    from trainer.cli import build_parser

    url = find(overlay, "Secret", "tickcast-credentials")["stringData"]["redis-url"]
    target = parse_redis_url(url)
    assert target.mode is RedisMode.CLUSTER
    nodes = find(overlay, "StatefulSet", "tickcast-redis-cluster")
    service = find(overlay, "Service", "tickcast-redis-cluster")
    assert service["spec"]["clusterIP"] == "None"
    assert nodes["spec"]["serviceName"] == service["metadata"]["name"]
    pod_names = {f"tickcast-redis-cluster-{i}" for i in range(nodes["spec"]["replicas"])}
    for host, port in target.hosts:  # every startup node is one of the deployed pods
        name, _, domain = host.partition(".")
        assert name in pod_names and domain == service["metadata"]["name"] and port == 6379
    args = pod_spec(nodes)["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    # the Job joins every node, each primary with one replica
    job = find(overlay, "Job", "tickcast-redis-cluster-create")
    script = pod_spec(job)["containers"][0]["command"][-1]
    assert f"for i in {' '.join(str(i) for i in range(len(pod_names)))}; do" in script
    assert "--cluster-replicas 1" in script

    streamer = find(overlay, "StatefulSet", "tickcast-streamer")
    (container,) = pod_spec(streamer)["containers"]
    for name in [k for k in os.environ if k.startswith("TICKCAST_")]:
        monkeypatch.delenv(name)
    for item in container["env"]:
        if "secretKeyRef" in item.get("valueFrom", {}) and item["name"].endswith(
            ("REDIS_URL", "MODEL_REGISTRY")
        ):
            monkeypatch.setenv(item["name"], url)
    monkeypatch.setenv("TICKCAST_SHARD_INDEX", "0")
    settings = load_settings()
    assert settings.redis_url == settings.model_registry == url

    train = pod_spec(find(overlay, "CronJob", "tickcast-trainer"))["containers"][0]
    parsed = build_parser().parse_args([a.replace("$(REDIS_URL)", url) for a in train["args"]])
    assert parsed.registry == parsed.pull_redis == url


def test_the_redis_nodes_are_locked_down(overlay: list[Resource]) -> None:
    for resource in overlay:
        if resource["metadata"]["name"].startswith("tickcast-redis-cluster") and "spec" in resource:
            if resource["kind"] == "Service":
                continue
            spec = pod_spec(resource)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            for container in spec["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"] == {"drop": ["ALL"]}
                assert "memory" in container["resources"]["limits"]
