"""``tickcast-streamer demo`` as a user runs it: a subprocess, plain lines, ``--for`` to stop.

Runs side by side (the demo mostly waits on the replay clock, so they share two cores well):

* no outside service, the torch-free fixture model written to a temporary file, 25 s: exit 0 in
  time, forecast lines for BTCUSDT, ETHUSDT and SOLUSDT, and the closing line says the first
  forecast came less than 30 s after the start;
* the same with ``TICKCAST_REDIS_URL`` and ``TICKCAST_MQTT_URL`` pointing at real servers: the
  bars land in Redis (exactly the bundled klines) and a subscriber gets schema-valid forecasts;
* when the trainer's default model exists (``models/default/model.onnx``), a run without
  ``--model``.

Each demo process gets only PATH and the TICKCAST_* variables under test as its environment.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model
from support.mqtt import subscribed
from support.servers import REPO, ServerProcess
from support.streamer import SYMBOLS, stored_bars

from streamer.core.contracts.mqtt import validate_forecast_payload
from streamer.demo import DEFAULT_MODEL
from streamer.replay.data import bundled_kline_paths, load_source

pytestmark = pytest.mark.integration

PLAIN_FOR_S = 25.0
SHORT_FOR_S = 12.0
EXIT_ALLOWANCE_S = 15.0  # start-up before the --for clock starts, plus the ordered stop
FIRST_FORECAST_LIMIT_S = 30.0
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d binance:(\w+) close [\d,.]+ \| \+1m ")
CLOSING = re.compile(r"^tickcast demo: (\d+) forecasts; the first came ([\d.]+) s after start$")


@dataclass
class DemoRun:
    code: int
    seconds: float
    out: str

    def lines(self) -> list[str]:
        return self.out.splitlines()

    def symbols_forecast(self) -> set[str]:
        return {m.group(1) for line in self.lines() if (m := LINE.match(line))}

    def first_forecast_s(self) -> float:
        last = self.lines()[-1] if self.out else ""
        match = CLOSING.match(last)
        assert match, f"no closing line; output ends with:\n{self.out[-2000:]}"
        return float(match.group(2))


async def run_demo(duration_s: float, *args: str, env: dict[str, str] | None = None) -> DemoRun:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer", "demo", "--for", str(duration_s), "--plain", *args,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(duration_s + EXIT_ALLOWANCE_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"demo still running after {duration_s} s:\n{out.decode()}") from None
    return DemoRun(proc.returncode or 0, time.monotonic() - started, out.decode())


def check_plain_run(run: DemoRun, duration_s: float) -> None:
    assert run.code == 0, run.out[-3000:]
    assert run.seconds < duration_s + EXIT_ALLOWANCE_S
    assert run.lines()[0].startswith("tickcast demo: replaying BTCUSDT, ETHUSDT, SOLUSDT from ")
    assert run.symbols_forecast() == set(SYMBOLS), run.out[-3000:]
    assert run.first_forecast_s() < FIRST_FORECAST_LIMIT_S
    forecasts = sum(1 for line in run.lines() if LINE.match(line))
    assert int(CLOSING.match(run.lines()[-1]).group(1)) == forecasts  # type: ignore[union-attr]


async def test_demo_plain_and_with_redis_and_mqtt(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="demo-fixture", window=60, horizon=15))
    services = {
        "TICKCAST_REDIS_URL": redis_server.url,
        "TICKCAST_MQTT_URL": mosquitto_server.url,
    }
    runs = [
        run_demo(PLAIN_FOR_S, "--model", str(model)),
        run_demo(SHORT_FOR_S, "--model", str(model), env=services),
    ]
    with_default = DEFAULT_MODEL.is_file()
    if with_default:
        runs.append(run_demo(SHORT_FOR_S))
    async with subscribed(mosquitto_server.port) as subscriber:
        plain, serviced, *default = await asyncio.gather(*runs)

    check_plain_run(plain, PLAIN_FOR_S)
    assert "model " + str(model) in plain.lines()[0]
    if with_default:
        check_plain_run(default[0], SHORT_FOR_S)
        assert str(DEFAULT_MODEL) in default[0].lines()[0]
    check_plain_run(serviced, SHORT_FOR_S)

    # Redis: the warm-up and the stream land in the real server, exactly the bundled klines
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for symbol in SYMBOLS:
            bars, _ = await stored_bars(client, "binance", symbol)
            assert len(bars) >= 240, (symbol, len(bars))  # the demo's 240 warm-up minutes
            source = load_source(next(p for p in bundled_kline_paths() if symbol in p.name))
            k = source.klines[source.index_at(bars[0].open_time_ms)]
            assert k.open_time_ms == bars[0].open_time_ms
            assert (bars[0].open, bars[0].close, bars[0].volume) == (
                float(k.open), float(k.close), float(k.volume),
            )  # fmt: skip
    finally:
        await client.aclose()

    # MQTT: schema-valid forecasts of every symbol reached the subscriber
    forecasts = subscriber.forecasts()
    topics = sorted({m.topic for m in subscriber.messages})
    assert {f["symbol"] for f in forecasts} == set(SYMBOLS), f"MQTT topics: {topics}"
    for payload in forecasts:
        assert validate_forecast_payload(payload) == [], payload
        assert payload["model"]["version"] == "demo-fixture"
