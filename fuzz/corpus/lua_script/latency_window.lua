-- Average latency over the last N samples, kept in ctx.state (so the window survives a
-- reload and a restart). One sample per run: a TCP connect (method = "tcp") or an ICMP
-- echo (method = "ping", needs root or CAP_NET_RAW). A lost sample counts as `lost_ms`.
-- Fails only when the window's average is above `max_avg_ms`, and not before
-- `min_samples` samples, so one slow answer is not an alert.
--
-- config.yaml:
--   - name: galera_node3_latency
--     type: lua
--     script: checks/latency_window.lua
--     params: { host: 10.0.0.3, method: ping, samples: 30, max_avg_ms: 50 }
return {
  interval = "5s",
  timeout = "3s",
  threshold = 1,
  comment = "Far Galera node: high latency stalls the whole cluster.",
  params = {
    host = "127.0.0.1",
    method = "tcp",  -- "tcp" (connect to `port`) or "ping"
    port = 3306,
    samples = 12,    -- the window: the last N runs
    min_samples = 3,
    max_avg_ms = 100,
    lost_ms = 2000,  -- what a lost sample counts as
  },
  check = function(ctx)
    local p, s = ctx.params, ctx.state
    local ms
    if p.method == "ping" then
      local r = net.ping{ host = p.host, count = 1, timeout = "2s" }
      ms = r.avg_ms or p.lost_ms
    elseif p.method == "tcp" then
      local r = net.tcp{ host = p.host, port = p.port, timeout = "2s" }
      ms = r.ok and r.ms or p.lost_ms
    else
      error("params.method must be \"tcp\" or \"ping\", not " .. tostring(p.method))
    end
    s.window = s.window or {}
    table.insert(s.window, ms)
    while #s.window > p.samples do table.remove(s.window, 1) end
    local sum = 0
    for _, v in ipairs(s.window) do sum = sum + v end
    local avg = sum / #s.window
    local desc = string.format("%s average %.1f ms over %d samples (last %.1f ms, limit %d ms)",
                               p.host, avg, #s.window, ms, p.max_avg_ms)
    if #s.window < p.min_samples then
      return { ok = true, value = avg, message = desc .. ", still filling the window" }
    end
    return { ok = avg <= p.max_avg_ms, value = avg, message = desc }
  end,
}
