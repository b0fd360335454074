//! The web check through a real nginx front (scripts/fixtures/nginx.sh), and a
//! remediation that switches nginx's proxy_pass off and on with a real `nginx -t` and
//! `nginx -s reload`; a broken variant is refused by `nginx -t` and the file restored.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

struct Nginx {
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/nginx.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// The backend: answers every request with `backend-ok`.
fn backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nbackend-ok",
            );
        }
    });
    port
}

/// A port the test opens and closes: the stand-in for "the far node is slow".
fn switch_listener(port: u16) -> std::sync::mpsc::Sender<bool> {
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        let mut l = Some(TcpListener::bind(("127.0.0.1", port)).unwrap());
        if let Some(l) = &l {
            l.set_nonblocking(true).unwrap();
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(true) if l.is_none() => {
                    let n = TcpListener::bind(("127.0.0.1", port)).unwrap();
                    n.set_nonblocking(true).unwrap();
                    l = Some(n);
                }
                Ok(false) => l = None,
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                Err(_) => {}
            }
            if let Some(l) = &l {
                while let Ok((c, _)) = l.accept() {
                    drop(c);
                }
            }
        }
    });
    tx
}

#[test]
fn the_web_check_through_nginx_and_a_proxy_switch_with_real_validation() {
    let dir = tempfile::tempdir().unwrap();
    let ngx_dir = dir.path().join("nginx");
    let port = free_port();
    let out = Command::new(repo().join("scripts/fixtures/nginx.sh"))
        .arg("start")
        .arg(&ngx_dir)
        .args([port.to_string(), backend().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _nginx = Nginx {
        dir: ngx_dir.clone(),
    };
    let n = ngx_dir.display();
    let ngx = format!("/usr/sbin/nginx, -p, {n}/, -c, {n}/conf/nginx.conf, -e, {n}/logs/error.log");
    let far = free_port();
    let broken = free_port();
    let far_switch = switch_listener(far);
    let broken_switch = switch_listener(broken);
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"engine:
  hostname: e2e-host
  state_dir: state
  status_log_interval: 1h
alerting:
  group_wait: 0s
  flapping: {{ changes: 0 }}
remediation: {{ cooldown: 0s }}
actions:
  proxy_off:
    file_switch: {{ file: {n}/conf/proxy_switch.conf, to: {n}/variants/proxy_off.conf, validate: [{ngx}, -t, -q], reload: [{ngx}, -s, reload] }}
  proxy_on:
    file_switch: {{ file: {n}/conf/proxy_switch.conf, to: {n}/variants/proxy_on.conf, validate: [{ngx}, -t, -q], reload: [{ngx}, -s, reload] }}
  proxy_broken:
    file_switch: {{ file: {n}/conf/proxy_switch.conf, to: {n}/variants/proxy_broken.conf, validate: [{ngx}, -t, -q], reload: [{ngx}, -s, reload] }}
checks:
  - name: web
    type: http
    url: http://127.0.0.1:{port}/app/
    body_contains: backend-ok
    max_response_time: 1s
    interval: 200ms
    timeout: 150ms
    threshold: 2
  - name: far_node
    type: tcp
    host: 127.0.0.1
    port: {far}
    interval: 200ms
    timeout: 150ms
    threshold: 2
    on_failed: [proxy_off]
    on_recovered: [proxy_on]
  - name: broken_trigger
    type: tcp
    host: 127.0.0.1
    port: {broken}
    interval: 200ms
    timeout: 150ms
    threshold: 1
    on_failed: [proxy_broken]
"#
        ),
    )
    .unwrap();
    let engine = start_engine(&config);
    wait_rounds(&config, 2, Duration::from_secs(10));
    assert_eq!(
        alerts(&engine.events(), "web", "failed"),
        0,
        "web is up through nginx"
    );

    // A broken variant: nginx -t refuses it, the switch file is put back, web stays up.
    let before = std::fs::read_to_string(ngx_dir.join("conf/proxy_switch.conf")).unwrap();
    broken_switch.send(false).unwrap();
    engine.wait_for_stderr(
        "ALERT FAILED broken_trigger on e2e-host",
        Duration::from_secs(10),
    );
    let err = engine.stderr_text();
    assert!(err.contains("✗ proxy_broken: switch"), "{err}");
    assert!(err.contains("validation failed"), "{err}");
    assert!(err.contains("the previous file is back"), "{err}");
    assert_eq!(
        std::fs::read_to_string(ngx_dir.join("conf/proxy_switch.conf")).unwrap(),
        before
    );
    wait_rounds(&config, 3, Duration::from_secs(10));
    assert_eq!(
        alerts(&engine.events(), "web", "failed"),
        0,
        "web stayed up"
    );

    // The far node goes bad: proxy_pass off (nginx answers 503), so web fails.
    far_switch.send(false).unwrap();
    engine.wait_for_stderr("ALERT FAILED far_node on e2e-host", Duration::from_secs(10));
    assert!(
        engine.stderr_text().contains("✓ proxy_off: switch"),
        "{}",
        engine.stderr_text()
    );
    engine.wait_for_stderr(
        "ALERT FAILED web on e2e-host: HTTP 503",
        Duration::from_secs(10),
    );
    // It comes back: proxy_pass on, web recovers.
    far_switch.send(true).unwrap();
    engine.wait_for_stderr(
        "ALERT RECOVERED far_node on e2e-host",
        Duration::from_secs(10),
    );
    assert!(
        engine.stderr_text().contains("✓ proxy_on: switch"),
        "{}",
        engine.stderr_text()
    );
    engine.wait_for_stderr("ALERT RECOVERED web on e2e-host", Duration::from_secs(10));
    let actions: Vec<String> = engine
        .events()
        .iter()
        .filter(|e| e["event"] == "action")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["proxy_broken", "proxy_off", "proxy_on"]);
}
