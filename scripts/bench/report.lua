-- Shared by the bench's wrk scripts: collects each thread's counters and
-- prints the run as key=value lines that scripts/bench.sh parses.
-- Loaded with dofile() from submit.lua and get.lua.

threads = {}

-- Runs in wrk's main Lua state once per thread, before the thread's init().
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- Per thread: answers that were not the expected status, by status.
unexpected = {}

function count_status(status, expected)
  if status ~= expected then
    unexpected[status] = (unexpected[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local bad, by_status = 0, {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("unexpected") or {}
    for status, n in pairs(counts) do
      bad = bad + n
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  local e = summary.errors
  local failed = bad + e.connect + e.read + e.write + e.timeout
  local out = io.stdout
  out:write(string.format("requests=%d\n", summary.requests))
  out:write(string.format("seconds=%.2f\n", seconds))
  out:write(string.format("rps=%.0f\n", summary.requests / seconds))
  out:write(string.format("good_rps=%.0f\n", math.max(summary.requests - bad, 0) / seconds))
  out:write(string.format("unexpected=%d\n", bad))
  out:write(string.format("non2xx=%d\n", e.status))
  out:write(string.format("socket_errors=%d\n", e.connect + e.read + e.write + e.timeout))
  out:write(string.format("failed=%d\n", failed))
  for status, n in pairs(by_status) do
    out:write(string.format("status_%d=%d\n", status, n))
  end
  for _, p in ipairs({ 50, 90, 99 }) do
    out:write(string.format("p%d_ms=%.2f\n", p, latency:percentile(p) / 1000))
  end
  out:write(string.format("max_ms=%.2f\n", latency.max / 1000))
end
