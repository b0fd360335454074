//! `vigia run --record DIR` and `engine.record`: every run of every check as a JSON
//! line, as a real engine writes it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The recorded lines of `dir`, with the headers apart.
fn read(dir: &std::path::Path) -> (Vec<Value>, Vec<Value>) {
    let mut headers = Vec::new();
    let mut lines = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, l) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", f.display(), i + 1));
            if i == 0 {
                headers.push(v);
            } else {
                lines.push(v);
            }
        }
    }
    (headers, lines)
}

#[test]
fn every_run_is_recorded_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (down, down_port) = listen();
    drop(down);
    let config = write_config(
        dir.path(),
        &mock,
        &format!(
            "  - name: db\n    type: tcp\n    host: 127.0.0.1\n    port: {down_port}\n    interval: 200ms\n    timeout: 150ms\n"
        ),
    );
    let rec = dir.path().join("rec");
    let mut cmd = std::process::Command::new(vigia_bin());
    cmd.env("VIGIA_HTTP_LISTEN", "127.0.0.1:0")
        .args(["run", "--log-format", "json", "--record"])
        .arg(&rec)
        .arg("-c")
        .arg(&config);
    let mut engine = Proc::spawn(cmd);
    engine.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });
    assert!(engine
        .events()
        .iter()
        .any(|e| e["event"] == "recording" && e["dir"] == rec.display().to_string()));
    wait_rounds(&config, 5, Duration::from_secs(20));
    // db's failure goes out (after group_wait), so the recording covers it.
    engine.wait_for("db's alert to be delivered", Duration::from_secs(20), |e| {
        e.iter().any(|e| e["event"] == "delivered")
    });
    // A silence goes into the recording too, for a replay to apply.
    let out = vigia(
        &["silence", "add", "web", "--for", "1h", "--reason", "deploy"],
        &config,
    );
    assert!(out.status.success(), "{out:?}");
    wait_rounds(&config, 2, Duration::from_secs(20));
    engine.signal(libc::SIGTERM);
    assert_eq!(engine.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(has_event(&engine.events(), "stopped"));
    let (headers, lines) = read(&rec);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0]["vigia_record"], 1);
    assert_eq!(headers[0]["host"], "e2e-host");
    assert_eq!(headers[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        headers[0]["config"],
        config.canonicalize().unwrap().display().to_string()
    );
    let silences: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("silence").is_some())
        .collect();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0]["silence"]["pattern"], "web");
    assert_eq!(silences[0]["silence"]["reason"], "deploy");
    let web: Vec<&Value> = lines.iter().filter(|l| l["c"] == "web").collect();
    let db: Vec<&Value> = lines.iter().filter(|l| l["c"] == "db").collect();
    assert!(
        web.len() >= 5 && db.len() >= 5,
        "{} {}",
        web.len(),
        db.len()
    );
    assert!(web.iter().all(|l| l["ok"] == true && l["s"] == "ok"));
    assert!(db.iter().all(|l| l["ok"] == false && l["s"] == "critical"));
    assert!(
        db[0]["m"].as_str().unwrap().contains("connection refused"),
        "{}",
        db[0]
    );
    assert!(web.iter().all(|l| l["d"].as_f64().is_some()));
    // In order of time.
    let times: Vec<u64> = lines.iter().map(|l| l["t"].as_u64().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    let out_of_order = times.iter().zip(&sorted).filter(|(a, b)| a != b).count();
    assert!(
        out_of_order * 10 <= times.len(),
        "mostly in order: {times:?}"
    );
    // Replayed under the config it names: db's failure, alerted once, and nothing else.
    let out = std::process::Command::new(vigia_bin())
        .arg("replay")
        .arg(&rec)
        .env_remove("VIGIA_CONFIG")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report.matches("ALERT FAILED db on e2e-host").count(),
        1,
        "{report}"
    );
    assert!(report.contains("(1 check was up all along)"), "{report}");
    assert!(!report.contains("Problems with the recording"), "{report}");
}

#[test]
fn a_recording_directory_that_cannot_be_written_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let config = write_config(dir.path(), &mock, "");
    // A file where the directory should be.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("engine:\n", "engine:\n  record: not-a-dir/rec\n");
    std::fs::write(&config, text).unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let out = vigia(&["run", "--log-format", "json"], &config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the recording cannot start: cannot create the recording directory")
            && err.contains("not-a-dir/rec"),
        "{err}"
    );
}
