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

# A job's webhook event into the outbox (jobs/outbox.py), in the script that changed the record:
# enqueue_webhook(job key, outbox, messages, job id, event, id suffix) -> the message id or false.
# Only events the job's `webhook` field asks for; HSETNX keeps one message per id.
ENQUEUE_WEBHOOK = """
local function enqueue_webhook(job, outbox, messages, job_id, event, suffix)
  local f = redis.call('HMGET', job, 'webhook', 'owner', 'request', 'status', 'error_type',
                       'error_message', 'progress_step', 'progress_total', 'finished_at')
  if not f[1] then return false end
  local hook = cjson.decode(f[1])
  local wanted = false
  for _, name in ipairs(hook.events) do wanted = wanted or name == event end
  if not wanted then return false end
  local request = cjson.decode(f[3])
  local t = redis.call('TIME')
  local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  local id = 'msg_' .. job_id .. '_' .. event .. suffix
  local message = cjson.encode({
    id = id, job_id = job_id, event = event, url = hook.url, owner = f[2] or '', status = f[4],
    model = request.model, task = request.task, num_images = request.num_images,
    error_type = f[5] or nil, error_message = f[6] or nil, step = f[7] or '0',
    total = f[8] or '0', occurred_at = f[9] or now, enqueued_at = now, attempts = 0})
  if redis.call('HSETNX', messages, id, message) == 1 then
    redis.call('ZADD', outbox, now, id)
  end
  return id
end
"""

# KEYS: job, gone, webhook outbox, webhook messages, webhook jobs, image 0..n-1.
# ARGV: allowed, ttl, tombstone ttl, job id, nfields, fields..., images...
FINISH = (
    ENQUEUE_WEBHOOK
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return false
end
local ttl = tonumber(ARGV[2])
local nfields = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + nfields))
local final = redis.call('HGET', KEYS[1], 'status')
if final == 'succeeded' then
  redis.call('HSET', KEYS[1], 'progress_step', redis.call('HGET', KEYS[1], 'progress_total') or '0')
end
for i = 6, #KEYS do redis.call('SET', KEYS[i], ARGV[5 + nfields + i - 5], 'EX', ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
redis.call('SET', KEYS[2], owner, 'EX', ttl + tonumber(ARGV[3]))
redis.call('ZREM', KEYS[5], ARGV[4])
local event = ({succeeded = 'completed', failed = 'failed', expired = 'failed',
                canceled = 'canceled'})[final]
local id = event and enqueue_webhook(KEYS[1], KEYS[3], KEYS[4], ARGV[4], event, '')
if id then
  redis.call('HSET', KEYS[1], 'webhook_delivery', cjson.encode(
    {state = 'pending', event = event, webhook_id = id, attempts = 0}))
end
return status
"""
)

# KEYS: webhook outbox, webhook messages, job hashes, then their cancel flags. ARGV: step, total,
# job id per job. Returns 1 = stop that job. A running job whose webhook asks for progress events
# (field webhook_progress_s: the least seconds between two) gets one when that time has passed.
PROGRESS = (
    ENQUEUE_WEBHOOK
    + """
local n = (#KEYS - 2) / 2
local stop = {}
for i = 1, n do
  local job = KEYS[2 + i]
  local status = redis.call('HGET', job, 'status')
  if status == 'running' then
    local step = ARGV[3 * i - 2]
    redis.call('HSET', job, 'progress_step', step, 'progress_total', ARGV[3 * i - 1])
    local every = redis.call('HGET', job, 'webhook_progress_s')
    if every and tonumber(step) > 0 then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
      local last = tonumber(redis.call('HGET', job, 'webhook_progress_at') or '0')
      if now - last >= tonumber(every) then
        redis.call('HSET', job, 'webhook_progress_at', string.format('%.6f', now))
        enqueue_webhook(job, KEYS[1], KEYS[2], ARGV[3 * i], 'progress', '_' .. step)
      end
    end
  end
  stop[i] = (status ~= 'running' or redis.call('EXISTS', KEYS[2 + n + i]) == 1) and 1 or 0
end
return stop
"""
)
