"""The docs say what the code does: every setting and every metric is documented, nothing
documented is missing from the code, the README's module map matches the tree, and no product
doc or module points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamer.core.contracts.metrics import CATALOGUE, Kind
from streamer.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def table_rows(path: Path) -> dict[str, str]:
    """First-column name -> second column, of every ``| `NAME` | ... |`` table row."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`[A-Za-z_:0-9]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def env_text(value: object) -> str:
    """A default as it is written in the environment."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(env_text(v) for v in value)
    return str(value)


def test_every_setting_is_documented_with_its_default() -> None:
    rows = table_rows(DOCS / "configuration.md")
    fields = {f"{ENV_PREFIX}{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert sorted(set(fields) - set(rows)) == [], "settings missing from docs/configuration.md"
    assert sorted(set(rows) - set(fields)) == [], "documented settings that do not exist"
    for env, field in fields.items():
        documented = rows[env]
        default = field.get_default(call_default_factory=True)
        if documented.startswith("unset"):
            assert default is None, env
        elif documented.startswith("`"):
            assert documented.strip("`") == env_text(default), env


def test_every_metric_is_documented_and_nothing_else() -> None:
    rows = table_rows(DOCS / "metrics.md")
    exposed = {m.exposed: m for m in CATALOGUE}
    assert sorted(set(exposed) - set(rows)) == [], "metrics missing from docs/metrics.md"
    assert sorted(set(rows) - set(exposed)) == [], "documented metrics that do not exist"
    for name, metric in exposed.items():
        assert rows[name] == metric.kind.value, name


def test_metric_names_follow_the_conventions() -> None:
    names = [m.exposed for m in CATALOGUE]
    assert len(names) == len(set(names))
    for metric in CATALOGUE:
        assert metric.name.startswith("tickcast_") and not metric.name.endswith("_total")
        if metric.kind is Kind.HISTOGRAM:
            assert metric.name.endswith("_seconds"), metric.name
        assert "symbol" not in metric.labels or metric.name in {
            "tickcast_price_close",
            "tickcast_forecast_price",
            "tickcast_forecast_bar_time_seconds",
        }, f"{metric.name}: per-symbol labels only on the listed-symbol metrics"


def modules() -> set[str]:
    """Every Python module of the product, as a repository path."""
    found = set()
    for package in ("streamer", "trainer"):
        for path in (REPO / package).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py"):
                found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_readme_module_map_matches_the_tree() -> None:
    text = (REPO / "README.md").read_text()
    start = text.index("## Module map")
    section = text[start : text.index("\n## ", start + 1)]
    # the tables are the map: a package named in passing in the prose covers nothing
    rows = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    named = set(re.findall(r"`((?:streamer|trainer)/[\w/]+\.py)`", rows))
    # a package may be named as a whole: `streamer/io/store/` covers its modules
    packages = set(re.findall(r"`((?:streamer|trainer)/[\w/]+/)`", rows))
    assert sorted(p for p in named if not (REPO / p).is_file()) == [], "named but not in the tree"
    assert sorted(p for p in packages if not (REPO / p).is_dir()) == []
    covered = {m for m in modules() if m in named or any(m.startswith(p) for p in packages)}
    assert sorted(modules() - covered) == [], "modules the README's map does not name"


@pytest.mark.parametrize("where", ["README.md", "docs", "streamer", "trainer", "deploy"])
def test_nothing_points_outside_the_repository(where: str) -> None:
    root = REPO / where
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    offenders = []
    for path in paths:
        if path.suffix not in {".py", ".md", ".toml", ".yaml", ".yml", ".service", ".json"}:
            continue
        text = path.read_text(errors="replace")
        if "../shared" in text or "DESIGN.md" in text:
            offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []
