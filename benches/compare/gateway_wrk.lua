-- wrk script of benches/compare/gateway_replay.py: POST /v1/chat/completions with the chat
-- request bodies of the file named by WRK_BODIES (one JSON body a line), round robin, with
-- an X-Loopai-Task header when WRK_TASK is set, each connection pausing WRK_DELAY_MS
-- between requests (so that connections x 1000 / delay bounds the rate). Requests are
-- formatted once per thread. With WRK_BODIES empty, every request is a GET of WRK_PATH
-- (the loopback floor: an endpoint that does no work). Prints one WRKJSON line at the end.
local path = os.getenv("WRK_PATH") or "/v1/chat/completions"
local task = os.getenv("WRK_TASK") or ""
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "0")
local requests_ = {}
local i = 0

init = function(args)
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench" }
  if task ~= "" then
    headers["X-Loopai-Task"] = task
  end
  local bodies = os.getenv("WRK_BODIES") or ""
  if bodies == "" then
    requests_[1] = wrk.format("GET", path, headers)
    return
  end
  for line in io.lines(bodies) do
    requests_[#requests_ + 1] = wrk.format("POST", path, headers, line)
  end
end

request = function()
  i = i % #requests_ + 1
  return requests_[i]
end

if pause > 0 then
  delay = function()
    return pause
  end
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
