"""The Lua scripts that change a job record atomically (used by jobs/store.py JobStore)."""

# KEYS[1] job hash. ARGV[1] allowed statuses "a,b"; ARGV[2] field to HINCRBY or ""; ARGV[3..] pairs.
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return false
end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
return status
"""

# KEYS: job, gone, image 0..n-1. ARGV: allowed, ttl, tombstone ttl, nfields, fields..., images...
FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return false
end
local ttl = tonumber(ARGV[2])
local nfields = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + nfields))
if redis.call('HGET', KEYS[1], 'status') == 'succeeded' then
  redis.call('HSET', KEYS[1], 'progress_step', redis.call('HGET', KEYS[1], 'progress_total') or '0')
end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[4 + nfields + i - 2], 'EX', ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
redis.call('SET', KEYS[2], owner, 'EX', ttl + tonumber(ARGV[3]))
return status
"""

# KEYS: job hashes then their cancel flags. ARGV: step, total per job. Returns 1 = stop that job.
PROGRESS = """
local n = #KEYS / 2
local stop = {}
for i = 1, n do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status == 'running' then
    redis.call('HSET', KEYS[i], 'progress_step', ARGV[2 * i - 1], 'progress_total', ARGV[2 * i])
  end
  stop[i] = (status ~= 'running' or redis.call('EXISTS', KEYS[n + i]) == 1) and 1 or 0
end
return stop
"""
