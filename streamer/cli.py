"""``tickcast-streamer``: the daemon and its helpers, as subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from streamer.settings import Settings, SettingsError, load_settings

log = logging.getLogger("streamer")

EXIT_CONFIG = 2
EXIT_SECOND_SIGNAL = 130


def install_signal_handlers(on_first: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT asks for an ordered stop; a second one exits at once."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def handler(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
            on_first()
        else:
            log.warning("second signal, exiting now")
            os._exit(EXIT_SECOND_SIGNAL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


async def _run(settings: Settings) -> None:
    from streamer.app import Streamer

    streamer = Streamer(settings)
    install_signal_handlers(streamer.request_stop)
    await streamer.run()


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from streamer.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(_run(settings))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from streamer.io.store import redact_url

    shown = settings.model_dump()
    for key in ("redis_url", "model_registry"):
        if shown.get(key):
            shown[key] = redact_url(shown[key])
    for key, value in shown.items():
        print(f"{key} = {value!r}")
    return 0


def cmd_replay_server(args: argparse.Namespace) -> int:
    from streamer.logs import configure_logging
    from streamer.replay.server import serve_from_args

    configure_logging("INFO", False)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            task.cancel()

        install_signal_handlers(stop)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_from_args(args)

    asyncio.run(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo
    from streamer.logs import configure_logging

    configure_logging("WARNING", False)
    asyncio.run(run_demo(args, install_signal_handlers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickcast-streamer",
        description=(
            "Stream exchange trades into 1-minute bars (kept in Redis) and publish quantile "
            "forecasts. Settings come from TICKCAST_* environment variables and an optional "
            "TOML file; see README.md."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the streamer daemon (the service's main command)")
    run.add_argument("--config", help="TOML settings file (also TICKCAST_CONFIG)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate settings and print them, then exit")
    check.add_argument("--config", help="TOML settings file (also TICKCAST_CONFIG)")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser(
        "demo",
        help="live forecasts from the bundled real-data replay, no outside service needed",
        description=(
            "Start the replay exchange on loopback with bundled real data, warm the windows "
            "over REST, serve the bundled model and show forecasts live. TICKCAST_REDIS_URL "
            "and TICKCAST_MQTT_URL, when set, make it use those servers."
        ),
    )
    from streamer.demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser(
        "replay-server",
        help="serve recorded real market data over a Binance-compatible WebSocket and REST API",
    )
    from streamer.replay.server import add_arguments

    add_arguments(replay)
    replay.set_defaults(func=cmd_replay_server)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except SettingsError as exc:
        print(f"tickcast-streamer: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    sys.exit(code)
