"""Fault: Mosquitto is stopped in the middle of a stream and started again 3 s later.

Expected: the daemon goes on forecasting into its bounded queue while the broker is away and
reports it (/readyz ``mqtt: false``, ``tickcast_mqtt_up`` 0); once the broker is back it
reconnects, says ``online`` again on the retained status topic, publishes what it queued,
and republishes the newest payload of any topic with nothing newer queued, so the restarted
broker (no persistence: it lost every retained message) again holds the newest forecast and
the skill figures of every symbol. Publishing resumes at every minute close and nothing is dropped.

The status topic goes ``offline`` and back: a Mosquitto stopped with SIGTERM sends the last
will of each connected client (ours: ``offline``, retained) to the subscribers still connected
before it exits, and the daemon says ``online`` again on reconnecting. (The last will on process
death: tests/integration/test_publisher.py; the publisher alone across broker restarts:
test_publisher.py::test_broker_restart_resumes_and_republishes_the_newest_per_topic.)

Checked afterwards: every bar the exchange side sent is in Redis exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.faults import missing_forecast_minutes, stored_exactly_once
from support.mqtt import STATUS, retained_messages
from support.servers import ServerProcess
from support.streamer import SYMBOLS, KlineReplay, http_get, is_ready, model_registry, scrape
from support.waits import wait_until

from streamer.core.contracts.mqtt import forecast_topic, skill_topic
from streamer.core.timefmt import iso_seconds, parse_iso_ms
from streamer.core.types import MINUTE_MS

pytestmark = pytest.mark.integration

SPEED = 100.0  # a data minute every 0.6 s


def skill(symbol: str) -> str:
    return skill_topic("tickcast", "binance", symbol)


async def test_broker_restart_resumes_publishing_and_restores_the_retained_state(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    replay = KlineReplay(44, stream_from=20)
    registry = model_registry(tmp_path)
    publishing = replay.publishing(redis_server, mosquitto_server, registry, speed=SPEED)
    async with publishing as (sub, server, streamer):
        publisher = streamer.publisher
        assert publisher is not None
        port = streamer.ops.port
        # every topic published once before the broker goes: a symbol's skill figures go out
        # every 5 minutes (staggered), and only once something has been scored
        await wait_until(
            lambda: all(len(sub.forecasts(s)) >= 3 and sub.on(skill(s)) for s in SYMBOLS),
            20,
            "forecasts and skill figures of every symbol",
        )
        assert sub.status() == [b"online"]
        before_stop = {s: sub.forecasts(s)[-1]["bar_time"] for s in SYMBOLS}

        mosquitto_server.stop()  # SIGTERM: it sends our will, then exits

        async def mqtt_down() -> bool:
            status, body = await http_get(port, "/readyz")
            return status == 503 and body["checks"] == {
                "feeds": True, "store": True, "mqtt": False, "model": True,
            }  # fmt: skip

        await wait_until(mqtt_down, 10, "/readyz to report MQTT down")
        made = streamer.serving.forecaster.published_total
        await wait_until(
            lambda: streamer.serving.forecaster.published_total >= made + 3 * len(SYMBOLS),
            10,
            "forecasts made while the broker is away",
        )
        queued_before = publisher.queued  # while the broker is away the queue only grows
        down = await scrape(port)
        assert down["tickcast_mqtt_up"][()] == 0
        assert 0 < queued_before <= down["tickcast_mqtt_queued_messages"][()] <= publisher.queued

        mosquitto_server.start()
        # Everything queued while the broker was away, and the newest payload of every
        # other topic, republished: all ACKed, so the broker has stored them. (Not
        # ``queued == 0``: that holds as soon as the drain has handed the payloads to the
        # client, while the broker may still be reading them.)
        await wait_until(
            lambda: publisher.connected and publisher.queue.idle,
            15,
            "reconnected, with everything queued ACKed",
        )
        assert publisher.connections_total == 2
        await wait_until(lambda: is_ready(port), 10, "/readyz 200 once MQTT is back")
        state = await retained_messages(mosquitto_server.port)
        newest_after = await scrape(port)
        assert state[STATUS] == b"online"
        for symbol in SYMBOLS:
            key = (("exchange", "binance"), ("symbol", symbol))
            # at least the newest forecast made before the broker came back; at most the
            # newest made by the time it was read
            low = down["tickcast_forecast_bar_time_seconds"][key] * 1000
            high = newest_after["tickcast_forecast_bar_time_seconds"][key] * 1000
            kept = json.loads(state[forecast_topic("tickcast", "binance", symbol)])
            assert low <= parse_iso_ms(kept["bar_time"]) <= high, symbol
            assert skill(symbol) in state, sorted(state)
        resumed_at = server.clock_ms()
        await server.wait_finished()
        end = server.clock_ms()
        last_closed = replay.last_closed(end)
        await wait_until(
            lambda: all(
                sub.forecasts(s)[-1]["bar_time"] == iso_seconds(last_closed) for s in SYMBOLS
            ),
            10,
            "the last minute's forecasts",
        )
    # the ordered stop after the test said offline (``publishing``), and nothing was dropped
    assert publisher.dropped_total == 0
    assert publisher.errors_total >= 1

    # online; the will at the broker's stop; online on reconnecting; offline at our stop
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = [parse_iso_ms(f["bar_time"]) for f in sub.forecasts(symbol)]
        # every minute, once; minutes published while the test subscriber itself was
        # reconnecting may be missing, but only inside the outage
        gaps = missing_forecast_minutes(times, replay.start - MINUTE_MS, last_closed)
        assert all(parse_iso_ms(before_stop[symbol]) < t < resumed_at for t in gaps), (symbol, gaps)
        after_restart = [t for t in times if t >= resumed_at - MINUTE_MS]
        assert missing_forecast_minutes(after_restart, after_restart[0], last_closed) == []
    assert await stored_exactly_once(redis_server.url, replay.sources, end) == []
