//! The host API a script sees: `net`, `http`, `mysql`, `exec`, `json`, `log`, `time`,
//! `sleep`. Every call that waits (network, processes, `sleep`) is async: the script's
//! coroutine is suspended and other checks run meanwhile.
//!
//! Errors: each Rust function returns `(true, result)` or `(false, message)`, and a thin
//! Lua wrapper turns the second into `error(message, 2)`. So a script gets plain string
//! errors (`pcall` returns the message itself) located at the script's line:
//! `checks/web.lua:7: http.request: cannot connect to 127.0.0.1:18080: connection refused`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlua::{Lua, MultiValue, Table, Value};
use vigia_api::yaml::did_you_mean;
use vigia_api::Dur;
use vigia_plugins::child::{self, ChildError, ChildSpec};
use vigia_plugins::icmp::Icmp;
use vigia_plugins::net::resolve;
use vigia_plugins::tcp::{Expect, TcpCheck};

use crate::args::describe;
pub use crate::args::{Args, InCall};
use crate::budget::Budget;

/// The clients every script of an engine shares: the ICMP socket and the HTTP client.
#[derive(Default)]
pub struct HostClients {
    pub icmp: Icmp,
    http: OnceLock<Result<reqwest::Client, String>>,
}

impl HostClients {
    fn http(&self) -> Result<reqwest::Client, String> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("vigia/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot create an HTTP client: {e}"))
            })
            .clone()
    }
}

/// What a script's host API knows of the engine it runs in.
pub struct HostEnv {
    pub hostname: String,
    /// The `commands:` allow-list of config.yaml.
    pub commands: Arc<BTreeMap<String, PathBuf>>,
    pub clients: Arc<HostClients>,
}

/// Output of `exec` and bodies of `http.request` are capped at these sizes.
pub const MAX_OUTPUT: usize = 64 << 10;
pub const MAX_BODY: usize = 4 << 20;

pub(crate) type HostResult = Result<Value, String>;

/// Loading a script runs its top level once, outside any check run.
pub const TOP_LEVEL: &str = "the script's top level called a host function that waits (network, exec, sleep): do that inside `check`";

pub(crate) fn reply(lua: &Lua, r: HostResult) -> mlua::Result<MultiValue> {
    Ok(match r {
        Ok(v) => MultiValue::from_iter([Value::Boolean(true), v]),
        Err(msg) => MultiValue::from_iter([
            Value::Boolean(false),
            Value::String(lua.create_string(msg)?),
        ]),
    })
}

const WRAPPERS: &str = r#"
local raw = ...
local error = error
local function wrap(f)
  return function(...)
    local ok, r = f(...)
    if ok then return r end
    error(r, 2)
  end
end
net = { tcp = wrap(raw.tcp), ping = wrap(raw.ping) }
http = { request = wrap(raw.http) }
mysql = { query = wrap(raw.mysql) }
exec = wrap(raw.exec)
json = { encode = wrap(raw.json_encode), decode = wrap(raw.json_decode) }
log = { info = raw.log_info, warn = raw.log_warn, error = raw.log_error }
time = { now = raw.now }
sleep = wrap(raw.sleep)
print = raw.log_info
"#;

pub fn register(lua: &Lua, env: Arc<HostEnv>, budget: Arc<Budget>) -> mlua::Result<()> {
    let raw = lua.create_table()?;
    {
        let budget = budget.clone();
        raw.set(
            "tcp",
            async_host(lua, budget, |lua, v, budget| async move {
                tcp(&lua, v, &budget).await
            })?,
        )?;
    }
    {
        let (env, b) = (env.clone(), budget.clone());
        raw.set(
            "ping",
            async_host(lua, b, move |lua, v, budget| {
                let env = env.clone();
                async move { ping(&lua, v, &env, &budget).await }
            })?,
        )?;
    }
    {
        let (env, b) = (env.clone(), budget.clone());
        raw.set(
            "http",
            async_host(lua, b, move |lua, v, budget| {
                let env = env.clone();
                async move { http(&lua, v, &env, &budget).await }
            })?,
        )?;
    }
    raw.set(
        "mysql",
        async_host(lua, budget.clone(), |lua, v, budget| async move {
            crate::mysql::query(&lua, v, &budget).await
        })?,
    )?;
    {
        let (env, b) = (env.clone(), budget.clone());
        raw.set(
            "exec",
            async_host(lua, b, move |lua, v, budget| {
                let env = env.clone();
                async move { exec(&lua, v, &env, &budget).await }
            })?,
        )?;
    }
    raw.set(
        "sleep",
        async_host(lua, budget.clone(), |_lua, v, _b| async move {
            let ms = match v {
                Value::Integer(i) => i as f64,
                Value::Number(n) => n,
                other => {
                    return Err(format!(
                        "sleep: expects milliseconds as a number, e.g. sleep(500), got {}",
                        other.type_name()
                    ))
                }
            };
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(format!("sleep: {ms} ms is out of range (0-60000)"));
            }
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            Ok(Value::Nil)
        })?,
    )?;
    raw.set(
        "json_encode",
        lua.create_function(|lua, v: Value| {
            let r = serde_json::to_value(&v)
                .map_err(|e| format!("json.encode: {e}"))
                .and_then(|j| {
                    serde_json::to_string(&j)
                        .map_err(|e| format!("json.encode: {e}"))
                        .and_then(|s| {
                            lua.create_string(s)
                                .map(Value::String)
                                .map_err(|e| e.to_string())
                        })
                });
            reply(lua, r)
        })?,
    )?;
    raw.set(
        "json_decode",
        lua.create_function(|lua, v: Value| {
            let r = match &v {
                Value::String(s) => serde_json::from_slice::<serde_json::Value>(&s.as_bytes())
                    .map_err(|e| format!("json.decode: invalid JSON: {e}"))
                    .and_then(|j| to_lua(lua, &j).map_err(|e| format!("json.decode: {e}"))),
                other => Err(format!(
                    "json.decode: expects a string, got {}",
                    other.type_name()
                )),
            };
            reply(lua, r)
        })?,
    )?;
    for (name, level) in [
        ("log_info", tracing::Level::INFO),
        ("log_warn", tracing::Level::WARN),
        ("log_error", tracing::Level::ERROR),
    ] {
        let budget = budget.clone();
        raw.set(
            name,
            lua.create_function(move |_lua, args: MultiValue| {
                let text: Vec<String> = args
                    .iter()
                    .map(|v| {
                        v.to_string()
                            .unwrap_or_else(|_| format!("<{}>", v.type_name()))
                    })
                    .collect();
                script_log(&budget, level, &text.join(" "));
                Ok(())
            })?,
        )?;
    }
    raw.set(
        "now",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0))
        })?,
    )?;
    lua.load(WRAPPERS).set_name("=vigia").call::<()>(raw)?;
    let _ = env;
    Ok(())
}

fn script_log(budget: &Budget, level: tracing::Level, text: &str) {
    let check = budget
        .check
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let script = &budget.script;
    match level {
        tracing::Level::ERROR => {
            tracing::error!(event = "script_log", check = %check, script = %script, "{text}")
        }
        tracing::Level::WARN => {
            tracing::warn!(event = "script_log", check = %check, script = %script, "{text}")
        }
        _ => tracing::info!(event = "script_log", check = %check, script = %script, "{text}"),
    }
}

/// Wraps an async host function: one table argument in, `(ok, result|message)` out.
pub(crate) fn async_host<F, Fut>(
    lua: &Lua,
    budget: Arc<Budget>,
    f: F,
) -> mlua::Result<mlua::Function>
where
    F: Fn(Lua, Value, Arc<Budget>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HostResult> + Send + 'static,
{
    lua.create_async_function(move |lua, v: Value| {
        let fut = (budget.in_run()).then(|| f(lua.clone(), v, budget.clone()));
        async move {
            let r = match fut {
                Some(fut) => fut.await,
                None => Err(TOP_LEVEL.to_string()),
            };
            reply(&lua, r)
        }
    })
}

/// Converts JSON to Lua: objects to tables, arrays to sequences, null to nil.
pub fn to_lua(lua: &Lua, j: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match j {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, v) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table_with_capacity(0, o.len())?;
            for (k, v) in o {
                t.raw_set(k.as_str(), to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn table(lua: &Lua) -> Result<Table, String> {
    lua.create_table().map_err(|e| e.to_string())
}

fn set(t: &Table, k: &str, v: impl mlua::IntoLua) -> Result<(), String> {
    t.raw_set(k, v).map_err(|e| e.to_string())
}

async fn tcp(lua: &Lua, v: Value, budget: &Budget) -> HostResult {
    let mut a = Args::new(
        "net.tcp",
        v,
        "net.tcp{host = \"127.0.0.1\", port = 7000}",
        &["host", "port", "send", "expect", "timeout"],
    )?;
    let host = a.str("host")?;
    let port = a
        .opt_int("port", 1, 65535)?
        .ok_or("net.tcp: argument `port` is missing")? as u16;
    let send = a.opt_bytes("send")?;
    let expect = a.opt_str("expect")?;
    let timeout = a
        .opt_dur("timeout", Duration::from_secs(300))?
        .unwrap_or(Duration::from_secs(2));
    let _call = InCall::new(budget, format!("net.tcp to {host}:{port}"));
    let check = TcpCheck {
        host: vigia_plugins::net::Host::new(host.clone()),
        port,
        send,
        expect: expect.map(Expect::Contains),
        read_timeout: None,
    };
    let start = Instant::now();
    let t = table(lua)?;
    match tokio::time::timeout(timeout, check.exchange()).await {
        Ok(Ok(x)) => {
            set(&t, "ok", true)?;
            set(&t, "ms", x.total_ms)?;
            set(&t, "connect_ms", x.connect_ms)?;
            set(
                &t,
                "reply",
                lua.create_string(&x.reply).map_err(|e| e.to_string())?,
            )?;
        }
        Ok(Err(reason)) => {
            set(&t, "ok", false)?;
            set(&t, "ms", ms_since(start))?;
            set(&t, "error", reason)?;
        }
        Err(_) => {
            set(&t, "ok", false)?;
            set(&t, "ms", ms_since(start))?;
            set(
                &t,
                "error",
                format!(
                    "no complete exchange with {host}:{port} within {}",
                    Dur(timeout)
                ),
            )?;
        }
    }
    Ok(Value::Table(t))
}

async fn ping(lua: &Lua, v: Value, env: &HostEnv, budget: &Budget) -> HostResult {
    let mut a = Args::new(
        "net.ping",
        v,
        "net.ping{host = \"10.0.0.5\", count = 3}",
        &["host", "count", "timeout"],
    )?;
    let host = a.str("host")?;
    let count = a.opt_int("count", 1, 100)?.unwrap_or(1) as u32;
    let timeout = a
        .opt_dur("timeout", Duration::from_secs(60))?
        .unwrap_or(Duration::from_secs(1));
    let _call = InCall::new(budget, format!("net.ping to {host}"));
    let addr = resolve(&host, 0)
        .await
        .map_err(|e| format!("net.ping: {e}"))?;
    let stats = env
        .clients
        .icmp
        .ping(addr.ip(), count, Duration::from_millis(200), timeout)
        .await
        .map_err(|e| format!("net.ping: {e}"))?;
    let t = table(lua)?;
    set(&t, "sent", stats.sent)?;
    set(&t, "received", stats.received())?;
    set(&t, "loss", stats.loss_pct())?;
    set(&t, "avg_ms", stats.avg())?;
    set(&t, "min_ms", stats.min())?;
    set(&t, "max_ms", stats.max())?;
    Ok(Value::Table(t))
}

async fn http(lua: &Lua, v: Value, env: &HostEnv, budget: &Budget) -> HostResult {
    let mut a = Args::new(
        "http.request",
        v,
        "http.request{url = \"http://127.0.0.1:8080/health\"}",
        &["method", "url", "headers", "body", "timeout"],
    )?;
    let url = a.str("url")?;
    let method = a
        .opt_str("method")?
        .unwrap_or_else(|| "GET".into())
        .to_uppercase();
    let headers = a.opt_table("headers")?;
    let body = a.opt_bytes("body")?;
    let timeout = a
        .opt_dur("timeout", Duration::from_secs(300))?
        .unwrap_or(Duration::from_secs(5));
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("http.request: argument `url` \"{url}\" is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "http.request: argument `url` must be http:// or https://, got \"{url}\""
        ));
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| {
        format!("http.request: argument `method` \"{method}\" is not an HTTP method")
    })?;
    let client = env
        .clients
        .http()
        .map_err(|e| format!("http.request: {e}"))?;
    let mut req = client.request(method, parsed).timeout(timeout);
    if let Some(h) = headers {
        for pair in h.pairs::<String, String>() {
            let (k, v) = pair.map_err(|e| {
                format!("http.request: argument `headers` must map names to strings: {e}")
            })?;
            req = req.header(k, v);
        }
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let _call = InCall::new(budget, format!("http.request to {url}"));
    let start = Instant::now();
    let mut resp = req.send().await.map_err(|e| {
        // The innermost cause says what happened: "connection refused".
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = match s.downcast_ref::<std::io::Error>() {
                Some(io) => vigia_plugins::tcp::io_reason(io),
                None => s.to_string(),
            };
            src = s.source();
        }
        if e.is_timeout() {
            format!(
                "http.request: no response from {url} within {}",
                Dur(timeout)
            )
        } else {
            format!("http.request: {url}: {reason}")
        }
    })?;
    let status = resp.status().as_u16();
    let t = table(lua)?;
    let hs = table(lua)?;
    for (k, v) in resp.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let prev: Option<String> = hs.raw_get(k.as_str()).map_err(|e| e.to_string())?;
        let v = match prev {
            Some(p) => format!("{p}, {v}"),
            None => v,
        };
        set(&hs, k.as_str(), v)?;
    }
    let mut body = Vec::new();
    let mut truncated = false;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    body.extend_from_slice(&c[..MAX_BODY - body.len()]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("http.request: {url}: reading the body failed: {e}")),
        }
    }
    set(&t, "status", status)?;
    set(&t, "headers", hs)?;
    set(
        &t,
        "body",
        lua.create_string(&body).map_err(|e| e.to_string())?,
    )?;
    set(&t, "ms", ms_since(start))?;
    if truncated {
        set(&t, "truncated", true)?;
    }
    Ok(Value::Table(t))
}

async fn exec(lua: &Lua, v: Value, env: &HostEnv, budget: &Budget) -> HostResult {
    let mut a = Args::new(
        "exec",
        v,
        "exec{command = \"csync2\", args = {\"-M\"}}",
        &["command", "args", "stdin", "timeout"],
    )?;
    let name = a.str("command")?;
    let args = a.opt_table("args")?;
    let stdin = a.opt_bytes("stdin")?;
    let timeout = a
        .opt_dur("timeout", Duration::from_secs(3600))?
        .unwrap_or(Duration::from_secs(10));
    let Some(program) = env.commands.get(&name) else {
        let known: Vec<&str> = env.commands.keys().map(String::as_str).collect();
        let hint = match did_you_mean(&name, known.iter().copied()) {
            Some(best) => format!(" (did you mean `{best}`?)"),
            None if known.is_empty() => " (the list is empty)".into(),
            None => format!(" (it has: {})", known.join(", ")),
        };
        return Err(format!(
            "exec: command `{name}` is not in the `commands:` allow-list of config.yaml{hint}"
        ));
    };
    let mut argv: Vec<String> = Vec::new();
    if let Some(t) = args {
        for (i, v) in t.sequence_values::<Value>().enumerate() {
            match v.map_err(|e| e.to_string())? {
                Value::String(s) => argv.push(s.to_string_lossy()),
                Value::Integer(n) => argv.push(n.to_string()),
                Value::Number(n) => argv.push(n.to_string()),
                other => {
                    return Err(format!(
                        "exec: argument `args[{}]` must be a string, got {}",
                        i + 1,
                        describe(&other)
                    ))
                }
            }
        }
    }
    let _call = InCall::new(budget, format!("exec {name}"));
    let start = Instant::now();
    let mut spec = ChildSpec::new(program, &argv, MAX_OUTPUT);
    spec.lang = "C.UTF-8";
    spec.stdin = stdin;
    spec.timeout = Some(timeout);
    let out = child::run(spec).await.map_err(|e| match e {
        ChildError::Spawn(e) => format!("exec: cannot start `{name}` ({}): {e}", program.display()),
        other => format!("exec: `{name}` {other}"),
    })?;
    let t = table(lua)?;
    set(&t, "code", out.code)?;
    set(&t, "signal", out.signal)?;
    set(
        &t,
        "stdout",
        lua.create_string(&out.stdout).map_err(|e| e.to_string())?,
    )?;
    set(
        &t,
        "stderr",
        lua.create_string(&out.stderr).map_err(|e| e.to_string())?,
    )?;
    set(&t, "ms", ms_since(start))?;
    Ok(Value::Table(t))
}
