//! End to end, as processes: `vigia-mock serve` and `vigia run` on a config written here.
//!
//! `vigia-mock` is found next to the `vigia` binary; `cargo test --workspace` builds it
//! (the mocks package has integration tests, which makes cargo build its binary).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A mock, and an engine watching it whose `web` check has just gone down.
fn engine_with_web_down() -> (tempfile::TempDir, Mock, PathBuf, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let config = write_config(dir.path(), &mock, "");
    let engine = start_engine(&config);
    mock.set("http", "failing");
    engine.wait_for("a failed alert", Duration::from_secs(10), |e| {
        alerts(e, "web", "failed") == 1
    });
    (dir, mock, config, engine)
}

#[test]
fn one_failed_one_recovered_even_across_kill_9() {
    let (_dir, mock, config, engine) = engine_with_web_down();
    let failed = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "alert")
        .unwrap();
    assert_eq!(failed["failures"], 3);
    assert_eq!(failed["host"], "e2e-host");
    assert_eq!(failed["comment"], "e2e web");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 500 from"),
        "{failed}"
    );
    // Many more failing runs: still exactly one alert.
    wait_rounds(&config, 5, Duration::from_secs(10));
    assert_eq!(alerts(&engine.events(), "web", "failed"), 1);
    engine.wait_for_stderr(
        "ALERT FAILED web on e2e-host: HTTP 500",
        Duration::from_secs(10),
    );

    // kill -9 while down, then restart on the same state.
    engine.signal(libc::SIGKILL);
    drop(engine);
    let engine = start_engine(&config);
    engine.wait_for("the restored state", Duration::from_secs(5), |e| {
        has_event(e, "restored")
    });
    wait_rounds(&config, 5, Duration::from_secs(10));
    assert_eq!(
        alerts(&engine.events(), "web", "failed"),
        0,
        "no second `failed` after kill -9"
    );

    // `vigia status` reads the running engine.
    let out = vigia(&["status"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vigia on e2e-host"), "{text}");
    let web_line = text.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(
        web_line.contains("DOWN") && web_line.contains("HTTP 500"),
        "{text}"
    );

    mock.set("http", "healthy");
    engine.wait_for("a recovered alert", Duration::from_secs(10), |e| {
        alerts(e, "web", "recovered") == 1
    });
    wait_rounds(&config, 3, Duration::from_secs(10));
    let events = engine.events();
    assert_eq!(alerts(&events, "web", "recovered"), 1);
    assert_eq!(alerts(&events, "web", "failed"), 0);
    engine.wait_for_stderr(
        "ALERT RECOVERED web on e2e-host after",
        Duration::from_secs(10),
    );

    // SIGTERM: a clean stop with exit 0.
    let mut engine = engine;
    engine.signal(libc::SIGTERM);
    assert_eq!(engine.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(has_event(&engine.events(), "stopped"));
}

#[test]
fn sighup_reload_keeps_state_and_a_bad_config_keeps_the_old_one() {
    let (_dir, mock, config, engine) = engine_with_web_down();

    // Change web's interval and add a tcp check.
    let atto = format!(
        "  - name: atto\n    type: tcp\n    host: 127.0.0.1\n    port: {}\n    send: \"PING\\n\"\n    expect: \"OK PING\"\n    interval: 200ms\n    timeout: 150ms\n",
        mock.tcp
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval: 200ms", "interval: 250ms");
    std::fs::write(&config, format!("{text}{atto}")).unwrap();
    engine.signal(libc::SIGHUP);
    engine.wait_for("the reload", Duration::from_secs(10), |e| {
        has_event(e, "reloaded")
    });
    let reloaded = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "reloaded")
        .unwrap();
    assert_eq!(
        (reloaded["added"].as_u64(), reloaded["changed"].as_u64()),
        (Some(1), Some(1))
    );
    wait_rounds(&config, 3, Duration::from_secs(10));
    assert_eq!(
        alerts(&engine.events(), "web", "failed"),
        1,
        "the reload kept web down"
    );
    let status = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let checks = status["checks"].as_array().unwrap();
    let web = checks.iter().find(|c| c["name"] == "web").unwrap();
    assert_eq!(web["status"], false);
    assert!(web["failures"].as_u64().unwrap() > 3);
    let atto = checks.iter().find(|c| c["name"] == "atto").unwrap();
    assert_eq!(atto["last"]["ok"], true, "{atto}");

    // A broken config: rejected, the running one stays.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("threshold: 3", "threshold: 0")).unwrap();
    engine.signal(libc::SIGHUP);
    engine.wait_for("the rejected reload", Duration::from_secs(10), |e| {
        has_event(e, "reload_failed")
    });
    let failed = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "reload_failed")
        .unwrap();
    assert!(
        failed["errors"]
            .as_str()
            .unwrap()
            .contains("checks[0].threshold: must be at least 1"),
        "{failed}"
    );
    // The old config still runs: healing the mock still brings the recovery.
    mock.set("http", "healthy");
    engine.wait_for("a recovered alert", Duration::from_secs(10), |e| {
        alerts(e, "web", "recovered") == 1
    });
}

#[test]
fn validate_and_check_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let config = write_config(dir.path(), &mock, "");

    let ok = vigia(&["validate"], &config);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).ends_with("OK, 1 check from 1 entry.\n"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "checks:\n  - name: x\n    type: tcp\n    host: 127.0.0.1\n    port: 0\n    intervall: 5s\n").unwrap();
    let out = vigia(&["validate"], &bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.replace(&format!("{}/", dir.path().display()), ""),
        "bad.yaml:6:5: checks[0].intervall: unknown key `intervall` (did you mean `interval`?)\n1 problem found.\n"
    );

    let run = |name: &str| vigia(&["check", name], &config);
    let out = run("web");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK web: HTTP 200"));
    mock.set("http", "failing");
    let out = run("web");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("CRITICAL web: HTTP 500"));
    let out = run("wbe");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(did you mean `web`?)"));
}

#[test]
fn a_second_engine_on_the_same_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let config = write_config(dir.path(), &mock, "");
    let _first = start_engine(&config);
    let out = vigia(&["run", "--log-format", "json"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use by another vigia process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of the test's own, where pings can be made to go unanswered.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("vigia-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        for argv in [
            vec!["ip", "netns", "add", &name],
            vec!["ip", "-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{argv:?} (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Netns(name)
    }

    fn ignore_pings(&self, ignore: bool) {
        let v = format!("net.ipv4.icmp_echo_ignore_all={}", u8::from(ignore));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sysctl", "-q", "-w", &v])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn terminals_that_fail_together_are_one_console_alert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ips.txt"),
        "# shop 1\n127.0.0.11 Till 1\n127.0.0.12 Till 2\n127.0.0.13 Card terminal\n127.0.0.14\n",
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n\
         checks:\n  - name: shops\n    type: terminals\n    file: ips.txt\n    count: 1\n\
         \x20   ping_timeout: 100ms\n    interval: 300ms\n    timeout: 250ms\n    threshold: 2\n",
    )
    .unwrap();
    let ns = Netns::new("term");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(vigia_bin())
        .args(["run", "--log-format", "json", "-c"])
        .arg(&config);
    let engine = Proc::spawn(cmd);
    engine.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });
    wait_rounds(&config, 1, Duration::from_secs(10));

    ns.ignore_pings(true);
    let all_failed = |e: &[Value]| {
        e.iter()
            .filter(|e| e["event"] == "alert" && e["state"] == "failed")
            .count()
            == 4
    };
    engine.wait_for("4 failed alerts", Duration::from_secs(10), all_failed);
    // The console line is printed once the group's wait is over.
    let grouped =
        "ALERT FAILED 4 of shops on e2e-host: 127.0.0.11, 127.0.0.12, 127.0.0.13, 127.0.0.14";
    let start = Instant::now();
    while !engine.stderr_text().contains(grouped) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let console = engine.stderr_text();
    assert!(console.contains(grouped), "{console}");
    assert_eq!(console.matches("ALERT FAILED").count(), 1, "{console}");

    ns.ignore_pings(false);
    let all_back = |e: &[Value]| {
        e.iter()
            .filter(|e| e["event"] == "alert" && e["state"] == "recovered")
            .count()
            == 4
    };
    engine.wait_for("4 recovered alerts", Duration::from_secs(10), all_back);
    let start = Instant::now();
    while !engine.stderr_text().contains("ALERT RECOVERED 4 of shops")
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        engine
            .stderr_text()
            .contains("ALERT RECOVERED 4 of shops on e2e-host"),
        "{}",
        engine.stderr_text()
    );
}

#[test]
fn ping_without_privileges_says_what_to_grant() {
    // As `nobody`, with no capabilities, in a namespace where unprivileged ICMP is off
    // (`ping_group_range` "1 0", the kernel default): the check is UNKNOWN, not a crash.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "checks:\n  - name: lo\n    type: ping\n    host: 127.0.0.1\n    count: 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ns = Netns::new("perm");
    let sysctl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ping_group_range=1 0",
        ])
        .output()
        .unwrap();
    assert!(sysctl.status.success());
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(vigia_bin())
        .args(["check", "lo", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("UNKNOWN lo: 127.0.0.1: cannot open an ICMP socket (permission denied)"),
        "{stdout}"
    );
    assert!(stdout.contains("CAP_NET_RAW"), "{stdout}");
}

#[test]
fn sighup_rereads_ips_txt() {
    let dir = tempfile::tempdir().unwrap();
    let ips = dir.path().join("ips.txt");
    std::fs::write(&ips, "127.0.0.11 Till 1\n127.0.0.12 Till 2\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "engine:\n  state_dir: state\n  status_log_interval: 1h\n\
         checks:\n  - name: shops\n    type: terminals\n    file: ips.txt\n    count: 1\n\
         \x20   interval: 500ms\n    timeout: 400ms\n    ping_timeout: 200ms\n",
    )
    .unwrap();
    let engine = start_engine(&config);
    // Till 2 leaves, Till 3 arrives, Till 1 is renamed; and one bad line.
    std::fs::write(
        &ips,
        "127.0.0.11 Front till\n127.0.0.13 Till 3\n127.0.0.300 typo\n",
    )
    .unwrap();
    engine.signal(libc::SIGHUP);
    engine.wait_for("the reload", Duration::from_secs(10), |e| {
        has_event(e, "reloaded")
    });
    let events = engine.events();
    let reloaded = events.iter().find(|e| e["event"] == "reloaded").unwrap();
    assert_eq!(reloaded["added"], 1, "{reloaded}");
    assert_eq!(reloaded["changed"], 1, "the renamed terminal: {reloaded}");
    assert_eq!(reloaded["removed"], "shops/127.0.0.12", "{reloaded}");
    let warning = events
        .iter()
        .find(|e| e["event"] == "config_warning")
        .unwrap();
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .ends_with("ips.txt:3:1: `127.0.0.300` is not a valid IPv4 address; line skipped"),
        "{warning}"
    );
    let status = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let names: Vec<&str> = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shops/127.0.0.11", "shops/127.0.0.13"]);
    let front = &status["checks"][0];
    assert_eq!(front["target"], "ping Front till (127.0.0.11)");
}
