"""Fault: while the streamer serves model v1, the "trainer" overwrites the model file in place
with, one after another: bytes that are not ONNX (a corrupt copy), a valid ONNX model that
breaks the contract (its output is not named ``quantiles``), the first half of v2 (the trainer
crashed mid-write), and a model whose quantiles cross on real windows. Finally it writes v2
whole.

Expected: each bad file is refused with its reason (``corrupt``, ``contract``, ``corrupt``,
``smoke``) and counted, v1 keeps serving (readiness stays true) and forecasting every minute
close, and v2 swaps in once it is whole, between two rounds: no minute skipped or forecast
twice, one switch from v1 to v2.

The registry is a single model file, the kind a trainer without a registry writes; it has no
manifest, so only loading, the contract and the smoke inference stand between a bad file and
the forecasts. (A truncated copy caught by the manifest's sha256 in the directory registry,
end to end: tests/integration/test_forecast_e2e.py; every refusal per registry backend:
test_model_registry.py.)

Checked afterwards: every bar the exchange side sent is in Redis exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import build_model
from support.faults import FaultRun
from support.servers import ServerProcess
from support.streamer import HORIZON, SYMBOLS, WINDOW, http_get, scrape
from support.waits import wait_until

from streamer.core.types import MINUTE_MS

pytestmark = pytest.mark.integration


def not_onnx(good: bytes) -> bytes:
    data = bytearray(good)
    data[10:80] = b"\xfe" * 70
    return bytes(data)


async def test_bad_model_files_are_refused_while_the_old_model_keeps_serving(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    v1 = build_model(version="v1", window=WINDOW, horizon=HORIZON, band=0.001)
    v2 = build_model(version="v2", window=WINDOW, horizon=HORIZON, band=0.002)
    bad_files = [
        ("corrupt", not_onnx(v1)),
        ("contract", build_model(version="v9", window=WINDOW, horizon=HORIZON, output_name="out")),
        ("corrupt", v2[: len(v2) // 2]),  # the trainer died halfway through writing v2
        ("smoke", build_model(version="v8", window=WINDOW, horizon=HORIZON, output="crossing")),
    ]
    model = tmp_path / "model.onnx"
    model.write_bytes(v1)
    run = FaultRun(48)
    sink = run.sink
    async with run.replaying(redis_server.url, model, model_poll_s=0.05) as (server, streamer):
        watcher = streamer.serving.watcher
        assert watcher is not None
        port = streamer.ops.port

        async def refused_while_v1_serves(n: int, reason: str, data: bytes) -> None:
            at = run.start + (3 * n + 1) * MINUTE_MS
            await wait_until(lambda: server.clock_ms() >= at, 20, f"minute of file {n}")
            refused_before = watcher.reload_failures_total[reason]
            made = len(sink.forecasts)
            model.write_bytes(data)  # in place, as a naive trainer writes
            await wait_until(
                lambda: watcher.reload_failures_total[reason] == refused_before + 1,
                10,
                f"file {n} refused as {reason}",
            )
            current = streamer.serving.server.current
            assert current is not None and current.version == "v1"
            assert (await http_get(port, "/readyz"))[1]["checks"]["model"] is True
            await wait_until(
                lambda: len(sink.forecasts) >= made + 2 * len(SYMBOLS), 10, "v1 forecasting"
            )

        for n, (reason, data) in enumerate(bad_files, start=1):
            await refused_while_v1_serves(n, reason, data)
        model.write_bytes(v2)
        await wait_until(lambda: watcher.reload_successes_total == 2, 10, "v2 swapped in")
        end = await run.finish(server, redis_server.url)
        metrics = await scrape(port)

    assert dict(watcher.reload_failures_total) == {"corrupt": 2, "contract": 1, "smoke": 1}
    failures = metrics["tickcast_model_reload_failures_total"]
    assert {labels[0][1]: v for labels, v in failures.items()} == {
        "corrupt": 2, "contract": 1, "smoke": 1,
    }  # fmt: skip
    assert metrics["tickcast_model_reloads_total"][()] == 2
    for symbol in SYMBOLS:
        versions = [f.model_version for f in sink.forecasts if f.symbol == symbol]
        switch = versions.index("v2")
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
        assert switch >= 4 * 2  # v1 served through every bad file
    await run.check(redis_server.url, end)
