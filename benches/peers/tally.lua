-- wrk script for benches/peers/peers.sh.
-- Sorts every response by the subset that answered (the first word of the body: "stable" or
-- "canary"); a status >= 400 or any other body counts as bad. At the end it prints one line:
--   TALLY requests=N duration_us=N stable=N canary=N bad=N sock_errors=N p50_us=N p99_us=N p999_us=N
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  n_stable, n_canary, n_bad = 0, 0, 0
end

function response(status, headers, body)
  local head = body and body:sub(1, 6) or ""
  if status >= 400 then
    n_bad = n_bad + 1
  elseif head == "stable" then
    n_stable = n_stable + 1
  elseif head == "canary" then
    n_canary = n_canary + 1
  else
    n_bad = n_bad + 1
  end
end

function done(summary, latency, requests)
  local stable, canary, bad = 0, 0, 0
  for _, t in ipairs(threads) do
    stable = stable + t:get("n_stable")
    canary = canary + t:get("n_canary")
    bad = bad + t:get("n_bad")
  end
  local e = summary.errors
  io.write(string.format(
    "TALLY requests=%d duration_us=%d stable=%d canary=%d bad=%d sock_errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, stable, canary, bad,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
