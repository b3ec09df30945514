"""The ``replay-server`` command: options, and running the server until cancelled or done."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from datetime import UTC, datetime

from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS
from streamer.replay.data import Source, bundled_kline_paths, load_source, symbol_from_path
from streamer.replay.faults import Faults
from streamer.replay.server import DIALECTS, ReplayServer

log = logging.getLogger(__name__)

DEFAULT_PORT = 9443  # Binance's stream port
DEFAULT_REST_PORT = 9444  # the REST port next to it
# where each venue's streamer URLs point, relative to the replay's ws/rest URLs
WS_PATHS = {
    "binance": "",
    "coinbase": "",
    "kraken": "/v2",
    "okx": "/ws/v5/public",
    "bybit": "/v5/public/spot",
    "bitstamp": "",
}
# venues whose symbols are spelt like Binance's (``BTCUSDT``)
COMPACT_SYMBOLS = frozenset({"binance", "bybit", "bitstamp"})


def venue_symbol(venue: str, symbol: str) -> str:
    """A bundled Binance symbol as ``venue`` spells it: ``BTCUSDT`` -> ``BTC-USDT`` on Coinbase,
    Kraken and OKX; as it is on Binance, Bybit and Bitstamp."""
    if venue in COMPACT_SYMBOLS or "-" in symbol or not symbol.endswith("USDT"):
        return symbol
    return f"{symbol[:-4]}-USDT"


def parse_data_time(text: str, first_ms: int) -> int:
    """A data time: epoch ms, ISO-8601 (UTC unless it says otherwise), or ``+MINUTES`` after
    the data's first minute."""
    text = text.strip()
    if text.startswith("+"):
        return first_ms + int(float(text[1:]) * MINUTE_MS)
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _speed(text: str) -> float:
    if text.lower() == "max":
        return 0.0
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"speed must be >= 0 or 'max', not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``replay-server`` subcommand's options."""
    parser.description = (
        "Replay recorded real market data over one venue's WebSocket (--port) and REST "
        "(--rest-port) protocol (--venue: Binance spot by default, Coinbase Exchange, Kraken "
        "spot v2, OKX v5, Bybit v5 spot, Bitstamp). Point the streamer's ws/rest URLs of that "
        "venue at it (Binance, Coinbase and Bitstamp ws://HOST:PORT, Kraken ws://HOST:PORT/v2, "
        "OKX ws://HOST:PORT/ws/v5/public, Bybit ws://HOST:PORT/v5/public/spot; REST "
        "http://HOST:REST_PORT). Without --source it replays the bundled 1-minute Binance klines "
        "of BTCUSDT, ETHUSDT and SOLUSDT (on Coinbase, Kraken and OKX as BTC-USDT, ETH-USDT, "
        "SOL-USDT)."
    )
    parser.add_argument(
        "--venue",
        choices=sorted(DIALECTS),
        default="binance",
        help="the protocol to speak (default %(default)s)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="[SYMBOL=]PATH",
        help="trade or 1m-kline CSV (.csv or .csv.gz); repeat for several symbols. The symbol "
        "defaults to the file name's first '_'-separated part",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=60.0,
        help="data ms per wall ms (60 = one data minute per second); 0 or 'max' = as fast as "
        "the client reads (default 60)",
    )
    parser.add_argument(
        "--start",
        help="where streaming starts: epoch ms, ISO-8601 UTC, or +MINUTES after the data's "
        "first minute; REST serves everything before it (default: the first minute)",
    )
    parser.add_argument("--loop", action="store_true", help="repeat the data, shifted in time")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="WebSocket port (default %(default)s)"
    )
    parser.add_argument(
        "--rest-port", type=int, default=DEFAULT_REST_PORT, help="REST port (default %(default)s)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="start the replay clock at once instead of at the first subscription",
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="exit once all data has been sent"
    )
    faults = parser.add_argument_group("fault injection (for tests)")
    faults.add_argument("--drop-at", metavar="TIME", help="drop all connections at this data time")
    faults.add_argument(
        "--drop-after-messages", type=int, metavar="N", help="drop once N data frames are sent"
    )
    faults.add_argument(
        "--drop-close-frame",
        action="store_true",
        help="drop with a close frame (default: abort TCP without one)",
    )
    faults.add_argument(
        "--refuse-after-drop", type=float, default=0.0, metavar="S", help="then 503 for S seconds"
    )
    faults.add_argument(
        "--refuse-for", type=float, default=0.0, metavar="S", help="503 upgrades for S s at start"
    )
    faults.add_argument("--stall-at", metavar="TIME", help="stall connections at this data time")
    faults.add_argument(
        "--stall-after-messages", type=int, metavar="N", help="stall once N data frames are sent"
    )
    faults.add_argument("--stall-s", type=float, default=5.0, metavar="S", help="stall length")
    faults.add_argument(
        "--malformed-every", type=int, metavar="N", help="a malformed frame before every Nth"
    )
    faults.add_argument("--rest-429", type=int, default=0, metavar="K", help="next K: HTTP 429")
    faults.add_argument("--rest-418", type=int, default=0, metavar="K", help="then K: HTTP 418")
    faults.add_argument("--retry-after", type=int, default=1, metavar="S", help="Retry-After")


def _source_arg(text: str) -> Source:
    symbol, sep, path = text.partition("=")
    return load_source(path, symbol) if sep else load_source(text)


async def serve_from_args(args: argparse.Namespace) -> None:
    """Run the replay server until cancelled (or, with --exit-when-done, until the data ends)."""
    venue = args.venue
    sources = [_source_arg(s) for s in args.source] or [
        load_source(p, venue_symbol(venue, symbol_from_path(p))) for p in bundled_kline_paths()
    ]
    first = min(s.first_open_ms for s in sources)

    def data_time(text: str | None) -> int | None:
        return None if text is None else parse_data_time(text, first)

    server = ReplayServer(
        sources,
        args.speed,
        host=args.host,
        port=args.port,
        rest_port=args.rest_port,
        start_ms=data_time(args.start),
        loop=args.loop,
        wait_for_subscriber=not args.no_wait,
        dialect=venue,
        faults=Faults(
            drop_at_ms=data_time(args.drop_at),
            drop_after_messages=args.drop_after_messages,
            drop_with_close_frame=args.drop_close_frame,
            refuse_after_drop_s=args.refuse_after_drop,
            stall_at_ms=data_time(args.stall_at),
            stall_after_messages=args.stall_after_messages,
            stall_s=args.stall_s,
            malformed_every=args.malformed_every,
            rest_429=args.rest_429,
            rest_418=args.rest_418,
            retry_after_s=args.retry_after,
        ),
    )
    async with server:
        if args.refuse_for > 0:
            server.refuse_connections(args.refuse_for)
        log.info(
            "%s replay server on %s (REST %s): %s from %s to %s, streaming from %s",
            venue,
            server.ws_url + WS_PATHS.get(venue, ""),
            server.rest_url,
            ",".join(server.sources),
            iso_seconds(first),
            iso_seconds(server.end_ms),
            iso_seconds(server.start_ms),
        )
        if args.exit_when_done:
            await server.wait_finished()
        else:
            await asyncio.Event().wait()
