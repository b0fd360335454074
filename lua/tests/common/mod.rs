//! Helpers for the Lua tests: a check from a script's text, run once.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vigia_api::{Check, CheckOutcome, RunContext};
use vigia_lua::{script, HostEnv, LuaCheck};

pub fn env_with(commands: &[(&str, &str)]) -> Arc<HostEnv> {
    let commands: BTreeMap<String, PathBuf> = commands
        .iter()
        .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
        .collect();
    Arc::new(HostEnv {
        hostname: "test-host".into(),
        commands: Arc::new(commands),
        clients: Arc::default(),
    })
}

/// A check named `t` from a script's text, shown as `checks/t.lua`.
pub fn lua_check(text: &str) -> Result<LuaCheck, String> {
    lua_check_with(text, None, env_with(&[]))
}

pub fn lua_check_with(
    text: &str,
    params: Option<serde_json::Value>,
    env: Arc<HostEnv>,
) -> Result<LuaCheck, String> {
    let loaded = script::load_text(text.as_bytes(), "checks/t.lua", env, 16 << 20)?;
    LuaCheck::new(loaded, "t", params.as_ref(), "test-host")
}

/// A script whose `check` body is `body`.
pub fn body(body: &str) -> String {
    format!("return {{\n  check = function(ctx)\n{body}\n  end,\n}}\n")
}

pub async fn run(check: &LuaCheck, timeout: Duration) -> CheckOutcome {
    check
        .run(RunContext {
            check: "t",
            timeout,
        })
        .await
}

pub async fn run_body(b: &str) -> CheckOutcome {
    let c = lua_check(&body(b)).unwrap();
    run(&c, Duration::from_secs(2)).await
}
