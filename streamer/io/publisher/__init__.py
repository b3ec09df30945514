"""MQTT publishing: options, the asyncio shell, and the one adapter onto aiomqtt's paho client.

The only package that imports aiomqtt. The queue's policy (drops, republishing, the in-flight
window) lives in ``streamer.core.publish_queue``.
"""

from streamer.io.publisher.options import MqttOptions, tls_context
from streamer.io.publisher.shell import MqttPublisher, PublishedHook

__all__ = ["MqttOptions", "MqttPublisher", "PublishedHook", "tls_context"]
