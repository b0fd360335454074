//! A reload applies what it computes from the diff of the two configs: new channels and
//! actions take effect without a restart, `engine.watch` is applied (and said), and
//! only `state_dir` and `worker_threads` wait for a restart, which the reload says.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "4242:reload-live-token";

fn write(file: &Path, mock: &Mock, engine: &str, more: &str, web_more: &str) {
    std::fs::write(
        file,
        format!(
            "engine:\n  hostname: e2e-host\n  status_log_interval: 1h\n  shutdown_grace: 2s\n{engine}\
alerting:\n  group_wait: 0s\n  max_retry_wait: 1s\n\
{more}checks:\n  - name: web\n    type: http\n    url: http://127.0.0.1:{http}/health\n    interval: 200ms\n    timeout: 150ms\n    threshold: 2\n{web_more}",
            http = mock.http
        ),
    )
    .unwrap();
}

fn reloaded(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "reloaded").collect()
}

#[test]
fn channels_actions_and_engine_keys_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let file = dir.path().join("config.yaml");
    write(
        &file,
        &mock,
        "  state_dir: state\n  watch: false\n",
        "channels:\n  console: { type: console }\n",
        "",
    );
    let mut cmd = std::process::Command::new(vigia_bin());
    // A free port for the HTTP API: never the default one of a real engine.
    cmd.env("VIGIA_HTTP_LISTEN", "127.0.0.1:0");
    cmd.env("VIGIA_E2E_TOKEN", TOKEN)
        .args(["run", "--log-format", "json", "-c"])
        .arg(&file);
    let engine = Proc::spawn(cmd);
    engine.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });

    // A Telegram channel and an action appear, the watcher is switched on, and the
    // state directory moves (which needs a restart).
    let marker = dir.path().join("acted");
    write(
        &file,
        &mock,
        "  watch: true\n  state_dir: state2\n",
        &format!(
            "channels:\n  console: {{ type: console }}\n  ops:\n    type: telegram\n    token_env: VIGIA_E2E_TOKEN\n    chat_ids: [4242]\n    api_url: http://127.0.0.1:{tg}\n\
actions:\n  mark: {{ command: [/usr/bin/touch, \"{marker}\"] }}\n",
            tg = mock.telegram,
            marker = marker.display()
        ),
        "    on_failed: [mark]\n",
    );
    engine.signal(libc::SIGHUP);
    engine.wait_for("the reload", Duration::from_secs(10), |e| {
        !reloaded(e).is_empty()
    });
    let events = engine.events();
    let r = reloaded(&events)[0];
    let applied = r["applied"].as_str().unwrap();
    assert!(
        applied.contains("engine.watch")
            && applied.contains("channels")
            && applied.contains("actions"),
        "{r}"
    );
    assert_eq!(r["changed"], 1, "web gained on_failed: {r}");
    let restart = events
        .iter()
        .find(|e| e["event"] == "reload" && e["keys"].is_string())
        .expect("the reload says what waits for a restart");
    assert_eq!(restart["keys"], "engine.state_dir", "{restart}");

    // The new channel and the new action work at once.
    mock.set("http", "failing");
    let start = Instant::now();
    loop {
        let got = mock.telegram_messages();
        let failed = got
            .iter()
            .filter_map(|m| m["text"].as_str())
            .find(|t| t.contains("<b>web</b> failed"));
        if let Some(text) = failed {
            assert!(text.contains("✓ mark"), "the transcript: {text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no alert on the channel added by the reload: {got:?}\n{}",
            engine.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(marker.exists(), "the action added by the reload ran");

    // The watcher the reload switched on reloads by itself on the next save.
    let before = reloaded(&engine.events()).len();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("status_log_interval: 1h", "status_log_interval: 2h");
    std::fs::write(&file, text).unwrap();
    engine.wait_for("a reload by the watcher", Duration::from_secs(10), |e| {
        reloaded(e).len() > before
    });
    let events = engine.events();
    let last = reloaded(&events).last().copied().unwrap();
    assert!(
        last["applied"]
            .as_str()
            .unwrap()
            .contains("engine.status_log_interval"),
        "{last}"
    );
    // state_dir still waits for a restart, and is said again.
    let says = events
        .iter()
        .filter(|e| e["event"] == "reload" && e["keys"] == "engine.state_dir")
        .count();
    assert_eq!(says, 2);
    // The state stays where the engine started: the store moved nowhere.
    assert!(!dir.path().join("state2").exists());
}

fn write_checks(file: &Path, checks: &str) {
    std::fs::write(
        file,
        format!(
            "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n  shutdown_grace: 2s\n  watch: false\n\
alerting:\n  group_wait: 0s\nchannels:\n  console: {{ type: console }}\n{checks}"
        ),
    )
    .unwrap();
}

/// An editor that empties the file before writing it, and an entry removed for a
/// moment: a check that is down is alerted `failed` once, not again when it is back.
#[test]
fn an_emptied_config_is_refused_and_a_check_put_back_resumes_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let (_up, up_port) = listen();
    let (down, down_port) = listen();
    drop(down);
    let both = format!(
        "checks:\n  - name: up\n    type: tcp\n    host: 127.0.0.1\n    port: {up_port}\n    interval: 200ms\n    timeout: 150ms\n  - name: down\n    type: tcp\n    host: 127.0.0.1\n    port: {down_port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 1\n"
    );
    write_checks(&file, &both);
    let engine = start_engine_with(&file, &[]);
    engine.wait_for("down alerted", Duration::from_secs(15), |e| {
        alerts(e, "down", "failed") == 1
    });

    // Saved empty: refused, said, every check keeps running.
    std::fs::write(&file, "").unwrap();
    engine.signal(libc::SIGHUP);
    engine.wait_for("the refusal", Duration::from_secs(10), |e| {
        e.iter()
            .any(|x| x["event"] == "reload_failed" && x["errors"] == "no checks")
    });
    // The entry removed, then put back: it resumes, still down, not alerted again.
    write_checks(&file, both.split("  - name: down").next().unwrap());
    engine.signal(libc::SIGHUP);
    engine.wait_for("the removal", Duration::from_secs(10), |e| {
        reloaded(e).iter().any(|r| r["removed"] == "down")
    });
    write_checks(&file, &both);
    engine.signal(libc::SIGHUP);
    engine.wait_for("the check back", Duration::from_secs(10), |e| {
        reloaded(e).iter().any(|r| r["resumed"] == "down")
    });
    wait_rounds(&file, 5, Duration::from_secs(15));
    let events = engine.events();
    assert_eq!(alerts(&events, "down", "failed"), 1, "alerted once");
    let out = vigia(&["status", "--json"], &file);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let down = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "down")
        .cloned()
        .unwrap();
    assert_eq!(down["status"], false, "{down}");
}
