//! A Lua script running as a check: one state per check, its `check(ctx)` called in a
//! fresh coroutine on every run, the result table turned into a [`CheckOutcome`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mlua::{Function, Lua, MultiValue, Table, Value};
use vigia_api::yaml::did_you_mean;
use vigia_api::{Check, CheckOutcome, Dur, RunContext, Severity};

use crate::host::to_lua;
use crate::script::{error_message, Loaded};
use crate::vm::Budget;

/// The persisted `ctx.state` of one check may be at most this big (as JSON).
pub const MAX_STATE: usize = 64 << 10;

const RESULT_FIELDS: &[&str] = &["ok", "message", "value", "severity"];

pub struct LuaCheck {
    lua: Lua,
    /// `check` wrapped in `xpcall` with a handler that keeps a traceback.
    func: Function,
    ctx: Table,
    budget: Arc<Budget>,
    script: String,
    /// The JSON of `ctx.state` last handed to the engine, to hand over only changes.
    saved: Mutex<Option<String>>,
    pending: Mutex<Option<String>>,
}

/// Wraps `check` so that an error comes back as `false, {message, traceback}`.
const XPCALL: &str = r#"
local f, handler = ...
local xpcall = xpcall
return function(ctx) return xpcall(f, handler, ctx) end
"#;

impl std::fmt::Debug for LuaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaCheck")
            .field("script", &self.script)
            .finish()
    }
}

impl LuaCheck {
    /// Makes a check named `name` of a loaded script; `params` are the config entry's,
    /// laid over the script's own `params`.
    pub fn new(
        loaded: Loaded,
        name: &str,
        params: Option<&serde_json::Value>,
        hostname: &str,
    ) -> Result<LuaCheck, String> {
        let Loaded {
            vm,
            params: own,
            check,
            ..
        } = loaded;
        let lua = vm.lua;
        let script = vm.budget.script.clone();
        let e = |e: mlua::Error| format!("{script}: {e}");
        *vm.budget.check.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
        let merged = match own {
            Some(t) => t,
            None => lua.create_table().map_err(e)?,
        };
        if let Some(serde_json::Value::Object(map)) = params {
            for (k, v) in map {
                merged
                    .raw_set(k.as_str(), to_lua(&lua, v).map_err(e)?)
                    .map_err(e)?;
            }
        }
        let ctx = lua.create_table().map_err(e)?;
        ctx.raw_set("check", name).map_err(e)?;
        ctx.raw_set("host", hostname).map_err(e)?;
        ctx.raw_set("params", merged).map_err(e)?;
        ctx.raw_set("state", lua.create_table().map_err(e)?)
            .map_err(e)?;
        let handler = lua
            .create_function(|lua, err: Value| {
                let message = match &err {
                    Value::String(s) => s.to_string_lossy(),
                    Value::Error(e) => error_message(e),
                    other => other
                        .to_string()
                        .unwrap_or_else(|_| format!("a {} was raised", other.type_name())),
                };
                let t = lua.create_table()?;
                t.raw_set("message", message)?;
                if let Ok(tb) = lua.traceback(None, 1) {
                    t.raw_set("traceback", short_traceback(&tb.to_string_lossy()))?;
                }
                Ok(t)
            })
            .map_err(e)?;
        let func: Function = lua
            .load(XPCALL)
            .set_name("=vigia")
            .call((check, handler))
            .map_err(e)?;
        Ok(LuaCheck {
            lua,
            func,
            ctx,
            budget: vm.budget,
            script,
            saved: Mutex::new(None),
            pending: Mutex::new(None),
        })
    }

    fn result(&self, values: MultiValue) -> CheckOutcome {
        let mut values = values.into_iter();
        let completed = matches!(values.next(), Some(Value::Boolean(true)));
        let first = values.next().unwrap_or(Value::Nil);
        if !completed {
            let (message, traceback) = match &first {
                Value::Table(t) => (
                    t.raw_get::<String>("message").unwrap_or_default(),
                    t.raw_get::<Option<String>>("traceback").ok().flatten(),
                ),
                Value::String(s) => (s.to_string_lossy(), None),
                Value::Error(e) => (error_message(e), None),
                _ => ("the script failed".to_string(), None),
            };
            if let Some(tb) = traceback {
                tracing::debug!(event = "script_traceback", script = %self.script, "{message}\n{tb}");
            }
            return CheckOutcome::critical(self.located(message));
        }
        match convert(&first) {
            Ok(o) => o,
            Err(why) => CheckOutcome::critical(format!("{}: script returned {why}", self.script)),
        }
    }

    /// Notes `ctx.state` after a run; hands it to the engine when it changed.
    fn note_state(&self) {
        let state: Value = self.ctx.raw_get("state").unwrap_or(Value::Nil);
        let t = match state {
            Value::Table(t) => t,
            _ => {
                tracing::warn!(event = "script_state", script = %self.script, "ctx.state must stay a table; it was replaced and is reset to {{}}.");
                let _ = self.ctx.raw_set("state", self.lua.create_table().ok());
                return;
            }
        };
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() && saved.is_none() {
            return;
        }
        let json = match serde_json::to_string(&t) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(event = "script_state", script = %self.script, "ctx.state cannot be saved ({e}): keep only strings, numbers, booleans and tables in it.");
                return;
            }
        };
        if json.len() > MAX_STATE {
            tracing::warn!(event = "script_state", script = %self.script, "ctx.state is {} KiB as JSON, over the {} KiB that are saved; it is kept in memory only.", json.len() >> 10, MAX_STATE >> 10);
            return;
        }
        if saved.as_deref() != Some(json.as_str()) {
            *saved = Some(json.clone());
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        }
    }
}

/// Turns the script's returned value into an outcome, or says what is wrong with it.
pub fn convert(v: &Value) -> Result<CheckOutcome, String> {
    let t = match v {
        Value::Table(t) => t,
        Value::Nil => {
            return Err("nothing: return a table such as { ok = true, message = \"...\" }".into())
        }
        other => {
            let what = match other {
                Value::Integer(_) | Value::Number(_) => format!("the number {}", show(other)),
                Value::String(_) => format!("the string {}", show(other)),
                Value::Boolean(_) => format!("the boolean {}", show(other)),
                _ => show(other),
            };
            return Err(format!(
                "{what} instead of a table such as {{ ok = true, message = \"...\" }}"
            ));
        }
    };
    let mut ok = None;
    let mut message = None;
    let mut value = None;
    let mut severity = None;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => return Err(format!("a table with {} as a key", show(other))),
        };
        match key.as_str() {
            "ok" => match v {
                Value::Boolean(b) => ok = Some(b),
                other => return Err(format!("ok = {}: `ok` must be true or false", show(&other))),
            },
            "message" => match &v {
                Value::String(s) => message = Some(s.to_string_lossy()),
                Value::Integer(_) | Value::Number(_) => message = v.to_string().ok(),
                other => {
                    return Err(format!(
                        "message = {}: `message` must be a string",
                        show(other)
                    ))
                }
            },
            "value" => match v {
                Value::Integer(i) => value = Some(i as f64),
                Value::Number(n) => value = Some(n),
                other => {
                    return Err(format!(
                        "value = {}: `value` must be a number",
                        show(&other)
                    ))
                }
            },
            "severity" => {
                let s = match &v {
                    Value::String(s) => s.to_string_lossy(),
                    other => {
                        return Err(format!(
                            "severity = {}: use \"warning\", \"critical\" or \"unknown\"",
                            show(other)
                        ))
                    }
                };
                severity = Some(match s.as_str() {
                    "warning" => Severity::Warning,
                    "critical" => Severity::Critical,
                    "unknown" => Severity::Unknown,
                    other => {
                        return Err(format!(
                            "severity = \"{other}\": use \"warning\", \"critical\" or \"unknown\""
                        ))
                    }
                });
            }
            other => {
                let hint = match did_you_mean(other, RESULT_FIELDS.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("its fields are: {}", RESULT_FIELDS.join(", ")),
                };
                return Err(format!("an unknown field `{other}` ({hint})"));
            }
        }
    }
    let Some(ok) = ok else {
        return Err(
            "a table without `ok`: return { ok = true } or { ok = false, message = \"why\" }"
                .into(),
        );
    };
    let mut message = message.unwrap_or_else(|| {
        if ok {
            "ok".into()
        } else {
            "failed (the script gave no message)".into()
        }
    });
    if message.chars().count() > 1000 {
        message = message.chars().take(1000).collect::<String>() + "…";
    }
    let severity = match (ok, severity) {
        (true, None) => Severity::Ok,
        (true, Some(s)) => {
            return Err(format!(
                "ok = true with severity = \"{}\": a severity goes with ok = false",
                format!("{s:?}").to_lowercase()
            ))
        }
        (false, s) => s.unwrap_or(Severity::Critical),
    };
    Ok(CheckOutcome {
        severity,
        value,
        message,
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Nil => "nil".into(),
        other => format!("a {}", other.type_name()),
    }
}

/// The script's own frames of a traceback, at most 8 lines.
fn short_traceback(tb: &str) -> String {
    tb.lines()
        .filter(|l| {
            !l.contains("[C]") && !l.contains("vigia:") && !l.contains("(...tail calls...)")
        })
        .take(8)
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long the script itself may run: a little less than the check's timeout, so that
/// its own message ("still waiting for mysql.query to …") wins over the engine's.
fn allowance(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 20).min(Duration::from_millis(20)))
}

impl Check for LuaCheck {
    fn run<'a>(&'a self, ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let allowed = allowance(ctx.timeout);
            let thread = match self.lua.create_thread(self.func.clone()) {
                Ok(t) => t,
                Err(e) => return CheckOutcome::unknown(format!("{}: {e}", self.script)),
            };
            // The hook's deadline comes just before the timer's: a CPU-bound script is
            // stopped by the hook, with the line it was on.
            self.budget.arm_shown(
                allowed.saturating_sub(Duration::from_millis(2)),
                ctx.timeout,
                thread.to_pointer() as usize,
            );
            let fut = match thread.into_async::<MultiValue>(self.ctx.clone()) {
                Ok(f) => crate::budget::Resumed::new(f, self.budget.clone()),
                Err(e) => {
                    self.budget.disarm();
                    return CheckOutcome::unknown(format!("{}: {e}", self.script));
                }
            };
            let r = tokio::time::timeout(allowed, fut).await;
            let (in_call, stopped) = self.budget.finish();
            if r.is_err() {
                // The abandoned run's host call (a child process, a connection) lives in
                // the state until collected: collect now, so it is dropped (killed,
                // closed) with the run, not at some later garbage collection.
                let _ = self.lua.gc_collect();
            }
            let outcome = match r {
                // Past its deadline, whatever the run ended with (an error let through
                // by the sandbox's pcall, or the timer) it was stopped.
                _ if stopped.is_some() => CheckOutcome::critical(stopped.unwrap_or_default()),
                Err(_) => CheckOutcome::critical(match in_call {
                    Some(call) => format!(
                        "{}: no result within {}: still waiting for {call}",
                        self.script,
                        Dur(allowed)
                    ),
                    None => format!("{}: no result within {}", self.script, Dur(allowed)),
                }),
                Ok(Err(e)) => CheckOutcome::critical(self.located(error_message(&e))),
                Ok(Ok(values)) => self.result(values),
            };
            self.note_state();
            outcome
        })
    }

    fn target(&self) -> String {
        format!("lua {}", self.script)
    }

    fn take_state(&self) -> Option<String> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn restore_state(&self, json: &str) {
        let restored = serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| e.to_string())
            .and_then(|j| to_lua(&self.lua, &j).map_err(|e| e.to_string()));
        match restored {
            Ok(v @ Value::Table(_)) => {
                if self.ctx.raw_set("state", v).is_ok() {
                    *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(json.to_string());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "script_state", script = %self.script, "The saved ctx.state could not be restored ({e}); starting from {{}}.")
            }
        }
    }
}

impl LuaCheck {
    /// Prefixes the script's name to a message that has no position.
    fn located(&self, msg: String) -> String {
        if crate::script::is_out_of_memory(&msg) {
            return format!(
                "{}: the script went over its memory limit of {}",
                self.script,
                vigia_api::Bytes(self.budget.memory_limit)
            );
        }
        if msg.starts_with(&self.script) {
            msg
        } else {
            format!("{}: {msg}", self.script)
        }
    }
}
