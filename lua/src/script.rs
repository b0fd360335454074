//! Loading a script: text → sandboxed state → the table it returns → a declaration.
//!
//! A script returns a table:
//! ```lua
//! return {
//!   name = "galera_sync",          -- optional: a named script runs without a config entry
//!   interval = "10s", timeout = "3s", threshold = 3, recover_after = 1,
//!   comment = "Galera node must be Synced",
//!   params = { host = "127.0.0.1" },   -- defaults; a config entry's params override them
//!   check = function(ctx) ... return { ok = true, message = "..." } end,
//! }
//! ```
//! Every problem is one message that starts with `checks/x.lua:LINE:` where a line is known.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mlua::chunk::ChunkMode;
use mlua::{Function, Table, Value};
use vigia_api::yaml::did_you_mean;
use vigia_api::{Dur, Settings};

use crate::host::HostEnv;
use crate::vm::{new_vm, Budget, Vm, LOAD_BUDGET};

/// The fields a script's table may have, in the order checks/README.md documents them.
pub const FIELDS: &[&str] = &[
    "name",
    "interval",
    "timeout",
    "threshold",
    "recover_after",
    "comment",
    "params",
    "check",
];

/// A loaded script, ready to become one or more checks.
pub struct Loaded {
    pub vm: Vm,
    pub name: Option<String>,
    pub settings: Settings,
    pub params: Option<Table>,
    pub check: Function,
    /// A hash of the script's text.
    pub version: u64,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("name", &self.name).finish()
    }
}

/// The version of a script's text (FNV-1a, stable across runs).
pub fn hash(bytes: &[u8]) -> u64 {
    vigia_api::fnv1a(bytes)
}

/// Loads `file` (shown to operators as `display`) into a fresh state.
pub fn load(
    file: &Path,
    display: &str,
    env: Arc<HostEnv>,
    memory_limit: usize,
) -> Result<Loaded, String> {
    let text =
        std::fs::read(file).map_err(|e| format!("{display}: cannot read the script: {e}"))?;
    load_text(&text, display, env, memory_limit)
}

/// A fresh state with `text` run at its top level under the load budget; the table the
/// text returns. `expected` says what it should have returned, for the error.
pub(crate) fn load_table(
    text: &[u8],
    display: &str,
    env: Arc<HostEnv>,
    memory_limit: usize,
    expected: &str,
) -> Result<(Vm, Table), String> {
    let vm = new_vm(env, memory_limit, display)
        .map_err(|e| format!("{display}: cannot create a Lua state: {e}"))?;
    let chunk = vm
        .lua
        .load(text)
        .set_name(format!("@{display}"))
        .set_mode(ChunkMode::Text)
        .into_function()
        .map_err(|e| error_message(&e))?;
    let returned = run_top_level(&vm.budget, &chunk, display)?;
    match returned {
        Value::Table(t) => Ok((vm, t)),
        other => Err(format!(
            "{display}: {expected}, but it returned {}",
            type_of(&other)
        )),
    }
}

pub fn load_text(
    text: &[u8],
    display: &str,
    env: Arc<HostEnv>,
    memory_limit: usize,
) -> Result<Loaded, String> {
    let (vm, t) = load_table(
        text,
        display,
        env,
        memory_limit,
        "the script must return a table such as `return { check = function(ctx) ... end }`",
    )?;
    let src = String::from_utf8_lossy(text);
    let at = |field: &str| format!("{display}:{}", line_of(&src, field));
    let mut name = None;
    let mut settings = Settings::default();
    let mut params = None;
    let mut check = None;
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
            "name" => {
                let Value::String(s) = &v else {
                    return Err(bad("a string"));
                };
                let s = s.to_string_lossy();
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                {
                    return Err(format!(
                        "{}: `{}` is not a valid check name: use letters, digits, `_`, `-` and `.`",
                        at("name"),
                        s.escape_debug()
                    ));
                }
                name = Some(s);
            }
            "interval" | "timeout" => {
                let d =
                    duration(&v).ok_or_else(|| bad("a duration such as \"10s\" or \"500ms\""))?;
                if key == "interval" {
                    if d < Duration::from_millis(100) {
                        return Err(format!(
                            "{}: interval {} is too short (at least 100ms)",
                            at(&key),
                            Dur(d)
                        ));
                    }
                    settings.interval = Some(d);
                } else {
                    if d.is_zero() {
                        return Err(format!("{}: timeout must be longer than 0s", at(&key)));
                    }
                    settings.timeout = Some(d);
                }
            }
            "threshold" | "recover_after" => {
                let n = match &v {
                    Value::Integer(i) if *i >= 1 && *i <= i64::from(u32::MAX) => *i as u32,
                    _ => return Err(bad("a whole number, at least 1")),
                };
                if key == "threshold" {
                    settings.threshold = Some(n);
                } else {
                    settings.recover_after = Some(n);
                }
            }
            "comment" => match &v {
                Value::String(s) => settings.comment = Some(s.to_string_lossy()),
                _ => return Err(bad("a string")),
            },
            "params" => match v {
                Value::Table(p) => params = Some(p),
                _ => return Err(bad("a table")),
            },
            "check" => match v {
                Value::Function(f) => check = Some(f),
                _ => return Err(bad("a function(ctx)")),
            },
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
    if let (Some(i), Some(t)) = (settings.interval, settings.timeout) {
        if t > i {
            return Err(format!(
                "{}: timeout {} is longer than the interval {}: a check must finish before its next run",
                at("timeout"),
                Dur(t),
                Dur(i)
            ));
        }
    }
    let Some(check) = check else {
        return Err(format!(
            "{display}: the returned table has no `check` function: add `check = function(ctx) ... end`"
        ));
    };
    Ok(Loaded {
        vm,
        name,
        settings,
        params,
        check,
        version: hash(text),
    })
}

/// Runs a chunk's top level under the load budget: a script that loops at load time
/// is refused, not hung on.
pub(crate) fn run_top_level(
    budget: &Budget,
    chunk: &Function,
    display: &str,
) -> Result<Value, String> {
    budget.arm(LOAD_BUDGET, 0);
    let r = chunk.call::<Value>(());
    budget.disarm();
    r.map_err(|e| {
        let msg = error_message(&e);
        if msg.contains("attempt to yield") || msg.contains(crate::host::TOP_LEVEL) {
            format!("{display}: {}", crate::host::TOP_LEVEL)
        } else if is_out_of_memory(&msg) {
            format!(
                "{display}: the script went over its memory limit of {} while it was loaded",
                vigia_api::Bytes(budget.memory_limit)
            )
        } else {
            msg
        }
    })
}

/// Whether a message says that the state ran out of its memory (with or without the
/// position Lua put in front).
pub(crate) fn is_out_of_memory(msg: &str) -> bool {
    msg.ends_with("not enough memory") || msg == "the script went over its memory limit"
}

/// The message of a Lua error as an operator should read it.
pub fn error_message(e: &mlua::Error) -> String {
    match e {
        // mlua appends a traceback to errors raised by Lua code: the message is the head.
        mlua::Error::RuntimeError(s) => s
            .split("\nstack traceback:")
            .next()
            .unwrap_or_default()
            .to_string(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, .. } => error_message(cause),
        mlua::Error::ExternalError(x) => x.to_string(),
        mlua::Error::MemoryError(_) => "the script went over its memory limit".into(),
        mlua::Error::WithContext { cause, .. } => error_message(cause),
        other => other.to_string(),
    }
}

/// The line of the first `field =` in the text (1 when not found).
pub(crate) fn line_of(src: &str, field: &str) -> usize {
    src.lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.contains(&format!(" {field} ="))
                || l.contains(&format!("{{{field} ="))
                || l.contains(&format!(",{field}="))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

pub(crate) fn duration(v: &Value) -> Option<Duration> {
    match v {
        Value::String(s) => s.to_str().ok()?.parse::<Dur>().ok().map(Dur::get),
        _ => None,
    }
}

pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => type_of(other).to_string(),
    }
}

pub(crate) fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nothing",
        Value::Integer(_) | Value::Number(_) => "number",
        other => other.type_name(),
    }
}
