//! Alert delivery end to end, as processes, through the Telegram mock of `vigia-mock`:
//! a Telegram outage while checks fail and recover (with and without a kill -9 of the
//! engine), permanent failures that do not block other channels, and the bot token
//! kept out of logs and `vigia status`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The outage: 60 s without Telegram.
const OUTAGE: Duration = Duration::from_secs(60);
const TOKEN: &str = "4242:SECRET-test-token-do-not-print";

fn config(dir: &Path, mock: &Mock, ports: &[(&str, u16)]) -> PathBuf {
    let mut checks = String::new();
    for (name, port) in ports {
        checks.push_str(&format!(
            "  - name: {name}\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 2\n"
        ));
    }
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n  shutdown_grace: 2s\n\
alerting:\n  group_wait: 0s\n  max_retry_wait: 1s\n\
channels:\n  console: {{ type: console }}\n  ops:\n    type: telegram\n    token_env: VIGIA_E2E_TOKEN\n    chat_ids: [424242]\n    api_url: http://127.0.0.1:{tg}\n\
checks:\n{checks}",
            tg = mock.telegram
        ),
    )
    .unwrap();
    file
}

fn start(config: &Path) -> Proc {
    start_engine_with(config, &[("VIGIA_E2E_TOKEN", TOKEN)])
}

/// Listens on `port` again and accepts (and closes) every connection, so that the
/// accept queue never fills up.
fn serve_again(port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            drop(conn);
        }
    });
}

/// `(check, state)` of the alert events, in log order.
fn alert_order(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "alert" && e["check"].is_string())
        .map(|e| {
            (
                e["check"].as_str().unwrap().into(),
                e["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn outage_scenario(kill_during_outage: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    mock.set("telegram", "error");
    let outage_started = Instant::now();
    let (la, pa) = listen();
    let (lb, pb) = listen();
    let (lc, pc) = listen();
    let config = config(dir.path(), &mock, &[("a", pa), ("b", pb), ("c", pc)]);
    let mut engine = start(&config);
    wait_rounds(&config, 1, Duration::from_secs(10));
    // Three checks fail, then one of them recovers.
    drop((la, lb, lc));
    engine.wait_for("three failures", Duration::from_secs(10), |e| {
        ["a", "b", "c"].iter().all(|c| alerts(e, c, "failed") == 1)
    });
    serve_again(pb);
    engine.wait_for("b recovered", Duration::from_secs(10), |e| {
        alerts(e, "b", "recovered") == 1
    });
    let mut expected = alert_order(&engine.events());
    assert_eq!(expected.len(), 4, "{expected:?}");
    // The first try is bounded only by the Telegram client's own timeout (15 s); the
    // outage lasts 60 s, so there is room to wait for it on a loaded machine.
    engine.wait_for("delivery retries", Duration::from_secs(30), |e| {
        has_event(e, "delivery_retry")
    });
    if kill_during_outage {
        engine.signal(libc::SIGKILL);
        drop(engine);
        engine = start(&config);
        // No transition is repeated after the restart.
        wait_rounds(&config, 4, Duration::from_secs(10));
        assert!(alert_order(&engine.events()).is_empty());
    }
    assert!(
        mock.telegram_messages().is_empty(),
        "nothing got through the outage"
    );
    let rest = OUTAGE.saturating_sub(outage_started.elapsed());
    std::thread::sleep(rest);
    mock.set("telegram", "ok");
    let start = Instant::now();
    while delivered(&mock).len() < 4 && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A duplicate could only come from the outbox: wait until it is empty.
    let start = Instant::now();
    loop {
        let out = vigia(&["status", "--json"], &config);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if status["channels"]["ops#424242"]["pending"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = delivered(&mock);
    expected.sort_by_key(|(c, s)| (s == "recovered", c.clone()));
    let mut sorted = got.clone();
    sorted.sort_by_key(|(c, s)| (s == "recovered", c.clone()));
    assert_eq!(sorted, expected, "every message exactly once: {got:?}");
    let b_failed = got
        .iter()
        .position(|x| x == &("b".into(), "failed".into()))
        .unwrap();
    let b_recovered = got
        .iter()
        .position(|x| x == &("b".into(), "recovered".into()))
        .unwrap();
    assert!(b_failed < b_recovered, "in order: {got:?}");

    // `vigia status` tells the story of the channel, without the token.
    let out = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = &status["channels"]["ops#424242"];
    assert_eq!(ops["pending"], 0, "{ops}");
    assert_eq!(ops["failed"], 0, "{ops}");
    assert!(ops["retries"].as_u64().unwrap() > 0, "{ops}");
    assert!(
        ops["last_error"]
            .as_str()
            .unwrap()
            .contains("Internal Server Error"),
        "{ops}"
    );
    let text = String::from_utf8_lossy(&vigia(&["status"], &config).stdout).to_string();
    assert!(text.contains("ops#424242"), "{text}");
    for output in [
        String::from_utf8_lossy(&out.stdout).to_string(),
        text,
        engine.stdout.lock().unwrap().join("\n"),
        engine.stderr_text(),
    ] {
        assert!(!output.contains(TOKEN), "the token leaked: {output}");
        assert!(!output.contains("SECRET"), "the token leaked: {output}");
    }
    // The console channel was never held up by Telegram's outage. Changes released
    // together come as one grouped line (`a failed (…); c failed (…)`).
    let console = engine.stderr_text();
    for (c, s) in &expected {
        assert!(
            console.contains(&format!("ALERT {} {c} on e2e-host", s.to_uppercase()))
                || console.contains(&format!(" {c} {s} ("))
                || kill_during_outage,
            "console: {console}"
        );
    }
}

#[test]
fn a_telegram_outage_loses_nothing_and_sends_nothing_twice() {
    outage_scenario(false);
}

#[test]
fn the_same_across_a_kill_9_during_the_outage() {
    outage_scenario(true);
}

#[test]
fn permanent_failures_are_counted_and_do_not_block_other_channels() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    mock.set("telegram", "unauthorized");
    let (l, port) = listen();
    let config = config(dir.path(), &mock, &[("web", port)]);
    let engine = start(&config);
    drop(l);
    engine.wait_for_stderr("ALERT FAILED web on e2e-host", Duration::from_secs(10));
    engine.wait_for("the delivery failure", Duration::from_secs(10), |e| {
        has_event(e, "delivery_failed")
    });
    let failure = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "delivery_failed")
        .unwrap();
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("Telegram refused the bot token (401 Unauthorized)"),
        "{failure}"
    );
    let out = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["channels"]["ops#424242"]["failed"], 1);
    assert_eq!(status["channels"]["console"]["delivered"], 1);
    // An unknown chat: the same, with its own reason.
    mock.set("telegram", "chat_not_found");
    serve_again(port);
    engine.wait_for(
        "the second delivery failure",
        Duration::from_secs(10),
        |e| e.iter().filter(|x| x["event"] == "delivery_failed").count() == 2,
    );
    let last = engine
        .events()
        .into_iter()
        .rfind(|e| e["event"] == "delivery_failed")
        .unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("chat 424242 does not exist"),
        "{last}"
    );
    let all = format!(
        "{}\n{}",
        engine.stdout.lock().unwrap().join("\n"),
        engine.stderr_text()
    );
    assert!(!all.contains(TOKEN));
}

#[test]
fn a_missing_token_stops_the_engine_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let config = config(dir.path(), &mock, &[("web", 1)]);
    let out = Command::new(vigia_bin())
        .env("VIGIA_HTTP_LISTEN", "127.0.0.1:0")
        .args(["run", "-c"])
        .arg(&config)
        .env_remove("VIGIA_E2E_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "channel ops: the environment variable VIGIA_E2E_TOKEN (token_env) is not set"
        ),
        "{err}"
    );
}

/// A webhook receiver: answers the first `fail_first` POSTs with 500, then 200, and
/// keeps every body it accepted.
fn webhook_server(fail_first: usize) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen += 1;
            let status = if seen <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if seen > fail_first {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, got)
}

#[test]
fn a_webhook_gets_the_alert_as_json_after_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, got) = webhook_server(2);
    let (l, port) = listen();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "engine:\n  hostname: e2e-host\n  state_dir: state\n  status_log_interval: 1h\n\
alerting:\n  group_wait: 0s\n  max_retry_wait: 200ms\n\
channels:\n  hooks:\n    type: webhook\n    url: http://127.0.0.1:{hook_port}/alerts\n    headers: {{ X-Token: abc }}\n\
checks:\n  - name: web\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n    timeout: 150ms\n    threshold: 1\n    comment: \"call <ops> & co\"\n"
        ),
    )
    .unwrap();
    let engine = start(&config);
    drop(l);
    let start = Instant::now();
    while got.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let docs = got.lock().unwrap().clone();
    assert_eq!(docs.len(), 1, "{docs:?}");
    let d = &docs[0];
    assert_eq!(d["kind"], "failed");
    assert_eq!(d["check"], "web");
    assert_eq!(d["host"], "e2e-host");
    assert_eq!(d["comment"], "call <ops> & co");
    assert!(
        d["text"]
            .as_str()
            .unwrap()
            .starts_with("ALERT FAILED web on e2e-host: cannot connect to"),
        "{d}"
    );
    assert_eq!(d["items"][0]["item"], "transition");
    assert!(has_event(&engine.events(), "delivery_retry"));
}

#[test]
fn silences_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (l1, p1) = listen();
    let (l2, p2) = listen();
    let config = config(dir.path(), &mock, &[("web", p1), ("db", p2)]);
    let engine = start(&config);
    let out = vigia(
        &["silence", "add", "web", "--for", "2h", "--reason", "deploy"],
        &config,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("Silence ") && text.contains("alerts of `web` are not sent for 2h"),
        "{text}"
    );
    let id: u64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    drop((l1, l2));
    engine.wait_for_stderr("ALERT FAILED db on e2e-host", Duration::from_secs(10));
    wait_rounds(&config, 3, Duration::from_secs(10));
    assert!(
        !engine.stderr_text().contains("ALERT FAILED web"),
        "silenced"
    );
    assert!(has_event(&engine.events(), "alert_silenced"));
    assert_eq!(
        alerts(&engine.events(), "web", "failed"),
        1,
        "still checked and logged"
    );
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert!(list.contains("web") && list.contains("deploy"), "{list}");
    let out = vigia(&["silence", "remove", &id.to_string()], &config);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Silence {id} removed.\n")
    );
    let out = vigia(&["silence", "remove", &id.to_string()], &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("there is no silence {id}")));
    // With the engine stopped, the command works on the store; the engine sees it at start.
    drop(engine);
    let out = vigia(&["silence", "add", "db*", "--for", "30m"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert!(list.contains("db*"), "{list}");
}

/// POST to the mock's control port (`/telegram/retry_after/3600`).
fn control_post(mock: &Mock, path: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mock.control)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A Bot API that answers 429 with `retry_after: 3600`: the engine waits at most
/// `max_retry_wait` (1 s here) between attempts, says what the server asked for in its
/// log and in `vigia status`, and delivers as soon as the API takes messages again.
#[test]
fn a_huge_retry_after_is_capped_at_max_retry_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    mock.set("telegram", "ratelimit");
    control_post(&mock, "/telegram/retry_after/3600");
    let (la, pa) = listen();
    let config = config(dir.path(), &mock, &[("a", pa)]);
    let engine = start(&config);
    wait_rounds(&config, 1, Duration::from_secs(10));
    drop(la);
    engine.wait_for("a refused delivery", Duration::from_secs(15), |e| {
        e.iter().any(|x| {
            x["event"] == "delivery_retry"
                && x["message"].as_str().is_some_and(|m| {
                    m.contains("retrying in 1s") && m.contains("the server asked for 1h")
                })
        })
    });
    let out = vigia(&["status", "--json"], &config);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["channels"]["ops#424242"]["asked_wait_ms"], 3_600_000,
        "{status}"
    );
    let text = String::from_utf8_lossy(&vigia(&["status"], &config).stdout).to_string();
    assert!(text.contains("the server asks to wait 1h"), "{text}");
    mock.set("telegram", "ok");
    let start = Instant::now();
    while delivered(&mock).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing delivered {:?} after the API took messages again",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        delivered(&mock),
        vec![("a".to_string(), "failed".to_string())]
    );
}
