-- csync2 file-sync conflicts: `csync2 -M` lists the files csync2 could not sync
-- ("chary": changed on both sides). Exit 2 means "nothing listed", not an error.
-- Failure names the files and the peer. With `auto_resolve = true` (on ONE designated
-- node: its copy wins) the check runs `csync2 -f FILE` for each file and then
-- `csync2 -x`, logs each step as a script_log event, and reports what it resolved: the
-- original cluster did this from cron, with no record.
--
-- config.yaml:
--   commands: { csync2: /usr/sbin/csync2 }
--   checks:
--     - name: csync2
--       type: lua
--       script: checks/csync2.lua
--       params: { prefixes: { www: /var/www }, auto_resolve: false }
return {
  interval = "1m",
  timeout = "30s",
  threshold = 1,
  comment = "csync2 conflict: a file was changed on two nodes. Pick the good copy, run `csync2 -f FILE` there, then `csync2 -x`.",
  params = {
    csync2 = "csync2",     -- the `commands:` entry
    args = {},             -- given before each operation (e.g. {"-N", "web1"})
    prefixes = {},         -- csync2 prefix name -> local path, to turn %www%/x into /var/www/x
    auto_resolve = false,  -- force this node's copy of every conflicting file
  },
  check = function(ctx)
    local p = ctx.params
    local function csync2(...)
      local args = {}
      for _, a in ipairs(p.args) do args[#args + 1] = a end
      for _, a in ipairs({ ... }) do args[#args + 1] = a end
      return exec{ command = p.csync2, args = args, timeout = "20s" }
    end
    local function list()
      local r = csync2("-M")
      if r.code == 2 then return {}, {} end
      if r.code ~= 0 then
        error(string.format("csync2 -M failed (exit %s): %s", tostring(r.code),
                            (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")), 0)
      end
      local conflicts, peers, seen = {}, {}, {}
      for line in r.stdout:gmatch("[^\n]+") do
        local kind, _, peer, file = line:match("^(%S+)\t([^\t]+)\t([^\t]+)\t(.+)$")
        if kind == "chary" and not seen[file] then
          seen[file] = true
          conflicts[#conflicts + 1] = file
          peers[file] = peer
        end
      end
      return conflicts, peers
    end
    local function local_path(file)
      local name, rest = file:match("^%%([^%%]+)%%(.*)$")
      if name == nil then return file end
      local base = p.prefixes[name]
      if base == nil then
        error("conflict in " .. file .. ", but params.prefixes has no `" .. name ..
              "`: add prefixes = { " .. name .. " = \"/local/path\" }", 0)
      end
      return base .. rest
    end

    local conflicts, peers = list()
    if #conflicts == 0 then
      return { ok = true, value = 0, message = "no csync2 conflicts" }
    end
    local function describe(files)
      local parts = {}
      for _, f in ipairs(files) do parts[#parts + 1] = f .. " (with " .. peers[f] .. ")" end
      return table.concat(parts, ", ")
    end
    if not p.auto_resolve then
      return { ok = false, value = #conflicts, message = string.format(
        "%d file(s) in conflict: %s", #conflicts, describe(conflicts)) }
    end
    for _, f in ipairs(conflicts) do
      local path = local_path(f)
      local r = csync2("-f", path)
      log.info(string.format("csync2 auto-resolve: csync2 -f %s: exit %s %s", path,
                             tostring(r.code), r.stderr:gsub("%s+$", "")))
      if r.code ~= 0 then
        return { ok = false, value = #conflicts, message = string.format(
          "auto-resolve failed: csync2 -f %s exited %s: %s", path, tostring(r.code),
          r.stderr:gsub("%s+$", "")) }
      end
    end
    local r = csync2("-x")
    log.info(string.format("csync2 auto-resolve: csync2 -x: exit %s %s", tostring(r.code),
                           (r.stderr .. r.stdout):gsub("%s+$", "")))
    local left = list()
    if #left > 0 then
      return { ok = false, value = #left, message = string.format(
        "auto-resolve left %d file(s) in conflict after csync2 -x (exit %s): %s",
        #left, tostring(r.code), describe(left)) }
    end
    return { ok = true, value = 0, message = string.format(
      "resolved %d conflict(s) by forcing this node's copy: %s", #conflicts, describe(conflicts)) }
  end,
}
