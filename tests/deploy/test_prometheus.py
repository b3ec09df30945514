"""Prometheus rules and config: promtool checks them and runs the alert unit tests.

promtool comes with Debian's ``prometheus`` package (`make deps` installs it). Where it cannot
be installed these tests skip with a loud reason; they never pass without running it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_paths import DEPLOY
from promql_names import rules

PROMETHEUS = DEPLOY / "prometheus"
UNIT_TESTS = Path(__file__).resolve().parent / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="SKIPPED LOUDLY: promtool not found (apt-get install prometheus, or `make deps`); "
    "the Prometheus rules are NOT checked",
)


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_alert_unit_tests() -> None:
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rejects_a_bad_rule(tmp_path: Path) -> None:
    """The check can fail: a PromQL syntax error is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(tickcast_x[5m]\n"
    )
    result = promtool("check", "rules", str(bad))
    assert result.returncode != 0


def test_the_alerts_the_issue_asks_for() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    wanted = {
        "TickcastFeedStale": "tickcast_feed_last_message_age_seconds",
        "TickcastNoForecasts": "tickcast_forecasts_published_total",
        "TickcastSkillBelowZero": "tickcast_online_skill",
        "TickcastModelStale": "tickcast_model_stale",
        "TickcastModelReloadFailing": "tickcast_model_reload_failures_total",
        "TickcastPublishDropping": "tickcast_mqtt_dropped_total",
        "TickcastRedisDown": "tickcast_redis_up",
    }
    for name, metric in wanted.items():
        assert metric in str(alerts[name]["expr"]), name
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
