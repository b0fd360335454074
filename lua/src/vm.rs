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
//! - Inside a coroutine the script made itself a yield would be seen by the script
//!   (a spurious `coroutine.yield`), so there it only keeps going up to
//!   [`COROUTINE_SLICE`] without a break, then is stopped as a runaway.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

pub use crate::budget::{
    runaway_of, Budget, Runaway, COROUTINE_SLICE, DEFAULT_MEMORY_LIMIT, HOOK_EVERY, LOAD_BUDGET,
    SLICE,
};
use crate::host::{self, HostEnv};

/// A script's state with its budget.
pub struct Vm {
    pub lua: Lua,
    pub budget: Arc<Budget>,
}

/// The one constructor of a sandboxed state. `memory_limit` in bytes.
pub fn new_vm(env: Arc<HostEnv>, memory_limit: usize, script: &str) -> mlua::Result<Vm> {
    let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
    let lua = Lua::new_with(libs | StdLib::OS, LuaOptions::new())?;
    let guard = harden(&lua)?;
    let budget = Arc::new(Budget::new(script, memory_limit, guard));
    install_hook(&lua, budget.clone())?;
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
"#;

fn install_hook(lua: &Lua, budget: Arc<Budget>) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |lua, _debug| {
            let now = budget.now();
            let deadline = budget.deadline.load(Ordering::Relaxed);
            if deadline == u64::MAX {
                return Ok(VmState::Continue);
            }
            let main = budget.main_thread.load(Ordering::Relaxed);
            let in_main = main != 0 && lua.current_thread().to_pointer() as usize == main;
            if now >= deadline {
                let msg = format!(
                    "{}: stopped after {}: the script was still running (an endless loop?)",
                    script_position(lua),
                    vigia_api::Dur(budget.allowed())
                );
                let mut stopped = budget.stopped.lock().unwrap_or_else(|p| p.into_inner());
                if stopped.is_none() {
                    *stopped = Some(msg.clone());
                    let _ = budget.guard.raw_set("stop", true);
                }
                drop(stopped);
                // In the run's coroutine, yield: the check's timer then drops the
                // whole run, whatever pcalls it is inside. Where a yield is not
                // possible (inside a C function's callback, or in a coroutine of the
                // script's), raise, and keep raising: the wrapped pcall & co. pass it on.
                let grace = Duration::from_millis(20).as_nanos() as u64;
                if in_main && now < deadline.saturating_add(grace) {
                    return Ok(VmState::Yield);
                }
                return Err(mlua::Error::external(Runaway(msg)));
            }
            if main == 0 {
                // Loading: a plain call, which cannot yield; the deadline alone applies.
                return Ok(VmState::Continue);
            }
            let since = now.saturating_sub(budget.slice_start.load(Ordering::Relaxed));
            if in_main {
                if since >= SLICE.as_nanos() as u64 {
                    budget.slice_start.store(now, Ordering::Relaxed);
                    return Ok(VmState::Yield);
                }
            } else if since >= COROUTINE_SLICE.as_nanos() as u64 {
                let msg = format!(
                    "{}: stopped: ran {} without a break inside a coroutine (an endless loop?)",
                    script_position(lua),
                    vigia_api::Dur(COROUTINE_SLICE)
                );
                return Err(mlua::Error::external(Runaway(msg)));
            }
            Ok(VmState::Continue)
        },
    )
}

/// `checks/x.lua:12`: the innermost frame of the script itself (not Vigia's wrappers).
fn script_position(lua: &Lua) -> String {
    for level in 0..64 {
        let frame = lua.inspect_stack(level, |d| {
            let src = d.source();
            (
                src.source.map(|s| s.to_string()).unwrap_or_default(),
                src.short_src.map(|s| s.to_string()).unwrap_or_default(),
                d.current_line(),
            )
        });
        let Some((source, short, line)) = frame else {
            break;
        };
        if source.starts_with('@') {
            if let Some(line) = line {
                return format!("{short}:{line}");
            }
        }
    }
    "the script".into()
}
