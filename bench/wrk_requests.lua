-- wrk_requests.lua: replay pre-generated requests (SB_REQUESTS file) or plain GETs,
-- counting every non-2xx response.
-- file lines: METHOD \t PATH \t BEARER \t NONCE \t BODY

local requests = {}
local index = 0
local bad = 0

function init(args)
  local path = os.getenv("SB_REQUESTS")
  if path then
    for line in io.lines(path) do
      local method, p, bearer, nonce, body = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)")
      requests[#requests + 1] = wrk.format(method, p, {
        ["Authorization"] = "Bearer " .. bearer,
        ["X-Action-Nonce"] = nonce,
        ["Content-Type"] = "application/json",
      }, body)
    end
  end
end

function request()
  if #requests == 0 then return wrk.format(nil) end
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end

-- wrk counts non-2xx/3xx responses itself ("Non-2xx or 3xx responses"). A response()
-- callback makes wrk parse every response into Lua, which halves what one wrk thread
-- can drive; it is defined only when SB_SHOW_ERRORS is set, to print the first bodies.
if os.getenv("SB_SHOW_ERRORS") then
  function response(status, headers, body)
    if status < 200 or status > 299 then
      bad = bad + 1
      if bad <= 3 then io.stderr:write("non-2xx " .. status .. ": " .. body .. "\n") end
    end
  end
end
