"""The replay exchange's REST endpoint: an aiohttp application serving a dialect's routes.

It runs on its own port (``ReplayServer.rest_url``). Every request is counted in
``sent.rest_requests`` and logged in ``rest_log`` with its arrival time and status, so tests can
check how a client paced its requests. The venue's ``request_limits`` (requests per IP within a
sliding window) answer what is over them with the venue's throttling body, the used weight
(``request_weights``) is reported and capped per minute, and throttled routes answer the
``Faults`` rest_429/rest_418 first, with ``Retry-After``. A route's ``{name}`` segments match
any one path segment (``/products/{product_id}/candles``), and the handler gets their values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple, Protocol

from aiohttp import web

from streamer.replay.dialect import Dialect
from streamer.replay.faults import Faults, SentStats
from streamer.replay.limits import RequestRate, VenueRules, WeightPerMinute
from streamer.replay.routes import RestReply, RestRequest, RestRoute
from streamer.replay.timeline import Timeline

_CONTENT_TYPE = "application/json;charset=UTF-8"


class RestLogEntry(NamedTuple):
    arrived: float  # time.monotonic() when the request arrived
    path: str
    status: int


class RestExchange(Protocol):
    """What the REST endpoint reads and updates on the running replay exchange."""

    faults: Faults
    sent: SentStats
    rest_log: list[RestLogEntry]
    timeline: Timeline
    rules: VenueRules
    weight: WeightPerMinute | None
    request_rates: list[RequestRate]  # one per rule of ``rules.request_limits``

    def clock_ms(self) -> int: ...


def match_route(
    routes: Mapping[str, RestRoute], path: str
) -> tuple[RestRoute, dict[str, str]] | None:
    """The route serving ``path`` and the values of its ``{name}`` segments."""
    route = routes.get(path)
    if route is not None:
        return route, {}
    segments = path.split("/")
    for pattern, candidate in routes.items():
        parts = pattern.split("/")
        if "{" not in pattern or len(parts) != len(segments):
            continue
        values: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}") and segment:
                values[part[1:-1]] = segment
            elif part != segment:
                break
        else:
            return candidate, values
    return None


def answer(dialect: Dialect, exchange: RestExchange, path: str, query: str) -> RestReply:
    """The reply to ``GET path?query``, with the venue's request limits, its request weight
    (a venue with ``request_weights`` reports the weight used this minute in every answer, and
    answers 429 once an IP has used the limit) and the throttling faults applied."""
    exchange.sent.rest_requests += 1
    found = match_route(dialect.rest_routes, path)
    if found is None:
        return dialect.rest_not_found(path)
    route, path_params = found
    over = _over_a_limit(exchange, path)
    if over is not None:
        exchange.sent.rest_throttled += 1
        return dialect.rest_throttled(over)
    weighed = _weigh(exchange, path)
    if weighed is not None and not weighed[0] and exchange.weight is not None:
        exchange.sent.rest_throttled += 1
        wait = str(60 - int(exchange.weight.wall_s()) % 60)
        return replace(dialect.rest_throttled(429), headers={"Retry-After": wait, **weighed[1]})
    headers = {} if weighed is None else weighed[1]
    if route.throttled:
        status = exchange.faults.take_rest_throttle()
        if status is not None:
            exchange.sent.rest_throttled += 1
            retry_after = {"Retry-After": str(exchange.faults.retry_after_s)}
            return replace(dialect.rest_throttled(status), headers=retry_after | headers)
    reply = route.handler(RestRequest(query, exchange.clock_ms(), exchange.timeline, path_params))
    return replace(reply, headers={**reply.headers, **headers}) if headers else reply


def _over_a_limit(exchange: RestExchange, path: str) -> int | None:
    """Count the request against the venue's request limits: the status of the first it is
    over; None: within them all."""
    now = time.monotonic()
    for rate in exchange.request_rates:
        paths = rate.rule.paths
        if (not paths or path in paths) and not rate.admit(now):
            return rate.rule.status
    return None


def _weigh(exchange: RestExchange, path: str) -> tuple[bool, dict[str, str]] | None:
    """Spend the request's weight: (allowed, the used-weight header); None: no weights."""
    rules = exchange.rules
    if rules.request_weights is None or exchange.weight is None:
        return None
    allowed, used = exchange.weight.spend(
        rules.request_weights.get(path, 1), exchange.weight.wall_s()
    )
    return allowed, {rules.weight_header: str(used)}


class RestServer:
    """``dialect``'s REST routes over HTTP for ``exchange``, on ``host:port`` (0: a free one)."""

    def __init__(self, dialect: Dialect, exchange: RestExchange) -> None:
        self.dialect = dialect
        self.exchange = exchange
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        assert self._port is not None, "start() first"
        return self._port

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        path = request.rel_url.raw_path
        reply = answer(self.dialect, self.exchange, path, request.rel_url.raw_query_string)
        self.exchange.rest_log.append(RestLogEntry(arrived, path, reply.status))
        headers = {"Content-Type": _CONTENT_TYPE, **reply.headers}
        body = json.dumps(reply.body, separators=(",", ":")).encode()
        return web.Response(status=reply.status, body=body, headers=headers)
