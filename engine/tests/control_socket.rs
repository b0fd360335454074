//! Abuse of the control socket: a request is capped in size, idle connections are
//! closed, connections beyond the cap are answered "busy" at once, and none of it keeps
//! the checks or `vigia status` from working afterwards.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_get_bounded_answers_and_the_engine_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, port) = listen();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("engine:\n  state_dir: state\n  status_log_interval: 1h\nchecks:\n  - name: a\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n"),
    )
    .unwrap();
    let engine = start_engine_with(&config, &[]);
    wait_rounds(&config, 1, Duration::from_secs(10));
    let sock = dir.path().join("state/vigia.sock");
    let base = fds(engine.pid());

    // A request far over the cap: refused without reading it all.
    let mut s = UnixStream::connect(&sock).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        if s.write_all(&chunk).is_err() {
            break; // the engine answered and closed: fine
        }
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.contains("request too large: at most 64 KiB"),
        "{answer}"
    );

    // 200 idle connections: those over the cap are answered "busy" at once.
    let mut idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut busy = 0;
    for c in idle.iter_mut().skip(40) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut a = String::new();
        let _ = c.read_to_string(&mut a);
        if a.contains("the engine is busy") {
            busy += 1;
        }
    }
    assert!(
        busy >= 150,
        "{busy} of the 160 over the cap were answered busy"
    );
    assert!(
        fds(engine.pid()) < base + 60,
        "the engine holds {} descriptors (it had {base})",
        fds(engine.pid())
    );
    // The idle ones are closed by the engine within its request timeout.
    let start = Instant::now();
    for c in idle.iter_mut().take(32) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut a = String::new();
        let _ = c.read_to_string(&mut a);
        assert!(
            a.contains("no request within 2s") || a.contains("busy"),
            "{a}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(idle);
    // Checks went on, and the CLI answers.
    wait_rounds(&config, 3, Duration::from_secs(10));
    let out = vigia(&["status"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 checks, 0 down"));
}
