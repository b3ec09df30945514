"""The quality tables in README.md and docs/forecast-quality.md carry the figures of the shipped
default model's report (models/default/report.json, written by `make model`), so a regenerated
model cannot leave stale figures in the docs, and the targets table says met or not met for
every cell the report scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.evaluate import TARGET_CHECKS

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "models" / "default" / "report.json"
TARGET_CELLS = {(s, h) for s in ("BTCUSDT", "ETHUSDT") for h in (1, 5, 15)}


def _pct(value: float) -> str:
    return f"{100 * value:+.2f} %".replace("-", "−")


def _verdict(ok: bool | None) -> str:
    return "no target" if ok is None else "met" if ok else "not met"


def _gap(target: dict[str, Any]) -> str:
    return f"{target['level_worst']:g}: {100 * target['level_gap']:+.1f} pt".replace("-", "−")


def _cells(row: dict[str, Any]) -> dict[str, str]:
    return {
        "skill": _pct(row["skill"]),
        "dir. acc.": f"{100 * row['dir_accuracy']:.1f} %",
        "coverage 0.1–0.9": f"{100 * row['coverage']:.1f} %",
        "pinball ratio to EWMA": f"{row['pinball_ratio_ewma']:.3f}",
        "pinball ratio to HAR": f"{row['pinball_ratio_har']:.3f}",
        "MAE model (bp)": f"{row['mae_bps']:.2f}",
    }


def _target_cells(t: dict[str, Any]) -> dict[str, str]:
    unmet = [label for k, label in TARGET_CHECKS if t[k] is False]
    return {
        "pinball / EWMA (≤ 0.97)": f"{t['pinball_ratio_ewma']:.3f} {_verdict(t['pinball_ok'])}",
        "pinball / HAR (≤ 0.99)": f"{t['pinball_ratio_har']:.3f} {_verdict(t['pinball_har_ok'])}",
        "skill (≥ 0)": f"{_pct(t['skill'])} {_verdict(t['skill_ok'])}",
        "dir. acc. (≥ 52 % at h = 5, 15)": (
            f"{100 * t['dir_accuracy']:.1f} % {_verdict(t['dir_ok'])}"
        ),
        "coverage 0.1–0.9 (79–81 %)": f"{100 * t['coverage']:.1f} % {_verdict(t['coverage_ok'])}",
        "worst other level (± 1.5 pt)": f"{_gap(t)} {_verdict(t['levels_ok'])}",
        "worst other level": _gap(t),
        "all met": "yes" if t["met"] else "no",
        "targets not met": ", ".join(unmet) or "none",
    }


def _table(text: str, marker: str) -> list[dict[str, str]]:
    """The rows of the first table whose header has ``marker``, as header -> cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and marker in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _target(report: dict[str, Any], series: str, h: str) -> dict[str, Any]:
    return next(
        t for t in report["targets"] if t["series"] == f"binance:{series}" and t["h"] == int(h)
    )


@pytest.mark.parametrize("doc", ["README.md", "docs/forecast-quality.md"])
def test_the_quality_table_is_the_default_models_report(doc: str) -> None:
    report = json.loads(REPORT.read_text())
    rows = _table((REPO / doc).read_text(), "pinball ratio to HAR |")
    assert {(r["series"], int(r["h (min)"])) for r in rows} >= TARGET_CELLS
    for r in rows:
        if r["series"] == "all (pooled)":
            entry = report["all"]
        else:
            entry = report["series"][f"binance:{r['series']}"]
        expected = _cells(entry["contenders"]["model"]["per_h"][int(r["h (min)"]) - 1])
        if (r["series"], int(r["h (min)"])) in TARGET_CELLS:
            expected |= _target_cells(_target(report, r["series"], r["h (min)"]))
        for column, cell in r.items():
            if column in expected:
                assert cell == expected[column], (doc, r["series"], r["h (min)"], column)


def test_the_targets_table_has_every_cell_of_the_default_models_report() -> None:
    report = json.loads(REPORT.read_text())
    assert {(t["series"], t["h"]) for t in report["targets"]} == {
        (f"binance:{s}", h) for s, h in TARGET_CELLS
    }
    rows = _table((REPO / "docs" / "forecast-quality.md").read_text(), "| all met |")
    assert sorted((r["series"], int(r["h (min)"])) for r in rows) == sorted(TARGET_CELLS)
    for r in rows:
        expected = _target_cells(_target(report, r["series"], r["h (min)"]))
        checked = [column for column in r if column in expected]
        assert len(checked) == 7, checked  # every target and the verdict
        for column in checked:
            assert r[column] == expected[column], (r["series"], r["h (min)"], column)
