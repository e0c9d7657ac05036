"""The SAQ side of the Redis task store: lanes, SAQ jobs, and the Lua scripts that move tasks.

Every task is a SAQ job (``saq.Job``, key = task id, function ``llm_call.run_task``) in a SAQ
queue called a *lane*: one per (priority, owner, route), so that a worker started with
``--routes 'max/*'`` pops only matching jobs and the highest priority goes first. The keys and
the JSON are SAQ's own (``saq:{lane}:queued|active|incomplete``, ``saq:job:{lane}:{id}``,
``saq:abort:{id}``), so SAQ's sweeper (``Queue.sweep``: jobs whose ``heartbeat`` went stale are
aborted and retried while ``attempts < retries``), ``Queue.info`` and ``saq --web`` all work on
them.

Why scripts and not only ``Queue.enqueue``/``dequeue``/``finish``: each of those is one or more
round trips of its own, and our task record (a hash next to the job) must change in the same
step, fenced on the worker id (a worker that was swept must not overwrite the outcome of the
execution that replaced it). So each transition below does SAQ's job change (the same fields SAQ's
own ``_enqueue``/``dequeue``+``update``/``_finish``/``_retry`` set) and the record change in one
atomic script. Redis Cluster is not supported (the scripts touch keys they derive).

Record hash ``{P}:t:{id}``; events list ``{P}:e:{id}`` (seq = position); indexes ``{P}:all``,
``{P}:s:{status}`` (score created_at), ``{P}:finished`` (score finished_at); ``{P}:lanes`` (lane →
JSON); ``{P}:w:{worker}:run`` (running task ids); route semaphores ``{P}:sem:...`` (zsets of
task ids scored by lease expiry, ms).
"""

from __future__ import annotations

from ._saq_requeue import REQUEUE

__all__ = ["JOB_FUNCTION", "LIB", "SCRIPTS", "lane_name"]

JOB_FUNCTION = "llm_call.run_task"


def lane_name(prefix: str, priority: int, owner: str | None, route: str) -> str:
    """The SAQ queue name of a lane (must match ``lane_name`` in :data:`LIB`)."""
    return f"{prefix}|{priority}|{owner or ''}|{route}"


# ARGV[1] prefix, ARGV[2] retention (ms) in every script; times are Redis's (TIME).
LIB = r"""
local P, KEEP_MS = ARGV[1], ARGV[2]
local T = redis.call('TIME')  -- Redis's clock: one time line for every host
local NOW_MS = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOW = string.format('%d.%06d', T[1], T[2])
local FINAL = {succeeded = true, failed = true, cancelled = true, interrupted = true}
local function rk(id) return P .. ':t:' .. id end
local function ek(id) return P .. ':e:' .. id end
local function runk(w) return P .. ':w:' .. w .. ':run' end
local function jk(lane, id) return 'saq:job:' .. lane .. ':' .. id end
local function qk(lane, what) return 'saq:' .. lane .. ':' .. what end
local function lane_name(prio, owner, route) return P .. '|' .. prio .. '|' .. owner .. '|' .. route end
local function register_lane(lane, prio, owner, route)
  redis.call('HSET', P .. ':lanes', lane,
    cjson.encode({route = route, priority = tonumber(prio), owner = owner}))
end
local function add_event(id, kind, data, at)
  local n = redis.call('RPUSH', ek(id),
    '{"kind":' .. cjson.encode(kind) .. ',"data":' .. data .. ',"at":' .. at .. '}')
  redis.call('PUBLISH', P .. ':ev:' .. id, n)
  return n
end
local function set_status(id, old, new, created)
  if old then redis.call('ZREM', P .. ':s:' .. old, id) end
  redis.call('ZADD', P .. ':s:' .. new, created, id)
  if FINAL[new] then redis.call('ZADD', P .. ':finished', NOW, id) end
end
local function drop_leases(id)
  local sems = redis.call('HGET', rk(id), 'sems')
  if sems and sems ~= '' then
    for key in string.gmatch(sems, '[^\n]+') do redis.call('ZREM', key, id) end
  end
end
-- idempotency keys are per tenant (the API key's hash); '' = no tenant (library, keyless server)
local function idem_key(tenant, idem)
  if tenant and tenant ~= '' then return P .. ':tidem:' .. tenant .. ':' .. idem end
  return P .. ':idem:' .. idem
end
local function expire_task(id)
  redis.call('PEXPIRE', rk(id), KEEP_MS)
  redis.call('PEXPIRE', ek(id), KEEP_MS)
  local r = redis.call('HMGET', rk(id), 'idem', 'tenant')
  if r[1] and r[1] ~= '' then redis.call('PEXPIRE', idem_key(r[2], r[1]), KEEP_MS) end
end
local function tmpl(text, id) return (string.gsub(text, '@@ID@@', (string.gsub(id, '%%', '%%%%')))) end
local function job_get(jid)
  local raw = redis.call('GET', jid)
  if raw then return cjson.decode(raw) end
  return nil
end
-- SAQ's _finish: out of the active list and the incomplete set, kept for the retention time
local function job_finish(lane, id, status, err)
  local jid = jk(lane, id)
  local job = job_get(jid)
  redis.call('LREM', qk(lane, 'active'), 1, jid)
  redis.call('ZREM', qk(lane, 'incomplete'), jid)
  if job then
    if job.status == 'queued' then redis.call('LREM', qk(lane, 'queued'), 0, jid) end
    job.status = status
    job.completed = NOW_MS
    if err ~= '' then job.error = err end
    redis.call('SET', jid, cjson.encode(job), 'PX', KEEP_MS)
    redis.call('PUBLISH', jid, status)
  end
  redis.call('DEL', 'saq:abort:' .. id)
end
-- SAQ's _retry, into lane `to` (a re-homed job changes queue): queued at the tail
local function job_requeue(from, to, id, attempts, fresh)
  local old = jk(from, id)
  local job = job_get(old)
  if fresh and fresh ~= '' then job = cjson.decode(fresh) end
  if not job then job = {['function'] = 'llm_call.run_task', key = id, kwargs = {task_id = id}} end
  redis.call('LREM', qk(from, 'queued'), 0, old)
  redis.call('LREM', qk(from, 'active'), 0, old)
  redis.call('ZREM', qk(from, 'incomplete'), old)
  if from ~= to then redis.call('DEL', old) end
  job.queue = to
  job.status = 'queued'
  job.started = nil
  job.completed = nil
  job.worker_id = nil
  job.touched = NOW_MS
  job.attempts = tonumber(attempts)
  local jid = jk(to, id)
  redis.call('SET', jid, cjson.encode(job))
  redis.call('ZADD', qk(to, 'incomplete'), 0, jid)
  redis.call('RPUSH', qk(to, 'queued'), jid)
  redis.call('PUBLISH', jid, 'queued')
end
-- a final status: record, index, event, leases, expiry and the SAQ job, together
local function finalize(id, old, new, kind, data, err, result, saq_status, saq_err)
  local r = redis.call('HMGET', rk(id), 'created_at', 'lane', 'worker')
  redis.call('HSET', rk(id), 'status', new, 'finished_at', NOW, 'cancel', '0')
  if err ~= '' then redis.call('HSET', rk(id), 'error', err) end
  if result ~= '' then redis.call('HSET', rk(id), 'result', result) end
  set_status(id, old, new, r[1])
  add_event(id, kind, data, NOW)
  drop_leases(id)
  redis.call('HSET', rk(id), 'sems', '')
  if r[3] and r[3] ~= '' then redis.call('SREM', runk(r[3]), id) end
  expire_task(id)
  job_finish(r[2], id, saq_status, saq_err)
end
"""

# ARGV[3..]: id, idem, priority, owner, route, request, created_at, event data, job JSON, tenant,
# n queue limits, then per limit: Lua pattern of its glob, most tasks waiting. Returns {2, k} when
# limit k is reached (nothing stored): counted and inserted in one script, so never overshot.
# A task is reserved for its owner only if that manager claims its own tasks: a server or worker
# (claims "all") leaves it to any worker, so work submitted through a server spreads over workers.
SUBMIT = r"""
local id, idem, prio, owner, route = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local tenant = ARGV[12] or ''
local nlimits = tonumber(ARGV[13] or '0')
if nlimits > 0 then
  local lanes = redis.call('HGETALL', P .. ':lanes')
  for k = 1, nlimits do
    local pattern, limit, waiting = ARGV[12 + 2 * k], tonumber(ARGV[13 + 2 * k]), 0
    for i = 1, #lanes, 2 do
      if string.find(cjson.decode(lanes[i + 1]).route, pattern) then
        waiting = waiting + redis.call('LLEN', qk(lanes[i], 'queued'))
      end
    end
    if waiting >= limit then return {2, k} end
  end
end
if idem ~= '' then
  local other = redis.call('GET', idem_key(tenant, idem))
  if other and redis.call('EXISTS', rk(other)) == 1 then return {0, other} end
end
if redis.call('EXISTS', rk(id)) == 1 then return {0, id} end
if idem ~= '' then redis.call('SET', idem_key(tenant, idem), id) end
if owner ~= '' then
  local info = redis.call('HGET', P .. ':workers', owner)
  if info and cjson.decode(info).claims == 'all' then owner = '' end
end
local lane = lane_name(prio, owner, route)
redis.call('HSET', rk(id), 'id', id, 'status', 'queued', 'request', ARGV[8], 'route', route,
  'priority', prio, 'idem', idem, 'created_at', ARGV[9], 'attempts', 0, 'worker', '', 'owner', owner,
  'cancel', '0', 'lane', lane, 'sems', '', 'tenant', tenant)
redis.call('ZADD', P .. ':all', ARGV[9], id)
set_status(id, nil, 'queued', ARGV[9])
add_event(id, 'queued', ARGV[10], ARGV[9])
register_lane(lane, prio, owner, route)
local jid = jk(lane, id)
local job = cjson.decode(ARGV[11])
job.queue = lane
redis.call('SET', jid, cjson.encode(job))
redis.call('ZADD', qk(lane, 'incomplete'), 0, jid)
redis.call('RPUSH', qk(lane, 'queued'), jid)
return {1, id, owner}
"""

# ARGV[3..]: id, worker, priority, owner, route, request, created_at, idem, job JSON, lease (ms),
# n sems, sems...
ADOPT = r"""
local id, worker, prio, owner, route = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local lane = lane_name(prio, owner, route)
local sems = {}
for i = 1, tonumber(ARGV[13]) do sems[i] = ARGV[13 + i] end
redis.call('HSET', rk(id), 'id', id, 'status', 'running', 'request', ARGV[8], 'route', route,
  'priority', prio, 'idem', ARGV[10], 'created_at', ARGV[9], 'started_at', NOW, 'attempts', 1,
  'worker', worker, 'owner', owner, 'cancel', '0', 'lane', lane, 'sems', table.concat(sems, '\n'))
if ARGV[10] ~= '' then redis.call('SET', P .. ':idem:' .. ARGV[10], id) end
redis.call('ZADD', P .. ':all', ARGV[9], id)
set_status(id, nil, 'running', ARGV[9])
add_event(id, 'queued', '{"route":' .. cjson.encode(route) .. ',"handoff":true}', ARGV[9])
add_event(id, 'started', '{"worker":' .. cjson.encode(worker) .. ',"execution":1,"handoff":true}', NOW)
redis.call('SADD', runk(worker), id)
for _, key in ipairs(sems) do redis.call('ZADD', key, NOW_MS + tonumber(ARGV[12]), id) end
register_lane(lane, prio, owner, route)
local jid = jk(lane, id)
redis.call('SET', jid, ARGV[11])
redis.call('ZADD', qk(lane, 'incomplete'), 0, jid)
redis.call('RPUSH', qk(lane, 'active'), jid)
return 1
"""

# ARGV[3..]: worker, lease (ms), limit, n lanes, job heartbeat (s), then per lane: name, priority,
# n sems, (sem key, limit)*. Lanes come sorted by priority, highest first; equal priorities take
# turns. The claimer sets the job's SAQ heartbeat: it is the one promising to touch it that often.
CLAIM = r"""
local worker, lease_until, remaining = ARGV[3], NOW_MS + tonumber(ARGV[4]), tonumber(ARGV[5])
local beat = tonumber(ARGV[7])
local lanes, i = {}, 8
for l = 1, tonumber(ARGV[6]) do
  local lane = {name = ARGV[i], prio = tonumber(ARGV[i + 1]), sems = {}, keys = {}, live = true}
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  for s = 1, n do
    lane.sems[s] = {ARGV[i], tonumber(ARGV[i + 1])}
    lane.keys[s] = ARGV[i]
    redis.call('ZREMRANGEBYSCORE', ARGV[i], '-inf', NOW_MS)
    i = i + 2
  end
  lane.sem_list = table.concat(lane.keys, '\n')
  lanes[l] = lane
end
local function has_room(lane)
  for _, sem in ipairs(lane.sems) do
    if redis.call('ZCARD', sem[1]) >= sem[2] then return false end
  end
  return true
end
local function claim_one(lane)
  local queued, active = qk(lane.name, 'queued'), qk(lane.name, 'active')
  local skip = #('saq:job:' .. lane.name .. ':') + 1
  while true do
    if not has_room(lane) then return nil end
    local jid = redis.call('LMOVE', queued, active, 'LEFT', 'RIGHT')
    if not jid then
      -- an empty lane is dropped (SUBMIT and every requeue register it again): a lane per made-up
      -- model name would otherwise stay for ever, and every claim reads every lane
      if redis.call('LLEN', active) == 0 and redis.call('ZCARD', qk(lane.name, 'incomplete')) == 0 then
        redis.call('HDEL', P .. ':lanes', lane.name)
      end
      return nil
    end
    local id = string.sub(jid, skip)
    local r = redis.call('HMGET', rk(id), 'status', 'worker', 'attempts', 'created_at', 'cancel', 'lane')
    local st = r[1]
    local job = job_get(jid)
    if st and r[6] ~= lane.name then st = 'moved' end
    -- 'running' + job queued: SAQ's sweeper re-queued it after its worker stopped beating
    if st == 'queued' or (st == 'running' and job and job.status == 'queued' and r[5] ~= '1') then
      local attempts = tonumber(r[3] or '0') + 1
      if st == 'running' then
        add_event(id, 'requeued', '{"dead_worker":' .. cjson.encode(r[2] or '') ..
          ',"executions":' .. (attempts - 1) .. ',"by":"swept"}', NOW)
        if r[2] and r[2] ~= '' then redis.call('SREM', runk(r[2]), id) end
        drop_leases(id)
      end
      redis.call('HSET', rk(id), 'status', 'running', 'worker', worker, 'attempts', attempts,
        'started_at', NOW, 'cancel', '0', 'sems', lane.sem_list)
      set_status(id, st, 'running', r[4])
      add_event(id, 'started', '{"worker":' .. cjson.encode(worker) .. ',"execution":' .. attempts .. '}', NOW)
      redis.call('SADD', runk(worker), id)
      for _, key in ipairs(lane.keys) do redis.call('ZADD', key, lease_until, id) end
      if not job then job = {['function'] = 'llm_call.run_task', key = id, queue = lane.name, kwargs = {task_id = id}} end
      job.status, job.started, job.touched, job.attempts, job.worker_id = 'active', NOW_MS, NOW_MS, attempts, worker
      job.heartbeat = beat
      redis.call('SET', jid, cjson.encode(job))
      redis.call('PUBLISH', jid, 'active')
      return id
    end
    -- not runnable from here: finished, cancelled, re-homed, or claimed by another worker
    redis.call('LREM', active, -1, jid)
    if st == 'moved' then
      redis.call('ZREM', qk(lane.name, 'incomplete'), jid)
      redis.call('DEL', jid)
    elseif st ~= 'running' and st ~= 'queued' then
      redis.call('ZREM', qk(lane.name, 'incomplete'), jid)
      if job then redis.call('PEXPIRE', jid, KEEP_MS) end
    end
  end
end
local claimed, l, n = {}, 1, #lanes
while remaining > 0 and l <= n do
  local g = l
  while g < n and lanes[g + 1].prio == lanes[l].prio do g = g + 1 end
  local progress = true
  while remaining > 0 and progress do
    progress = false
    for k = l, g do
      if lanes[k].live and remaining > 0 then
        local id = claim_one(lanes[k])
        if id then
          claimed[#claimed + 1] = id
          remaining = remaining - 1
          progress = true
        else
          lanes[k].live = false
        end
      end
    end
  end
  l = g + 1
end
return claimed
"""

# SAQ heartbeat: touch the jobs this worker runs, renew its route leases. ARGV[3..]: worker, lease
TOUCH = r"""
local worker, lease_until = ARGV[3], NOW_MS + tonumber(ARGV[4])
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', runk(worker))) do
  local r = redis.call('HMGET', rk(id), 'status', 'worker', 'lane', 'sems')
  if r[1] ~= 'running' or r[2] ~= worker then
    redis.call('SREM', runk(worker), id)
  else
    n = n + 1
    if r[4] and r[4] ~= '' then
      for key in string.gmatch(r[4], '[^\n]+') do redis.call('ZADD', key, lease_until, id) end
    end
    local jid = jk(r[3], id)
    local job = job_get(jid)
    if job and job.worker_id == worker and (job.status == 'active' or job.status == 'aborting') then
      job.touched = NOW_MS
      redis.call('SET', jid, cjson.encode(job))
    end
  end
end
return n
"""

# ARGV[3..]: id, worker, status, result, error, event kind, event data, SAQ status, SAQ error
FINISH = r"""
local id, worker, new = ARGV[3], ARGV[4], ARGV[5]
local r = redis.call('HMGET', rk(id), 'status', 'worker', 'lane', 'created_at')
if r[1] ~= 'running' or r[2] ~= worker then return 0 end
if new ~= 'needs_review' then
  finalize(id, 'running', new, ARGV[8], ARGV[9], ARGV[7], ARGV[6], ARGV[10], ARGV[11])
  return 1
end
drop_leases(id)
redis.call('HSET', rk(id), 'status', new, 'cancel', '0', 'sems', '')
if ARGV[6] ~= '' then redis.call('HSET', rk(id), 'result', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', rk(id), 'error', ARGV[7]) end
set_status(id, 'running', new, r[4])
add_event(id, ARGV[8], ARGV[9], NOW)
redis.call('SREM', runk(worker), id)
job_finish(r[3], id, ARGV[10], '')
return 1
"""


# ARGV[3..]: worker, ids... Back to the (unowned) queue without counting the execution.
RELEASE = r"""
local worker = ARGV[3]
local done = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local r = redis.call('HMGET', rk(id), 'status', 'worker', 'lane', 'created_at', 'attempts', 'priority', 'route', 'cancel')
  if r[1] == 'running' and r[2] == worker and r[8] == '1' then
    -- cancelled while running: it ends cancelled and never starts again
    finalize(id, 'running', 'cancelled', 'cancelled', '{"was":"running","worker":' .. cjson.encode(worker) .. '}',
      tmpl(ARGV[4], id), '', 'aborted', 'cancelled')
  elseif r[1] == 'running' and r[2] == worker then
    local attempts = math.max(tonumber(r[5] or '1') - 1, 0)
    local lane = lane_name(r[6], '', r[7])
    drop_leases(id)
    redis.call('HSET', rk(id), 'status', 'queued', 'worker', '', 'owner', '', 'started_at', '',
      'attempts', attempts, 'sems', '', 'lane', lane)
    set_status(id, 'running', 'queued', r[4])
    add_event(id, 'released', '{"worker":' .. cjson.encode(worker) .. '}', NOW)
    redis.call('SREM', runk(worker), id)
    register_lane(lane, r[6], '', r[7])
    job_requeue(r[3], lane, id, attempts, '')
    done[#done + 1] = id
  end
end
return done
"""

# ARGV[3..]: id, cancel error (template). Returns the status before ('' if no such task).
CANCEL = r"""
local id = ARGV[3]
local r = redis.call('HMGET', rk(id), 'status', 'worker')
local st = r[1]
if not st then return '' end
if st == 'queued' or st == 'needs_review' then
  finalize(id, st, 'cancelled', 'cancelled', '{"was":"' .. st .. '"}', tmpl(ARGV[4], id), '', 'aborted', 'cancelled')
elseif st == 'running' and redis.call('HGET', rk(id), 'cancel') ~= '1' then
  redis.call('HSET', rk(id), 'cancel', '1')
  add_event(id, 'cancel_requested', '{}', NOW)
  redis.call('PUBLISH', P .. ':cancel:' .. r[2], id)
end
return st
"""

# ARGV[3]: worker. Ids of its running tasks whose cancellation was requested.
CANCELS = r"""
local worker, out = ARGV[3], {}
for _, id in ipairs(redis.call('SMEMBERS', runk(worker))) do
  local r = redis.call('HMGET', rk(id), 'status', 'worker', 'cancel')
  if r[1] == 'running' and r[2] == worker and r[3] == '1' then out[#out + 1] = id end
end
return out
"""

# ARGV[3..]: id, 'result'|'request', payload JSON, event data, owner, fresh job JSON
RESOLVE = r"""
local id, mode = ARGV[3], ARGV[4]
local r = redis.call('HMGET', rk(id), 'status', 'lane', 'priority', 'route', 'created_at')
if not r[1] then return '' end
if r[1] ~= 'needs_review' then return r[1] end
if mode == 'result' then
  finalize(id, 'needs_review', 'succeeded', 'finished', ARGV[6], '', ARGV[5], 'complete', '')
  return 'ok'
end
local owner = ARGV[7]
local lane = lane_name(r[3], owner, r[4])
redis.call('HSET', rk(id), 'status', 'queued', 'request', ARGV[5], 'attempts', 0, 'worker', '',
  'owner', owner, 'started_at', '', 'error', '', 'lane', lane, 'cancel', '0')
set_status(id, 'needs_review', 'queued', r[5])
add_event(id, 'queued', ARGV[6], NOW)
register_lane(lane, r[3], owner, r[4])
job_requeue(r[2], lane, id, 0, ARGV[8])
return 'ok'
"""

# ARGV[3..]: n tasks, then per task: id, progress JSON or '', n events, (kind, data, at)*
APPEND = r"""
local i = 4
for t = 1, tonumber(ARGV[3]) do
  local id, progress, nev = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  if redis.call('EXISTS', rk(id)) == 1 then
    for e = 1, nev do
      add_event(id, ARGV[i], ARGV[i + 1], ARGV[i + 2])
      i = i + 3
    end
    if progress ~= '' then redis.call('HSET', rk(id), 'progress', progress) end
    local ttl = redis.call('PTTL', rk(id))
    if ttl > 0 then redis.call('PEXPIRE', ek(id), ttl) end
  else
    i = i + 3 * nev
  end
end
return 1
"""

# Settle a task whose worker is gone. ARGV[3..]: id, 'swept'|'dead', swept lane | dead worker,
# max executions, adopter ('' = any worker), interrupted error (template), cancelled error (template),
# stale after (s; 'dead' mode: the worker must still be silent that long now; '' = its process is gone)
SETTLE = r"""
local id, mode, arg = ARGV[3], ARGV[4], ARGV[5]
local r = redis.call('HMGET', rk(id), 'status', 'worker', 'attempts', 'created_at', 'cancel', 'lane', 'priority', 'route')
local st, lane = r[1], r[6]
if mode == 'swept' and (not st or lane ~= arg) then
  -- a stale copy of a job that expired or was re-homed: nothing may run it
  local jid = jk(arg, id)
  redis.call('LREM', qk(arg, 'queued'), 0, jid)
  redis.call('LREM', qk(arg, 'active'), 0, jid)
  redis.call('ZREM', qk(arg, 'incomplete'), jid)
  redis.call('DEL', jid)
  return 'stale'
end
if not st then return 'gone' end
local jid = jk(lane, id)
if st == 'running' then
  local job = job_get(jid)
  if mode == 'dead' and r[2] ~= arg then return 'alive' end
  if mode == 'dead' and ARGV[10] ~= '' then
    local beat = redis.call('ZSCORE', P .. ':workers:hb', arg)
    if beat and tonumber(NOW) - tonumber(beat) <= tonumber(ARGV[10]) then return 'alive' end
  end
  if mode == 'swept' and job and job.status == 'active' then return 'active' end
  local attempts = tonumber(r[3] or '0')
  local data = '{"dead_worker":' .. cjson.encode(r[2] or '') .. ',"executions":' .. attempts ..
    ',"by":"' .. mode .. '"}'
  if r[5] == '1' then
    finalize(id, 'running', 'cancelled', 'cancelled', data, tmpl(ARGV[9], id), '', 'aborted', 'cancelled')
    return 'cancelled'
  end
  if attempts < tonumber(ARGV[6]) then
    local owner = ARGV[7]
    local target = lane_name(r[7], owner, r[8])
    drop_leases(id)
    redis.call('HSET', rk(id), 'status', 'queued', 'worker', '', 'owner', owner, 'started_at', '',
      'cancel', '0', 'sems', '', 'lane', target)
    set_status(id, 'running', 'queued', r[4])
    add_event(id, 'requeued', data, NOW)
    if r[2] and r[2] ~= '' then redis.call('SREM', runk(r[2]), id) end
    register_lane(target, r[7], owner, r[8])
    job_requeue(lane, target, id, attempts, '')
    return 'requeued'
  end
  finalize(id, 'running', 'interrupted', 'interrupted', data, tmpl(ARGV[8], id), '', 'aborted', 'interrupted')
  return 'interrupted'
end
if mode == 'dead' then return st end
if st == 'queued' then
  local job = job_get(jid)
  if not (job and job.status == 'queued' and redis.call('LPOS', qk(lane, 'queued'), jid)) then
    register_lane(lane, r[7], redis.call('HGET', rk(id), 'owner') or '', r[8])  -- it may have been dropped empty
    job_requeue(lane, lane, id, r[3], '')
  end
  return 'queued'
end
redis.call('LREM', qk(lane, 'queued'), 0, jid)
redis.call('LREM', qk(lane, 'active'), 0, jid)
redis.call('ZREM', qk(lane, 'incomplete'), jid)
if redis.call('EXISTS', jid) == 1 then redis.call('PEXPIRE', jid, KEEP_MS) end
return st
"""

# ARGV[3..]: from owner, to owner ('' = any worker). Re-home the queued tasks of a gone owner.
MOVE_OWNER = r"""
local from, to, moved = ARGV[3], ARGV[4], {}
local lanes = redis.call('HGETALL', P .. ':lanes')
for i = 1, #lanes, 2 do
  local name, meta = lanes[i], cjson.decode(lanes[i + 1])
  if meta.owner == from then
    local prio = string.format('%d', meta.priority)
    local target = lane_name(prio, to, meta.route)
    local skip = #('saq:job:' .. name .. ':') + 1
    for _, jid in ipairs(redis.call('LRANGE', qk(name, 'queued'), 0, -1)) do
      local id = string.sub(jid, skip)
      local r = redis.call('HMGET', rk(id), 'status', 'lane', 'attempts')
      if r[1] == 'queued' and r[2] == name then
        redis.call('HSET', rk(id), 'owner', to, 'lane', target)
        register_lane(target, prio, to, meta.route)
        job_requeue(name, target, id, r[3], '')
        moved[#moved + 1] = id
      end
    end
    if redis.call('LLEN', qk(name, 'queued')) == 0 and redis.call('LLEN', qk(name, 'active')) == 0 then
      redis.call('HDEL', P .. ':lanes', name)
      redis.call('DEL', qk(name, 'queued'), qk(name, 'incomplete'))
    end
  end
end
return moved
"""

# ARGV[3..]: older than (epoch s), delete records too ('1'|'0'), batch size. Drops index entries
# of final tasks (their keys expire by TTL); with delete, the records and events now.
PRUNE = r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':finished', '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. ':all', id)
  redis.call('ZREM', P .. ':finished', id)
  for st, _ in pairs(FINAL) do redis.call('ZREM', P .. ':s:' .. st, id) end
  if ARGV[4] == '1' then
    local r = redis.call('HMGET', rk(id), 'idem', 'tenant')
    if r[1] and r[1] ~= '' then redis.call('DEL', idem_key(r[2], r[1])) end
    redis.call('DEL', rk(id), ek(id))
  end
end
return #ids
"""

SCRIPTS: dict[str, str] = {
    "submit": SUBMIT,
    "adopt": ADOPT,
    "claim": CLAIM,
    "touch": TOUCH,
    "finish": FINISH,
    "release": RELEASE,
    "requeue": REQUEUE,
    "cancel": CANCEL,
    "cancels": CANCELS,
    "resolve": RESOLVE,
    "append": APPEND,
    "settle": SETTLE,
    "move_owner": MOVE_OWNER,
    "prune": PRUNE,
}
