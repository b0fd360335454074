-- The original system's runbook: a far-away MariaDB Galera node whose latency stalls the
-- whole cluster is taken out, and brought back once the latency is normal again.
--
-- Attach it to the latency check and the web check of the far node's server:
--
--   commands:  { grep: /usr/bin/grep }
--   actions:   proxy_off / proxy_on (file_switch of nginx's proxy include, nginx -t, reload)
--              stop_db / start_db   (command: [/usr/bin/systemctl, stop|start, mariadb])
--   runbooks:  { galera_far_node: { script: runbooks/galera_far_node.lua,
--                                   params: { proxy_file: /etc/nginx/galera/proxy_switch.conf } } }
--   checks:    galera_latency (type: latency, high_for / normal_for) and web, both with
--              `runbook: galera_far_node`
--
-- Failed (either check): when the latency has been high for its period AND the web check
-- fails AND nginx's proxy_pass is on: switch proxy_pass off (validated, reloaded), then
-- stop the local MariaDB node. Anything less: say why nothing was done.
-- Recovered (the latency check): start MariaDB, wait until its wsrep state is Synced
-- (an error, so an alert, if it never gets there: proxy_pass then stays off), then
-- switch proxy_pass back on.

-- Whether nginx's include holds a proxy_pass (grep exits 0).
local function proxy_active(p)
  local r = exec{ command = p.grep, args = { "-q", "proxy_pass", p.proxy_file } }
  return r.code == 0
end

-- The local node's wsrep_local_state_comment, or nil while it does not answer.
local function wsrep_state(p)
  local ok, rows = pcall(mysql.query, { host = p.db.host, port = p.db.port, user = p.db.user,
    password = p.db.password, timeout = "3s",
    sql = "SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'" })
  if not ok or rows[1] == nil then return nil end
  return rows[1].Value
end

return {
  timeout = "20m",
  params = {
    latency_check = "galera_latency",
    web_check = "web",
    -- nginx's include that holds proxy_pass while the proxy is on
    proxy_file = "/etc/nginx/galera/proxy_switch.conf",
    grep = "grep",                      -- the `commands:` entry for /usr/bin/grep
    db = { host = "127.0.0.1", port = 3306, user = "monitor", password = "" },
    sync_timeout = "10m",
  },

  on_failed = function(rb)
    local p = rb.params
    if status(p.latency_check) then
      return "latency to the cluster is normal: nothing to do"
    end
    if status(p.web_check) then
      return "latency is high but " .. p.web_check .. " still answers: nothing to do yet"
    end
    if not proxy_active(p) then
      return "proxy_pass is already off: nothing to do"
    end
    say("latency high, " .. p.web_check .. " down, proxy_pass on: taking this node out")
    action("proxy_off")
    action("stop_db")
    return "proxy_pass off, local MariaDB stopped"
  end,

  on_recovered = function(rb)
    local p = rb.params
    if rb.check ~= p.latency_check then
      return rb.check .. " recovered; only " .. p.latency_check .. " brings the node back"
    end
    if proxy_active(p) and wsrep_state(p) == "Synced" then
      return "proxy_pass is on and MariaDB is Synced: nothing to undo"
    end
    action("start_db")
    local synced = wait_until(function() return wsrep_state(p) == "Synced" end, p.sync_timeout, "2s")
    if not synced then
      error(string.format("MariaDB did not reach Synced within %s (now %s): proxy_pass stays off",
                          p.sync_timeout, wsrep_state(p) or "not answering"))
    end
    say("MariaDB is Synced")
    action("proxy_on")
    return "MariaDB Synced, proxy_pass back on"
  end,
}
