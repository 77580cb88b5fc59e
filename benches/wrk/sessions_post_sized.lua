-- micro-tomcat session write like sessions_post.lua, with a body of WRK_SESSION_BYTES bytes (default 1024,
-- at least 11): {"pad":"xx...x"}. Used by benches/suite.sh for the memory-vs-sessions curve.
--   WRK_SESSION_BYTES=100 wrk -t2 -c50 -d15s -s benches/wrk/sessions_post_sized.lua http://127.0.0.1:18081
dofile((os.getenv("WRK_LUA_DIR") or "benches/wrk") .. "/common.lua")

local bytes = math.max(11, tonumber(os.getenv("WRK_SESSION_BYTES") or "1024"))
wrk.method = "POST"
wrk.path = "/api/sessions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"pad":"' .. string.rep("x", bytes - 10) .. '"}'
