"""Rolling windows of closed 1-minute bars, in Redis or in memory, and the daemon's buffered writer.

Redis keys (DESIGN.md section 3.3; ``{symbol}`` is the canonical symbol, e.g. ``BTCUSDT``):

``tickcast:bars:{exchange}:{symbol}`` (list)
    Closed bars, oldest first, each a compact JSON array
    ``[open_time_ms, open, high, low, close, volume, trades]``; open times strictly increase.
    Capped to the newest 1440 bars (one day; configurable) with LTRIM.
``tickcast:incomplete:{exchange}:{symbol}`` (sorted set)
    Open times (member and score, in ms) of the bars in that list that overlapped a feed outage
    and wait for a backfilled replacement. Backfill removes them; marks of bars that fell off the
    capped list are pruned whenever marks are added or removed, so the set never outgrows the
    list.

Every write round is one EVALSHA of a Lua script carrying all symbols, so a minute close costs
one round trip however many symbols close. The script appends only bars newer than a list's last
bar, so a round retried after a connection error (applied or not) never duplicates a bar; older
bars go through ``repair``, which merges them in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, Protocol

import hiredis
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streamer.core.backoff import Backoff
from streamer.core.codec import bars_key, decode_bar, encode_bar, incomplete_key
from streamer.core.redact import redact_url as redact_url  # re-exported: its old home
from streamer.core.types import Bar

log = logging.getLogger(__name__)

DEFAULT_CAP = 1440


class StoreError(Exception):
    """The store refused a round; retrying the same round will not help."""


class StoreUnavailable(StoreError):
    """The store could not be reached in time; the round may or may not have been applied."""


class BarStore(Protocol):
    async def write(self, bars: Sequence[Bar]) -> None:
        """Append closed bars newer than each window's last one, all symbols in one round."""

    async def repair(self, bars: Sequence[Bar]) -> None:
        """Merge backfilled bars: replace same open times, fill missing minutes, keep the cap."""

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        """The newest ``count`` bars, oldest first, ``complete`` flags restored."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def _by_window(bars: Sequence[Bar]) -> dict[tuple[str, str], list[Bar]]:
    """Bars grouped per (exchange, symbol), sorted by open time; of equal open times the last wins.

    Both stores start from this so that they agree on what a round means.
    """
    groups: dict[tuple[str, str], list[Bar]] = {}
    for bar in bars:
        group = groups.get((bar.exchange, bar.symbol))
        if group is None:
            groups[bar.exchange, bar.symbol] = [bar]
        else:
            group.append(bar)
    for key, group in groups.items():
        if len(group) > 1:
            latest = {bar.open_time_ms: bar for bar in group}
            groups[key] = [latest[t] for t in sorted(latest)]
    return groups


def _check_cap(cap: int) -> int:
    if cap < 1:
        raise ValueError(f"bar store cap must be >= 1, got {cap}")
    return cap


# Both scripts take KEYS = per window, its bars list then its incomplete set; ARGV[1] = cap and
# ARGV[1 + w] = window w's bars sorted by open time, one encoded bar per line, an incomplete
# bar prefixed with "!". One argument per window, not three per bar, keeps a 1,000-symbol round
# at ~3,000 arguments to pack and parse. An entry that is not a bar (written by something else)
# never fails a round, which would hold up every symbol: append treats the list as having no
# last bar, repair drops the entry, load skips it.
_LUA_PRELUDE = """
local cap = tonumber(ARGV[1])
local function open_time(raw) return string.match(raw, '^%[(%-?%d+)') end
local function open_time_n(raw) return tonumber(open_time(raw) or '') end
-- (encoded bar, open time as text, incomplete?) per line of a window's argument
local function parse(arg)
  local out = {}
  for line in string.gmatch(arg, '[^\\n]+') do
    local incomplete = string.byte(line, 1) == 33
    if incomplete then line = string.sub(line, 2) end
    out[#out + 1] = {line, open_time(line), incomplete}
  end
  return out
end
local function push(key, items)
  local len = 0
  for i = 1, #items, 1000 do
    len = redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
  return len
end
-- marks of bars no longer in the list go; called whenever marks are added or removed, which
-- bounds the set by the cap without a call per round
local function prune_marks(bars_key, inc_key)
  local first = redis.call('LINDEX', bars_key, 0)
  if not first then
    redis.call('DEL', inc_key)
  elseif open_time(first) then
    redis.call('ZREMRANGEBYSCORE', inc_key, '-inf', '(' .. open_time(first))
  end
end
"""

# Appends only bars newer than the list's last one: a retried round adds nothing.
_LUA_APPEND = (
    _LUA_PRELUDE
    + """
local appended = 0
for w = 1, #KEYS / 2 do
  local bars_key, arg = KEYS[2 * w - 1], ARGV[w + 1]
  local last = redis.call('LINDEX', bars_key, -1)
  local last_t = last and open_time_n(last) or nil
  if not string.find(arg, '[\\n!]') then
    -- the common case, one complete bar: no parsing into tables
    if last_t == nil or tonumber(open_time(arg)) > last_t then
      if redis.call('RPUSH', bars_key, arg) > cap then redis.call('LTRIM', bars_key, -cap, -1) end
      appended = appended + 1
    end
  else
    local inc_key = KEYS[2 * w]
    local fresh, marked = {}, false
    for _, bar in ipairs(parse(arg)) do
      local t = tonumber(bar[2])
      if last_t == nil or t > last_t then
        fresh[#fresh + 1] = bar[1]
        last_t = t
        if bar[3] then
          redis.call('ZADD', inc_key, bar[2], bar[2])
          marked = true
        end
      end
    end
    if #fresh > 0 then
      if push(bars_key, fresh) > cap then redis.call('LTRIM', bars_key, -cap, -1) end
      if marked then prune_marks(bars_key, inc_key) end
      appended = appended + #fresh
    end
  end
end
return appended
"""
)

# Merges bars into the list: same open time replaced, missing minutes inserted, order kept.
_LUA_REPAIR = (
    _LUA_PRELUDE
    + """
local merged = 0
for w = 1, #KEYS / 2 do
  local bars_key, inc_key = KEYS[2 * w - 1], KEYS[2 * w]
  local old = redis.call('LRANGE', bars_key, 0, -1)
  local old_t = {}
  for j = 1, #old do old_t[j] = open_time_n(old[j]) end
  local out = {}
  local i = 1
  for _, bar in ipairs(parse(ARGV[w + 1])) do
    local t = tonumber(bar[2])
    while i <= #old and (old_t[i] == nil or old_t[i] < t) do
      if old_t[i] then out[#out + 1] = old[i] end
      i = i + 1
    end
    if i <= #old and old_t[i] == t then i = i + 1 end
    out[#out + 1] = bar[1]
    if bar[3] then
      redis.call('ZADD', inc_key, bar[2], bar[2])
    else
      redis.call('ZREM', inc_key, bar[2])
    end
    merged = merged + 1
  end
  while i <= #old do
    if old_t[i] then out[#out + 1] = old[i] end
    i = i + 1
  end
  redis.call('DEL', bars_key)
  if push(bars_key, out) > cap then redis.call('LTRIM', bars_key, -cap, -1) end
  prune_marks(bars_key, inc_key)
end
return merged
"""
)


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_APPEND = _Script(_LUA_APPEND)
_REPAIR = _Script(_LUA_REPAIR)


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of the asyncio client's Python packer.

    A 1,000-symbol round has ~3,000 arguments: 2.1 ms to pack in Python, 0.3 ms with hiredis
    (the synchronous redis-py client does the same when hiredis is installed).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CONFIG GET" and the like go as separate words
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis_errors.DataError(str(exc)) from None


class _PackedConnection(_HiredisPacking, Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


_HIREDIS_PACKED: dict[type, type] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
}

# Errors after which the same round may succeed later: the server is down, loading, a read-only
# replica mid-failover, or out of memory.
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    OSError,
)


def _decode_window(
    exchange: str, symbol: str, raws: Sequence[bytes], incomplete: set[int]
) -> list[Bar]:
    """Decode a stored window; corrupt entries are skipped (one warning per load, with a sample)."""
    bars: list[Bar] = []
    bad: list[str] = []
    for raw in raws:
        try:
            bar = decode_bar(exchange, symbol, raw)
        except ValueError as exc:
            bad.append(str(exc)[:200])
            continue
        if bar.open_time_ms in incomplete:
            bar = msgspec.structs.replace(bar, complete=False)
        bars.append(bar)
    if bad:
        log.warning(
            "skipped %d undecodable bars in %s, e.g. %s",
            len(bad),
            bars_key(exchange, symbol),
            bad[0],
        )
    return bars


class RedisBarStore:
    """Bar windows in Redis (keys in the module docstring); one script call per round."""

    def __init__(self, client: Redis, *, cap: int = DEFAULT_CAP, name: str = "redis") -> None:
        self._client = client
        self.cap = _check_cap(cap)
        self.name = name  # already redacted; used in every message

    @classmethod
    def from_url(
        cls,
        url: str,
        cap: int = DEFAULT_CAP,
        socket_timeout: float = 5.0,
        password: str | None = None,
    ) -> RedisBarStore:
        """A store on ``redis://`` or ``rediss://`` (TLS) ``url``; credentials may be in the URL.

        TLS options go in the query, e.g. ``rediss://:pw@host:6380/0?ssl_ca_certs=/etc/ca.pem``.
        ``password`` (read from a secret file, so that it appears in no URL, environment or
        process listing) wins over one in the URL. The client retries a command once at once (a
        pooled connection that died with a server restart); waiting between attempts is the
        BufferedBarWriter's job.
        """
        try:
            options: dict[str, Any] = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_timeout,
                "retry": Retry(NoBackoff(), 1),
                **parse_url(url),  # the URL's own options win, as in Redis.from_url
            }
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad Redis URL {redact_url(url)}: {exc}") from None
        if password is not None:
            options["password"] = password
        plain = options.get("connection_class", Connection)
        options["connection_class"] = _HIREDIS_PACKED.get(plain, plain)
        client = Redis.from_pool(ConnectionPool(**options))
        return cls(client, cap=cap, name=redact_url(url))

    async def write(self, bars: Sequence[Bar]) -> None:
        if bars:
            await self._run(_APPEND, _by_window(bars))

    async def repair(self, bars: Sequence[Bar]) -> None:
        if bars:
            await self._run(_REPAIR, _by_window(bars))

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        if count <= 0:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(bars_key(exchange, symbol), -count, -1)
                pipe.zrange(incomplete_key(exchange, symbol), 0, -1)
                raws, marks = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise StoreError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return _decode_window(exchange, symbol, raws, {int(m) for m in marks})

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (redis_errors.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()

    async def _run(self, script: _Script, windows: dict[tuple[str, str], list[Bar]]) -> Any:
        keys: list[str] = []
        args: list[int | bytes] = [self.cap]
        for (exchange, symbol), window in windows.items():
            keys += (bars_key(exchange, symbol), incomplete_key(exchange, symbol))
            if len(window) == 1 and window[0].complete:
                args.append(encode_bar(window[0]))
            else:
                args.append(
                    b"\n".join(
                        encode_bar(bar) if bar.complete else b"!" + encode_bar(bar)
                        for bar in window
                    )
                )
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                # Script cache empty (new or restarted server): EVAL also caches it.
                return await self._client.eval(script.source, len(keys), *keys, *args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise StoreError(f"{self.name}: {type(exc).__name__}: {exc}") from exc


class MemoryBarStore:
    """In-process windows with the same semantics as RedisBarStore (demo without Redis, tests)."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = _check_cap(cap)
        self._windows: dict[tuple[str, str], list[Bar]] = {}

    async def write(self, bars: Sequence[Bar]) -> None:
        for key, fresh in _by_window(bars).items():
            window = self._windows.setdefault(key, [])
            for bar in fresh:
                if not window or bar.open_time_ms > window[-1].open_time_ms:
                    window.append(bar)
            del window[: max(0, len(window) - self.cap)]

    async def repair(self, bars: Sequence[Bar]) -> None:
        for key, backfilled in _by_window(bars).items():
            merged = {bar.open_time_ms: bar for bar in self._windows.get(key, [])}
            merged.update((bar.open_time_ms, bar) for bar in backfilled)
            self._windows[key] = [merged[t] for t in sorted(merged)][-self.cap :]

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        if count <= 0:
            return []
        return self._windows.get((exchange, symbol), [])[-count:]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class BufferedBarWriter:
    """Writes closed bars through to a BarStore without ever blocking or failing the caller.

    ``submit`` only appends to a bounded buffer; ``run`` (a task owned by the app's TaskGroup)
    writes the buffer in order, in rounds of at most ``max_round_bars``, and when the store is
    unreachable keeps the bars and retries with capped, jittered backoff. When the buffer is full
    the oldest bars are dropped and counted. Repairs (backfilled bars) queue in the same order as
    closed bars, so a repair never lands before the bars it repairs.

    The metrics module reads the attributes: ``buffered``, ``dropped_total`` (and
    ``dropped_by_reason``: ``overflow``, ``rejected``), ``write_errors_total``,
    ``last_write_seconds`` and ``connected`` (outcome of the last round or ping).
    """

    def __init__(
        self,
        store: BarStore,
        *,
        max_bars: int = 100_000,
        max_round_bars: int = 10_000,
        backoff: Backoff | None = None,
        on_write_latency: Callable[[float], None] | None = None,
    ) -> None:
        if max_bars < 1 or max_round_bars < 1:
            raise ValueError("max_bars and max_round_bars must be >= 1")
        self._store = store
        self._max_bars = max_bars
        self._max_round_bars = max_round_bars
        self._backoff = backoff or Backoff(initial_s=0.1, max_s=5.0)
        self.on_write_latency = on_write_latency
        # (is_repair, bar), oldest first
        self._buffer: deque[tuple[bool, Bar]] = deque()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        # Head entries of the buffer that belong to the round in flight, and how many of the
        # round's entries overflow removed meanwhile (dropped only if the round fails).
        self._in_flight = 0
        self._in_flight_evicted = 0
        self.dropped_by_reason: dict[str, int] = {"overflow": 0, "rejected": 0}
        self.write_errors_total = 0
        self.last_write_seconds = 0.0
        self.connected = False
        self._failing = False  # an outage is logged once when it starts and once when it ends

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped_by_reason.values())

    def submit(self, bars: Sequence[Bar]) -> None:
        """Queue closed bars for writing; never blocks, never raises."""
        self._enqueue(False, bars)

    def submit_repair(self, bars: Sequence[Bar]) -> None:
        """Queue backfilled bars that replace incomplete ones and fill gaps."""
        self._enqueue(True, bars)

    def _enqueue(self, is_repair: bool, bars: Sequence[Bar]) -> None:
        for bar in bars:
            if len(self._buffer) >= self._max_bars:
                self._buffer.popleft()
                if self._in_flight:
                    self._in_flight -= 1
                    self._in_flight_evicted += 1
                else:
                    self.dropped_by_reason["overflow"] += 1
            self._buffer.append((is_repair, bar))
        if bars:
            self._wakeup.set()

    async def run(self) -> None:
        """Write buffered bars as they come, until cancelled."""
        self.connected = await self._store.ping()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._drain()

    async def flush(self, timeout_s: float) -> int:
        """Try to write everything buffered within ``timeout_s``; returns how many bars are left."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._drain()
        except TimeoutError:
            pass
        left = len(self._buffer)
        if left:
            log.warning("shutdown: %d bars could not be written to the bar store", left)
        return left

    async def _drain(self) -> None:
        while self._buffer:
            if await self._write_round():
                self._backoff.reset()
            else:
                await asyncio.sleep(self._backoff.next_delay())

    async def _write_round(self) -> bool:
        """Write the oldest run of same-kind entries; False if the store was unavailable."""
        async with self._lock:
            if not self._buffer:
                return True
            is_repair = self._buffer[0][0]
            batch: list[Bar] = []
            for kind, bar in islice(self._buffer, self._max_round_bars):
                if kind != is_repair:
                    break
                batch.append(bar)
            self._in_flight = len(batch)
            self._in_flight_evicted = 0
            outcome = "cancelled"
            started = time.perf_counter()
            try:
                if is_repair:
                    await self._store.repair(batch)
                else:
                    await self._store.write(batch)
                outcome = "written"
            except StoreUnavailable as exc:
                outcome = "unavailable"
                self.write_errors_total += 1
                if not self._failing:
                    log.warning("bar store unavailable, buffering bars: %s", exc)
                self._failing = True
                self.connected = False
            except Exception:
                # A round the store refuses would block every later bar: drop it, counted.
                outcome = "rejected"
                self.write_errors_total += 1
                log.exception("bar store rejected a round of %d bars; dropping it", len(batch))
            finally:
                self._end_round(outcome, time.perf_counter() - started)
            return outcome != "unavailable"

    def _end_round(self, outcome: str, seconds: float) -> None:
        remaining, evicted = self._in_flight, self._in_flight_evicted
        self._in_flight = self._in_flight_evicted = 0
        if outcome in ("written", "rejected"):
            for _ in range(remaining):
                self._buffer.popleft()
        if outcome == "rejected":
            self.dropped_by_reason["rejected"] += remaining + evicted
        elif outcome != "written":
            self.dropped_by_reason["overflow"] += evicted
        if outcome == "written":
            self.last_write_seconds = seconds
            if self._failing:
                log.info("bar store reachable again; %d bars still buffered", len(self._buffer))
            self._failing = False
            self.connected = True
            if self.on_write_latency is not None:
                self.on_write_latency(seconds)
