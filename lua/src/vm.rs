//! The one constructor of a Lua state, and the budget that stops runaway scripts.
//!
//! A state gets Lua's string, table, math, utf8 and coroutine libraries, `os.time`,
//! `os.clock` and `os.date`, a `load` that only accepts text, and Vigia's host API
//! (`host.rs`). Nothing else: no io, no os.execute, no require, no debug, no dofile,
//! loadfile, string.dump or collectgarbage (`Lua::new()`'s "safe" set can read any file).
//!
//! Runaway scripts: an instruction hook fires every [`HOOK_EVERY`] instructions.
//! - Past the run's deadline, in the run's own coroutine, it yields, and the check's
//!   timer drops the whole run whatever `pcall`s it is inside. Where it cannot yield (in
//!   a coroutine of the script's, or under a C function), it raises a [`Runaway`] error,
//!   again at every later hook; `pcall`, `xpcall` and `coroutine.resume` are wrapped so
//!   that they pass a `Runaway` on instead of catching it. (mlua's
//!   `catch_rust_panics(false)` would stop it with a panic instead, but makes `pcall`
//!   unyieldable, so a script could not `pcall(mysql.query, ...)`.)
//! - In the run's own coroutine, after [`SLICE`] of continuous work it yields to the
//!   runtime, so a busy script shares the thread with every other check.
//! - Where it cannot yield (inside a coroutine the script made itself, where a yield
//!   would be seen by the script, or inside a Lua function called from C, such as a
//!   `table.sort` comparator), it keeps going up to [`UNBROKEN`] since the run was last
//!   resumed, then is stopped as a runaway.
//! - What runs without any hook is replaced or refused: the pattern functions and
//!   `string.rep` (`strings.rs`, with a step count), and `__gc` finalizers (Lua runs
//!   them with hooks off), which `setmetatable` refuses.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

pub use crate::budget::{
    past_deadline, runaway_of, script_position, Budget, Resumed, Runaway, DEFAULT_MEMORY_LIMIT,
    HOOK_EVERY, LOAD_BUDGET, SLICE, UNBROKEN,
};
use crate::host::{self, HostEnv};

/// A script's state with its budget.
pub struct Vm {
    pub lua: Lua,
    pub budget: Arc<Budget>,
}

/// How deep calls may nest in a script: far more than a check's recursion needs.
pub const MAX_CALL_DEPTH: usize = 2000;

/// The one constructor of a sandboxed state. `memory_limit` in bytes.
pub fn new_vm(env: Arc<HostEnv>, memory_limit: usize, script: &str) -> mlua::Result<Vm> {
    let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
    let lua = Lua::new_with(libs | StdLib::OS, LuaOptions::new())?;
    let guard = harden(&lua)?;
    let budget = Arc::new(Budget::new(script, memory_limit, guard));
    install_hook(&lua, budget.clone())?;
    crate::strings::install(&lua, budget.clone())?;
    host::register(&lua, env, budget.clone())?;
    lua.set_memory_limit(memory_limit)?;
    Ok(Vm { lua, budget })
}

/// Removes what a check has no business doing.
fn harden(lua: &Lua) -> mlua::Result<mlua::Table> {
    let g = lua.globals();
    for name in ["dofile", "loadfile", "collectgarbage", "require", "module"] {
        g.raw_set(name, mlua::Value::Nil)?;
    }
    // os: only the clock and the calendar.
    let os: mlua::Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date"] {
        safe_os.raw_set(name, os.get::<mlua::Value>(name)?)?;
    }
    g.raw_set("os", safe_os)?;
    let string: mlua::Table = g.get("string")?;
    string.raw_set("dump", mlua::Value::Nil)?;
    let is_runaway = lua.create_function(|_, v: mlua::Value| {
        Ok(matches!(&v, mlua::Value::Error(e) if runaway_of(e).is_some()))
    })?;
    let guard = lua.create_table()?;
    lua.load(SANDBOX)
        .set_name("=vigia")
        .call::<()>((is_runaway, guard.clone()))?;
    Ok(guard)
}

/// `load` of text only (precompiled bytecode can crash the VM); `pcall`, `xpcall` and
/// `coroutine.resume` that let a [`Runaway`] through.
const SANDBOX: &str = r#"
local is_runaway, guard = ...
local _load, _pcall, _xpcall, _resume, _error, _select = load, pcall, xpcall, coroutine.resume, error, select
local _setmetatable, _rawget, _type = setmetatable, rawget, type
-- A finalizer runs with Lua's hooks off: a loop in one could never be stopped.
setmetatable = function(t, mt)
  if _type(mt) == "table" and _rawget(mt, "__gc") ~= nil then
    _error("__gc finalizers are not available to scripts (they run where the engine cannot stop them); use a <close> variable or clean up before returning", 2)
  end
  return _setmetatable(t, mt)
end
load = function(chunk, name, mode, ...)
  if _select('#', ...) > 0 then return _load(chunk, name, "t", ...) end
  return _load(chunk, name, "t")
end
-- Once the run is being stopped (guard.stop), every error passes, whatever it is: near
-- the C-stack limit the runaway error itself may turn into "C stack overflow".
local function pass(ok, ...)
  if not ok and (guard.stop or is_runaway((...))) then _error((...), 0) end
  return ok, ...
end
pcall = function(...) return pass(_pcall(...)) end
xpcall = function(f, handler, ...)
  return pass(_xpcall(f, function(e)
    if guard.stop or is_runaway(e) then return e end
    return handler(e)
  end, ...))
end
coroutine.resume = function(...) return pass(_resume(...)) end
-- Lua's wrap puts the position in front of an error at every level it passes: a
-- recursion through wrap repeated `x.lua:1: ` hundreds of times. Keep it once.
local _wrap, _find, _sub = coroutine.wrap, string.find, string.sub
local function once(ok, ...)
  if ok then return ... end
  local e = ...
  if _type(e) == "string" then
    local _, stop = _find(e, "^[^\n]-:%d+: ")
    while stop and _sub(e, stop + 1, 2 * stop) == _sub(e, 1, stop) do e = _sub(e, stop + 1) end
  end
  _error(e, 0)
end
coroutine.wrap = function(f)
  local g = _wrap(f)
  return function(...) return once(_pcall(g, ...)) end
end
"#;

fn install_hook(lua: &Lua, budget: Arc<Budget>) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |lua, _debug| {
            let deadline = budget.deadline.load(Ordering::Relaxed);
            if deadline == u64::MAX {
                return Ok(VmState::Continue);
            }
            let now = budget.now();
            let main = budget.main_thread.load(Ordering::Relaxed);
            let in_main = main != 0 && lua.current_thread().to_pointer() as usize == main;
            if now >= deadline {
                // In the run's coroutine, yield: the check's timer then drops the
                // whole run, whatever pcalls it is inside. Where a yield is not
                // possible (inside a C function's callback, or in a coroutine of the
                // script's), raise, and keep raising: the wrapped pcall & co. pass it on.
                let grace = Duration::from_millis(20).as_nanos() as u64;
                let e = past_deadline(lua, &budget);
                if in_main && now < deadline.saturating_add(grace) {
                    return Ok(VmState::Yield);
                }
                return Err(e.unwrap_or_else(|| mlua::Error::external(Runaway(String::new()))));
            }
            if lua.inspect_stack(MAX_CALL_DEPTH, |_| ()).is_some() {
                // Lua itself allows a million stack slots, and unwinding a recursion
                // that deep through pcalls took seconds past any deadline.
                return Err(mlua::Error::external(Runaway(format!(
                    "{}: stopped: calls nested deeper than {MAX_CALL_DEPTH} (an endless recursion?)",
                    script_position(lua)
                ))));
            }
            if main == 0 {
                // Loading: a plain call, which cannot yield; the deadline alone applies.
                return Ok(VmState::Continue);
            }
            // `slice_start` is set each time the run is resumed (see `Resumed`): a
            // stretch that grows past the slice is one where the asked-for yield could
            // not happen.
            let since = now.saturating_sub(budget.slice_start.load(Ordering::Relaxed));
            if since >= UNBROKEN.as_nanos() as u64 {
                let where_ = if in_main {
                    "inside a function called by the string or table library (a `table.sort` \
                     comparator, a `string.gsub` function?), where it cannot pause"
                } else {
                    "inside a coroutine"
                };
                let msg = format!(
                    "{}: stopped: ran {} without a break {where_} (an endless loop?)",
                    script_position(lua),
                    vigia_api::Dur(UNBROKEN)
                );
                return Err(mlua::Error::external(Runaway(msg)));
            }
            if in_main && since >= SLICE.as_nanos() as u64 {
                return Ok(VmState::Yield);
            }
            Ok(VmState::Continue)
        },
    )
}
