"""The one place that reaches past aiomqtt's public API: publishing straight on its paho client.

aiomqtt's own ``publish`` costs a task, a future and a timer per message, about 100 us each,
which for 1,000 forecasts was over half of a minute close's time to the broker. So the
publisher's payloads go to the paho client aiomqtt wraps (``aiomqtt.Client._client``, private)
and their ACKs come back through paho's ``on_publish`` callback, chained in front of aiomqtt's
own handler, which still sees the ACKs of aiomqtt's publishes (the status topic).

What is relied on, checked by ``paho_client`` (and by tests/integration/test_publisher_paho.py):
``_client`` is a ``paho.mqtt.client.Client`` with ``publish(topic, payload, qos, retain)``
returning an ``MQTTMessageInfo`` (``rc``, ``mid``, ``is_published()``) and a settable
``on_publish``. If an aiomqtt release changes any of it, update this adapter, or publish
through ``aiomqtt.Client.publish`` and accept its cost.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

AckHook = Callable[[int], bool]  # message id -> True if it was one of ours


class PahoAdapterError(RuntimeError):
    """aiomqtt no longer exposes the paho client this adapter publishes on."""


def paho_client(client: aiomqtt.Client) -> mqtt.Client:
    """The paho client inside ``client``; raises PahoAdapterError, naming this module, if the
    private surface this adapter uses is gone."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, mqtt.Client):
        raise PahoAdapterError(
            f"{__name__}: aiomqtt {_version()} no longer keeps a paho.mqtt.client.Client at "
            f"aiomqtt.Client._client (found {type(paho).__name__}); update this adapter"
        )
    missing = []
    if not callable(getattr(paho, "publish", None)):
        missing.append("publish()")
    if not isinstance(getattr(type(paho), "on_publish", None), property):
        missing.append("the on_publish callback property")
    for name in ("rc", "mid", "is_published"):
        if not hasattr(mqtt.MQTTMessageInfo, name):
            missing.append(f"MQTTMessageInfo.{name}")
    if missing:
        raise PahoAdapterError(
            f"{__name__}: the paho client of aiomqtt {_version()} lacks {', '.join(missing)}; "
            "update this adapter"
        )
    return paho


def _version() -> str:
    return str(getattr(aiomqtt, "__version__", "?"))


class PahoPublisher:
    """Publishes on ``client``'s paho client while entered; ``on_ack(mid)`` hears each ACK."""

    def __init__(self, client: aiomqtt.Client, on_ack: AckHook) -> None:
        self._paho = paho_client(client)
        self._on_ack = on_ack
        self._chained: Callable[..., None] | None = None

    def __enter__(self) -> PahoPublisher:
        chained = self._chained = self._paho.on_publish
        on_ack = self._on_ack

        def on_publish(c: Any, userdata: Any, mid: int, *args: Any) -> None:
            if not on_ack(mid) and chained is not None:  # one of aiomqtt's own publishes
                chained(c, userdata, mid, *args)

        self._paho.on_publish = on_publish
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._paho.on_publish = self._chained

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Send now; the message id whose ACK to wait for, or None when it is already out
        (QoS 0). Raises aiomqtt.MqttCodeError when paho refuses (the connection is gone)."""
        info = self._paho.publish(topic, payload, qos, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        return None if info.is_published() else info.mid
