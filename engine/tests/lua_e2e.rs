//! Lua checks in a running engine, as processes: hot reload by saving a script (state
//! kept), a broken script (old version kept, reported once), scripts added and deleted,
//! state across kill -9, and the `validate` and `check` commands.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CONFIG: &str = "engine:
  hostname: e2e-host
  state_dir: state
  status_log_interval: 1h
  shutdown_grace: 2s
checks: []
";

fn counter(version: &str) -> String {
    format!(
        "return {{\n  name = 'counter', interval = '200ms', timeout = '150ms', threshold = 1,\n  check = function(ctx)\n    ctx.state.n = (ctx.state.n or 0) + 1\n    return {{ ok = true, message = '{version} run ' .. ctx.state.n }}\n  end,\n}}\n"
    )
}

fn start_debug(config: &Path) -> Proc {
    let mut cmd = Command::new(vigia_bin());
    // A free port for the HTTP API: never the default one of a real engine.
    cmd.env("VIGIA_HTTP_LISTEN", "127.0.0.1:0");
    cmd.args([
        "run",
        "--log-format",
        "json",
        "--log-level",
        "vigia=debug,info",
        "-c",
    ])
    .arg(config);
    let p = Proc::spawn(cmd);
    p.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });
    p
}

/// The run numbers that `check` events of `check` reported for `version`.
fn runs(events: &[Value], check: &str, version: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "check" && e["check"] == check)
        .filter_map(|e| {
            e["message"]
                .as_str()?
                .strip_prefix(&format!("{version} run "))?
                .parse()
                .ok()
        })
        .collect()
}

fn count(events: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

#[test]
fn saved_scripts_reload_with_their_state_and_a_broken_one_keeps_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let checks = dir.path().join("checks");
    std::fs::create_dir(&checks).unwrap();
    let script = checks.join("counter.lua");
    std::fs::write(&script, counter("v1")).unwrap();
    let engine = start_debug(&config);
    engine.wait_for("three runs of v1", Duration::from_secs(10), |e| {
        runs(e, "counter", "v1").contains(&3)
    });

    // A saved change is running within a second or so, and ctx.state went along.
    std::fs::write(&script, counter("v2")).unwrap();
    engine.wait_for("v2 running", Duration::from_secs(5), |e| {
        !runs(e, "counter", "v2").is_empty()
    });
    let ev = engine.events();
    let last_v1 = *runs(&ev, "counter", "v1").iter().max().unwrap();
    let first_v2 = *runs(&ev, "counter", "v2").iter().min().unwrap();
    assert_eq!(first_v2, last_v1 + 1, "ctx.state was not carried over");

    // A broken save: reported once, with file:line; v2 keeps running.
    std::fs::write(
        &script,
        "return {\n  name = 'counter',\n  check = function(ctx)\n    if then\n  end,\n}\n",
    )
    .unwrap();
    engine.wait_for("the script error", Duration::from_secs(5), |e| {
        count(e, |x| x["event"] == "alert" && x["state"] == "script_error") == 1
    });
    let ev = engine.events();
    let err = ev
        .iter()
        .find(|x| x["event"] == "alert" && x["state"] == "script_error")
        .unwrap();
    assert_eq!(err["file"], "checks/counter.lua");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("checks/counter.lua:4: unexpected symbol near 'then'"),
        "{err}"
    );
    engine.wait_for_stderr(
        "ALERT SCRIPT ERROR on e2e-host: checks/counter.lua:4:",
        Duration::from_secs(10),
    );
    let v2_before = runs(&ev, "counter", "v2").len();
    engine.wait_for("v2 still running", Duration::from_secs(5), |e| {
        runs(e, "counter", "v2").len() >= v2_before + 3
    });
    // Saving the same broken text again does not raise it again.
    let reloads = count(&engine.events(), |x| x["event"] == "reloaded");
    std::fs::write(
        &script,
        "return {\n  name = 'counter',\n  check = function(ctx)\n    if then\n  end,\n}\n",
    )
    .unwrap();
    engine.wait_for("another reload", Duration::from_secs(5), |e| {
        count(e, |x| x["event"] == "reloaded") > reloads
    });
    assert_eq!(
        count(&engine.events(), |x| x["event"] == "alert"
            && x["state"] == "script_error"),
        1
    );

    // Fixed: said so, and the new version runs, still counting.
    std::fs::write(&script, counter("v4")).unwrap();
    engine.wait_for("v4 running", Duration::from_secs(5), |e| {
        !runs(e, "counter", "v4").is_empty()
    });
    // The reload applies the checks before it says which scripts load again: the new
    // version's first run may be logged first (seen under load in CI).
    engine.wait_for("script_fixed", Duration::from_secs(5), |e| {
        has_event(e, "script_fixed")
    });

    // A new file adds a check; deleting it removes the check.
    std::fs::write(
        checks.join("second.lua"),
        counter("second").replace("'counter'", "'second'"),
    )
    .unwrap();
    engine.wait_for("the second check", Duration::from_secs(5), |e| {
        !runs(e, "second", "second").is_empty()
    });
    std::fs::remove_file(checks.join("second.lua")).unwrap();
    engine.wait_for("the second check removed", Duration::from_secs(5), |e| {
        e.iter()
            .any(|x| x["event"] == "reloaded" && x["removed"] == "second")
    });
    // Editors' temporary files are not scripts.
    std::fs::write(checks.join(".counter.lua.swp"), "junk").unwrap();
    std::fs::write(checks.join("notes.txt"), "junk").unwrap();

    // kill -9 and a restart: ctx.state was persisted with the status map.
    let last = *runs(&engine.events(), "counter", "v4")
        .iter()
        .max()
        .unwrap();
    engine.signal(libc::SIGKILL);
    drop(engine);
    let engine = start_debug(&config);
    engine.wait_for("a run after the restart", Duration::from_secs(10), |e| {
        !runs(e, "counter", "v4").is_empty()
    });
    let first = *runs(&engine.events(), "counter", "v4")
        .iter()
        .min()
        .unwrap();
    // At most the last run before the kill was not yet committed.
    assert!(
        first + 1 >= last && first <= last + 1,
        "state after restart: {first}, before: {last}"
    );
}

#[test]
fn lua_entries_in_config_validate_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let checks = dir.path().join("checks");
    std::fs::create_dir(&checks).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(repo.join("checks/web.lua"), checks.join("web.lua")).unwrap();
    std::fs::write(checks.join("echo.lua"), "return {\n  check = function(ctx)\n    local r = exec{ command = 'echo', args = { ctx.params.word } }\n    return { ok = r.code == 0, message = r.stdout:gsub('\\n', '') }\n  end,\n}\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "engine:\n  state_dir: state\ncommands:\n  echo: /bin/echo\nchecks:\n  - name: web_api\n    type: lua\n    script: checks/web.lua\n    params: {{ url: \"http://127.0.0.1:{}/health\" }}\n  - name: say\n    type: lua\n    script: checks/echo.lua\n    params: {{ word: hello }}\n    interval: 5s\n",
            mock.http
        ),
    )
    .unwrap();
    let out = vigia(&["validate"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vigia(&["check", "web_api"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("OK web_api: http://127.0.0.1:"), "{text}");
    let out = vigia(&["check", "say"], &config);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK say: hello\n");
    mock.set("http", "failing");
    let out = vigia(&["check", "web_api"], &config);
    assert_eq!(out.status.code(), Some(2));

    // A broken script: validate names it with its line and fails.
    std::fs::write(checks.join("web.lua"), "return {\n  check = function(ctx)\n    return { ok = true }\n  end,\n  intervl = '5s',\n}\n").unwrap();
    let out = vigia(&["validate"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "checks/web.lua:5: unknown field `intervl` in the returned table (did you mean `interval`?)\n1 script does not load.\n"
    );

    // commands: must be absolute paths.
    std::fs::write(&config, "commands:\n  echo: echo\nchecks: []\n").unwrap();
    let out = vigia(&["validate"], &config);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("config.yaml:2:9: commands.echo: `echo` must be an absolute path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
