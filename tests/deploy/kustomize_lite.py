"""``kustomize build`` for the subset deploy/k8s uses, in Python, so the tests need no binary.

kustomize ships as a Go binary (alone, or inside kubectl) that Debian does not package, so a
fresh machine may not have it. This builds the same output for what deploy/k8s uses:
``resources`` (files and directories), ``namespace``, ``labels`` (``pairs``, metadata only),
``images`` (``newName``/``newTag``/``digest``) and ``patches`` given as strategic-merge files
that name their target by kind and metadata.name. Any other key is refused, so a kustomization
that outgrows the subset fails loudly instead of building something else. Where kubectl or
kustomize is installed, tests/deploy/test_k8s.py checks that both builds are identical.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
# strategic-merge keys of the lists deploy/k8s patches (k8s.io/api struct tags); other lists
# are replaced whole, as strategic merge does for lists without a merge key
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class KustomizeError(ValueError):
    pass


def build(directory: Path) -> list[Resource]:
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = sorted(set(spec) - SUPPORTED)
    if unknown:
        raise KustomizeError(f"{path}: unsupported by kustomize_lite: {', '.join(unknown)}")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        if target.is_dir():
            resources.extend(build(target))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(target.read_text()) if doc)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{path}: only file patches ({{path: FILE}}) are supported")
        _apply_patch(resources, yaml.safe_load((directory / patch["path"]).read_text()), path)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        if set(label) - {"pairs", "includeSelectors"} or label.get("includeSelectors"):
            raise KustomizeError(f"{path}: labels support only pairs (metadata labels)")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                container["image"] = _retag(container["image"], image)
    return resources


def _apply_patch(resources: list[Resource], patch: Resource, where: Path) -> None:
    matches = [
        r
        for r in resources
        if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
    ]
    if len(matches) != 1:
        raise KustomizeError(f"{where}: patch target {patch['kind']}/{patch['metadata']['name']}")
    body = copy.deepcopy(patch)
    for key in ("apiVersion", "kind"):
        body.pop(key)
    merged = _merge(matches[0], body)
    matches[0].clear()
    matches[0].update(merged)


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, value in patch.items():
            if value is None:
                out.pop(k, None)  # strategic merge: null deletes the key
            else:
                out[k] = _merge(base[k], value, k) if k in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next(
                (i for i, have in enumerate(out_list) if have[merge_key] == item[merge_key]), None
            )
            if index is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[index] = _merge(out_list[index], item)
        return out_list
    return copy.deepcopy(patch)


def _containers(resource: Resource) -> list[Resource]:
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _retag(reference: str, image: dict[str, str]) -> str:
    name, tag = reference, ""
    if "@" in name:
        name, _, digest = name.partition("@")
        tag = "@" + digest
    elif ":" in name.rsplit("/", 1)[-1]:
        name, _, version = name.rpartition(":")
        tag = ":" + version
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        tag = "@" + image["digest"]
    elif "newTag" in image:
        tag = ":" + image["newTag"]
    return name + tag
