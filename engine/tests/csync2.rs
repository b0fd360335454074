//! checks/csync2.lua against two real csync2 hosts (scripts/fixtures/csync2.sh: alpha =
//! 127.0.0.2, beta = 127.0.0.3) with a real conflict: reported on both sides with the
//! file and the peer; auto-resolved on the designated node (its copy wins), each step
//! recorded in the engine's log; a broken csync2 is a failure with csync2's own words.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

struct Csync2 {
    dir: PathBuf,
}

impl Csync2 {
    fn start(dir: &Path, port: u16) -> Csync2 {
        let out = Command::new(repo().join("scripts/fixtures/csync2.sh"))
            .arg("start")
            .arg(dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        let c = Csync2 {
            dir: dir.to_path_buf(),
        };
        assert!(
            out.status.success(),
            "csync2.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn conflict(&self, file: &str) {
        let out = Command::new(repo().join("scripts/fixtures/csync2.sh"))
            .arg("conflict")
            .arg(&self.dir)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Csync2 {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/csync2.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A config with one csync2 check acting as `host` (alpha or beta).
fn config(c: &Csync2, host: &str, extra: &str, name: &str) -> PathBuf {
    let file = c.dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            r#"engine: {{ hostname: {host}, state_dir: {dir}/state-{name}, status_log_interval: 1h }}
alerting: {{ group_wait: 0s, flapping: {{ changes: 0 }} }}
commands: {{ csync2: {dir}/{host}.sh }}
checks:
  - name: csync2
    type: lua
    script: {script}
    interval: 1s
    timeout: 1s
    params: {{ prefixes: {{ data: {dir}/{host}/data }}{extra} }}
"#,
            dir = c.dir.display(),
            script = repo().join("checks/csync2.lua").display(),
        ),
    )
    .unwrap();
    file
}

fn check(config: &Path) -> (i32, String) {
    let out = vigia(&["check", "csync2"], config);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn conflicts_are_reported_on_both_hosts_and_auto_resolved_on_the_designated_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = Csync2::start(&dir.path().join("csync2"), 30877);
    let alpha = config(&c, "alpha", "", "alpha");
    let beta = config(&c, "beta", "", "beta");
    // Nothing to sync yet: csync2 -M exits 2, which is "no conflicts".
    let (code, text) = check(&alpha);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no csync2 conflicts"), "{text}");

    c.conflict("app.conf");
    let (code, text) = check(&alpha);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("1 file(s) in conflict: %data%/app.conf (with 127.0.0.3)"),
        "{text}"
    );
    let (code, text) = check(&beta);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("%data%/app.conf (with 127.0.0.2)"), "{text}");

    // alpha is the designated node: the engine resolves it and records each step.
    let auto = config(&c, "alpha", ", auto_resolve: true", "auto");
    let engine = start_engine(&auto);
    engine.wait_for("the auto-resolve", Duration::from_secs(20), |e| {
        e.iter().any(|e| {
            e["event"] == "script_log"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("csync2 -x"))
        })
    });
    let steps: Vec<String> = engine
        .events()
        .iter()
        .filter(|e| e["event"] == "script_log")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("csync2 auto-resolve: csync2 -f ")
                && s.contains("/alpha/data/app.conf: exit 0")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("csync2 auto-resolve: csync2 -x: exit 0")),
        "{steps:?}"
    );
    assert_eq!(
        std::fs::read_to_string(c.dir.join("beta/data/app.conf")).unwrap(),
        "alpha's edit\n"
    );
    // No alert: the check never failed in this engine, it resolved.
    assert_eq!(alerts(&engine.events(), "csync2", "failed"), 0);
    // What it did is the check's last message (the run ends just after its last step).
    let want = "resolved 1 conflict(s) by forcing this node's copy";
    let mut text = String::new();
    for _ in 0..50 {
        text = String::from_utf8_lossy(&vigia(&["status"], &auto).stdout).to_string();
        if text.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(engine);
    assert!(
        text.contains(
            "resolved 1 conflict(s) by forcing this node's copy: %data%/app.conf (with 127.0.0.3)"
        ),
        "{text}"
    );
    // Both agree now.
    let (code, text) = check(&alpha);
    assert_eq!(code, 0, "{text}");
    let (code, text) = check(&beta);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_broken_csync2_is_a_failure_in_its_own_words() {
    let dir = tempfile::tempdir().unwrap();
    let c = Csync2::start(&dir.path().join("csync2"), 30878);
    let broken = config(&c, "alpha", ", args: [-D, /nonexistent/db]", "broken");
    let (code, text) = check(&broken);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("csync2 -M failed (exit 1): Can't open database"),
        "{text}"
    );
}
