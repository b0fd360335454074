-- The atto TCP service: send a request line, check the reply line against a Lua
-- pattern, and the time it took. The `tcp` plugin does the plain exchange; this script
-- shows what a script adds: a pattern, a time limit of its own, and the reply's text in
-- the message.
--
-- config.yaml:
--   - name: atto_socket
--     type: lua
--     script: checks/atto_socket.lua
--     params: { host: 127.0.0.1, port: 17000 }
return {
  interval = "10s",
  timeout = "3s",
  threshold = 3,
  comment = "Atto TCP service: restart it with `systemctl restart atto`.",
  params = {
    host = "127.0.0.1",
    port = 17000,
    request = "PING\n",        -- what is sent
    reply_pattern = "^OK PING", -- a Lua pattern the first reply line must match
    max_ms = 1000,             -- a slower reply is a failure
  },
  check = function(ctx)
    local p = ctx.params
    local where = p.host .. ":" .. p.port
    local r = net.tcp{ host = p.host, port = p.port, send = p.request, expect = "\n", timeout = "2s" }
    if not r.ok then
      return { ok = false, message = where .. ": " .. r.error }
    end
    local line = r.reply:match("^[^\r\n]*")
    if not line:find(p.reply_pattern) then
      return { ok = false, value = r.ms,
               message = string.format("%s replied %q, expected /%s/", where, line, p.reply_pattern) }
    end
    if r.ms > p.max_ms then
      return { ok = false, value = r.ms,
               message = string.format("%s replied %q in %.0f ms, slower than %d ms", where, line, r.ms, p.max_ms) }
    end
    return { ok = true, value = r.ms,
             message = string.format("%s replied %q in %.1f ms", where, line, r.ms) }
  end,
}
