"""The paho adapter (streamer/io/publisher/paho.py), the one user of aiomqtt's private paho client.

If an aiomqtt release stops keeping a paho client at ``aiomqtt.Client._client``, or paho stops
offering ``publish`` and ``on_publish`` as used, these tests fail with a message naming the
adapter. Against a real Mosquitto: QoS 1 publishes are ACKed through the adapter's callback,
aiomqtt's own publishes still complete while it is installed, and a publish on a closed
connection raises aiomqtt's error.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from support.servers import ServerProcess

from streamer.io.publisher.paho import PahoAdapterError, PahoPublisher, paho_client

pytestmark = pytest.mark.integration

ADAPTER = "streamer.io.publisher.paho"


async def test_aiomqtt_still_keeps_the_paho_client_the_adapter_publishes_on() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    try:
        paho = paho_client(client)
    except PahoAdapterError as exc:
        pytest.fail(f"aiomqtt changed under the {ADAPTER} adapter: {exc}")
    assert isinstance(paho, mqtt.Client)
    assert paho.on_publish is not None  # aiomqtt's own ACK handler, which the adapter chains


async def test_the_adapter_names_itself_when_the_paho_client_is_gone() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    client._client = object()  # type: ignore[assignment]  # what an aiomqtt refactor might do
    with pytest.raises(PahoAdapterError, match=rf"^{ADAPTER}: .*aiomqtt\.Client\._client"):
        PahoPublisher(client, lambda mid: False)


async def test_acks_come_back_through_the_adapter_and_aiomqtt_keeps_its_own(
    mosquitto_server: ServerProcess,
) -> None:
    ours: set[int] = set()
    acked: set[int] = set()
    changed = asyncio.Event()

    def on_ack(mid: int) -> bool:
        if mid not in ours:
            return False  # aiomqtt's: the adapter hands it on
        acked.add(mid)
        changed.set()
        return True

    async def all_acked() -> None:
        async with asyncio.timeout(5.0):
            while acked != ours:
                changed.clear()
                await changed.wait()

    async with aiomqtt.Client("127.0.0.1", mosquitto_server.port) as client:
        paho = paho_client(client)
        aiomqtt_handler = paho.on_publish
        with PahoPublisher(client, on_ack) as adapter:
            for i in range(20):
                mid = adapter.publish(f"tc/paho/{i}", b"x", 1, False)
                assert mid is not None  # QoS 1: out, waiting for its PUBACK
                ours.add(mid)
            # aiomqtt's own publish sees its ACK through the chained handler, not a timeout
            await client.publish("tc/paho/aiomqtt", b"y", qos=1, timeout=5.0)
            await all_acked()
            # QoS 0: out before publish returns (None), or on_publish says when it is written
            mid = adapter.publish("tc/paho/q0", b"z", 0, False)
            if mid is not None:
                ours.add(mid)
                await all_acked()
        assert paho.on_publish == aiomqtt_handler  # restored on exit
    with PahoPublisher(client, on_ack) as adapter, pytest.raises(aiomqtt.MqttCodeError):
        adapter.publish("tc/paho/late", b"x", 1, False)  # the connection is closed
