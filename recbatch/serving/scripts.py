"""Server-side Lua scripts: each runs atomically, so each is one consistent step.

Redis runs a script to completion before serving any other command, which is
what makes "resolve the pointer, then read the value" a single consistent read
and "check the new version is complete, then flip" a single atomic switch.
FLIP and ROLLBACK touch only control keys, which share one hash slot
(keys.py), so they run on Redis Cluster too. READ builds a user key it was not
given, which Redis Cluster refuses: a cluster reader does two GETs instead
(reader.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis

from recbatch.serving.connection import Store
# KEYS[1] pointer; ARGV[1] "P:v:", ARGV[2] ":u:<user_id>"  ->  {version, value} or nil
READ = """
local version = redis.call('GET', KEYS[1])
if not version then return false end
return {version, redis.call('GET', ARGV[1] .. version .. ARGV[2])}
"""

# KEYS[1] pointer, KEYS[2] history, KEYS[3] meta of the new version; ARGV[1] version, ARGV[2] now
# -> the previous live version (or nil). Refuses unless the version is complete and its
# written count equals the expected user count recorded when the load began.
FLIP = """
local meta = redis.call('HMGET', KEYS[3], 'state', 'written', 'users')
if meta[1] ~= 'complete' then
  return redis.error_reply('RECBATCH version ' .. ARGV[1] .. ' is not complete (state ' .. tostring(meta[1]) .. ')')
end
if tonumber(meta[2]) ~= tonumber(meta[3]) then
  return redis.error_reply('RECBATCH version ' .. ARGV[1] .. ' holds ' .. tostring(meta[2]) .. ' users, expected ' .. tostring(meta[3]))
end
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'activated_at', ARGV[2])
return previous
"""

# KEYS[1] pointer, KEYS[2] history; ARGV[1] "{P}:v:" (meta keys, same slot), ARGV[2] now  ->  {from, to}
ROLLBACK = """
local current = redis.call('GET', KEYS[1])
if not current then return redis.error_reply('RECBATCH no live version to roll back from') end
if redis.call('LINDEX', KEYS[2], 0) ~= current then
  return redis.error_reply('RECBATCH history does not start with the live version ' .. current)
end
local target = redis.call('LINDEX', KEYS[2], 1)
if not target then return redis.error_reply('RECBATCH no previous version to roll back to') end
local target_meta = ARGV[1] .. target .. ':meta'
if redis.call('HGET', target_meta, 'state') ~= 'complete' then
  return redis.error_reply('RECBATCH previous version ' .. target .. ' is no longer complete in Redis')
end
redis.call('LPOP', KEYS[2])
redis.call('SET', KEYS[1], target)
redis.call('HSET', ARGV[1] .. current .. ':meta', 'rolled_back_at', ARGV[2])
redis.call('HSET', target_meta, 'activated_at', ARGV[2])
return {current, target}
"""

# KEYS[1] meta of a version, KEYS[2..] user keys of it  ->  keys deleted. The version's user
# count drops by as many, and its written count too once complete, so FLIP's check stays true.
ERASE = """
local n = redis.call('UNLINK', unpack(KEYS, 2))
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'users', -n)
  if redis.call('HGET', KEYS[1], 'state') == 'complete' then
    redis.call('HINCRBY', KEYS[1], 'written', -n)
  end
end
return n
"""

_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (READ, FLIP, ROLLBACK, ERASE)}


def run_script(client: Store, script: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA (one round trip, no script text on the wire), loading the script on first use."""
    try:
        return client.evalsha(_SHA[script], len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(script, len(keys), *keys, *args)
