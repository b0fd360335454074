//! Lua runbooks: a script whose `on_failed` / `on_recovered` function runs when a check
//! it is attached to changes status.
//!
//! ```lua
//! return {
//!   timeout = "15m",                       -- the whole run, waits included (default 10m)
//!   params = { node = "node3" },           -- defaults; `runbooks.NAME.params` override them
//!   on_failed = function(rb)
//!     if status("web") then return "web is fine: nothing to do" end
//!     action("proxy_off")                  -- a named action of config.yaml; raises if it fails
//!     action("stop_db")
//!   end,
//!   on_recovered = function(rb)
//!     action("start_db")
//!     if not wait_until(function() return synced() end, "5m") then
//!       error("node3 did not reach Synced within 5m: the proxy stays off")
//!     end
//!     action("proxy_on")
//!   end,
//! }
//! ```
//!
//! On top of the host API of checks, a runbook has `action(name)`, `status(check)`,
//! `wait_until(fn, timeout[, every])` and `say(text)`; `rb` carries `check`,
//! `transition`, `message`, `params`, `dry_run` and `host`. Every action's line and every
//! `say` go into the transcript, which the engine puts into the alert.
//!
//! The engine decides when a runbook runs (one run at a time per runbook, cooldown,
//! max_runs); this module only loads and runs one. Each run gets a fresh Lua state made
//! from the last good text of the script, so a runbook edited on disk is picked up at
//! its next run and a broken edit never stops remediation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mlua::{Function, Lua, MultiValue, Table, Value};
use vigia_api::yaml::did_you_mean;
use vigia_api::Dur;

use crate::host::{to_lua, HostEnv};
use crate::script::{describe, duration, error_message, line_of, type_of};
use crate::vm::DEFAULT_MEMORY_LIMIT;

/// The fields a runbook's table may have.
pub const FIELDS: &[&str] = &["timeout", "params", "on_failed", "on_recovered"];

/// How long a run may take unless the script or the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A check as a runbook sees it.
#[derive(Debug, Clone)]
pub struct CheckView {
    /// true = OK.
    pub status: bool,
    pub failures: u32,
    pub successes: u32,
    /// The message of its last run.
    pub message: String,
}

/// What a runbook may ask of the engine.
pub trait RunbookHost: Send + Sync + 'static {
    /// Runs the named action (or says what it would run, in dry-run mode):
    /// `Ok((succeeded, transcript line))`, or `Err` when there is no such action.
    fn action(&self, name: &str) -> BoxFuture<'static, Result<(bool, String), String>>;
    /// A check's current state; `Err` names the checks there are.
    fn status(&self, check: &str) -> Result<CheckView, String>;
}

/// What a runbook declares, as `vigia validate` reports it.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub timeout: Option<Duration>,
    pub on_failed: bool,
    pub on_recovered: bool,
}

/// One run: which function, for which transition of which check.
#[derive(Debug, Clone)]
pub struct Call {
    /// `failed` or `recovered`.
    pub transition: String,
    pub check: String,
    pub message: String,
    /// The config's `params`, laid over the script's own.
    pub params: Option<serde_json::Value>,
    pub dry_run: bool,
    /// The config's timeout; the script's own, then [`DEFAULT_TIMEOUT`], otherwise.
    pub timeout: Option<Duration>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    /// Action lines and `say` lines, in order, then a closing line.
    pub transcript: Vec<String>,
}

/// A runbook loaded into a fresh state, ready for one run.
pub struct Prepared {
    vm: crate::vm::Vm,
    table: Table,
    declared: Declared,
    hostname: String,
}

/// Loads a runbook's text into a fresh state for one run; `Err` says what is wrong
/// with it, with `file:line` where there is one.
pub fn prepare(text: &[u8], display: &str, env: Arc<HostEnv>) -> Result<Prepared, String> {
    let hostname = env.hostname.clone();
    let (vm, table, declared) = load(text, display, env)?;
    Ok(Prepared {
        vm,
        table,
        declared,
        hostname,
    })
}

/// Loads the script into a state and reads its declaration.
fn load(
    text: &[u8],
    display: &str,
    env: Arc<HostEnv>,
) -> Result<(crate::vm::Vm, Table, Declared), String> {
    let (vm, t) = crate::script::load_table(
        text,
        display,
        env,
        DEFAULT_MEMORY_LIMIT,
        "a runbook must return a table such as `return { on_failed = function(rb) ... end }`",
    )?;
    let src = String::from_utf8_lossy(text);
    let at = |field: &str| format!("{display}:{}", line_of(&src, field));
    let mut declared = Declared::default();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| format!("{display}: {e}"))?;
        let Value::String(k) = k else {
            return Err(format!(
                "{display}: the returned table has a {} key; its fields are: {}",
                type_of(&k),
                FIELDS.join(", ")
            ));
        };
        let key = k.to_string_lossy();
        let bad =
            |what: &str| format!("{}: `{key}` must be {what}, got {}", at(&key), describe(&v));
        match key.as_str() {
            "timeout" => {
                let d = duration(&v).ok_or_else(|| bad("a duration such as \"10m\""))?;
                if d.is_zero() {
                    return Err(format!("{}: timeout must be longer than 0s", at(&key)));
                }
                declared.timeout = Some(d);
            }
            "params" => {
                if !matches!(v, Value::Table(_)) {
                    return Err(bad("a table"));
                }
            }
            "on_failed" | "on_recovered" => {
                if !matches!(v, Value::Function(_)) {
                    return Err(bad("a function(rb)"));
                }
                if key == "on_failed" {
                    declared.on_failed = true;
                } else {
                    declared.on_recovered = true;
                }
            }
            other => {
                let hint = match did_you_mean(other, FIELDS.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("the fields are: {}", FIELDS.join(", ")),
                };
                return Err(format!(
                    "{}: unknown field `{other}` in the returned table ({hint})",
                    at(other)
                ));
            }
        }
    }
    if !declared.on_failed && !declared.on_recovered {
        return Err(format!(
            "{display}: the runbook has neither `on_failed` nor `on_recovered`: add `on_failed = function(rb) ... end`"
        ));
    }
    Ok((vm, t, declared))
}

/// Checks a runbook's text as `vigia validate` and the engine's start do.
pub fn validate(text: &[u8], display: &str, env: Arc<HostEnv>) -> Result<Declared, String> {
    load(text, display, env).map(|(_, _, d)| d)
}

/// Reads and validates a runbook file.
pub fn read(file: &Path, display: &str, env: Arc<HostEnv>) -> Result<(Vec<u8>, Declared), String> {
    let text =
        std::fs::read(file).map_err(|e| format!("{display}: cannot read the runbook: {e}"))?;
    let declared = validate(&text, display, env)?;
    Ok((text, declared))
}

/// The runbook API on top of the host API. `wait_until` is Lua: it is `fn` and `sleep`.
const API: &str = r#"
local raw_action, raw_status, say, sleep, now, error, type, parse = ...
function action(name)
  if type(name) ~= "string" then error("action: expects the name of an action, e.g. action(\"proxy_off\")", 2) end
  local ok, line = raw_action(name)
  if ok == nil then error(line, 2) end
  if not ok then error("action " .. name .. " failed: " .. line, 2) end
  return line
end
function status(name)
  if type(name) ~= "string" then error("status: expects the name of a check, e.g. status(\"web\")", 2) end
  local st, info = raw_status(name)
  if st == nil then error(info, 2) end
  return st, info
end
function wait_until(fn, timeout, every)
  if type(fn) ~= "function" then error("wait_until: the first argument must be a function that returns true when done", 2) end
  local limit = parse(timeout)
  if limit == nil then error("wait_until: timeout must be a duration such as \"5m\" or a number of seconds", 2) end
  local step = 1
  if every ~= nil then
    step = parse(every)
    if step == nil or step <= 0 then error("wait_until: every must be a duration such as \"2s\" or a number of seconds", 2) end
  end
  local deadline = now() + limit
  while true do
    if fn() then return true end
    local left = deadline - now()
    if left <= 0 then return false end
    sleep(math.min(step, left, 60) * 1000)
  end
end
_G.say = say
"#;

/// Runs `on_failed` or `on_recovered` of a prepared runbook.
pub async fn run(
    prepared: Prepared,
    display: &str,
    host: Arc<dyn RunbookHost>,
    call: Call,
) -> Outcome {
    let transcript = Arc::new(Mutex::new(Vec::<String>::new()));
    let fail = |transcript: &Arc<Mutex<Vec<String>>>, line: String| {
        let mut t = transcript.lock().unwrap_or_else(|p| p.into_inner()).clone();
        t.push(line);
        Outcome {
            ok: false,
            transcript: t,
        }
    };
    let Prepared {
        vm,
        table,
        declared,
        hostname,
    } = prepared;
    let function = format!("on_{}", call.transition);
    let f: Option<Function> = table.raw_get(function.as_str()).ok();
    let Some(f) = f else {
        return Outcome {
            ok: true,
            transcript: vec![format!(
                "· runbook {display} has no {function}: nothing to do"
            )],
        };
    };
    let timeout = call.timeout.or(declared.timeout).unwrap_or(DEFAULT_TIMEOUT);
    let lua = vm.lua.clone();
    *vm.budget.check.lock().unwrap_or_else(|p| p.into_inner()) = call.check.clone();
    let set_up = || -> mlua::Result<Table> {
        install_api(&lua, &vm.budget, host.clone(), transcript.clone())?;
        let params: Table = match table.raw_get::<Value>("params")? {
            Value::Table(t) => t,
            _ => lua.create_table()?,
        };
        if let Some(serde_json::Value::Object(map)) = &call.params {
            for (k, v) in map {
                params.raw_set(k.as_str(), to_lua(&lua, v)?)?;
            }
        }
        let rb = lua.create_table()?;
        rb.raw_set("check", call.check.as_str())?;
        rb.raw_set("transition", call.transition.as_str())?;
        rb.raw_set("message", call.message.as_str())?;
        rb.raw_set("params", params)?;
        rb.raw_set("dry_run", call.dry_run)?;
        rb.raw_set("host", hostname.as_str())?;
        Ok(rb)
    };
    let rb = match set_up() {
        Ok(rb) => rb,
        Err(e) => return fail(&transcript, format!("✗ runbook {display}: {e}")),
    };
    let thread = match lua.create_thread(f) {
        Ok(t) => t,
        Err(e) => return fail(&transcript, format!("✗ runbook {display}: {e}")),
    };
    vm.budget.arm(timeout, thread.to_pointer() as usize);
    let fut = match thread.into_async::<MultiValue>(rb) {
        Ok(f) => crate::budget::Resumed::new(f, vm.budget.clone()),
        Err(e) => {
            vm.budget.disarm();
            return fail(&transcript, format!("✗ runbook {display}: {e}"));
        }
    };
    let r = tokio::time::timeout(timeout, fut).await;
    let (in_call, stopped) = vm.budget.finish();
    let _ = lua.gc_collect();
    let (ok, last) = match r {
        _ if stopped.is_some() => (false, stopped.unwrap_or_default()),
        Err(_) => (
            false,
            match in_call {
                Some(c) => format!(
                    "{display}: not finished within {}: still waiting for {c}",
                    Dur(timeout)
                ),
                None => format!("{display}: not finished within {}", Dur(timeout)),
            },
        ),
        Ok(Err(e)) => {
            let m = error_message(&e);
            (
                false,
                if m.starts_with(display) {
                    m
                } else {
                    format!("{display}: {m}")
                },
            )
        }
        Ok(Ok(values)) => (
            true,
            match values.into_iter().next() {
                Some(Value::String(s)) => s.to_string_lossy(),
                _ => "done".to_string(),
            },
        ),
    };
    let mut t = transcript.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if ok {
        t.push(format!("✓ runbook {function}: {last}"));
    } else {
        t.push(format!("✗ runbook {function}: {last}"));
    }
    Outcome { ok, transcript: t }
}

/// Seconds of a duration argument: `"5m"`, `"500ms"` or a number of seconds.
fn seconds(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) if *i >= 0 => Some(*i as f64),
        Value::Number(n) if *n >= 0.0 && n.is_finite() => Some(*n),
        Value::String(_) => duration(v).map(|d| d.as_secs_f64()),
        _ => None,
    }
}

fn install_api(
    lua: &Lua,
    budget: &Arc<crate::vm::Budget>,
    host: Arc<dyn RunbookHost>,
    transcript: Arc<Mutex<Vec<String>>>,
) -> mlua::Result<()> {
    let raw_action = {
        let (host, transcript) = (host.clone(), transcript.clone());
        crate::host::async_host(lua, budget.clone(), move |lua, v, budget| {
            let (host, transcript) = (host.clone(), transcript.clone());
            async move {
                let Value::String(name) = v else {
                    return Err("action: expects a name".into());
                };
                let name = name.to_string_lossy();
                *budget.in_call.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("action {name}"));
                let r = host.action(&name).await;
                *budget.in_call.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let (ok, line) = r?;
                transcript
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                // (ok, line): the Lua side raises when ok is false.
                let t = lua.create_table().map_err(|e| e.to_string())?;
                t.raw_set(1, ok).map_err(|e| e.to_string())?;
                t.raw_set(2, line).map_err(|e| e.to_string())?;
                Ok(Value::Table(t))
            }
        })?
    };
    // async_host gives (true, {ok, line}) or (false, message): unpack for the API chunk.
    let unpack_action: Function = lua
        .load(
            r#"local raw = ...
            return function(name)
              local ok, r = raw(name)
              if not ok then return nil, r end
              return r[1], r[2]
            end"#,
        )
        .set_name("=vigia")
        .call(raw_action)?;
    let raw_status = {
        let host = host.clone();
        lua.create_function(move |lua, name: String| match host.status(&name) {
            Ok(v) => {
                let t = lua.create_table()?;
                t.raw_set("status", v.status)?;
                t.raw_set("failures", v.failures)?;
                t.raw_set("successes", v.successes)?;
                t.raw_set("message", v.message)?;
                Ok((Value::Boolean(v.status), Value::Table(t)))
            }
            Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e)?))),
        })?
    };
    let say = {
        let budget = budget.clone();
        lua.create_function(move |_, args: MultiValue| {
            let text: Vec<String> = args
                .iter()
                .map(|v| {
                    v.to_string()
                        .unwrap_or_else(|_| format!("<{}>", v.type_name()))
                })
                .collect();
            let text = text.join(" ");
            let check = budget.check.lock().unwrap_or_else(|p| p.into_inner()).clone();
            tracing::info!(event = "runbook_say", check = %check, script = %budget.script, "{text}");
            transcript
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("· {text}"));
            Ok(())
        })?
    };
    let parse = lua.create_function(|_, v: Value| Ok(seconds(&v)))?;
    let g = lua.globals();
    let sleep: Value = g.raw_get("sleep")?;
    let time: Table = g.raw_get("time")?;
    let now: Value = time.raw_get("now")?;
    lua.load(API).set_name("=vigia").call::<()>((
        unpack_action,
        raw_status,
        say,
        sleep,
        now,
        g.raw_get::<Value>("error")?,
        g.raw_get::<Value>("type")?,
        parse,
    ))?;
    Ok(())
}
