-- POST requests read from files, for wrk: one request repeated, and optionally a list of
-- requests each sent once (fresh webhook results), interleaved every Nth request.
--
-- wrk -s webhooks.lua URL -- REPEAT_FILE [LIST_FILE EVERY THREADS]
--   REPEAT_FILE  the request sent whenever no listed one is due (its first line)
--   LIST_FILE    requests sent once each; thread k of THREADS takes lines k, k+THREADS, ...
--   EVERY        one request in EVERY is the next listed one, while any is left (1: all)
-- A file holds one request per line: the path (with its query), a tab, the JSON body.
-- The summary is printed as one line: WRK {json}.

local threads_started = 0

function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_number", threads_started)
end

local function load(name)
  local requests = {}
  for line in io.lines(name) do
    local path, body = line:match("^([^\t]+)\t(.*)$")
    if path then
      requests[#requests + 1] =
        wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
    end
  end
  return requests
end

local repeated
local listed = {}
local every = 1
local next_listed = 0
local sent = 0
-- wrk calls the first thread's request() once to check the script before any connection:
-- that call must not use up a listed request.
local checked = false

local function mine(all, threads)
  local share = {}
  for i, request in ipairs(all) do
    if (i - 1) % threads == thread_number - 1 then
      share[#share + 1] = request
    end
  end
  return share
end

function init(args)
  repeated = load(args[1])[1]
  if args[2] then
    listed = mine(load(args[2]), tonumber(args[4]))
    every = tonumber(args[3])
  end
end

function request()
  if not checked then
    checked = true
    if thread_number == 1 then
      return repeated
    end
  end
  sent = sent + 1
  if next_listed < #listed and (sent - 1) % every == 0 then
    next_listed = next_listed + 1
    return listed[next_listed]
  end
  return repeated
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
