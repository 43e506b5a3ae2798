-- wrk script: GET over a list of paths in turn (the URL's own path when
-- none is given), with an optional bearer token ("-" for none). Success is 200.
--
--   wrk -s get.lua URL -- TOKEN [PATH...]

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local requests, n = {}, 0

function init(args)
  local headers = {}
  if args[1] and args[1] ~= "-" then
    headers["Authorization"] = "Bearer " .. args[1]
  end
  for i = 2, #args do
    requests[#requests + 1] = wrk.format("GET", args[i], headers)
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path, headers)
  end
  n = id
end

function request()
  n = n + 1
  return requests[n % #requests + 1]
end

function response(status, headers, body)
  count_status(status, 200)
end
