"""The systemd units: they verify, their hardening scores, and the streamer runs under W^X.

The units name their programs under /opt/tickcast/venv (the install path of
README.md). ``systemd-analyze verify`` insists that ExecStart programs exist, so the
test verifies copies whose /opt/tickcast/venv/bin/ is replaced by this virtualenv's bin/; nothing
else is changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deploy_paths import DEPLOY, REPO, setting_env_names

SYSTEMD = DEPLOY / "systemd"
UNITS = ["tickcast-streamer.service", "tickcast-trainer.service", "tickcast-trainer.timer"]
INSTALL_BIN = "/opt/tickcast/venv/bin/"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="SKIPPED LOUDLY: systemd-analyze is not installed, the units are NOT verified",
)
# `systemd-analyze security` exposure, 0 (locked down) .. 10 (unprotected); these units score
# 1.1 and 1.2 with systemd 252
MAX_EXPOSURE = 1.5


def unit_text(name: str) -> str:
    return (SYSTEMD / name).read_text()


def directives(name: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (later lines append; comments and sections dropped)."""
    out: dict[str, list[str]] = {}
    for line in unit_text(name).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("units")
    venv_bin = str(Path(sys.executable).parent) + "/"
    for name in UNITS:
        text = unit_text(name)
        assert INSTALL_BIN in text or name.endswith(".timer"), name
        (here / name).write_text(text.replace(INSTALL_BIN, venv_bin))
    return here


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(installed_units: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    paths = [str(installed_units / name) for name in UNITS]
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # an unknown key is only a warning (exit 0): any output at all fails the test
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(installed_units: Path, tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing program are both reported."""
    assert SYSTEMD_ANALYZE is not None
    text = (installed_units / UNITS[0]).read_text()
    broken = tmp_path / UNITS[0]
    broken.write_text(
        text.replace("WatchdogSec=", "WatchdogSecs=").replace(
            str(Path(sys.executable).parent), "/nonexistent"
        )
    )
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "WatchdogSecs" in result.stderr and "/nonexistent" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("name", ["tickcast-streamer.service", "tickcast-trainer.service"])
def test_security_exposure(installed_units: Path, name: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    probe = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30
    )
    if "--offline" not in probe.stdout:
        pytest.skip("SKIPPED LOUDLY: this systemd-analyze has no --offline security check")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(installed_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_streamer_unit_contract() -> None:
    d = directives("tickcast-streamer.service")
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [INSTALL_BIN + "tickcast-streamer run"]
    assert d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2"]  # tickcast-streamer's exit code for bad settings
    assert int(d["StartLimitBurst"][0]) >= 1 and int(d["StartLimitIntervalSec"][0]) >= 60
    assert d["EnvironmentFile"] == ["/etc/tickcast/streamer.env"]
    # the app pings at half the interval; systemd needs a whole number of seconds here
    assert re.fullmatch(r"\d+s", d["WatchdogSec"][0])
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "MemoryDenyWriteExecute": "yes",
        "StateDirectory": "tickcast",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]


def test_trainer_units() -> None:
    service = directives("tickcast-trainer.service")
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][0].startswith(INSTALL_BIN + "tickcast-trainer train --config ")
    assert "MemoryDenyWriteExecute" not in service  # see test_torch_needs_write_execute
    timer = directives("tickcast-trainer.timer")
    assert timer["Unit"] == ["tickcast-trainer.service"]
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]


def env_file_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("# ")
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            names.append(line.split("=", 1)[0])
    return names


def test_streamer_env_example_names_real_settings() -> None:
    """Every variable in the example (commented ones too) is a TICKCAST_<field> of Settings."""
    names = env_file_names(SYSTEMD / "streamer.env.example")
    assert len(names) >= 8
    assert sorted(set(names) - setting_env_names()) == []


def test_streamer_env_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamer.settings import load_settings

    for key in [k for k in os.environ if k.startswith("TICKCAST_")]:
        monkeypatch.delenv(key)
    for line in (SYSTEMD / "streamer.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.symbols == ["binance:BTCUSDT", "binance:ETHUSDT", "binance:SOLUSDT"]
    assert settings.model_registry == "/var/lib/tickcast/registry"
    assert settings.log_json is True


def test_trainer_env_example_names_what_is_used() -> None:
    """The trainer reads TICKCAST_REGISTRY/HISTORY; the rest must be substituted by the unit."""
    names = set(env_file_names(SYSTEMD / "trainer.env.example"))
    unit = unit_text("tickcast-trainer.service")
    substituted = set(re.findall(r"\$\{([A-Z0-9_]+)\}", unit))
    assert substituted <= names, substituted - names
    trainer_cli = (REPO / "trainer" / "cli.py").read_text()
    for name in names - substituted:
        assert name.startswith("TICKCAST_") and f'"{name}"' in trainer_cli, name


GUARDED_STREAMER = textwrap.dedent(
    """
    import mmap, sys
    sys.path[:0] = [{tests!r}, {deploy_tests!r}]
    import os, wx_guard
    wx_guard.install(deny_resources={deny_resources!r})
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("guard-inactive")
    except PermissionError:
        print("guard-active")
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
        print("resources-allowed")
    except PermissionError:
        print("resources-denied")
    import numpy as np
    import streamer.app  # every library the daemon loads: aiohttp, redis, aiomqtt, onnxruntime
    from fixtures.models import build_model, real_bars
    from fixtures.features import window_array
    from streamer.io.model import load_model
    bars = real_bars("BTCUSDT")[:60]
    model = load_model(build_model(window=60, horizon=15), smoke_windows=lambda w: None)
    out = model.run(window_array([bars, bars], 60))
    print("inference", out.shape, bool(np.isfinite(out).all()))
    # the LSTM operator the trainer exports, at a 1,000-series batch, with the unit's threads
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    weights = [
        numpy_helper.from_array(rng.standard_normal((1, 128, n)).astype(np.float32), name)
        for name, n in (("W", 5), ("R", 32))
    ]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y", "y_h"], hidden_size=32)],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [60, "batch", 5])],
        [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)],
        initializer=weights,
    )
    lstm_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(lstm_model.SerializeToString(), options)
    hidden = session.run(None, {{"x": rng.standard_normal((60, 1000, 5)).astype(np.float32)}})[0]
    print("lstm", hidden.shape)
    import pathlib  # the shipped LSTM model too, once it exists
    default = pathlib.Path({repo!r}) / "models" / "default" / "model.onnx"
    if default.is_file():
        lstm = load_model(default.read_bytes(), smoke_windows=lambda w: None)
        history = real_bars("BTCUSDT")[: lstm.spec.window]
        out = lstm.run(window_array([history, history], lstm.spec.window))
        print("default model", bool(np.isfinite(out).all()))
    {extra}
    """
)


def run_guarded(extra: str = "", deny_resources: bool = True) -> subprocess.CompletedProcess[str]:
    script = GUARDED_STREAMER.format(
        repo=str(REPO),
        tests=str(REPO / "tests"),
        deploy_tests=str(REPO / "tests" / "deploy"),
        extra=extra,
        deny_resources=deny_resources,
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.fixture(scope="module")
def guard_supported() -> None:
    import wx_guard

    if not wx_guard.supported():
        pytest.skip("SKIPPED LOUDLY: the W^X seccomp guard is written for x86-64 Linux only")


def test_streamer_runs_under_the_units_seccomp_rules(guard_supported: None) -> None:
    """MemoryDenyWriteExecute=yes and ~@resources suit the streamer: imports and inference work."""
    result = run_guarded()
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "guard-active",
        "resources-denied",
        "inference (2, 15, 3) True",
        "lstm (1, 1000, 32)",
    ]
    if (REPO / "models" / "default" / "model.onnx").is_file():
        assert lines[4] == "default model True"


def test_torch_needs_write_execute(guard_supported: None) -> None:
    """Why the trainer unit leaves MemoryDenyWriteExecute off: torch's LSTM JIT is refused."""
    pytest.importorskip("torch")
    result = run_guarded(
        "import torch\n"
        "torch.nn.LSTM(5, 8, batch_first=True)(torch.ones(4, 60, 5))\n"
        "print('torch-ok')",
        deny_resources=False,
    )
    assert "guard-active" in result.stdout
    assert "torch-ok" not in result.stdout
    assert "could not create a primitive" in result.stderr, result.stderr[-2000:]
