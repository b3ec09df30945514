"""Render the Grafana dashboard's main panels to docs/dashboard.png from a real streamer run.

Grafana cannot be installed here, so this draws the same queries with matplotlib: a real
Streamer runs on the replay exchange (the bundled real Binance bars) with real Redis and
Mosquitto, /metrics is scraped at every replayed minute, and each panel is computed from the
scrapes as its PromQL would (rates over data time, histogram_quantile with linear
interpolation, the forecast shifted by its horizon).

    .venv/bin/python tests/deploy/render_dashboard.py [--model PATH] [--minutes 180]

The model is models/default/model.onnx when it exists, else --model, else the test fixture
model (the last close as median with a fixed band: its skill is exactly 0 by construction).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import aiohttp  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from deploy_paths import REPO  # noqa: E402
from fixtures.models import build_model, publish_redis  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from support.servers import mosquitto_process, redis_process  # noqa: E402
from support.streamer import settings_for  # noqa: E402

from streamer.app import Streamer  # noqa: E402
from streamer.core.types import MINUTE_MS  # noqa: E402
from streamer.replay.data import bundled_kline_paths, load_source  # noqa: E402
from streamer.replay.server import ReplayServer  # noqa: E402

DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
OUT = REPO / "docs" / "dashboard.png"
SPEED = 200.0
HORIZON_SHOWN = 5
Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    data_ms: int
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        for key, value in self.samples.get(name, {}).items():
            if all((k, v) in key for k, v in labels.items()):
                return value
        return None

    def series(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})


async def scrape(session: aiohttp.ClientSession, port: int, data_ms: int) -> Scrape:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    out = Scrape(data_ms)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.samples.setdefault(sample.name, {})[key] = sample.value
    return out


async def collect(model: bytes, version: str, minutes: int) -> tuple[list[Scrape], list[str]]:
    tmp = Path(tempfile.mkdtemp(prefix="tickcast-render-"))
    redis_server, broker = redis_process(tmp), mosquitto_process(tmp)
    redis_server.start()
    broker.start()
    sources = [load_source(p) for p in bundled_kline_paths()]
    start = max(s.first_open_ms for s in sources) + 120 * MINUTE_MS
    end = start + minutes * MINUTE_MS
    client = aioredis.from_url(redis_server.url)
    await publish_redis(client, version, model)
    scrapes: list[Scrape] = []
    try:
        async with ReplayServer(sources, speed=SPEED, start_ms=start) as server:
            settings = settings_for(
                server,
                [s.symbol for s in sources],
                redis_url=redis_server.url,
                mqtt_url=broker.url,
                model_registry=redis_server.url,
                eval_horizons=[1, 5, 15],
                model_max_age_s=None,
            )
            streamer = Streamer(settings, clock=server.clock_ms)
            task = asyncio.create_task(streamer.run())
            await asyncio.wait_for(streamer.started.wait(), 60)
            assert streamer.ops.port is not None
            async with aiohttp.ClientSession() as session:
                next_ms = start
                while server.clock_ms() < end:
                    now = server.clock_ms()
                    if now >= next_ms:
                        scrapes.append(await scrape(session, streamer.ops.port, now))
                        next_ms = now - now % MINUTE_MS + MINUTE_MS
                    await asyncio.sleep(0.02)
            streamer.request_stop()
            await asyncio.wait_for(task, 60)
    finally:
        await client.aclose()
        redis_server.stop()
        broker.stop()
    return scrapes, [s.symbol for s in sources]


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def rate(scrapes: list[Scrape], name: str, window_min: int, **labels: str) -> list[float]:
    """Per-second increase over the last ``window_min`` data minutes, like rate()."""
    out = []
    for i, s in enumerate(scrapes):
        j = max(0, i - window_min)
        a, b = scrapes[j].get(name, **labels), s.get(name, **labels)
        dt = (s.data_ms - scrapes[j].data_ms) / 1000
        out.append((b - a) / dt if a is not None and b is not None and dt > 0 else math.nan)
    return out


def histogram_quantile(q: float, scrapes: list[Scrape], name: str, window_min: int) -> list[float]:
    """Prometheus' histogram_quantile over bucket increases in the window."""
    out = []
    for i, s in enumerate(scrapes):
        j = max(0, i - window_min)
        buckets: dict[float, float] = defaultdict(float)
        for key, value in s.series(name + "_bucket").items():
            le = float(dict(key)["le"])
            before = scrapes[j].series(name + "_bucket").get(key, 0.0)
            buckets[le] += value - before
        ordered = sorted(buckets.items())
        total = ordered[-1][1] if ordered else 0.0
        if total <= 0:
            out.append(math.nan)
            continue
        rank, lower_le, lower_count = q * total, 0.0, 0.0
        value = math.nan
        for le, count in ordered:
            if count >= rank:
                if math.isinf(le):
                    value = lower_le
                else:
                    value = lower_le + (le - lower_le) * (rank - lower_count) / (
                        count - lower_count
                    )
                break
            lower_le, lower_count = le, count
        out.append(value)
    return out


def render(scrapes: list[Scrape], symbols: list[str], model_note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    plt.style.use("dark_background")
    times = [datetime.fromtimestamp(s.data_ms / 1000, UTC) for s in scrapes]
    shift = HORIZON_SHOWN  # scrapes are one a minute: the forecast made h minutes earlier
    fig, axes = plt.subplots(3, 3, figsize=(18, 11.5))
    fig.patch.set_facecolor("#111217")

    def style(ax: Axes, title: str, unit: str = "") -> None:
        ax.set_facecolor("#181b1f")
        ax.set_title(title, fontsize=10, loc="left", color="#ccccdc")
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        ax.tick_params(labelsize=8, colors="#9fa7b3")
        if unit:
            ax.set_ylabel(unit, fontsize=8, color="#9fa7b3")

    for ax, symbol in zip(axes[0][:2], symbols[:2], strict=False):
        close = [s.get("tickcast_price_close", symbol=symbol) for s in scrapes]
        levels, h = {}, str(HORIZON_SHOWN)
        for q in ("0.1", "0.5", "0.9"):
            made = [
                s.get("tickcast_forecast_price", symbol=symbol, horizon=h, quantile=q)
                for s in scrapes
            ]
            levels[q] = [math.nan] * shift + [math.nan if v is None else v for v in made[:-shift]]
        ax.fill_between(
            times,
            levels["0.1"],
            levels["0.9"],
            color="#5794f2",
            alpha=0.25,
            linewidth=0,
            label="0.1-0.9 band",
        )
        ax.plot(
            times,
            [math.nan if v is None else v for v in close],
            color="#e0e0e0",
            lw=1.4,
            label="close",
        )
        ax.plot(times, levels["0.5"], color="orange", lw=1, ls="--", label="median")
        style(ax, f"{symbol}: close vs forecast made {HORIZON_SHOWN} min earlier", "USDT")
        ax.legend(fontsize=8, loc="upper left")

    ax = axes[0][2]
    for exchange in ("binance",):
        ax.plot(times, rate(scrapes, "tickcast_trades_total", 2, exchange=exchange), label=exchange)
    style(ax, "Trades per second by exchange (data time)")
    ax.legend(fontsize=8)

    for ax, name, title, unit in (
        (axes[1][0], "tickcast_online_skill", "Skill vs persistence by horizon", "ratio"),
        (axes[1][1], "tickcast_online_coverage_ratio", "Interval coverage by horizon", "ratio"),
    ):
        for h in ("1", "5", "15"):
            ax.plot(
                times, [nan_if_none(s.get(name, horizon=h)) for s in scrapes], label=f"h={h} min"
            )
        if "coverage" in name:
            ax.axhline(0.8, color="#73bf69", lw=0.8, ls=":")
            ax.set_ylim(0, 1.05)
        else:  # at least +-5 %: a persistence-like model's skill hovers within 1e-5 of 0
            ax.axhline(0, color="#f2495c", lw=0.8, ls=":")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, -0.05), max(high, 0.05))
        style(ax, title, unit)
        ax.legend(fontsize=8)

    ax = axes[1][2]
    for h in ("1", "5", "15"):
        ax.plot(
            times,
            [nan_if_none(s.get("tickcast_online_mae_bps", horizon=h)) for s in scrapes],
            label=f"model MAE h={h}",
        )
        ax.plot(
            times,
            [nan_if_none(s.get("tickcast_online_persistence_mae_bps", horizon=h)) for s in scrapes],
            ls=":",
            label=f"persistence h={h}",
        )
    style(ax, "MAE, basis points", "bp")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[2][0]
    window = 5
    for level, name, label in (
        (0.5, "tickcast_close_to_publish_seconds", "close to publish p50"),
        (0.99, "tickcast_close_to_publish_seconds", "close to publish p99"),
        (0.99, "tickcast_inference_seconds", "inference p99"),
        (0.99, "tickcast_redis_write_seconds", "Redis write p99"),
    ):
        ms = [v * 1000 for v in histogram_quantile(level, scrapes, name, window)]
        ax.plot(times, ms, label=label)
    style(ax, "Latency (5 data minutes)", "ms")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)

    ax = axes[2][1]
    for name, label in (
        ("tickcast_mqtt_dropped_total", "MQTT dropped"),
        ("tickcast_mqtt_errors_total", "MQTT errors"),
        ("tickcast_redis_write_errors_total", "Redis write errors"),
        ("tickcast_redis_dropped_bars_total", "Redis dropped bars"),
    ):
        ax.plot(times, [s.get(name) or 0.0 for s in scrapes], label=label)
    ax.plot(times, [s.get("tickcast_redis_up") or 0.0 for s in scrapes], lw=2, label="Redis up")
    ax.plot(times, [s.get("tickcast_mqtt_up") or 0.0 for s in scrapes], ls="--", label="MQTT up")
    style(ax, "Redis and MQTT: up, errors and drops (totals)")
    ax.set_ylim(-0.1, 1.5)
    ax.legend(fontsize=8, ncol=2)

    ax = axes[2][2]
    ax.plot(
        times,
        [(s.get("tickcast_forecasts_published_total") or 0.0) for s in scrapes],
        label="forecasts published (total)",
    )
    ax.plot(
        times,
        [(s.get("tickcast_mqtt_published_total") or 0.0) for s in scrapes],
        label="MQTT acknowledged (total)",
    )
    last = scrapes[-1]
    version = next((dict(k)["version"] for k in last.series("tickcast_model_info")), "-")
    age = last.get("tickcast_model_age_seconds")
    reloads = last.get("tickcast_model_reloads_total")
    style(ax, "Forecasts and the model")
    ax.text(
        0.02,
        0.97,
        f"model {version}\nage {age:.0f} s\nreloads {reloads:.0f}",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        color="#ccccdc",
    )
    ax.legend(fontsize=8, loc="lower right")

    day = times[0].strftime("%Y-%m-%d")
    fig.suptitle(
        f"tickcast dashboard panels: a real streamer on the replay exchange (real Binance 1m bars, "
        f"{day} UTC), /metrics scraped every data minute; {model_note}",
        fontsize=11,
        color="#ccccdc",
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=80, facecolor=fig.get_facecolor())
    print(f"wrote {OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an ONNX model (contract 1)")
    parser.add_argument("--minutes", type=int, default=180, help="data minutes to replay")
    args = parser.parse_args()
    path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    if path is not None:
        model, version, note = path.read_bytes(), "default", f"model {path.name}"
    else:
        trained_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        model = build_model(version="fixture", band=0.0008, trained_at=trained_at)
        version, note = "fixture", "fixture model (median = last close, fixed band)"
    started = time.monotonic()
    scrapes, symbols = asyncio.run(collect(model, version, args.minutes))
    print(f"{len(scrapes)} scrapes in {time.monotonic() - started:.0f} s")
    render(scrapes, symbols, note)


if __name__ == "__main__":
    main()
