-- micro-tomcat session write: POST /api/sessions with a 1 KiB JSON object (expects 201).
-- The body is the same for every request; the server picks a new session id each time,
-- so every request is a new session (one Raft entry, replicated and fsynced).
--   wrk -t2 -c50 -d15s --latency -s benches/wrk/sessions_post.lua http://127.0.0.1:18081
dofile((os.getenv("WRK_LUA_DIR") or "benches/wrk") .. "/common.lua")

-- {"pad":"xxx...x"} is 1024 bytes: 10 bytes of JSON around 1014 bytes of padding.
wrk.method = "POST"
wrk.path = "/api/sessions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"pad":"' .. string.rep("x", 1014) .. '"}'
