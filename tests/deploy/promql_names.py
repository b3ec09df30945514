"""Metric names used by the Grafana dashboard and the Prometheus rules, and names exposed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from deploy_paths import DEPLOY
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tickcast.json"
RULE_FILES = [DEPLOY / "prometheus" / "rules.yml", DEPLOY / "prometheus" / "alerts.yml"]
# a tickcast metric name; recorded series (level:metric:operation) are not metric names
METRIC_NAME = re.compile(r"(?<![\w:])tickcast_[A-Za-z0-9_]+(?![\w:])")
RECORDED_NAME = re.compile(r"(?<![\w:])[a-z_]+:tickcast_[A-Za-z0-9_]+:[A-Za-z0-9_]+")


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL text in the dashboard: panel targets, variable queries, annotations."""
    exprs = []
    for key, value in _walk(json.loads(path.read_text())):
        if (key == "expr" and isinstance(value, str)) or (
            key == "definition" and isinstance(value, str)
        ):
            exprs.append(value)
    return exprs


def rules(paths: list[Path] = RULE_FILES) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def recorded_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in RECORDED_NAME.findall(expr)}


def exposed_names(exposition: str) -> set[str]:
    """Sample names a Prometheus server would store from this /metrics text.

    A family without samples yet (a labelled counter before its first event) still counts, by
    the sample names its type implies: counters ``_total``, histograms ``_bucket``/``_sum``/
    ``_count``, gauges their own name.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names
