-- HAProxy backends, from the stats CSV (columns found by their header name, not by
-- position, which changes between versions). A failure lists the servers that are not
-- UP, per backend; a backend with no server UP at all comes first and makes the check
-- CRITICAL (nothing serves it); servers down in a backend that still has others UP make
-- it a WARNING (which still counts as a failure toward `threshold`).
--
-- config.yaml (stats enabled in haproxy.cfg: `stats enable` + `stats uri /stats`):
--   - name: haproxy
--     type: lua
--     script: checks/haproxy.lua
--     params: { url: "http://127.0.0.1:8404/stats;csv", backends: [be_app] }
return {
  interval = "10s",
  timeout = "3s",
  threshold = 2,
  comment = "HAProxy servers down: check them, then `echo 'show stat' | socat - UNIX-CONNECT:/run/haproxy/admin.sock`.",
  params = {
    url = "http://127.0.0.1:8404/stats;csv",
    backends = nil, -- only these backends (default: all)
  },
  check = function(ctx)
    local p = ctx.params
    local r = http.request{ url = p.url, timeout = "2s" }
    if r.status ~= 200 then
      return { ok = false, message = string.format("HTTP %d from %s", r.status, p.url) }
    end
    local function split(line)
      local out = {}
      for field in (line .. ","):gmatch("([^,]*),") do out[#out + 1] = field end
      return out
    end
    local header, col = nil, {}
    local backends, order = {}, {}
    local wanted
    if p.backends then
      wanted = {}
      for _, b in ipairs(p.backends) do wanted[b] = true end
    end
    for line in r.body:gmatch("[^\n]+") do
      if not header then
        header = split((line:gsub("^# ", "")))
        for i, name in ipairs(header) do col[name] = i end
        for _, need in ipairs({ "pxname", "svname", "status", "type" }) do
          if not col[need] then error("the stats CSV has no `" .. need .. "` column") end
        end
      else
        local f = split(line)
        local be = f[col.pxname]
        if f[col.type] == "2" and (not wanted or wanted[be]) then
          local b = backends[be]
          if not b then
            b = { up = 0, total = 0, down = {} }
            backends[be] = b
            order[#order + 1] = be
          end
          b.total = b.total + 1
          local status = f[col.status]
          if status:match("^UP") or status == "no check" then
            b.up = b.up + 1
          else
            -- HAProxy marks a check that is running right now with "* " (`* L4CON`):
            -- the status is the last result all the same.
            local why = (col.check_status and f[col.check_status] or ""):gsub("^%* ", "")
            b.down[#b.down + 1] = f[col.svname] .. " " .. status .. (why ~= "" and (" (" .. why .. ")") or "")
          end
        end
      end
    end
    if #order == 0 then
      return { ok = false, severity = "unknown", message = "no server of the watched backends is in " .. p.url }
    end
    local dead, degraded, servers_down = {}, {}, 0
    for _, be in ipairs(order) do
      local b = backends[be]
      servers_down = servers_down + #b.down
      if b.up == 0 then
        dead[#dead + 1] = string.format("%s has no server UP (%s)", be, table.concat(b.down, ", "))
      elseif #b.down > 0 then
        degraded[#degraded + 1] = string.format("%s: %s (%d of %d UP)", be, table.concat(b.down, ", "), b.up, b.total)
      end
    end
    if #dead > 0 then
      for _, d in ipairs(degraded) do dead[#dead + 1] = d end
      return { ok = false, severity = "critical", value = servers_down, message = table.concat(dead, "; ") }
    end
    if #degraded > 0 then
      return { ok = false, severity = "warning", value = servers_down, message = table.concat(degraded, "; ") }
    end
    return { ok = true, value = 0, message = string.format("%d backends, every server UP", #order) }
  end,
}
