"""What the test harnesses share, one copy each.

- ``waits``: ``wait_until``, the one bounded wait of the tests (sync or async conditions).
- ``servers``: redis-server and Mosquitto processes on free loopback ports (``ServerProcess``).
- ``mqtt``: a ``Subscriber`` recording every message, and the broker's retained state.
- ``streamer``: a ``Streamer`` on the replay exchange, a ``python -m streamer run`` process, and
  reading back what they stored and exposed.
- ``faults``: the checks every fault test ends with.
- ``parsers``: what every exchange parser's output must satisfy, for the property tests.

Imported as ``support.<module>``: ``tests/`` is on ``sys.path`` (pytest's rootdir conftest
insertion), as for ``fixtures``.
"""
