-- wrk script for benches/load: static request headers from the environment,
-- one machine-readable summary line at the end.
--   BENCH_COOKIE   Cookie header        BENCH_BEARER  token for Authorization: Bearer
--   BENCH_ACCEPT   Accept header        BENCH_TALLY=1 count every response status
--                                       (costs the load generator CPU: checks only)
local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

if env("BENCH_COOKIE") then wrk.headers["Cookie"] = env("BENCH_COOKIE") end
if env("BENCH_BEARER") then wrk.headers["Authorization"] = "Bearer " .. env("BENCH_BEARER") end
if env("BENCH_ACCEPT") then wrk.headers["Accept"] = env("BENCH_ACCEPT") end

local tally = env("BENCH_TALLY") == "1"
local threads = {}

if tally then
  function setup(thread)
    table.insert(threads, thread)
  end

  function init(args)
    statuses = {}
  end

  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local parts = {}
  if tally then
    local total = {}
    for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
    end
    for k, v in pairs(total) do table.insert(parts, string.format('"%d":%d', k, v)) end
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx3xx":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    table.concat(parts, ",")))
end
