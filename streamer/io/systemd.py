"""systemd notifications (``Type=notify``): READY once serving, WATCHDOG pings from the loop.

The protocol is one datagram to ``$NOTIFY_SOCKET``; a dozen lines do not justify a dependency.
The pings come from the event loop itself, so a blocked loop stops them and systemd restarts
the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1_000_000 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
            return True
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": repr(exc)})
            return False

    async def watchdog(self) -> None:
        """Ping at half the watchdog interval for as long as the loop runs."""
        if not self.watchdog_s or not self.address:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
