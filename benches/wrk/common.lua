-- Shared by the wrk scripts of benches/sessions.sh (loaded with dofile from every wrk Lua state).
--
-- done() prints one machine-readable line, "WRKJSON {...}", with the counts and latency
-- percentiles, so the bench script does not have to parse wrk's human text (whose units vary).

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  -- wrk counts status >= 400 in errors.status ("Non-2xx or 3xx responses"); timeouts
  -- (no answer within --timeout) are not in the latency histogram, so both must be reported.
  local failed = e.status + e.timeout + e.read + e.write + e.connect
  local ok = summary.requests - e.status
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"ok_rps":%.1f,' ..
    '"mean_ms":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"failed":%d}\n',
    summary.requests, secs, summary.requests / secs, ok / secs,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout, failed))
end
