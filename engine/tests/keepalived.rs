//! checks/vrrp.lua against two real keepalived nodes (scripts/fixtures/keepalived.sh:
//! netns vg_ka1 and vg_ka2, VIP 10.231.8.100): the expected roles are OK; after a
//! failover both nodes fail, each saying what it holds; after the master comes back
//! both are OK again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn fixture(args: &[&str], dir: &Path) -> String {
    let out = Command::new(repo().join("scripts/fixtures/keepalived.sh"))
        .arg(args[0])
        .arg(dir)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keepalived.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Pair {
    dir: PathBuf,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/keepalived.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// `vigia check vrrp` run inside node N's namespace, expecting `expect`.
fn vrrp(dir: &Path, node: u32, expect: &str) -> (i32, String) {
    let config = dir.join(format!("vrrp{node}.yaml"));
    std::fs::write(
        &config,
        format!(
            "engine: {{ state_dir: {d}/state{node} }}\ncommands: {{ ip: /usr/sbin/ip }}\nchecks:\n  - name: vrrp\n    type: lua\n    script: {s}\n    params: {{ vip: 10.231.8.100, interface: vgka{node}, expect: {expect} }}\n",
            d = dir.display(),
            s = repo().join("checks/vrrp.lua").display()
        ),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("vg_ka{node}")])
        .arg(vigia_bin())
        .args(["check", "vrrp", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn wait_holder(dir: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fixture(&["holder"], dir) != want {
        assert!(Instant::now() < deadline, "the VIP did not move to {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vrrp_roles_against_real_keepalived_through_a_failover() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ka");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(fixture(&["up"], &dir), "ready");
    let pair = Pair { dir: dir.clone() };
    let (code, text) = vrrp(&dir, 1, "master");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("MASTER: holds 10.231.8.100 on vgka1"),
        "{text}"
    );
    let (code, text) = vrrp(&dir, 2, "backup");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("BACKUP: 10.231.8.100 is not here on vgka2"),
        "{text}"
    );

    // keepalived stops on node 1: node 2 takes the VIP.
    fixture(&["stop", "1"], &dir);
    wait_holder(&dir, "2");
    let (code, text) = vrrp(&dir, 1, "master");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is BACKUP: 10.231.8.100 is not here on vgka1 (expected MASTER"),
        "{text}"
    );
    let (code, text) = vrrp(&dir, 2, "backup");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is MASTER: holds 10.231.8.100 on vgka2 (expected BACKUP"),
        "{text}"
    );
    let (code, text) = vrrp(&dir, 2, "any");
    assert_eq!(code, 0, "{text}");

    // Back: the higher priority takes it again.
    fixture(&["start", "1"], &dir);
    wait_holder(&dir, "1");
    assert_eq!(vrrp(&dir, 1, "master").0, 0);
    assert_eq!(vrrp(&dir, 2, "backup").0, 0);
    drop(pair);
}

#[test]
fn bad_params_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.yaml");
    std::fs::write(
        &config,
        format!(
            "engine: {{ state_dir: state }}\ncommands: {{ ip: /usr/sbin/ip }}\nchecks:\n  - name: vrrp\n    type: lua\n    script: {}\n    params: {{ vip: 10.0.0.100, expect: primary }}\n",
            repo().join("checks/vrrp.lua").display()
        ),
    )
    .unwrap();
    let out = vigia(&["check", "vrrp"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("params.expect must be \"master\", \"backup\" or \"any\", not primary"),
        "{text}"
    );
}
