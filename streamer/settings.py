"""Streamer settings: parsed and validated once at start-up, frozen, then passed in.

Sources, highest priority first: keyword arguments (tests, the demo), ``TICKCAST_*`` environment
variables, then an optional TOML file (``TICKCAST_CONFIG`` or ``--config``). An unknown key in
either place, or a bad value, stops start-up with a message that names the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streamer.core.exchanges import get_exchange, names
from streamer.core.redact import redact_url
from streamer.core.redis_url import SCHEMES as REDIS_SCHEMES
from streamer.core.redis_url import parse_redis_url

ENV_PREFIX = "TICKCAST_"
CONFIG_ENV = "TICKCAST_CONFIG"
# the TOML file of the load_settings call in progress (never written into os.environ)
_CONFIG_FILE: ContextVar[str | None] = ContextVar("tickcast_config_file", default=None)


BinanceChannel = Literal["trade", "aggTrade", "kline_1m"]


def _default_binance_channels() -> list[BinanceChannel]:
    return ["trade"]


class SettingsError(ValueError):
    """Start-up configuration is invalid; the message names the offending key."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # --- feeds ---
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["binance:BTCUSDT", "binance:ETHUSDT"],
        description="feeds as exchange:SYMBOL, comma-separated in the environment",
    )
    binance_channels: Annotated[list[BinanceChannel], NoDecode] = Field(
        default_factory=_default_binance_channels,
        description="Binance streams; with only kline_1m the exchange's own bars are used",
    )
    ws_urls: dict[str, str] = Field(default_factory=dict, description="exchange -> WebSocket URL")
    rest_urls: dict[str, str] = Field(default_factory=dict, description="exchange -> REST URL")
    grace_ms: int = Field(2000, ge=0, le=60_000)
    future_tolerance_ms: int = Field(5000, ge=0)
    clock: Literal["wall", "watermark"] = "wall"
    tick_interval_s: float = Field(0.25, gt=0, le=10)
    stale_feed_s: float = Field(30.0, gt=0)
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    max_frame_bytes: int = Field(1 << 20, ge=1024)
    rotate_margin_s: float = Field(900.0, ge=0, description="reconnect this long before a cut")
    backfill_max_minutes: int = Field(1440, ge=1)

    # --- storage ---
    redis_url: str | None = Field(
        None,
        description="redis://, rediss://, redis+cluster:// or redis+sentinel://; unset = in memory",
    )
    window_cap: int = Field(1440, ge=1, description="bars kept per symbol in Redis")
    window_memory_bars: int = Field(
        240, ge=1, description="bars kept per symbol in memory; at least the model's window"
    )
    redis_buffer_max_bars: int = Field(100_000, ge=1)

    redis_password_file: Path | None = Field(None, description="file holding the Redis password")

    # --- model and forecasts ---
    model_registry: str | None = Field(
        None, description="registry directory, redis:// URL, or one .onnx file; unset = none"
    )
    model_poll_s: float = Field(5.0, gt=0)
    model_max_age_s: float | None = Field(7 * 86400.0, gt=0, description="older = stale")
    eval_horizons: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [1, 5, 15])
    eval_window_s: int = Field(86400, ge=60)
    calibration: Literal["on", "off"] = Field(
        "on",
        description="publish the online-calibrated band; off publishes the model's raw band "
        "(the calibrated one is still computed, for the coverage figures)",
    )

    # --- MQTT ---
    mqtt_url: str | None = Field(None, description="mqtt:// or mqtts://; unset = no MQTT")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = None
    mqtt_client_id: str | None = None
    mqtt_tls_ca_file: Path | None = None
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    mqtt_qos: int = Field(1, ge=0, le=2)
    mqtt_prefix: str = Field("tickcast", pattern=r"^[^+#\s]+$")
    mqtt_queue_max: int = Field(10_000, ge=1)

    # --- sharding (Kubernetes StatefulSet): replica i of n takes the symbols hashing to i ---
    shard_count: int = Field(1, ge=1)
    shard_index: int | None = Field(
        None, ge=0, description="unset: the ordinal suffix of HOSTNAME (pod-name-N), else 0"
    )

    # --- operations ---
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    instance: str = Field("tickcast", pattern=r"^[A-Za-z0-9_.-]+$")

    _split = field_validator("symbols", "binance_channels", "eval_horizons", mode="before")(
        _split_csv
    )

    @field_validator("eval_horizons")
    @classmethod
    def _check_horizons(cls, value: list[int]) -> list[int]:
        if not value or any(h < 1 for h in value) or len(set(value)) != len(value):
            raise ValueError("horizons must be distinct whole minutes >= 1")
        return sorted(value)

    @field_validator(
        "redis_password_file",
        "mqtt_password_file",
        "mqtt_tls_ca_file",
        "mqtt_tls_cert_file",
        "mqtt_tls_key_file",
    )
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one exchange:SYMBOL is needed")
        out = []
        for item in value:
            exchange, sep, symbol = item.partition(":")
            if not sep or not symbol:
                raise ValueError(f"{item!r} is not exchange:SYMBOL")
            if exchange not in names():
                raise ValueError(f"unknown exchange {exchange!r} (known: {', '.join(names())})")
            if "/" in symbol or " " in symbol:
                raise ValueError(f"symbol {symbol!r}: use the canonical form, e.g. BTC-USD")
            out.append(f"{exchange}:{symbol.upper()}")
        if len(set(out)) != len(out):
            raise ValueError("duplicate symbols")
        return out

    @field_validator("ws_urls", "rest_urls")
    @classmethod
    def _check_url_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key not in names():
                raise ValueError(f"unknown exchange {key!r} (known: {', '.join(names())})")
        return value

    @field_validator("ws_urls", "rest_urls")
    @classmethod
    def _check_url_schemes(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        schemes = ("ws", "wss") if info.field_name == "ws_urls" else ("http", "https")
        for exchange, url in value.items():
            if urlsplit(url).scheme not in schemes or not urlsplit(url).hostname:
                raise ValueError(f"{exchange}: need {' or '.join(schemes)}://host URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            if urlsplit(value).scheme not in REDIS_SCHEMES:
                raise ValueError(
                    "need a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL"
                )
            parse_redis_url(value)  # its ValueError shows the URL redacted
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError("need mqtt://host[:port] or mqtts://host[:port]")
        return value

    @field_validator("model_registry")
    @classmethod
    def _check_registry(cls, value: str | None) -> str | None:
        scheme = urlsplit(value).scheme if value is not None and "://" in value else None
        if scheme is not None and scheme not in REDIS_SCHEMES:
            raise ValueError("need a directory, an .onnx file or a redis:// URL")
        if scheme is not None and value is not None:
            parse_redis_url(value)
        return value

    @field_validator("metrics_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", value):
                raise ValueError("need an IP address or a host name, without a port") from None
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            raise ValueError("shard_index must be < shard_count")
        if (self.mqtt_tls_cert_file is None) != (self.mqtt_tls_key_file is None):
            raise ValueError("mqtt_tls_cert_file and mqtt_tls_key_file go together")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """No password in a log line or a traceback: the URLs are shown redacted."""
        for key, value in super().__repr_args__():
            if key in ("redis_url", "model_registry") and isinstance(value, str):
                value = redact_url(value)
            yield key, value

    def shard(self) -> int:
        """This replica's shard: the setting, else the StatefulSet ordinal in HOSTNAME."""
        if self.shard_index is not None:
            return self.shard_index
        if self.shard_count == 1:
            return 0
        ordinal = os.environ.get("HOSTNAME", "").rpartition("-")[2]
        if not ordinal.isdigit() or int(ordinal) >= self.shard_count:
            raise SettingsError(
                "TICKCAST_SHARD_INDEX is unset and HOSTNAME has no ordinal below "
                f"TICKCAST_SHARD_COUNT={self.shard_count}"
            )
        return int(ordinal)

    def mqtt_password_value(self) -> str | None:
        """The MQTT password: from its file if one is named, else the setting, else None."""
        if self.mqtt_password_file is not None:
            return self.mqtt_password_file.read_text().strip()
        return self.mqtt_password.get_secret_value() if self.mqtt_password else None

    def redis_password_value(self) -> str | None:
        if self.redis_password_file is not None:
            return self.redis_password_file.read_text().strip()
        return None

    def feeds(self) -> dict[str, list[str]]:
        """This shard's symbols grouped by exchange, in configured order."""
        grouped: dict[str, list[str]] = {}
        shard = self.shard()
        for item in self.symbols:
            if shard_of(item, self.shard_count) != shard:
                continue
            exchange, _, symbol = item.partition(":")
            grouped.setdefault(exchange, []).append(symbol)
        return grouped

    def ws_url(self, exchange: str) -> str:
        return self.ws_urls.get(exchange, get_exchange(exchange).default_ws_url)

    def rest_url(self, exchange: str) -> str:
        return self.rest_urls.get(exchange, get_exchange(exchange).default_rest_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _CONFIG_FILE.get() or os.environ.get(CONFIG_ENV)
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def shard_of(symbol: str, shard_count: int) -> int:
    """Stable shard of ``exchange:SYMBOL``: the same on every replica, run and Python."""
    return zlib.crc32(symbol.encode()) % shard_count


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the frozen settings or raise SettingsError naming the bad key."""
    if config is None:
        config = os.environ.get(CONFIG_ENV) or None
    if config is not None and not Path(config).is_file():
        raise SettingsError(f"config file {config} does not exist")
    known = {_env_name(f) for f in Settings.model_fields} | {CONFIG_ENV}
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(f"unknown setting {', '.join(unknown)} in the environment")
    token = _CONFIG_FILE.set(str(config) if config is not None else None)
    try:
        settings = Settings(**overrides)
        settings.shard()  # a replica that cannot tell its shard must not start
        return settings
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            field = key.split(".")[0]
            where = f"{key} ({_env_name(field)})" if field in Settings.model_fields else key
            problems.append(f"{where}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except (OSError, ValueError) as exc:  # unreadable TOML, or a value that is not JSON
        named = re.search(r'field "(\w+)"', str(exc))
        where = f" ({_env_name(named.group(1))})" if named else ""
        raise SettingsError(f"cannot read settings{where}: {exc}") from None
    finally:
        _CONFIG_FILE.reset(token)
