-- A web check with a condition on the JSON body: what a script adds over the `http`
-- plugin, which can only look for a substring. The field is a dotted path into the
-- JSON document ("status", "db.state", "nodes.1.name").
--
-- config.yaml:
--   - name: web_api
--     type: lua
--     script: checks/web.lua
--     params: { url: "http://127.0.0.1:18080/health", field: status, equals: ok }
return {
  interval = "10s",
  timeout = "5s",
  comment = "Shop web front: check nginx, then call the web team.",
  params = {
    url = "http://127.0.0.1:18080/health",
    status = 200,     -- the expected HTTP status
    field = "status", -- a dotted path into the JSON body
    equals = "ok",    -- the value it must have (compared as text)
    max_ms = 2000,
  },
  check = function(ctx)
    local p = ctx.params
    local r = http.request{ url = p.url, timeout = "4s" }
    if r.status ~= p.status then
      return { ok = false, value = r.ms,
               message = string.format("HTTP %d from %s (expected %d)", r.status, p.url, p.status) }
    end
    local ok, doc = pcall(json.decode, r.body)
    if not ok then
      return { ok = false, value = r.ms, message = p.url .. " did not return JSON: " .. doc }
    end
    local v = doc
    for key in string.gmatch(p.field, "[^.]+") do
      if type(v) ~= "table" then v = nil break end
      v = v[tonumber(key) or key]
    end
    if v == nil then
      return { ok = false, value = r.ms, message = string.format("%s: the JSON has no `%s`", p.url, p.field) }
    end
    if tostring(v) ~= tostring(p.equals) then
      return { ok = false, value = r.ms,
               message = string.format("%s: %s is %q, expected %q", p.url, p.field, tostring(v), tostring(p.equals)) }
    end
    if r.ms > p.max_ms then
      return { ok = false, value = r.ms,
               message = string.format("%s answered in %.0f ms, slower than %d ms", p.url, r.ms, p.max_ms) }
    end
    return { ok = true, value = r.ms,
             message = string.format("%s: %s is %q (%.1f ms)", p.url, p.field, tostring(v), r.ms) }
  end,
}
