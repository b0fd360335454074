//! Golden cases of the alert policy, through `vigia replay`: each folder of
//! `tests/golden/` holds a recording (`record/`), the config it is replayed under, and
//! the report expected beside them (`expected.txt`; `expected-what-if.txt` for
//! `other.yaml` against `config.yaml`). A change of behaviour shows up as a diff of the
//! expected file: `UPDATE_GOLDEN=1 cargo test -p vigia --test replay` rewrites them, and
//! the diff is reviewed like code.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `vigia replay record ARGS` in the case's folder: its stdout.
fn replay(case: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vigia"))
        .current_dir(case)
        .env_remove("VIGIA_CONFIG")
        .arg("replay")
        .arg("record")
        .args(args)
        .output()
        .expect("vigia runs");
    assert!(
        out.status.success(),
        "{}: vigia replay {args:?} failed: {}",
        case.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn compare(case: &Path, file: &str, actual: &str, failures: &mut Vec<String>) {
    let path = case.join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write the expected file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{} differs (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden())
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.yaml").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let report = replay(case, &["-c", "config.yaml"]);
        compare(case, "expected.txt", &report, &mut failures);
        if case.join("other.yaml").exists() {
            let what_if = replay(case, &["-c", "other.yaml", "--base", "config.yaml"]);
            compare(case, "expected-what-if.txt", &what_if, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Without -c the replay is under the config the recording names in its header, and
/// with -c another one it compares the two without --base.
#[test]
fn the_recorded_config_is_the_default_and_the_base() {
    let case = golden().join("threshold");
    let plain = replay(&case, &[]);
    assert_eq!(plain, replay(&case, &["-c", "config.yaml"]));
    let what_if = replay(&case, &["-c", "other.yaml"]);
    assert!(
        what_if.contains("What if other.yaml instead of config.yaml:"),
        "{what_if}"
    );
    assert!(
        what_if.contains("1 outage would no longer be alerted: web"),
        "{what_if}"
    );
}

/// `--json` carries the same messages, the what-if summary and the problems, each with
/// its file and line.
#[test]
fn json_report() {
    let case = golden().join("problems");
    let doc: serde_json::Value =
        serde_json::from_str(&replay(&case, &["-c", "config.yaml", "--json"])).expect("JSON");
    let messages = &doc["replays"][0]["messages"];
    let kinds: Vec<&str> = messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["failed", "recovered"], "{doc:#}");
    let problems = doc["problems"].as_array().expect("problems");
    let said: Vec<String> = problems
        .iter()
        .map(|p| format!("{}:{}", p["file"].as_str().unwrap_or(""), p["line"]))
        .collect();
    assert_eq!(
        said,
        [
            "record/record-1796133600000-0000.jsonl:14",
            "record/record-1796133600000-0000.jsonl:15",
            "record/record-1796133680000-0001.jsonl:1",
            "record/record-1796133600000-0000.jsonl:3",
        ],
        "{doc:#}"
    );
}

/// Bad arguments are one clear line, not a panic: a directory without a recording, a
/// time that does not parse.
#[test]
fn clear_errors() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_vigia"))
        .args(["replay"])
        .arg(empty.path())
        .output()
        .expect("vigia runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds no recording"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vigia"))
        .current_dir(golden().join("threshold"))
        .args(["replay", "record", "-c", "config.yaml", "--from", "noon"])
        .output()
        .expect("vigia runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--from: `noon` is not a time"), "{err}");
}
