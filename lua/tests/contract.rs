//! The script contract: what a script returns, what it declares, what `ctx` holds.

mod common;

use std::time::Duration;

use common::*;
use vigia_api::{Check, Severity};

#[tokio::test]
async fn results_and_their_messages() {
    // (returned expression, severity, message)
    let cases: &[(&str, Severity, &str)] = &[
        ("{ ok = true }", Severity::Ok, "ok"),
        ("{ ok = true, message = 'fine', value = 2.5 }", Severity::Ok, "fine"),
        ("{ ok = false }", Severity::Critical, "failed (the script gave no message)"),
        ("{ ok = false, message = 'down', severity = 'warning' }", Severity::Warning, "down"),
        ("{ ok = false, message = 'no idea', severity = 'unknown' }", Severity::Unknown, "no idea"),
        ("{ ok = false, message = 42 }", Severity::Critical, "42"),
        ("nil", Severity::Critical, "checks/t.lua: script returned nothing: return a table such as { ok = true, message = \"...\" }"),
        ("5", Severity::Critical, "checks/t.lua: script returned the number 5 instead of a table such as { ok = true, message = \"...\" }"),
        ("'ok'", Severity::Critical, "checks/t.lua: script returned the string \"ok\" instead of a table such as { ok = true, message = \"...\" }"),
        ("{ message = 'x' }", Severity::Critical, "checks/t.lua: script returned a table without `ok`: return { ok = true } or { ok = false, message = \"why\" }"),
        ("{ ok = 'yes' }", Severity::Critical, "checks/t.lua: script returned ok = \"yes\": `ok` must be true or false"),
        ("{ ok = true, mesage = 'x' }", Severity::Critical, "checks/t.lua: script returned an unknown field `mesage` (did you mean `message`?)"),
        ("{ ok = true, value = 'fast' }", Severity::Critical, "checks/t.lua: script returned value = \"fast\": `value` must be a number"),
        ("{ ok = false, severity = 'fatal' }", Severity::Critical, "checks/t.lua: script returned severity = \"fatal\": use \"warning\", \"critical\" or \"unknown\""),
        ("{ ok = true, severity = 'warning' }", Severity::Critical, "checks/t.lua: script returned ok = true with severity = \"warning\": a severity goes with ok = false"),
        ("{ ok = true, [1] = 2 }", Severity::Critical, "checks/t.lua: script returned a table with 1 as a key"),
    ];
    let mut wrong = Vec::new();
    for (expr, severity, message) in cases {
        let o = run_body(&format!("return {expr}")).await;
        if o.severity != *severity || o.message != *message {
            wrong.push(format!("return {expr}: {:?} {:?}", o.severity, o.message));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    let o = run_body("return { ok = true, value = 2.5 }").await;
    assert_eq!(o.value, Some(2.5));
}

#[tokio::test]
async fn a_lua_error_is_a_failure_at_its_line() {
    let o = run_body("local rows = nil\n    return { ok = rows[1].Value == 'Synced' }").await;
    assert_eq!(
        o.message,
        "checks/t.lua:4: attempt to index a nil value (local 'rows')"
    );
    let o = run_body("error('replica is 300 s behind')").await;
    assert_eq!(o.message, "checks/t.lua:3: replica is 300 s behind");
    let o = run_body("error({ code = 1 })").await;
    assert_eq!(o.severity, Severity::Critical);
}

#[test]
fn declaration_errors_name_the_file_and_line() {
    let cases: &[(&str, &str)] = &[
        ("return {\n  check = function(ctx) end,\n  intervl = '10s',\n}", "checks/t.lua:3: unknown field `intervl` in the returned table (did you mean `interval`?)"),
        ("return {\n  interval = 10,\n  check = function(ctx) end,\n}", "checks/t.lua:2: `interval` must be a duration such as \"10s\" or \"500ms\", got 10"),
        ("return {\n  interval = '50ms',\n  check = function() end }", "checks/t.lua:2: interval 50ms is too short (at least 100ms)"),
        ("return {\n  interval = '5s',\n  timeout = '10s',\n  check = function() end }", "checks/t.lua:3: timeout 10s is longer than the interval 5s: a check must finish before its next run"),
        ("return {\n  threshold = 0,\n  check = function() end }", "checks/t.lua:2: `threshold` must be a whole number, at least 1, got 0"),
        ("return {\n  name = 'bad name',\n  check = function() end }", "checks/t.lua:2: `bad name` is not a valid check name: use letters, digits, `_`, `-` and `.`"),
        ("return { name = 'x' }", "checks/t.lua: the returned table has no `check` function: add `check = function(ctx) ... end`"),
        ("return { check = 'yes' }", "checks/t.lua:1: `check` must be a function(ctx), got \"yes\""),
        ("return 5", "checks/t.lua: the script must return a table such as `return { check = function(ctx) ... end }`, but it returned number"),
        ("local x = 1", "checks/t.lua: the script must return a table such as `return { check = function(ctx) ... end }`, but it returned nothing"),
        ("return {\n  check = function(ctx)\n    if ctx then\n  end,\n}", "checks/t.lua:4: unexpected symbol near ','"),
        ("error('no config')", "checks/t.lua:1: no config"),
        ("sleep(10) return {}", "checks/t.lua: the script's top level called a host function that waits (network, exec, sleep): do that inside `check`"),
        ("return { check = function() end, [1] = 2 }", "checks/t.lua: the returned table has a number key; its fields are: name, interval, timeout, threshold, recover_after, comment, params, check"),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        match lua_check(text) {
            Ok(_) => wrong.push(format!("{text:?}: loaded")),
            Err(e) if e != *expected => {
                wrong.push(format!("{text:?}:\n  got      {e}\n  expected {expected}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn ctx_has_the_check_the_host_and_params_over_the_scripts_defaults() {
    let text = "return {\n  params = { port = 3306, user = 'monitor' },\n  check = function(ctx)\n    return { ok = true, message = ctx.check .. ' ' .. ctx.host .. ' ' .. ctx.params.user .. ':' .. ctx.params.port }\n  end,\n}";
    let c = lua_check_with(
        text,
        Some(serde_json::json!({ "port": 13301 })),
        env_with(&[]),
    )
    .unwrap();
    let o = run(&c, Duration::from_secs(1)).await;
    assert_eq!(o.message, "t test-host monitor:13301");
}

#[tokio::test]
async fn ctx_state_is_handed_over_when_it_changes_and_restored_into_a_new_version() {
    let v1 = body(
        "ctx.state.runs = (ctx.state.runs or 0) + 1\n return { ok = true, value = ctx.state.runs }",
    );
    let c = lua_check(&v1).unwrap();
    run(&c, Duration::from_secs(1)).await;
    assert_eq!(c.take_state().as_deref(), Some(r#"{"runs":1}"#));
    assert_eq!(c.take_state(), None, "handed over once");
    run(&c, Duration::from_secs(1)).await;
    let saved = c.take_state().unwrap();
    assert_eq!(saved, r#"{"runs":2}"#);
    // A new version of the script (a reload) or a restart: the engine restores it.
    let v2 =
        body("ctx.state.runs = ctx.state.runs + 10\n return { ok = true, value = ctx.state.runs }");
    let c2 = lua_check(&v2).unwrap();
    c2.restore_state(&saved);
    let o = run(&c2, Duration::from_secs(1)).await;
    assert_eq!(o.value, Some(12.0));
    // A state that does not change is not handed over again.
    let still = lua_check(&body("ctx.state.x = 1 return { ok = true }")).unwrap();
    run(&still, Duration::from_secs(1)).await;
    assert!(still.take_state().is_some());
    run(&still, Duration::from_secs(1)).await;
    assert_eq!(still.take_state(), None);
    // A healthy check with no state writes nothing.
    let none = lua_check(&body("return { ok = true }")).unwrap();
    run(&none, Duration::from_secs(1)).await;
    assert_eq!(none.take_state(), None);
}

#[tokio::test]
async fn a_state_that_cannot_be_saved_is_kept_in_memory_only() {
    let c = lua_check(&body("ctx.state.f = ctx.state.f or function() end\n ctx.state.n = (ctx.state.n or 0) + 1\n return { ok = true, value = ctx.state.n }")).unwrap();
    run(&c, Duration::from_secs(1)).await;
    let o = run(&c, Duration::from_secs(1)).await;
    assert_eq!(o.value, Some(2.0));
    assert_eq!(c.take_state(), None);
}
