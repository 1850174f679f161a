-- POST /execute with the held-out texts, round robin; prints one WRKJSON line at the end.
-- Bodies come from the file named by WRK_BODIES (one JSON request body per line); the
-- requests are formatted once per thread, so wrk spends no Lua time per request.
local path = os.getenv("WRK_PATH") or "/execute"
local requests_ = {}
local i = 0

init = function(args)
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(os.getenv("WRK_BODIES")) do
    requests_[#requests_ + 1] = wrk.format("POST", path, headers, line)
  end
end

request = function()
  i = i % #requests_ + 1
  return requests_[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.2f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
