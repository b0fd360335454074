//! Remediation end to end: actions on failure with their transcript in the alert, dry
//! run, a file_switch whose validation fails (the old file comes back) and one that
//! succeeds, and a restart loop stopped by max_runs.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn write_config(
    dir: &Path,
    remediation: &str,
    actions: &str,
    check_extra: &str,
    port: u16,
) -> PathBuf {
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n\
alerting:\n  group_wait: 0s\n  flapping: {{ changes: 0 }}\n\
remediation: {remediation}\n\
actions:\n{actions}\
checks:\n  - name: web\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 1\n{check_extra}"
        ),
    )
    .unwrap();
    file
}

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_action_runs_on_failure_and_the_alert_carries_its_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran.txt");
    let actions = format!(
        "  mark:\n    command: [/bin/sh, -c, \"echo ran >> {m}; echo marked\"]\n    timeout: 5s\n",
        m = marker.display()
    );
    let config = write_config(
        dir.path(),
        "{ cooldown: 0s }",
        &actions,
        "    on_failed: [mark]\n",
        closed_port(),
    );
    let engine = start_engine(&config);
    engine.wait_for_stderr("ALERT FAILED web on e2e-host", Duration::from_secs(10));
    let err = engine.stderr_text();
    assert!(err.contains("| ✓ mark: /bin/sh -c echo ran >>"), "{err}");
    assert!(err.contains("(exit 0, "), "{err}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    let action = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "action")
        .unwrap();
    assert_eq!(action["action"], "mark");
    assert_eq!(action["check"], "web");
    assert_eq!(action["exit_code"], 0);
    assert_eq!(action["output"], "marked");
}

#[test]
fn a_dry_run_runs_nothing_and_says_what_it_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran.txt");
    let actions = format!(
        "  stop_db:\n    command: [/bin/sh, -c, \"echo ran >> {m}\"]\n",
        m = marker.display()
    );
    let config = write_config(
        dir.path(),
        "{ dry_run: true }",
        &actions,
        "    on_failed: [stop_db]\n",
        closed_port(),
    );
    let engine = start_engine(&config);
    engine.wait_for_stderr("ALERT FAILED web on e2e-host", Duration::from_secs(10));
    assert!(
        engine
            .stderr_text()
            .contains("· stop_db: would run: /bin/sh -c echo ran >>"),
        "{}",
        engine.stderr_text()
    );
    // The alert is printed after the (dry) run: nothing can run after it.
    assert!(!marker.exists(), "a dry run ran the command");
    let action = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "action")
        .unwrap();
    assert_eq!(action["dry_run"], true);
}

#[test]
fn a_file_switch_is_undone_when_validation_fails_and_kept_when_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("proxy.conf");
    let off_bad = dir.path().join("proxy-off-bad.conf");
    let on = dir.path().join("proxy-on.conf");
    let reloaded = dir.path().join("reloaded");
    std::fs::write(&conf, "proxy_pass on; # good\n").unwrap();
    std::fs::write(&off_bad, "proxy_pass ???\n").unwrap();
    std::fs::write(&on, "proxy_pass back; # good\n").unwrap();
    // The validator stands in for `nginx -t`: it accepts files that say "good".
    let validate = format!("[/bin/sh, -c, \"grep -q good {}\"]", conf.display());
    let actions = format!(
        "  proxy_off:\n    file_switch: {{ file: {c}, to: {bad}, validate: {validate}, reload: [/bin/sh, -c, \"touch {r}\"] }}\n  proxy_on:\n    file_switch: {{ file: {c}, to: {on}, validate: {validate}, reload: [/bin/sh, -c, \"touch {r}\"] }}\n",
        c = conf.display(),
        bad = off_bad.display(),
        on = on.display(),
        r = reloaded.display()
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let config = write_config(
        dir.path(),
        "{ cooldown: 0s }",
        &actions,
        "    on_failed: [proxy_off]\n    on_recovered: [proxy_on]\n",
        port,
    );
    let engine = start_engine(&config);
    wait_rounds(&config, 1, Duration::from_secs(10));
    drop(l);
    engine.wait_for_stderr("ALERT FAILED web on e2e-host", Duration::from_secs(10));
    let err = engine.stderr_text();
    assert!(err.contains("✗ proxy_off: switch"), "{err}");
    assert!(
        err.contains("validation failed (`/bin/sh -c grep -q good"),
        "{err}"
    );
    assert!(err.contains("the previous file is back"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "proxy_pass on; # good\n"
    );
    assert!(!reloaded.exists(), "no reload after a failed validation");
    // Recovery switches to a valid variant: kept, and the service reloaded.
    let _l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    engine.wait_for_stderr("ALERT RECOVERED web on e2e-host", Duration::from_secs(10));
    assert!(
        engine.stderr_text().contains("✓ proxy_on: switch"),
        "{}",
        engine.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "proxy_pass back; # good\n"
    );
    assert!(reloaded.exists());
}

#[test]
fn a_restart_loop_is_stopped_by_max_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("restarts.txt");
    let actions = format!(
        "  restart:\n    command: [/bin/sh, -c, \"echo x >> {}\"]\n",
        marker.display()
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let config = write_config(
        dir.path(),
        "{ cooldown: 0s, max_runs: 2 }",
        &actions,
        "    on_failed: [restart]\n",
        port,
    );
    let engine = start_engine(&config);
    // Fails, "restarts", comes back, fails again... four times.
    for round in 1..=4 {
        engine.wait_for("a failure", Duration::from_secs(10), |e| {
            alerts(e, "web", "failed") == round
        });
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        engine.wait_for("a recovery", Duration::from_secs(10), |e| {
            alerts(e, "web", "recovered") == round
        });
        drop(l);
    }
    // Each failed alert is printed once its remediation was decided: after the fourth,
    // nothing more can run.
    let start = std::time::Instant::now();
    while engine.stderr_text().matches("ALERT FAILED web").count() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            engine.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "x\nx\n",
        "two runs, then suspended"
    );
    let err = engine.stderr_text();
    assert!(
        err.contains("remediation suspended: it already ran 2 times in the last hour (max_runs)"),
        "{err}"
    );
    assert!(engine
        .events()
        .iter()
        .any(|e| e["event"] == "remediation_skipped"));
}
