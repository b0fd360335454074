//! `kill -9` at each durable stage of an alert — in the inbox (while a remediation
//! runs), held for a group or a send window, in an outbox — and what must hold after the
//! restart: the check's routing (`notify`), its window, its dependencies and its
//! reminders. Every component is built with its whole configuration before it starts,
//! so nothing replayed at start sees a half-configured engine.
//!
//! The outbox stage (Telegram down, kill -9, Telegram back) is
//! `alert_e2e::the_same_across_a_kill_9_during_the_outage`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const TOKEN: &str = "4242:crash-stage-token";

fn dead_port() -> u16 {
    // Bound and dropped: nothing listens there.
    free_port()
}

fn config(dir: &Path, mock: &Mock, alerting: &str, extra: &str, checks: &str) -> PathBuf {
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n  shutdown_grace: 2s\n\
alerting:\n  max_retry_wait: 1s\n{alerting}\
channels:\n  console: {{ type: console }}\n  ops:\n    type: telegram\n    token_env: VIGIA_E2E_TOKEN\n    chat_ids: [424242]\n    api_url: http://127.0.0.1:{tg}\n\
{extra}checks:\n{checks}",
            tg = mock.telegram
        ),
    )
    .unwrap();
    file
}

fn tcp_check(name: &str, port: u16, more: &str) -> String {
    format!(
        "  - name: {name}\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 2\n{more}"
    )
}

fn start(config: &Path) -> Proc {
    start_engine_with(config, &[("VIGIA_E2E_TOKEN", TOKEN)])
}

/// The texts the Telegram mock accepted.
fn telegram_texts(mock: &Mock) -> Vec<String> {
    mock.telegram_messages()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wait_telegram(mock: &Mock, what: &str, timeout: Duration, pred: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    loop {
        let texts = telegram_texts(mock);
        if pred(&texts) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what} on Telegram; it has: {texts:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(texts: &[String], needle: &str) -> usize {
    texts.iter().filter(|t| t.contains(needle)).count()
}

fn kill_and_restart(engine: Proc, config: &Path) -> Proc {
    engine.signal(libc::SIGKILL);
    drop(engine);
    start(config)
}

/// The reproduction: a check with `notify: [ops]` and a slow action, a second
/// one with `notify: [ops]` and `remind_every: 1m`; the engine killed while the action
/// runs. The replayed `failed` goes to ops and not to the console, says that the run's
/// outcome is unknown (the action is not run again), and the reminder comes after the
/// restart.
#[test]
fn an_alert_in_the_inbox_keeps_its_routing_and_the_reminders_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (after_restart, after_port) = listen();
    let runs = dir.path().join("runs.txt");
    let checks = [
        tcp_check(
            "fixme",
            dead_port(),
            "    notify: [ops]\n    on_failed: [slow_fix]\n",
        ),
        tcp_check(
            "nagme",
            dead_port(),
            "    notify: [ops]\n    remind_every: 1m\n    comment: \"call the DBA\"\n",
        ),
        // Goes to every channel; fails only after the restart: the positive signal.
        tcp_check("canary", after_port, ""),
    ]
    .concat();
    let config = config(
        dir.path(),
        &mock,
        "  group_wait: 0s\n",
        &format!(
            "actions:\n  slow_fix: {{ command: [/bin/sh, -c, \"echo run >> {}; sleep 6\"], timeout: 20s }}\n",
            runs.display()
        ),
        &checks,
    );
    let engine = start(&config);
    engine.wait_for(
        "fixme and nagme committed as failed",
        Duration::from_secs(10),
        |e| alerts(e, "fixme", "failed") == 1 && alerts(e, "nagme", "failed") == 1,
    );
    wait_until("slow_fix to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&runs)
            .ok()
            .filter(|r| !r.is_empty())
    });
    wait_telegram(
        &mock,
        "nagme's failed alert",
        Duration::from_secs(10),
        |t| count(t, "<b>nagme</b> failed") == 1,
    );
    let nagme_down_at = Instant::now();
    // fixme's transition waits in the inbox while slow_fix sleeps: kill now.
    assert_eq!(
        count(&telegram_texts(&mock), "<b>fixme</b>"),
        0,
        "fixme's alert waits for its action"
    );
    let engine = kill_and_restart(engine, &config);

    // Replayed from the inbox, to ops only.
    wait_telegram(
        &mock,
        "fixme's replayed alert",
        Duration::from_secs(10),
        |t| count(t, "<b>fixme</b> failed") == 1,
    );
    let texts = telegram_texts(&mock);
    let fixme = texts.iter().find(|t| t.contains("<b>fixme</b>")).unwrap();
    assert!(
        fixme.contains("outcome unknown") && fixme.contains("not run again"),
        "the replayed alert says the run's outcome is unknown: {fixme}"
    );
    drop(after_restart);
    engine.wait_for_stderr("ALERT FAILED canary on e2e-host", Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "slow_fix ran again after the restart"
    );
    let console = engine.stderr_text();
    assert!(
        !console.contains("fixme") && !console.contains("nagme"),
        "checks with notify: [ops] reached the console:\n{console}"
    );

    // The reminder, one interval after nagme went down (the first engine's clock).
    let left = Duration::from_secs(75).saturating_sub(nagme_down_at.elapsed());
    wait_telegram(&mock, "nagme's reminder", left, |t| {
        count(t, "<b>nagme</b> still failing") == 1
    });
    let texts = telegram_texts(&mock);
    let reminder = texts.iter().find(|t| t.contains("still failing")).unwrap();
    assert!(
        reminder.contains("call the DBA"),
        "the reminder carries the comment: {reminder}"
    );
    assert!(
        !engine.stderr_text().contains("REMINDER"),
        "the reminder went to the console too:\n{}",
        engine.stderr_text()
    );
    assert_eq!(count(&texts, "<b>fixme</b> failed"), 1, "{texts:#?}");
    assert_eq!(count(&texts, "<b>nagme</b> failed"), 1, "{texts:#?}");
}

/// Unix hour now (UTC), for a window that is closed for the next two hours.
fn utc_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24
}

/// Killed while a group waits (`group_wait`) and while a check's send window is
/// closed: after the restart the group still goes out as one message, the dependent
/// check's failure is still suppressed (and named in its dependency's message), and the
/// windowed check is still held.
#[test]
fn held_for_a_group_or_a_window_keeps_dependencies_and_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (later, later_port) = listen();
    let (from, to) = ((utc_hour() + 2) % 24, (utc_hour() + 3) % 24);
    let checks = [
        tcp_check("db", dead_port(), "    notify: [ops]\n"),
        tcp_check(
            "app",
            dead_port(),
            "    notify: [ops]\n    depends_on: [db]\n",
        ),
        tcp_check(
            "night",
            dead_port(),
            "    notify: [ops]\n    send_window: later\n",
        ),
        // Fails only after the restart; no window, no group with the others.
        tcp_check("signal", later_port, "    notify: [ops]\n"),
    ]
    .concat();
    let config = config(
        dir.path(),
        &mock,
        "  group_wait: 4s\n  timezone: UTC\n",
        &format!("windows:\n  later: {{ days: [mon-sun], from: \"{from:02}:00\", to: \"{to:02}:00\" }}\n"),
        &checks,
    );
    let engine = start(&config);
    engine.wait_for("three failures committed", Duration::from_secs(10), |e| {
        ["db", "app", "night"]
            .iter()
            .all(|c| alerts(e, c, "failed") == 1)
    });
    // Held now: for the group (db, app) and for the window (night).
    assert!(telegram_texts(&mock).is_empty());
    let engine = kill_and_restart(engine, &config);

    wait_telegram(&mock, "db's alert", Duration::from_secs(15), |t| {
        count(t, "<b>db</b>") >= 1
    });
    drop(later);
    wait_telegram(
        &mock,
        "signal's alert (after the restart)",
        Duration::from_secs(15),
        |t| count(t, "<b>signal</b>") >= 1,
    );
    let texts = telegram_texts(&mock);
    let db: Vec<&String> = texts.iter().filter(|t| t.contains("<b>db</b>")).collect();
    assert_eq!(db.len(), 1, "db alerted once: {texts:#?}");
    assert!(
        db[0].contains("Suppressed meanwhile: app"),
        "app's failure is suppressed by its dependency and named there: {}",
        db[0]
    );
    assert_eq!(
        count(&texts, "<b>app</b>"),
        0,
        "app depends on db: {texts:#?}"
    );
    assert_eq!(
        count(&texts, "night"),
        0,
        "night's window is closed: {texts:#?}"
    );
    // Still held durably: night is in the store, waiting for its window.
    let out = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let night = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "night")
        .unwrap();
    assert_eq!(night["status"], false, "{night}");
    drop(engine);
}
