//! packaging/vigia.service: the settings the engine relies on, and systemd's own verdict.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/vigia.service");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn the_unit_has_what_the_engine_relies_on() {
    let u = unit();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=",
        "User=vigia",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vigia",
        "AmbientCapabilities=CAP_NET_RAW",
    ] {
        assert!(u.lines().any(|l| l.starts_with(line)), "missing `{line}`");
    }
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    // scripts/test.sh installs it (Debian package `systemd`): missing is a failure.
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok(),
        "systemd-analyze is missing: install the Debian package `systemd` (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vigia.service");
    // verify insists that ExecStart's program exists: point it at the built binary.
    std::fs::write(
        &copy,
        unit().replace("/usr/local/bin/vigia", env!("CARGO_BIN_EXE_vigia")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
