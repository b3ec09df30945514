"""The two Lua scripts of RedisBarStore: append a round, and merge a repair into the windows.

Each runs a whole round, every symbol, in one EVALSHA; the keys they touch are described in the
``streamer.io.store`` package docstring.
"""

from __future__ import annotations

import hashlib

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


class Script:
    """A Lua script and its SHA1, the name EVALSHA calls it by."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


APPEND = Script(_LUA_APPEND)
REPAIR = Script(_LUA_REPAIR)
