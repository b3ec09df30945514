"""Loading, refusing and running models: the contract at load time, smoke inference, the worker.

Models come from tests/fixtures/models.py (persistence plus a fixed band, built with the onnx
helper API, no torch; its contract-2 twin widens the band with the bar time's minute of the
week); windows are real Binance bars (tests/fixtures/bars).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.features import window_array
from fixtures.models import (
    DEFAULT_LEVELS,
    LEVELS_V2,
    TRAINED_AT,
    build_model,
    build_model_v2,
    expected_output,
    expected_output_v2,
    real_bars,
    sha256_hex,
)
from onnx import TensorProto

from streamer.core.retry import Permanent, Transient
from streamer.core.timefmt import parse_iso_ms_or_none
from streamer.io.model import (
    CHUNK_ROWS,
    SMOKE_BAR_TIMES_S,
    DirectoryRegistry,
    LoadedModel,
    ModelFile,
    ModelRejected,
    ModelServer,
    NoModel,
    RegistryUnavailable,
    load_model,
    open_model,
    open_registry,
    smoke_check,
)

WINDOWS = window_array([real_bars("BTCUSDT"), real_bars("ETHUSDT")], 60)
TRAINED_MS = parse_iso_ms_or_none(TRAINED_AT)


def real_windows(window: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return window_array([real_bars("BTCUSDT"), real_bars("ETHUSDT")], window)


def test_conforming_model_loads_and_forecasts_exactly() -> None:
    data = build_model(version="v7", window=60, horizon=15)
    model = load_model(data, sha256_hex(data), smoke_windows=real_windows, source="test")
    assert model.version == "v7"
    assert (model.spec.window, model.spec.horizon, model.spec.quantiles) == (60, 15, DEFAULT_LEVELS)
    assert model.sha256 == sha256_hex(data)
    assert model.trained_at == TRAINED_AT
    assert model.trained_at_ms == 1_755_541_620_000  # 2025-08-18T18:27:00Z
    out = model.run(WINDOWS)
    assert out.dtype == np.float32 and out.shape == (2, 15, 3)
    np.testing.assert_allclose(out, expected_output(WINDOWS, 15, DEFAULT_LEVELS, 0.001), rtol=1e-7)
    np.testing.assert_array_equal(out[:, :, 1], np.repeat(WINDOWS[:, -1:, 3], 15, axis=1))


def test_run_checks_the_batch_shape_and_handles_empty_batches() -> None:
    model = load_model(build_model(window=60))
    with pytest.raises(ValueError, match=r"needs \[n, 60, 5\]"):
        model.run(real_windows(30))
    assert model.run(np.empty((0, 60, 5), np.float32)).shape == (0, 15, 3)


# fixture-model variants that break contract 1, and why each is refused
CONTRACT_1_BREAKS: list[tuple[dict[str, Any], str]] = [
    ({"input_name": "x"}, "model input is named 'x', expected 'bars'"),
    ({"output_name": "y"}, "model output is named 'y', expected 'quantiles'"),
    ({"declared_window": 30}, "model input axis 1 is 30, metadata says 60"),
    ({"declared_features": 4}, "model input axis 2 is 4, metadata says 5"),
    ({"graph_horizon": 10}, "model output axis 1 is 10, metadata says 15"),
    ({"drop_metadata": ["tickcast.window"]}, "metadata is missing tickcast.window"),
    ({"drop_metadata": ["tickcast.trained", "tickcast.metrics"]}, "tickcast.trained"),
    ({"metadata": {"tickcast.contract": "3"}}, "this streamer serves contracts 1 and 2"),
    (
        {"metadata": {"tickcast.contract": "2"}},  # a contract-1 graph: no bar_time input
        "model has inputs ['bars'], expected exactly ['bars', 'bar_time']",
    ),
    ({"metadata": {"tickcast.interval_s": "300"}}, "tickcast.interval_s=300, expected 60"),
    ({"metadata": {"tickcast.quantiles": "[0.1, 0.9]"}}, "must include 0.5"),
    ({"metadata": {"tickcast.window": "sixty"}}, "is not an integer"),
]


def test_refusals_are_permanent_and_an_unreadable_registry_transient(tmp_path: Path) -> None:
    with pytest.raises(ModelRejected) as info:
        load_model(b"not an onnx model")
    assert isinstance(info.value, Permanent)  # the same bytes never pass: set aside
    (tmp_path / "current").write_text("{")
    with pytest.raises(RegistryUnavailable) as unreadable:
        asyncio.run(DirectoryRegistry(tmp_path).current())
    assert isinstance(unreadable.value, Transient)  # read again at the next poll
    assert "current is not JSON" in str(unreadable.value)


def test_corrupt_truncated_and_empty_bytes_are_refused() -> None:
    data = build_model()
    corrupt = bytearray(data)
    corrupt[10:40] = b"\xff" * 30
    for bad in (b"not an onnx model", bytes(corrupt), data[: len(data) // 2], data[:-7], b""):
        with pytest.raises(ModelRejected) as info:
            load_model(bad)
        assert info.value.reason == "corrupt", bad[:20]
        assert "onnxruntime cannot load" in info.value.message


def test_sha256_mismatch_is_refused_before_loading() -> None:
    data = build_model()
    with pytest.raises(ModelRejected) as info:
        load_model(data[:-7], sha256_hex(data))
    assert info.value.reason == "sha256"
    assert sha256_hex(data) in info.value.message and "truncated" in info.value.message
    assert load_model(data, sha256_hex(data).upper()).sha256 == sha256_hex(data)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"output": "crossing"}, "2 rows are not finite or have crossing quantiles"),
        ({"output": "nan"}, "2 rows are not finite or have crossing quantiles"),
        ({"batch_dim": 1}, "failed"),
    ],
)
def test_smoke_inference_refuses_bad_outputs(variant: dict[str, Any], message: str) -> None:
    for windows in (real_windows, None):
        with pytest.raises(ModelRejected) as info:
            load_model(build_model(**variant), smoke_windows=windows)
        assert info.value.reason == "smoke"
        assert message in info.value.message
        kind = "real windows" if windows else "flat fallback windows"
        assert kind in info.value.message


def test_smoke_check_uses_real_windows_and_pads_a_single_one() -> None:
    model = open_model(build_model(batch_dim=1), None)  # loads: the contract allows any batch dim
    with pytest.raises(ModelRejected, match="2 real windows failed"):
        smoke_check(model, real_windows(60)[:1])
    smoke_check(open_model(build_model(), None), real_windows(60)[:1])
    smoke_check(open_model(build_model(), None), real_windows(30))  # wrong length: flat fallback


def test_trained_at_falls_back_to_the_manifest_and_staleness() -> None:
    data = build_model(trained_at="")
    model = load_model(data, created_at="2025-08-19T00:00:00+00:00")
    assert model.trained_at == "2025-08-19T00:00:00+00:00"
    assert model.trained_at_ms == 1_755_561_600_000
    unknown = load_model(data)
    assert unknown.trained_at == "" and unknown.age_s(0) is None
    assert not unknown.stale(1.0, 10**13)  # unknown age: nothing to judge
    trained = load_model(build_model())
    assert TRAINED_MS is not None
    assert trained.age_s(TRAINED_MS + 90_000) == 90.0
    assert trained.stale(3600.0, TRAINED_MS + 3_601_000)
    assert not trained.stale(3600.0, TRAINED_MS + 3_600_000)
    assert not trained.stale(None, TRAINED_MS + 10**12)
    server = ModelServer(max_age_s=3600.0)
    assert not server.stale(TRAINED_MS + 10**9)  # no model
    server.swap(trained)
    assert server.stale(TRAINED_MS + 3_601_000) and not server.stale(TRAINED_MS + 1000)
    server.close()


class ThreadRecordingSession:
    """Wraps a real session to record which thread each run() happens on."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.threads: list[int] = []

    def run(self, names: list[str], feed: dict[str, Any]) -> Any:
        self.threads.append(threading.get_ident())
        return self._session.run(names, feed)


async def test_predict_runs_in_one_worker_thread_off_the_loop() -> None:
    server = ModelServer()
    assert not server.ready and server.current is None
    with pytest.raises(NoModel):
        await server.predict(WINDOWS)
    base = load_model(build_model())
    recorder = ThreadRecordingSession(base.session)
    server.swap(dataclasses.replace(base, session=recorder))
    assert server.ready
    batch = np.tile(WINDOWS, (500, 1, 1))  # 1,000 series
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    try:
        outs = [await server.predict(batch), await server.predict(WINDOWS)]
    finally:
        tick_task.cancel()
    np.testing.assert_array_equal(outs[0][:2], outs[1])
    # the 1,000 rows went through in cache-sized chunks and came back whole, in order
    np.testing.assert_allclose(
        outs[0], expected_output(batch, 15, DEFAULT_LEVELS, 0.001), rtol=1e-7
    )
    loop_thread = threading.get_ident()
    assert len(recorder.threads) == -(-len(batch) // CHUNK_ROWS) + 1
    assert loop_thread not in recorder.threads
    assert len(set(recorder.threads)) == 1  # one dedicated worker
    assert ticks > 0  # the loop kept running while inference ran
    server.close()


async def test_a_round_keeps_the_model_it_started_with_across_a_swap() -> None:
    server = ModelServer()
    v1 = load_model(build_model(version="v1", band=0.001))
    v2 = load_model(build_model(version="v2", band=0.002))
    server.swap(v1)
    model = server.current
    assert model is not None
    pending = asyncio.ensure_future(server.predict(WINDOWS, model))
    assert server.swap(v2) is v1
    out = await pending
    np.testing.assert_allclose(out, expected_output(WINDOWS, 15, DEFAULT_LEVELS, 0.001), rtol=1e-7)
    out2 = await server.predict(WINDOWS)
    np.testing.assert_allclose(out2, expected_output(WINDOWS, 15, DEFAULT_LEVELS, 0.002), rtol=1e-7)
    assert server.current is v2 and server.swaps_total == 2
    server.close()


def test_open_registry_picks_the_backend(tmp_path: Path) -> None:
    model_path = tmp_path / "default.onnx"
    model_path.write_bytes(build_model())
    assert isinstance(open_registry(str(model_path)), ModelFile)
    assert isinstance(open_registry(str(tmp_path / "later.onnx")), ModelFile)
    assert isinstance(open_registry(str(tmp_path / "registry")), DirectoryRegistry)
    assert isinstance(open_registry(str(tmp_path)), DirectoryRegistry)


def test_loaded_model_is_frozen() -> None:
    model = load_model(build_model())
    assert isinstance(model, LoadedModel)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.sha256 = "x"  # type: ignore[misc]


# --- contract 2: the bar time is fed beside the bars ------------------------------------------

# the open times of the fixture windows' last bars (2025-05-20 03:59 UTC, a Tuesday)
LAST_BAR_S = np.full(2, real_bars("BTCUSDT")[-1].open_time_ms // 1000, dtype=np.int64)


def test_a_contract_2_model_loads_and_forecasts_from_the_bar_time() -> None:
    data = build_model_v2(version="c2", window=60, horizon=15)
    model = load_model(data, sha256_hex(data), smoke_windows=real_windows, source="test")
    assert (model.spec.contract, model.spec.quantiles, model.version) == (2, LEVELS_V2, "c2")
    out = model.run(WINDOWS, LAST_BAR_S)
    assert out.shape == (2, 15, 7)
    np.testing.assert_array_equal(
        out, expected_output_v2(WINDOWS, LAST_BAR_S, 15, LEVELS_V2, 0.001)
    )
    later = model.run(WINDOWS, LAST_BAR_S + 3600)  # an hour later in the week: a wider band
    assert np.all(later[:, :, -1] > out[:, :, -1]) and np.all(later[:, :, 0] < out[:, :, 0])
    np.testing.assert_array_equal(later[:, :, 3], out[:, :, 3])  # the median is the last close
    with pytest.raises(ValueError, match="needs the bar time of every row"):
        model.run(WINDOWS)
    with pytest.raises(ValueError, match=r"bar times of shape \(1,\), expected \(2,\)"):
        model.run(WINDOWS, LAST_BAR_S[:1])


# and contract 2
CONTRACT_2_BREAKS: list[tuple[dict[str, Any], str]] = [
    ({"with_time": False}, "model has inputs ['bars'], expected exactly ['bars', 'bar_time']"),
    ({"time_name": "t"}, "model inputs are named ['bars', 't'], expected ['bars', 'bar_time']"),
    (
        {"time_type": TensorProto.INT32},
        "model input 'bar_time' is tensor(int32), expected tensor(int64)",
    ),
    ({"time_rank": 2}, "model input 'bar_time' has rank 2, expected 1"),
    ({"metadata": {"tickcast.contract": "1"}}, "model has inputs ['bars', 'bar_time']"),
    ({"metadata": {"tickcast.quantiles": "[0.05, 0.95]"}}, "must include 0.5"),
]


@pytest.mark.parametrize(
    ("build", "variant", "message"),
    [(build_model, *case) for case in CONTRACT_1_BREAKS]
    + [(build_model_v2, *case) for case in CONTRACT_2_BREAKS],
)
def test_contract_violations_are_refused_with_the_reason(
    build: Callable[..., bytes], variant: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelRejected) as info:
        load_model(build(**variant), smoke_windows=real_windows)
    assert info.value.reason == "contract"
    assert message in info.value.message


@pytest.mark.parametrize("output", ["crossing", "nan"])
def test_a_contract_2_smoke_runs_every_window_at_each_calendar_edge(output: str) -> None:
    n_times = len(SMOKE_BAR_TIMES_S)
    for windows, rows in ((real_windows, 2 * n_times), (None, 2 * n_times)):
        with pytest.raises(ModelRejected) as info:
            load_model(build_model_v2(output=output), smoke_windows=windows)
        assert info.value.reason == "smoke"
        assert f"at {n_times} bar times each: {rows} rows are not finite" in info.value.message


def test_a_contract_2_smoke_feeds_every_calendar_edge_time() -> None:
    """A model whose output breaks only at Sunday 23:59 UTC is caught by the smoke check."""
    model = open_model(build_model_v2(), None)
    sunday_night = 1_704_067_140  # 2023-12-31 23:59 UTC
    assert sunday_night in SMOKE_BAR_TIMES_S
    seen: list[np.ndarray[Any, np.dtype[np.int64]]] = []

    class BreaksOnSundayNight:
        def __init__(self, session: Any) -> None:
            self._session = session

        def run(self, names: list[str], feed: dict[str, Any]) -> Any:
            seen.append(feed["bar_time"].copy())
            (out,) = self._session.run(names, feed)
            out[feed["bar_time"] == sunday_night] = np.nan
            return [out]

    broken = dataclasses.replace(model, session=BreaksOnSundayNight(model.session))
    with pytest.raises(ModelRejected, match="2 rows are not finite"):
        smoke_check(broken, real_windows(60))
    assert sorted(set(np.concatenate(seen).tolist())) == sorted(SMOKE_BAR_TIMES_S)
    smoke_check(model, real_windows(60))  # the fixture itself is fine at every edge


async def test_the_server_serves_contract_1_then_2_and_slices_times_with_the_chunks() -> None:
    server = ModelServer()
    v1 = load_model(build_model(version="v1"))
    v2 = load_model(build_model_v2(version="v2"))
    server.swap(v1)
    times = np.arange(1000, dtype=np.int64) * 60 + 1_704_067_200  # 1,000 distinct minutes
    batch = np.tile(WINDOWS, (500, 1, 1))
    out1 = await server.predict(batch, bar_time_s=times)  # contract 1 ignores the times
    np.testing.assert_allclose(out1, expected_output(batch, 15, DEFAULT_LEVELS, 0.001), rtol=1e-7)
    pending = asyncio.ensure_future(server.predict(batch[:7], v1, times[:7]))
    assert server.swap(v2) is v1
    np.testing.assert_array_equal(await pending, out1[:7])  # the round's model, to the end
    out2 = await server.predict(batch, bar_time_s=times)
    assert out2.shape == (1000, 15, 7)
    # each of the 16 chunks of 64 rows got its own rows' times, in order
    np.testing.assert_array_equal(out2, expected_output_v2(batch, times, 15, LEVELS_V2, 0.001))
    with pytest.raises(ValueError, match="needs the bar time"):
        await server.predict(batch)
    server.close()


async def test_the_watcher_swaps_contracts_and_refuses_a_window_longer_than_memory(
    tmp_path: Path,
) -> None:
    """Contract 1 -> 2 -> 1 through a directory registry; a 300-bar model is refused while the
    streamer keeps 240 bars per symbol (it could never forecast), and the old model serves."""
    from fixtures.models import publish_dir

    from streamer.io.model import RegistryWatcher

    root = tmp_path / "registry"
    server = ModelServer()
    watcher = RegistryWatcher(
        DirectoryRegistry(root), server, smoke_windows=real_windows, max_window=240
    )
    publish_dir(root, "v1", build_model(version="v1"))
    assert await watcher.check_once() and server.current is not None
    publish_dir(root, "v2", build_model_v2(version="v2", window=240))
    assert await watcher.check_once()
    assert server.current.spec.contract == 2 and server.current.version == "v2"
    publish_dir(root, "v3", build_model_v2(version="v3", window=300))
    assert not await watcher.check_once()
    assert dict(watcher.reload_failures_total) == {"contract": 1}
    assert "window of 300 bars, the streamer keeps 240" in (watcher.last_failure or "")
    assert server.current.version == "v2"
    (root / "current").write_text('{"version": "v1"}')
    assert await watcher.check_once()
    assert server.current.spec.contract == 1 and watcher.reload_successes_total == 3
    server.close()
