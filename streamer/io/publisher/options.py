"""MQTT connection and queue settings, and the TLS context they call for."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, fields
from urllib.parse import unquote, urlsplit

from streamer.core.redact import redact_url
from streamer.core.retry import RetryPolicy

SCHEMES = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True, repr=False)
class MqttOptions:
    """Connection and queue settings; the password never appears in ``repr`` or logs."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    qos: int = 1
    retain: bool = True
    client_id: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    prefix: str = "tickcast"
    instance: str = "tickcast"
    keepalive_s: int = 30
    timeout_s: float = 10.0  # connect, one publish's ACK, disconnect
    queue_max: int = 10_000
    inflight_max: int = 1000  # a minute's forecasts for 1,000 symbols go out at once
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(
                f"mqtt url must be mqtt://host[:port] or mqtts://host[:port], "
                f"got {redact_url(self.url)!r}"
            )
        if self.qos not in (0, 1, 2):
            raise ValueError(f"mqtt qos must be 0, 1 or 2, got {self.qos}")
        if self.queue_max < 1 or self.inflight_max < 1:
            raise ValueError("mqtt queue_max and inflight_max must be at least 1")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("mqtt tls_cert_file and tls_key_file go together")
        for name in ("prefix", "instance"):
            value = getattr(self, name)
            if not value or any(c in value for c in "+#\0"):
                raise ValueError(f"mqtt {name} {value!r} is not a valid topic level")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = redact_url(self.url)
        if self.password is not None:
            shown["password"] = "***"
        return f"MqttOptions({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or SCHEMES[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls_ca_file is not None

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        """Username and password: explicit options win over those in the URL."""
        parts = urlsplit(self.url)
        username = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password or (unquote(parts.password) if parts.password else None)
        return username, password

    @property
    def reconnect_policy(self) -> RetryPolicy:
        """Delays between connection attempts: jittered, doubling from the initial to the cap."""
        return RetryPolicy(initial_s=self.reconnect_initial_s, max_s=self.reconnect_max_s)


def tls_context(options: MqttOptions) -> ssl.SSLContext | None:
    """Verifying client context (system CAs unless a CA file is given), client cert optional."""
    if not options.tls:
        return None
    context = ssl.create_default_context(cafile=options.tls_ca_file)
    if options.tls_cert_file is not None:
        context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context
