//! Helpers for the end-to-end tests: processes of `vigia` and `vigia-mock`, their JSON
//! logs, and a config to start from.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A port nothing listens on (it was free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn vigia_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vigia"))
}

pub fn mock_bin() -> PathBuf {
    let p = vigia_bin().with_file_name("vigia-mock");
    assert!(
        p.exists(),
        "{} is missing: run the whole suite with `cargo test --workspace` (or `cargo build -p vigia-mocks` first)",
        p.display()
    );
    p
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // A test that panicked holding the lock must not add a second panic.
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// JSON log events (stdout lines that parse).
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if pred(&self.events()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\nstdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr_text()
        );
    }

    /// Waits until stderr (the console channel) contains `text`.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.stderr_text().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {text:?} on stderr\nstderr:\n{}",
            self.stderr_text()
        );
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn alerts(events: &[Value], check: &str, state: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "alert" && e["check"] == check && e["state"] == state)
        .count()
}

pub fn has_event(events: &[Value], name: &str) -> bool {
    events.iter().any(|e| e["event"] == name)
}

pub struct Mock {
    pub proc: Proc,
    pub http: u16,
    pub tcp: u16,
    pub control: u16,
    pub telegram: u16,
}

impl Mock {
    pub fn start() -> Mock {
        let mut cmd = Command::new(mock_bin());
        cmd.args([
            "serve",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--control-port",
            "0",
            "--telegram-port",
            "0",
        ]);
        let proc = Proc::spawn(cmd);
        let start = Instant::now();
        loop {
            let first = proc.stdout.lock().unwrap().first().cloned();
            if let Some(line) = first {
                let v: Value = serde_json::from_str(&line).unwrap();
                return Mock {
                    http: v["http"].as_u64().unwrap() as u16,
                    tcp: v["tcp"].as_u64().unwrap() as u16,
                    control: v["control"].as_u64().unwrap() as u16,
                    telegram: v["telegram"].as_u64().unwrap() as u16,
                    proc,
                };
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the mock did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn set(&self, service: &str, mode: &str) {
        let out = Command::new(mock_bin())
            .args([
                "set",
                service,
                mode,
                "--control",
                &format!("127.0.0.1:{}", self.control),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = &self.proc;
    }
}

impl Mock {
    /// The messages the Telegram mock accepted.
    pub fn telegram_messages(&self) -> Vec<Value> {
        let out = Command::new(mock_bin())
            .args([
                "messages",
                "--control",
                &format!("127.0.0.1:{}", self.control),
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

impl Mock {
    /// A request to the mock's control endpoint: (HTTP status, body).
    pub fn control(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.control)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// Queues a Telegram update (a user's message or button press): its update_id.
    pub fn telegram_update(&self, update: Value) -> u64 {
        let (status, body) = self.control("POST", "/telegram/updates", &update.to_string());
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["update_id"]
            .as_u64()
            .unwrap()
    }

    /// The Bot API calls other than sendMessage/getMe/getUpdates.
    pub fn telegram_calls(&self) -> Vec<Value> {
        serde_json::from_str(&self.control("GET", "/telegram/calls", "").1).unwrap_or_default()
    }

    /// Updates the bot has not confirmed yet (by polling past them).
    pub fn telegram_pending(&self) -> Vec<Value> {
        serde_json::from_str(&self.control("GET", "/telegram/updates", "").1).unwrap_or_default()
    }
}

/// `(check, state)` read back from the Telegram messages' text; a grouped message
/// ("2 changes") carries several, one per line.
pub fn delivered(mock: &Mock) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in mock.telegram_messages() {
        let text = m["text"].as_str().unwrap_or_default().to_string();
        for part in text.split("<b>").skip(1) {
            let Some((check, rest)) = part.split_once("</b>") else {
                continue;
            };
            let rest = rest.trim_start();
            let state = if rest.starts_with("failed") {
                "failed"
            } else if rest.starts_with("recovered") {
                "recovered"
            } else {
                continue;
            };
            out.push((check.to_string(), state.to_string()));
        }
    }
    out
}

/// Polls `f` until it gives `Some`, for at most `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn write_config(dir: &Path, mock: &Mock, extra: &str) -> PathBuf {
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            r#"engine:
  hostname: e2e-host
  state_dir: state
  status_log_interval: 1h
  shutdown_grace: 2s
checks:
  - name: web
    type: http
    url: http://127.0.0.1:{http}/health
    interval: 200ms
    timeout: 150ms
    threshold: 3
    recover_after: 2
    comment: "e2e web"
{extra}"#,
            http = mock.http
        ),
    )
    .unwrap();
    file
}

pub fn start_engine(config: &Path) -> Proc {
    start_engine_with(config, &[])
}

/// `vigia run` with environment variables (a bot token's `token_env`), once started.
pub fn start_engine_with(config: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(vigia_bin());
    // A free port for the HTTP API: never the default one of a real engine.
    cmd.env("VIGIA_HTTP_LISTEN", "127.0.0.1:0");
    cmd.envs(env.iter().copied())
        .args(["run", "--log-format", "json", "-c"])
        .arg(config);
    let p = Proc::spawn(cmd);
    p.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });
    p
}

/// Runs `vigia ARGS -c CONFIG` to completion.
pub fn vigia(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(vigia_bin())
        .env("VIGIA_HTTP_LISTEN", "127.0.0.1:0")
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap()
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The positive signal a test waits for before it says something did *not* happen:
/// every check of the engine running `config` has run `rounds` more times, each round
/// after the one before (read from `vigia status --json`). Whatever those runs could
/// have caused (a transition, an alert line) has been logged by then.
pub fn wait_rounds(config: &Path, rounds: u32, timeout: Duration) {
    let start = Instant::now();
    let mut since = now_ms();
    let mut done = 0;
    while done < rounds {
        let out = vigia(&["status", "--json"], config);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let checks = status["checks"].as_array().cloned().unwrap_or_default();
        let all_ran = !checks.is_empty()
            && checks
                .iter()
                .all(|c| c["last"]["at"].as_u64().is_some_and(|at| at > since));
        if all_ran {
            done += 1;
            since = now_ms();
            continue;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {rounds} rounds of every check; status: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener on a free loopback port: a target that is up until it is dropped.
pub fn listen() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// The address from the engine's `http_listening` event.
pub fn http_addr(p: &Proc) -> String {
    p.wait_for("the HTTP API to listen", Duration::from_secs(20), |e| {
        has_event(e, "http_listening")
    });
    p.events()
        .iter()
        .find(|e| e["event"] == "http_listening")
        .and_then(|e| e["addr"].as_str())
        .unwrap()
        .to_string()
}

/// One HTTP/1.1 exchange on a new connection: (status, headers, body).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}
