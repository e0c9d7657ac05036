"""The Redis store's ``requeue`` script (``RequeuesWaiting``): a running task back to its lane's
queue to wait (a used-up Claude quota window), with its new request, its owner kept and the
execution not counted; ``cancelled`` instead when its cancel was requested. Run with
:data:`~llm_call.tasks._saq.LIB` prepended, like the other scripts of ``_saq.py`` (kept apart
to keep that module under 600 lines).
"""

from __future__ import annotations

__all__ = ["REQUEUE"]

# ARGV[3..]: id, worker, request JSON, event data JSON, cancelled error (template).
# Returns 'queued', 'cancelled', or '' when the worker does not run the task.
REQUEUE = r"""
local id, worker = ARGV[3], ARGV[4]
local r = redis.call('HMGET', rk(id), 'status', 'worker', 'lane', 'created_at', 'attempts', 'priority', 'route',
  'cancel', 'owner')
if r[1] ~= 'running' or r[2] ~= worker then return '' end
if r[8] == '1' then
  -- cancelled while running: it ends cancelled and never starts again
  finalize(id, 'running', 'cancelled', 'cancelled', '{"was":"running","worker":' .. cjson.encode(worker) .. '}',
    tmpl(ARGV[7], id), '', 'aborted', 'cancelled')
  return 'cancelled'
end
local attempts = math.max(tonumber(r[5] or '1') - 1, 0)
local owner = r[9] or ''
local lane = lane_name(r[6], owner, r[7])
drop_leases(id)
redis.call('HSET', rk(id), 'status', 'queued', 'worker', '', 'started_at', '', 'attempts', attempts,
  'sems', '', 'lane', lane, 'request', ARGV[5])
set_status(id, 'running', 'queued', r[4])
add_event(id, 'requeued', ARGV[6], NOW)
redis.call('SREM', runk(worker), id)
register_lane(lane, r[6], owner, r[7])
job_requeue(r[3], lane, id, attempts, '')
return 'queued'
"""
