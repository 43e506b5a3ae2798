-- wrk script: POST /v1/feedback, each request with the next of many student
-- tokens (rate limits are per student, and the bench must not measure one
-- hot student), rotating over courses and ratings. Success is 202.
--
--   wrk -s submit.lua URL -- TOKENS_FILE [COURSES]

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local tokens, courses, n = {}, 50, 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  assert(#tokens > 0, "no tokens in " .. tostring(args[1]))
  courses = tonumber(args[2] or "50")
  -- Threads start far apart in the token list so they do not send the same students.
  n = id * math.floor(#tokens / 2 + 1)
end

function request()
  n = n + 1
  local body = string.format(
    '{"course_id":"BENCH-I%03d","rating":%d,"comment":"wrk load %d: clear lectures"}',
    n % courses, n % 5 + 1, n)
  return wrk.format("POST", "/v1/feedback", {
    ["Authorization"] = "Bearer " .. tokens[n % #tokens + 1],
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  count_status(status, 202)
end
