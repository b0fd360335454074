-- A MariaDB Galera node: Synced, ready, connected, in the Primary component, in a
-- cluster of the expected size, with a short receive queue, and not paused by flow
-- control. The paused share is computed from the change of wsrep_flow_control_paused_ns
-- between two runs (kept in ctx.state), not from wsrep_flow_control_paused, which
-- averages since the last FLUSH STATUS. The message names the node and every problem:
-- "node3: Donor/Desynced, cluster size 2 < 3".
--
-- config.yaml:
--   - name: galera_node3
--     type: lua
--     script: checks/galera_sync.lua
--     params: { node: node3, host: 127.0.0.1, port: 13303, password: "..." , cluster_size: 3 }
return {
  interval = "10s",
  timeout = "5s",
  threshold = 3,
  comment = "Galera node must be Synced: a node that is not stalls or splits the cluster.",
  params = {
    node = nil,          -- the name in messages (default host:port)
    host = "127.0.0.1",
    port = 3306,
    user = "monitor",
    password = "",
    cluster_size = 3,    -- at least this many nodes
    max_recv_queue = 100,
    max_paused = 0.2,    -- at most this share of the time paused by flow control (0-1)
  },
  check = function(ctx)
    local p = ctx.params
    local node = p.node or (p.host .. ":" .. p.port)
    local conn = { host = p.host, port = p.port, user = p.user, password = p.password, timeout = "4s" }
    local function query(sql)
      conn.sql = sql
      local rows = mysql.query(conn)
      local t = {}
      for _, row in ipairs(rows) do t[row.Variable_name] = row.Value end
      return t
    end
    local vars = query("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
    if vars.wsrep_on ~= "ON" then
      return { ok = false, message = node .. ": not a Galera node (wsrep_on = " .. tostring(vars.wsrep_on) .. ")" }
    end
    local st = query("SHOW GLOBAL STATUS LIKE 'wsrep\\_%'")
    local problems = {}
    local state = st.wsrep_local_state_comment or "unknown state"
    if state ~= "Synced" then table.insert(problems, state) end
    if st.wsrep_ready ~= "ON" then table.insert(problems, "not ready") end
    if st.wsrep_connected ~= "ON" then table.insert(problems, "not connected") end
    if st.wsrep_cluster_status ~= "Primary" then
      table.insert(problems, "cluster status " .. tostring(st.wsrep_cluster_status))
    end
    local size = tonumber(st.wsrep_cluster_size) or 0
    if size < p.cluster_size then
      table.insert(problems, string.format("cluster size %d < %d", size, p.cluster_size))
    end
    local queue = tonumber(st.wsrep_local_recv_queue) or 0
    if queue > p.max_recv_queue then
      table.insert(problems, string.format("recv queue %d > %d", queue, p.max_recv_queue))
    end
    -- Flow control: the share of the time since the last run spent paused.
    local paused_ns, now = tonumber(st.wsrep_flow_control_paused_ns), time.now()
    local paused
    local s = ctx.state
    if paused_ns and s.paused_ns and s.at and now > s.at and paused_ns >= s.paused_ns then
      paused = (paused_ns - s.paused_ns) / 1e9 / (now - s.at)
      if paused > p.max_paused then
        table.insert(problems, string.format("paused by flow control %.0f%% of the last %.0f s",
                                             paused * 100, now - s.at))
      end
    end
    s.paused_ns, s.at = paused_ns, now
    if #problems > 0 then
      return { ok = false, value = size, message = node .. ": " .. table.concat(problems, ", ") }
    end
    return { ok = true, value = size, message = string.format("%s: Synced, cluster of %d, recv queue %d%s",
      node, size, queue, paused and string.format(", flow control %.1f%%", paused * 100) or "") }
  end,
}
