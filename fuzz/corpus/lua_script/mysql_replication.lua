-- A MariaDB/MySQL replica: both replication threads running, at most `max_behind`
-- seconds behind its primary. The message names the node and what is wrong, with the
-- server's own error ("SQL thread No: Error 'Duplicate entry ...'").
--
-- config.yaml:
--   - name: db_replica
--     type: lua
--     script: checks/mysql_replication.lua
--     params: { node: db2, port: 3306, password: "...", max_behind: 60 }
return {
  interval = "30s",
  timeout = "5s",
  threshold = 2,
  comment = "Replica broken or behind: see SHOW SLAVE STATUS on it, then the primary's load.",
  params = { host = "127.0.0.1", port = 3306, user = "monitor", password = "", max_behind = 60 },
  check = function(ctx)
    local p = ctx.params
    local node = p.node or (p.host .. ":" .. p.port)
    local rows = mysql.query{ host = p.host, port = p.port, user = p.user, password = p.password,
                              sql = "SHOW SLAVE STATUS", timeout = "4s" }
    local r = rows[1]
    if r == nil then
      return { ok = false, message = node .. ": not a replica (SHOW SLAVE STATUS is empty)" }
    end
    local problems = {}
    if r.Slave_IO_Running ~= "Yes" then
      local e = r.Last_IO_Error or ""
      problems[#problems + 1] = "IO thread " .. tostring(r.Slave_IO_Running) .. (e ~= "" and (": " .. e) or "")
    end
    if r.Slave_SQL_Running ~= "Yes" then
      local e = r.Last_SQL_Error or ""
      problems[#problems + 1] = "SQL thread " .. tostring(r.Slave_SQL_Running) .. (e ~= "" and (": " .. e) or "")
    end
    local behind = tonumber(r.Seconds_Behind_Master)
    if #problems == 0 and behind and behind > p.max_behind then
      problems[#problems + 1] = string.format("%d s behind (limit %d s)", behind, p.max_behind)
    end
    local primary = tostring(r.Master_Host) .. ":" .. tostring(r.Master_Port)
    if #problems > 0 then
      return { ok = false, value = behind, message = node .. " (replica of " .. primary .. "): " .. table.concat(problems, ", ") }
    end
    return { ok = true, value = behind,
             message = string.format("%s: replica of %s, %s s behind", node, primary, tostring(behind)) }
  end,
}
