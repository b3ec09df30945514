"""What the Kubernetes manifest tests share: looking resources up and comparing with real
kustomize where it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KUBERNETES_VERSION = "1.29.0"  # the oldest version still maintained by major providers
Resource = dict[str, Any]


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def pod_spec(resource: Resource) -> dict[str, Any]:
    spec = resource["spec"]
    if resource["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def real_kustomize() -> list[str] | None:
    """The command of an installed kustomize (alone or in kubectl), or None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def real_build(command: list[str], directory: Path) -> list[Resource]:
    """``directory`` as ``command`` (from ``real_kustomize``) builds it."""
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [r for r in yaml.safe_load_all(result.stdout) if r]
