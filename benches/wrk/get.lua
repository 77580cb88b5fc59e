-- Plain GET of the URL given on wrk's command line, with whatever -H headers were given there
-- (benches/proxy.sh: /app/hello with a session cookie, or nginx / HAProxy). It defines no request()
-- or response(), so wrk keeps its fast static-request path; it only adds the WRKJSON summary line.
--   wrk -t2 -c50 -d15s --latency -s benches/wrk/get.lua -H "Cookie: MTSESSIONID=k3" http://127.0.0.1:18081/app/hello
dofile((os.getenv("WRK_LUA_DIR") or "benches/wrk") .. "/common.lua")
