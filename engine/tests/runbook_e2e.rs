//! Lua runbooks end to end: a runbook that reads other checks' status and calls named
//! actions, one run at a time, `wait_until` that gives up with an alert, dry run, and
//! a broken edit that does not stop remediation.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Two tcp checks, `a` and `b`, both with the runbook `rb`; `actions` are YAML lines.
fn setup(dir: &Path, remediation: &str, actions: &str, runbook: &str, a: u16, b: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("runbooks")).unwrap();
    std::fs::write(dir.join("runbooks/rb.lua"), runbook).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            r#"engine: {{ hostname: rb-host, state_dir: state, status_log_interval: 1h }}
alerting: {{ group_wait: 0s, flapping: {{ changes: 0 }} }}
remediation: {remediation}
actions:
{actions}
runbooks:
  rb: {{ script: runbooks/rb.lua, params: {{ mark: "{dir}/marks.txt" }} }}
checks:
  - {{ name: a, type: tcp, host: 127.0.0.1, port: {a}, interval: 200ms, timeout: 150ms, threshold: 1, runbook: rb }}
  - {{ name: b, type: tcp, host: 127.0.0.1, port: {b}, interval: 200ms, timeout: 150ms, threshold: 1, runbook: rb }}
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    file
}

fn mark_action(dir: &Path, name: &str, text: &str) -> String {
    format!(
        "  {name}:\n    command: [/bin/sh, -c, \"echo {text} >> {}/marks.txt\"]\n",
        dir.display()
    )
}

fn marks(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("marks.txt")).unwrap_or_default()
}

const BOTH_DOWN: &str = r#"
return {
  on_failed = function(rb)
    if status("a") or status("b") then
      local up = status("a") and "a" or "b"
      return up .. " is still up: nothing to do"
    end
    say("a and b are both down; isolating")
    action("isolate")
  end,
  on_recovered = function(rb)
    local _, info = status(rb.check)
    action("rejoin")
    return rb.check .. " is back after " .. tostring(info.successes) .. " good run(s)"
  end,
}
"#;

#[test]
fn a_runbook_acts_only_when_its_conditions_hold_and_its_transcript_is_in_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let b_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = b_listener.local_addr().unwrap().port();
    let a = free_port();
    let actions = mark_action(dir.path(), "isolate", "isolated")
        + &mark_action(dir.path(), "rejoin", "rejoined");
    let config = setup(dir.path(), "{ cooldown: 0s }", &actions, BOTH_DOWN, a, b);
    let engine = start_engine(&config);
    // a fails while b is up: the runbook runs and does nothing.
    engine.wait_for_stderr("ALERT FAILED a on rb-host", Duration::from_secs(10));
    let err = engine.stderr_text();
    assert!(
        err.contains("✓ runbook on_failed: b is still up: nothing to do"),
        "{err}"
    );
    assert_eq!(marks(dir.path()), "");
    // b fails too: now it acts.
    drop(b_listener);
    engine.wait_for_stderr("ALERT FAILED b on rb-host", Duration::from_secs(10));
    engine.wait_for_stderr("✓ runbook on_failed: done", Duration::from_secs(10));
    let err = engine.stderr_text();
    assert!(err.contains("· a and b are both down; isolating"), "{err}");
    assert!(
        err.contains("✓ isolate: /bin/sh -c echo isolated >>"),
        "{err}"
    );
    assert_eq!(marks(dir.path()), "isolated\n");
    // b comes back: on_recovered.
    let _b_again = TcpListener::bind(("127.0.0.1", b)).unwrap();
    engine.wait_for_stderr("ALERT RECOVERED b on rb-host", Duration::from_secs(10));
    engine.wait_for_stderr(
        "✓ runbook on_recovered: b is back after 1 good run(s)",
        Duration::from_secs(10),
    );
    assert_eq!(marks(dir.path()), "isolated\nrejoined\n");
    let events = engine.events();
    let runs: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "runbook_done")
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|e| e["ok"] == true && e["runbook"] == "rb"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "action" && e["action"] == "isolate" && e["check"] == "b"));
}

#[test]
fn a_runbook_never_runs_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    // Each run notes when it starts and ends, 1 s apart.
    let actions =
        mark_action(dir.path(), "begin", "begin") + &mark_action(dir.path(), "end", "end");
    let runbook = r#"
return {
  on_failed = function(rb)
    action("begin")
    sleep(1000)
    action("end")
  end,
}
"#;
    let config = setup(dir.path(), "{ cooldown: 0s }", &actions, runbook, a, b);
    let engine = start_engine(&config);
    engine.wait_for("two runs", Duration::from_secs(15), |e| {
        e.iter().filter(|e| e["event"] == "runbook_done").count() == 2
    });
    // Both checks failed at once; the second run waited for the first.
    assert_eq!(marks(dir.path()), "begin\nend\nbegin\nend\n");
    assert!(
        has_event(&engine.events(), "runbook_waiting"),
        "{}",
        engine.stderr_text()
    );
}

#[test]
fn wait_until_gives_up_and_the_alert_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    let actions = mark_action(dir.path(), "start_db", "started");
    let runbook = r#"
return {
  timeout = "30s",
  on_failed = function(rb)
    action("start_db")
    -- a never comes back in this test.
    if not wait_until(function() return status("a") end, "1s", "200ms") then
      error("a did not come back within 1s; the proxy stays off")
    end
  end,
}
"#;
    let config = setup(dir.path(), "{ cooldown: 0s }", &actions, runbook, a, b);
    let engine = start_engine(&config);
    engine.wait_for_stderr(
        "✗ runbook on_failed: runbooks/rb.lua:8: a did not come back within 1s; the proxy stays off",
        Duration::from_secs(15),
    );
    let events = engine.events();
    let runs: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "runbook_done")
        .collect();
    assert!(
        !runs.is_empty() && runs.iter().all(|r| r["ok"] == false),
        "{runs:?}"
    );
    assert!(marks(dir.path()).starts_with("started\n"));
}

#[test]
fn a_dry_run_runbook_runs_its_logic_but_no_action() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    let actions = mark_action(dir.path(), "isolate", "isolated")
        + &mark_action(dir.path(), "rejoin", "rejoined");
    let config = setup(dir.path(), "{ dry_run: true }", &actions, BOTH_DOWN, a, b);
    let engine = start_engine(&config);
    engine.wait_for_stderr(
        "· isolate: would run: /bin/sh -c echo isolated",
        Duration::from_secs(10),
    );
    // That line is printed with the alert, after the (dry) run.
    assert_eq!(marks(dir.path()), "", "a dry run ran an action");
    assert!(engine
        .events()
        .iter()
        .any(|e| e["event"] == "action" && e["dry_run"] == true && e["action"] == "isolate"));
}

#[test]
fn a_broken_edit_of_a_runbook_runs_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let b_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = b_listener.local_addr().unwrap().port();
    let a = free_port();
    let actions = mark_action(dir.path(), "isolate", "isolated")
        + &mark_action(dir.path(), "rejoin", "rejoined");
    let config = setup(dir.path(), "{ cooldown: 0s }", &actions, BOTH_DOWN, a, b);
    let engine = start_engine(&config);
    engine.wait_for_stderr("ALERT FAILED a on rb-host", Duration::from_secs(10));
    std::fs::write(
        dir.path().join("runbooks/rb.lua"),
        "return { on_failed = function(rb) end,\n  oops = 1 }\n",
    )
    .unwrap();
    drop(b_listener);
    engine.wait_for_stderr("✓ isolate:", Duration::from_secs(10));
    let err = engine.stderr_text();
    assert!(
        err.contains("runbooks/rb.lua:2: unknown field `oops` in the returned table"),
        "{err}"
    );
    assert!(err.contains("ran the last version that loaded"), "{err}");
    assert_eq!(marks(dir.path()), "isolated\n");
}

#[test]
fn validate_reports_runbook_problems_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let runbook = "return {\n  timeout = \"15m\",\n  on_faild = function(rb) end,\n}\n";
    let config = setup(
        dir.path(),
        "{}",
        &mark_action(dir.path(), "x", "x"),
        runbook,
        1,
        2,
    );
    let out = vigia(&["validate"], &config);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("runbooks/rb.lua:3: unknown field `on_faild` in the returned table (did you mean `on_failed`?)"),
        "{text}"
    );
    // A check naming a runbook that does not exist.
    std::fs::write(dir.path().join("runbooks/rb.lua"), BOTH_DOWN).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("runbook: rb }", "runbook: rbb }");
    std::fs::write(&config, text).unwrap();
    let out = vigia(&["validate"], &config);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("checks[0].runbook")
            && text.contains("unknown runbook `rbb` (did you mean `rb`?)"),
        "{text}"
    );
}
