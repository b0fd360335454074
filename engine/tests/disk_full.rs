//! A full disk under the state directory (a small tmpfs of the test's own, filled
//! during the run): the engine says so, holds the transitions it cannot record (no
//! alert for a transition the store does not hold), writes them once there is room,
//! alerts each exactly once, and after a `kill -9` and a restart alerts none again.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a tmpfs (this test needs root, as scripts/test.sh runs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system at `dir` until a write fails.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_holds_alerts_until_they_are_recorded_and_none_is_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _fs = Tmpfs::mount(&state, "4m");
    let mut listeners = Vec::new();
    let mut checks = String::new();
    for i in 0..20 {
        let (l, port) = listen();
        listeners.push(l);
        checks.push_str(&format!(
            "  - name: c{i}\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 1\n"
        ));
    }
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("engine:\n  state_dir: state\n  status_log_interval: 1h\n  shutdown_grace: 2s\nalerting:\n  group_wait: 0s\nchannels:\n  console: {{ type: console }}\nchecks:\n{checks}"),
    )
    .unwrap();
    let engine = start_engine_with(&config, &[]);
    wait_rounds(&config, 2, Duration::from_secs(15));

    let filler = fill(&state);
    drop(listeners);
    engine.wait_for("the store error", Duration::from_secs(15), |e| {
        has_event(e, "store_error")
    });
    wait_rounds(&config, 3, Duration::from_secs(15));
    let events = engine.events();
    let early: usize = (0..20)
        .map(|i| alerts(&events, &format!("c{i}"), "failed"))
        .sum();
    assert_eq!(early, 0, "alerted before the transitions were recorded");
    let store_errors = events
        .iter()
        .filter(|e| e["event"] == "store_error")
        .count();
    assert!(
        store_errors <= 2,
        "said once, not every second: {store_errors}"
    );

    std::fs::remove_file(filler).unwrap();
    engine.wait_for("every check alerted", Duration::from_secs(20), |e| {
        (0..20).all(|i| alerts(e, &format!("c{i}"), "failed") == 1)
    });
    assert!(has_event(&engine.events(), "store_recovered"));

    engine.signal(libc::SIGKILL);
    drop(engine);
    let engine = start_engine_with(&config, &[]);
    wait_rounds(&config, 4, Duration::from_secs(15));
    let events = engine.events();
    let again: usize = (0..20)
        .map(|i| alerts(&events, &format!("c{i}"), "failed"))
        .sum();
    assert_eq!(again, 0, "alerted again after the restart");
}
