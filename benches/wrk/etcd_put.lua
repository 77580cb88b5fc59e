-- etcd write through the v3 JSON gateway: POST /v3/kv/put {"key": b64, "value": b64}.
-- Every request writes a NEW key (run tag / thread id / counter), like a new session,
-- with a 1 KiB value, so etcd does the same work per request as micro-tomcat's session create.
--   WRK_RUN_TAG=r1 wrk -t2 -c50 -d15s --latency -s benches/wrk/etcd_put.lua http://127.0.0.1:12379
dofile((os.getenv("WRK_LUA_DIR") or "benches/wrk") .. "/common.lua")

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 (RFC 4648, with '=' padding); plain arithmetic so it runs on any Lua 5.1/LuaJIT.
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = alphabet:sub(c1 + 1, c1 + 1) .. alphabet:sub(c2 + 1, c2 + 1)
      .. (b and alphabet:sub(c3 + 1, c3 + 1) or "=")
      .. (c and alphabet:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- setup() runs in the main Lua state once per thread: hand each thread its own id.
local next_thread = 0
function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_id", next_thread)
end

local value64 = base64(string.rep("x", 1024))   -- 1 KiB value, encoded once
local prefix, counter
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  -- thread_id was set by setup(); the run tag keeps keys unique across wrk runs.
  local tag = os.getenv("WRK_RUN_TAG") or tostring(os.time())
  prefix = "bench/" .. tag .. "/" .. tostring(thread_id) .. "/"
  counter = 0
end

function request()
  counter = counter + 1
  local body = '{"key":"' .. base64(prefix .. counter) .. '","value":"' .. value64 .. '"}'
  return wrk.format("POST", "/v3/kv/put", headers, body)
end
