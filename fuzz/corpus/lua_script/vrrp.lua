-- keepalived / VRRP: which role this node holds, read from where it shows, the virtual
-- IP on a local interface (`ip -o -4 addr show`). The node that should be MASTER says
-- expect = "master"; its peer says expect = "backup". A failover then fails both: the
-- master "is BACKUP: 10.0.0.100 is not here", the backup "is MASTER: holds 10.0.0.100".
-- expect = "any" only reports the role.
--
-- config.yaml:
--   commands: { ip: /usr/sbin/ip }
--   checks:
--     - name: vrrp
--       type: lua
--       script: checks/vrrp.lua
--       params: { vip: 10.0.0.100, interface: eth0, expect: master }
return {
  interval = "10s",
  timeout = "3s",
  threshold = 2,
  comment = "VRRP role changed: keepalived moved the virtual IP. Check why the master gave it up (keepalived's log, its track scripts).",
  params = {
    vip = nil,          -- the virtual IP address
    interface = nil,    -- look only on this interface (default: every interface)
    expect = "master",  -- master, backup or any
    ip = "ip",          -- the `commands:` entry for /usr/sbin/ip
  },
  check = function(ctx)
    local p = ctx.params
    if type(p.vip) ~= "string" or not p.vip:match("^%d+%.%d+%.%d+%.%d+$") then
      error("params.vip must be an IPv4 address such as \"10.0.0.100\"", 0)
    end
    if p.expect ~= "master" and p.expect ~= "backup" and p.expect ~= "any" then
      error("params.expect must be \"master\", \"backup\" or \"any\", not " .. tostring(p.expect), 0)
    end
    local args = { "-o", "-4", "addr", "show" }
    if p.interface then args[#args + 1] = "dev"; args[#args + 1] = p.interface end
    local r = exec{ command = p.ip, args = args }
    if r.code ~= 0 then
      error(string.format("ip addr show failed (exit %s): %s", tostring(r.code), r.stderr:gsub("%s+$", "")), 0)
    end
    local holder
    for line in r.stdout:gmatch("[^\n]+") do
      local dev, addr = line:match("^%d+:%s+(%S+)%s+inet%s+([%d%.]+)/")
      if addr == p.vip then holder = dev end
    end
    local where = p.interface and (" on " .. p.interface) or ""
    if holder then
      local msg = string.format("MASTER: holds %s on %s", p.vip, holder)
      if p.expect == "backup" then
        return { ok = false, value = 1, message = "is " .. msg .. " (expected BACKUP: a failover happened, or both nodes hold it)" }
      end
      return { ok = true, value = 1, message = msg }
    end
    local msg = string.format("BACKUP: %s is not here%s", p.vip, where)
    if p.expect == "master" then
      return { ok = false, value = 0, message = "is " .. msg .. " (expected MASTER: keepalived gave the VIP up or is not running)" }
    end
    return { ok = true, value = 0, message = msg }
  end,
}
