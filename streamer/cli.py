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
    from streamer.io.allocator import pin_mmap_threshold

    pin_mmap_threshold()

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
    from streamer.replay.cli import serve_from_args

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


DEMO_HELP = "live forecasts from the bundled real-data replay, no outside service needed"
DEMO_DESCRIPTION = (
    "Start the replay exchange on loopback with bundled real data, warm the windows over REST, "
    "serve the bundled model and show forecasts live. TICKCAST_REDIS_URL and TICKCAST_MQTT_URL, "
    "when set, make it use those servers."
)
REPLAY_HELP = "serve recorded real market data over an exchange's WebSocket and REST protocol"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickcast-streamer",
        description=(
            "Stream exchange trades into 1-minute bars (kept in Redis) and publish quantile "
            "forecasts. Settings come from TICKCAST_* environment variables and an optional "
            "TOML file; see docs/configuration.md."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from streamer.demo import add_arguments as add_demo_arguments
    from streamer.replay.cli import add_arguments as add_replay_arguments

    commands: list[tuple[str, Callable[[argparse.Namespace], int], str, str | None]] = [
        ("run", cmd_run, "run the streamer daemon (the service's main command)", None),
        ("check-config", cmd_check_config, "validate settings and print them, then exit", None),
        ("demo", cmd_demo, DEMO_HELP, DEMO_DESCRIPTION),
        ("replay-server", cmd_replay_server, REPLAY_HELP, None),
    ]
    for name, func, help_text, description in commands:
        command = sub.add_parser(name, help=help_text, description=description)
        command.set_defaults(func=func)
        if name in ("run", "check-config"):
            command.add_argument("--config", help="TOML settings file (also TICKCAST_CONFIG)")
        elif name == "demo":
            add_demo_arguments(command)
        else:
            add_replay_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except SettingsError as exc:
        print(f"tickcast-streamer: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    sys.exit(code)
