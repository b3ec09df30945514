"""Minute close to the last forecast published to a real Mosquitto, for 1,000 and 10 symbols.

The real pipeline pieces run on one event loop as the app runs them: a ``BarAggregator`` holding
the minute's trades is closed by the clock, the closed bars go into ``Windows``, the
``BufferedBarWriter`` (its own task) writes them to a real redis-server with one
``RedisBarStore.write`` round, the ``Forecaster`` (its own task) runs the batch through
onnxruntime in chunks on the ``ModelServer``'s worker thread and hands each chunk's checked
forecasts to ``MqttSink`` as soon as it is done, and
``MqttPublisher`` (its own task) publishes them QoS 1, retained, to a real mosquitto started
here with ``set_tcp_nodelay true``. The online evaluator scores every bar, so from the second
minute on a skill message per symbol follows the forecasts, as in production.

"Published" is the broker's PUBACK of the minute's last forecast (the publisher's view).
Received is stricter: a subscriber in its own process (``mosquitto_sub``, QoS 1 subscription)
notes the ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process) at which it
holds all N forecasts of the minute.

Bars are real Binance 1-minute klines of BTCUSDT, ETHUSDT and SOLUSDT (2023-04-27..05-01,
bundled in streamer/replay/data/), spread over N symbol names at different offsets and
replayed as the replay exchange's four trades per minute. The model is the trainer's
models/default/model.onnx when it exists, else the torch-free fixture model of
tests/fixtures/models.py (window 60, horizon 15: the graph is trivial, so inference is a lower
bound there). Minutes are closed back to back with the loop idle in between (no trade traffic
during a close); the first rounds warm up and are not counted. With 40-60 closes, p99 is the
worst or second-worst close. The windows start with the model window plus two bars (a close
reads only the tail; memory at the full cap is bench_memory.py's subject).

The breakdown: the phases of a close in order (they add up to close -> last ACK), the Redis
write round and the inference thread's time (both concurrent with them). What-ifs for tuning,
not the default: ``--no-skill`` (no skill publishes after the forecasts), ``--inflight N``.

    .venv/bin/python bench/bench_forecast_pipeline.py [--rounds 40] [--symbols 1000 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
from benchkit import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture model builder

from fixtures.models import build_model  # noqa: E402

from streamer.core.bars import BarAggregator  # noqa: E402
from streamer.core.types import MINUTE_MS, Bar, Forecast, Trade  # noqa: E402
from streamer.core.windows import Windows  # noqa: E402
from streamer.io.forecaster import Forecaster  # noqa: E402
from streamer.io.model import FloatArray, ModelServer, load_model  # noqa: E402
from streamer.io.publisher import MqttOptions, MqttPublisher  # noqa: E402
from streamer.io.sinks import MqttSink  # noqa: E402
from streamer.io.store import BufferedBarWriter, RedisBarStore  # noqa: E402
from streamer.replay.data import Source, bundled_kline_paths, load_source  # noqa: E402

NAME = "forecast_pipeline"
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
TARGETS_P99_MS = {1000: 250.0, 10: 20.0}
WARMUP_ROUNDS = 3
GRACE_MS = 2000
WINDOW_CAP = 1440
IDLE_S = 0.05  # quiet loop between the end of one minute's work and the next close

# The subscriber: Mosquitto's own C client (mosquitto-clients), so that receiving 1,000
# messages costs the shared two cores little; a small Python process reads its lines.
SUBSCRIBER = r"""
import signal, subprocess, sys, time
port, n, prefix, qos = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
argv = ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", port, "-q", qos,
        "-t", f"{prefix}/forecast/#", "-F", "%p"]
sub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, lambda *_: (sub.kill(), sys.exit(0)))
MARK = b'"bar_time":"'
counts = {}
for line in sub.stdout:
    if not line.startswith(b"{"):  # -d: its own events, line-buffered by stdbuf
        if b"SUBACK" in line:
            print("ready", flush=True)
        continue
    i = line.find(MARK) + len(MARK)
    bar_time = line[i : i + 20].decode()
    counts[bar_time] = counts.get(bar_time, 0) + 1
    if counts[bar_time] == n:
        print(f"{bar_time} {time.monotonic()!r}", flush=True)
"""


def figure(name: str, value: float, target: float | None = None, unit: str = "ms") -> None:
    benchkit.figure(f"{NAME}.{name}", round(value, 3), unit, target)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# ---- servers ------------------------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.02)


@contextmanager
def servers(workdir: Path) -> Iterator[tuple[int, int]]:
    """A redis-server and a mosquitto (TCP_NODELAY on) on free loopback ports."""
    redis_port, mqtt_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    redis_bin = shutil.which("redis-server") or "/usr/sbin/redis-server"
    mosquitto_bin = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    redis_argv = [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    procs = [
        subprocess.Popen(
            [*redis_argv, "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL
        ),
        subprocess.Popen([mosquitto_bin, "-c", str(conf)], stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for_port(redis_port, procs[0])
        wait_for_port(mqtt_port, procs[1])
        yield redis_port, mqtt_port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


# ---- data ---------------------------------------------------------------------------------


@dataclass
class Market:
    """N symbol names over the three real series, each at its own offset into its series."""

    n: int
    sources: list[Source] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sources = [load_source(p) for p in bundled_kline_paths()]
        self.base_ms = self.sources[0].first_open_ms

    def symbol(self, i: int) -> str:
        return f"S{i:04d}USDT"

    def _index(self, i: int, minute: int) -> tuple[Source, int]:
        source = self.sources[i % len(self.sources)]
        return source, (minute + 37 * i) % len(source.klines)

    def bar(self, i: int, minute: int) -> Bar:
        source, index = self._index(i, minute)
        k = source.klines[index]
        t = self.base_ms + minute * MINUTE_MS
        return Bar(
            "binance", self.symbol(i), t, float(k.open), float(k.high), float(k.low),
            float(k.close), float(k.volume), k.trades,
        )  # fmt: skip

    def trades(self, minute: int) -> list[Trade]:
        """The replay exchange's trades of ``minute`` for every symbol, on one timeline."""
        t = self.base_ms + minute * MINUTE_MS
        out = []
        for i in range(self.n):
            source, index = self._index(i, minute)
            k0 = source.klines[index].open_time_ms
            for j, row in enumerate(source.minute_trades(index)):
                out.append(
                    Trade(
                        "binance",
                        self.symbol(i),
                        (t // MINUTE_MS) * 4 + j,
                        t + row.ts_ms - k0,
                        float(row.price),
                        float(row.qty),
                        "sell" if row.buyer_is_maker else "buy",
                    )
                )
        return out


# ---- the measured pipeline ----------------------------------------------------------------


class TimedServer(ModelServer):
    """The real ModelServer; when a round's first chunk was submitted is noted."""

    first_started: float | None = None

    def submit(self, *args: Any, **kwargs: Any) -> asyncio.Future[tuple[FloatArray, float]]:
        """``ModelServer.submit`` unchanged, once a round's first call is noted."""
        if self.first_started is None:
            self.first_started = time.monotonic()
        return super().submit(*args, **kwargs)


class TimedForecaster(Forecaster):
    """The real Forecaster; the start and end of each round and of its skill step are noted.

    ``skill = False`` is a what-if (``--no-skill``): no skill figures after the forecasts.
    """

    server: TimedServer
    round_started: float = 0.0
    round_ended: float = 0.0
    skill_seconds: float = 0.0
    skill = True

    async def publish_skill(self, forecasts: list[Forecast]) -> None:
        started = time.monotonic()
        if self.skill:
            await super().publish_skill(forecasts)
        self.skill_seconds = time.monotonic() - started

    async def forecast_round(self) -> list[Forecast]:
        self.round_started = time.monotonic()
        self.server.first_started = None
        forecasts = await super().forecast_round()
        self.round_ended = time.monotonic()
        return forecasts


# the phases of one close, in order; they add up to close -> last ACK
PHASES = {
    "close_bars": "bar close, windows, bars handed to the forecaster and the Redis writer "
    "(to round start)",
    "features": "due symbols with full windows, the first chunk's float32 batch (to its "
    "submission to the worker thread)",
    "inference_and_forecasts": "inference in chunks on the worker thread, overlapped with "
    "gathering the next chunks and with building, checking, encoding and queueing each "
    "chunk's forecasts (which the publisher sends at once)",
    "mqtt_to_last_ack": "publisher: round end to the last forecast's PUBACK (the skill step, "
    "computed after the forecasts are queued in slices that yield to the loop, overlaps it)",
}


@dataclass
class Samples:
    received: list[float] = field(default_factory=list)  # close -> all N received
    ack: list[float] = field(default_factory=list)  # close -> last forecast ACKed
    redis: list[float] = field(default_factory=list)  # the Redis write round (concurrent)
    mqtt_to_last_received: list[float] = field(default_factory=list)  # round end -> received
    inference_compute: list[float] = field(default_factory=list)  # worker thread, all chunks
    phases: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in [*PHASES, "skill"]}
    )


async def run_pipeline(
    n: int,
    rounds: int,
    redis_port: int,
    mqtt_port: int,
    model_bytes: bytes,
    *,
    sub_qos: int,
    inflight_max: int,
    skill: bool,
) -> Samples:
    market = Market(n)
    model = load_model(model_bytes, source="bench")
    window = model.spec.window
    warm = window + 2
    prefix = f"bench{n}"
    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBSCRIBER, str(mqtt_port), str(n), prefix, str(sub_qos),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert subscriber.stdout is not None
    assert (await subscriber.stdout.readline()).strip() == b"ready"

    windows = Windows(WINDOW_CAP)
    agg = BarAggregator("binance", grace_ms=GRACE_MS)
    warm_bars = [market.bar(i, m) for i in range(n) for m in range(warm)]
    windows.apply(warm_bars)
    for i in range(n):
        agg.seed(market.bar(i, warm - 1))
    store = RedisBarStore.from_url(f"redis://127.0.0.1:{redis_port}/0", cap=WINDOW_CAP)
    await store.write(warm_bars)

    samples = Samples()
    redis_rounds: list[float] = []
    redis_done, acks_done = asyncio.Event(), asyncio.Event()

    def on_redis_round(seconds: float) -> None:
        redis_rounds.append(seconds)
        redis_done.set()

    acks: list[float] = []

    def on_forecast_ack(_close_to_ack_s: float) -> None:
        acks.append(time.monotonic())
        if len(acks) == n:
            acks_done.set()

    writer = BufferedBarWriter(store, on_write_latency=on_redis_round)
    options = MqttOptions(
        url=f"mqtt://127.0.0.1:{mqtt_port}", prefix=prefix, inflight_max=inflight_max
    )
    publisher = MqttPublisher(options)
    sink = MqttSink(publisher, 86_400, lambda: time.time_ns() // 1_000_000, on_forecast_ack)
    compute: list[float] = []  # the worker thread's time of the minute's round, all chunks

    def on_round(inference_s: float, _close_to_publish_s: float, _forecasts: int) -> None:
        compute.append(inference_s)

    server = TimedServer()
    server.swap(model)
    forecaster = TimedForecaster(
        windows, server, sink, eval_horizons=[1, 5, 15], eval_window_ms=86_400_000,
        wall_clock_ms=lambda: time.time_ns() // 1_000_000, on_round=on_round,
    )  # fmt: skip
    forecaster.skill = skill
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(writer.run(), name="redis-writer"),
                tg.create_task(forecaster.run(), name="forecaster"),
            ]
            publisher_task = tg.create_task(publisher.run(), name="mqtt-publisher")
            while not publisher.connected:  # noqa: ASYNC110 (the publisher has no event)
                await asyncio.sleep(0.01)
            gc.freeze()  # as Streamer._serve does once start-up is done
            for r in range(rounds + WARMUP_ROUNDS):
                minute = warm + r
                for trade in market.trades(minute):
                    agg.add(trade)
                # the last minute's tail (skill publishes) is out before the next close
                while publisher.queued or writer.buffered:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                await asyncio.sleep(IDLE_S)
                acks.clear()
                compute.clear()
                redis_rounds.clear()
                acks_done.clear()
                redis_done.clear()
                # -- the minute closes: what Streamer._on_bars does with the closed bars --
                closed_at = time.monotonic()
                bars = agg.on_clock(market.base_ms + (minute + 1) * MINUTE_MS + GRACE_MS)
                assert len(bars) == n, len(bars)
                windows.apply(bars)
                forecaster.on_bars(bars)
                writer.submit(bars)
                line = await asyncio.wait_for(subscriber.stdout.readline(), 30)
                received_at = float(line.split()[1])
                await asyncio.wait_for(acks_done.wait(), 30)
                await asyncio.wait_for(redis_done.wait(), 30)
                if r < WARMUP_ROUNDS:
                    continue
                f, last_ack = forecaster, acks[n - 1]
                samples.received.append(received_at - closed_at)
                samples.ack.append(last_ack - closed_at)
                samples.redis.append(sum(redis_rounds))
                samples.mqtt_to_last_received.append(received_at - f.round_ended)
                assert server.first_started is not None
                marks = [closed_at, f.round_started, server.first_started, f.round_ended, last_ack]
                for phase, start, end in zip(PHASES, marks, marks[1:], strict=False):
                    samples.phases[phase].append(end - start)
                samples.phases["skill"].append(f.skill_seconds)
                samples.inference_compute.append(sum(compute))
            await publisher.close(5.0)
            for task in tasks:
                task.cancel()
            await publisher_task
    finally:
        server.close()
        await store.close()
        subscriber.terminate()
        await subscriber.wait()
    return samples


def report(n: int, s: Samples, model_name: str, skill: bool) -> None:
    target = TARGETS_P99_MS.get(n)
    prefix = f"{n}_symbols"

    def both(name: str, seconds: list[float], with_target: bool = False) -> None:
        ms = [v * 1000 for v in seconds]
        figure(f"{prefix}.{name}_p50", statistics.median(ms))
        figure(f"{prefix}.{name}_p99", p99(ms), target if with_target else None)

    both("close_to_last_received", s.received, with_target=True)
    both("close_to_last_ack", s.ack, with_target=True)
    for phase, seconds in s.phases.items():
        both(f"phase.{phase}", seconds)
    both("inference_thread_time", s.inference_compute)
    both("redis_write_round", s.redis)
    both("mqtt_round_end_to_last_received", s.mqtt_to_last_received)
    figure(f"{prefix}.closes_measured", len(s.received), unit="count")
    print(
        f"# {n} symbols, {len(s.received)} closes, model {model_name}"
        f"{'' if skill else ', WITHOUT skill publishes (what-if)'}.\n"
        "# close_to_last_received: a separate subscriber process holds all N forecasts of the "
        "minute; close_to_last_ack: the publisher's last forecast PUBACK.\n"
        + "".join(f"# phase.{k}: {v}\n" for k, v in PHASES.items())
        + "# inference_thread_time: the worker thread's time in onnxruntime, all chunks\n"
        "# redis_write_round: BufferedBarWriter round, concurrent with the phases above (its "
        "wall time includes waiting for the busy loop)",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="closes measured per size")
    parser.add_argument("--symbols", type=int, nargs="+", default=[1000, 10])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sub-qos", type=int, default=1, choices=(0, 1))
    parser.add_argument(
        "--inflight", type=int, default=MqttOptions().inflight_max, help="MqttOptions.inflight_max"
    )
    parser.add_argument(
        "--no-skill", action="store_true", help="what-if: no skill publishes after the forecasts"
    )
    args = parser.parse_args()
    model_path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    if model_path is not None:
        model_bytes, model_name = model_path.read_bytes(), str(model_path)
    else:
        model_bytes = build_model(window=60, horizon=15)
        model_name = "tests/fixtures/models.build_model(window=60, horizon=15)"
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (redis_port, mqtt_port):
        for n in args.symbols:
            rounds = args.rounds or (40 if n >= 500 else 60)
            samples = asyncio.run(
                run_pipeline(
                    n,
                    rounds,
                    redis_port,
                    mqtt_port,
                    model_bytes,
                    sub_qos=args.sub_qos,
                    inflight_max=args.inflight,
                    skill=not args.no_skill,
                )
            )
            report(n, samples, model_name, not args.no_skill)


if __name__ == "__main__":
    main()
