//! The HTTP API of a real `vigia run`: reads, writes with and without the token, bad
//! requests, the event stream, `/metrics` through promtool, and the limits that keep a
//! hostile client from holding the server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "s3cret-token-for-tests-0123456789";

/// `POST /api/v1/silences` with the token: the new silence's id.
fn add_silence(addr: &str, body: &str) -> u64 {
    let (code, _, answer) = request(addr, "POST", "/api/v1/silences", Some(TOKEN), Some(body));
    assert_eq!(code, 201, "{answer}");
    json(&answer)["id"].as_u64().unwrap()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn engine(dir: &Path, http: &str) -> (Proc, String, std::net::TcpListener) {
    let (up, port) = listen();
    let token = dir.join("http.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"engine: {{ state_dir: state, status_log_interval: 1h, shutdown_grace: 2s }}
http: {http}
checks:
  - {{ name: good, type: tcp, host: 127.0.0.1, port: {port}, interval: 300ms, timeout: 200ms }}
  - {{ name: bad, type: tcp, host: 127.0.0.1, port: {dead}, interval: 300ms, timeout: 200ms, threshold: 1, comment: "call the shop" }}
"#,
            dead = free_port()
        ),
    )
    .unwrap();
    // Not start_engine: that one moves the HTTP API to a free loopback port, and these
    // tests are about the config's own `http:`.
    let mut cmd = std::process::Command::new(vigia_bin());
    cmd.args(["run", "--log-format", "json", "-c"]).arg(&config);
    let p = Proc::spawn(cmd);
    let addr = http_addr(&p);
    (p, addr, up)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn reads_writes_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (p, addr, _up) = engine(
        dir.path(),
        "{ listen: 127.0.0.1:0, token_file: http.token }",
    );

    let (code, _, body) = request(&addr, "GET", "/healthz", None, None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");

    // The failing check goes down; the API shows it with its comment.
    wait_until("bad to be down", Duration::from_secs(10), || {
        let (_, _, b) = request(&addr, "GET", "/api/v1/checks/bad", None, None);
        json(&b)["status"] == false
    });
    let (code, head, body) = request(&addr, "GET", "/api/v1/checks/bad", None, None);
    assert_eq!(code, 200);
    assert!(
        head.to_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    let bad = json(&body);
    assert_eq!(bad["comment"], "call the shop");
    assert_eq!(bad["kind"], "tcp");
    assert!(bad["next_run_about"].as_u64().is_some(), "{bad}");
    let (code, _, body) = request(&addr, "GET", "/api/v1/checks/gooood", None, None);
    assert_eq!(code, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("did you mean `good`?"),
        "{body}"
    );
    let (code, _, body) = request(&addr, "GET", "/api/v1/status", None, None);
    assert_eq!(code, 200);
    let status = json(&body);
    assert_eq!(status["checks"].as_array().unwrap().len(), 2);
    // A standalone engine has no cluster to show or command.
    let (code, _, body) = request(&addr, "GET", "/api/v1/cluster", None, None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("runs standalone"), "{body}");

    // Writes: 401 without a token, 403 with a wrong one; the token is never echoed.
    let silence = r#"{"pattern": "bad", "for": "2h", "reason": "shop closed"}"#;
    let (code, head, body) = request(&addr, "POST", "/api/v1/silences", None, Some(silence));
    assert_eq!(code, 401, "{body}");
    assert!(head.contains("WWW-Authenticate") || head.contains("www-authenticate"));
    let (code, _, body) = request(
        &addr,
        "POST",
        "/api/v1/silences",
        Some("wrong"),
        Some(silence),
    );
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains(TOKEN));
    // Malformed bodies say what is wrong where.
    let (code, _, body) = request(
        &addr,
        "POST",
        "/api/v1/silences",
        Some(TOKEN),
        Some(r#"{"pattern": "bad", "for": "2x"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("field `for`"),
        "{body}"
    );
    let (code, _, body) = request(
        &addr,
        "POST",
        "/api/v1/silences",
        Some(TOKEN),
        Some("{not json"),
    );
    assert_eq!(code, 400, "{body}");
    let big = format!(
        r#"{{"pattern": "bad", "for": "1h", "reason": "{}"}}"#,
        "x".repeat(100_000)
    );
    let (code, _, _) = request(&addr, "POST", "/api/v1/silences", Some(TOKEN), Some(&big));
    assert_eq!(code, 413);
    // And a good one is made, listed and removed.
    let id = add_silence(&addr, silence);
    let (_, _, body) = request(&addr, "GET", "/api/v1/silences", None, None);
    assert!(json(&body)["silences"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id));
    let out = vigia(&["silence", "list"], &dir.path().join("config.yaml"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shop closed"),
        "the CLI sees the same silences"
    );
    let (code, _, body) = request(
        &addr,
        "DELETE",
        &format!("/api/v1/silences/{id}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = request(
        &addr,
        "DELETE",
        &format!("/api/v1/silences/{id}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 404);

    // Run now: the outcome of that run.
    let before = json(&request(&addr, "GET", "/api/v1/checks/good", None, None).2)["counts"]["ok"]
        .as_u64()
        .unwrap();
    let (code, _, body) = request(&addr, "POST", "/api/v1/checks/good/run", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    let ran = json(&body);
    assert_eq!(ran["reply"], "ran");
    assert_eq!(ran["check"]["last"]["ok"], true);
    assert!(ran["check"]["counts"]["ok"].as_u64().unwrap() > before);
    let (code, _, body) = request(&addr, "POST", "/api/v1/checks/nope/run", Some(TOKEN), None);
    assert_eq!(code, 404, "{body}");

    // Acknowledge: a failure that is under way, kept and shown with the check.
    let (code, _, body) = request(&addr, "POST", "/api/v1/checks/bad/ack", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["reply"], "acked");
    let bad = json(&request(&addr, "GET", "/api/v1/checks/bad", None, None).2);
    assert_eq!(bad["ack"]["by"], "http", "{bad}");
    let (code, _, body) = request(&addr, "POST", "/api/v1/checks/good/ack", Some(TOKEN), None);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("good is up: there is no failure to acknowledge"),
        "{body}"
    );
    let (code, _, _) = request(&addr, "POST", "/api/v1/checks/bad/ack", None, None);
    assert_eq!(code, 401, "acting needs the token");

    // The badge.
    let (code, head, body) = request(&addr, "GET", "/badge/bad.svg", None, None);
    assert_eq!(code, 200);
    assert!(
        head.contains("image/svg+xml") && body.contains(">down<"),
        "{body}"
    );

    // Unknown endpoints are JSON 404s.
    let (code, _, body) = request(&addr, "GET", "/api/v1/nothing", None, None);
    assert_eq!(code, 404);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("/api/v1/nothing"));

    // The token never reaches the log.
    assert!(!p.stdout.lock().unwrap().join("\n").contains(TOKEN));
}

#[test]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr, _up) = engine(dir.path(), "{ listen: 127.0.0.1:0 }");
    wait_until("a transition of bad", Duration::from_secs(10), || {
        request(&addr, "GET", "/metrics", None, None)
            .2
            .contains("vigia_transitions_total{check=\"bad\",to=\"failed\"} 1")
    });
    let (code, head, text) = request(&addr, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for needle in [
        "vigia_check_up{check=\"bad\",type=\"tcp\"} 0",
        "vigia_check_up{check=\"good\",type=\"tcp\"} 1",
        "vigia_check_consecutive_failures{check=\"good\"} 0",
        "# TYPE vigia_check_runs_total counter",
        "vigia_scheduler_lateness_seconds_bucket{le=\"+Inf\"}",
        "vigia_build_info{version=",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    // Every family has HELP and TYPE.
    let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
    let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
    assert_eq!(types, helps);

    let promtool = std::env::var("VIGIA_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = match std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            panic!("{promtool} cannot run ({e}): scripts/test.sh installs it (VIGIA_PROMTOOL)")
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Gzip when asked, as Prometheus does.
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head =
        String::from_utf8_lossy(&raw[..raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
}

#[test]
fn the_event_stream_follows_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr, _up) = engine(
        dir.path(),
        "{ listen: 127.0.0.1:0, token_file: http.token }",
    );
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    // The answer's head, then the stream is open.
    loop {
        line.clear();
        lines.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "the stream closed");
    }
    let silence = r#"{"pattern": "good", "for": "10m", "reason": "sse test"}"#;
    add_silence(&addr, silence);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no silence_added in the stream: {seen:?}"
        );
        line.clear();
        if lines.read_line(&mut line).unwrap() == 0 {
            panic!("the stream closed: {seen:?}");
        }
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            let ev: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            if ev["event"] == "silence_added" {
                assert_eq!(ev["pattern"], "good");
                assert_eq!(ev["reason"], "sse test");
                break;
            }
            seen.push(ev);
        }
    }
}

#[test]
fn hostile_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr, _up) = engine(dir.path(), "{ listen: 127.0.0.1:0 }");
    // Headers that never end: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(slow, "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a client that never finishes its headers was kept {:?}",
        started.elapsed()
    );
    // Meanwhile, and after, others are served.
    let (code, _, _) = request(&addr, "GET", "/healthz", None, None);
    assert_eq!(code, 200);
    // No token file: writes are refused with what to do.
    let (code, _, body) = request(&addr, "POST", "/api/v1/silences", None, Some("{}"));
    assert_eq!(code, 403);
    assert!(body.contains("http.token_file"), "{body}");
}

#[test]
fn off_loopback_reads_need_the_token_unless_public() {
    let dir = tempfile::tempdir().unwrap();
    // 0.0.0.0 with a token file: reads need it.
    let port = free_port();
    let (_p, addr, _up) = engine(
        dir.path(),
        &format!("{{ listen: 0.0.0.0:{port}, token_file: http.token }}"),
    );
    let local = format!("127.0.0.1:{}", addr.rsplit(':').next().unwrap());
    let (code, _, _) = request(&local, "GET", "/api/v1/status", None, None);
    assert_eq!(code, 401);
    let (code, _, _) = request(&local, "GET", "/api/v1/status", Some(TOKEN), None);
    assert_eq!(code, 200);
    // healthz stays open for load balancers.
    let (code, _, _) = request(&local, "GET", "/healthz", None, None);
    assert_eq!(code, 200);
    drop(_p);

    // public: readers without the token see no messages, targets or comments.
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr, _up) = engine(
        dir.path(),
        &format!(
            "{{ listen: 0.0.0.0:{}, token_file: http.token, public: true }}",
            free_port()
        ),
    );
    let local = format!("127.0.0.1:{}", addr.rsplit(':').next().unwrap());
    wait_until("bad to have run", Duration::from_secs(10), || {
        let (_, _, b) = request(&local, "GET", "/api/v1/checks/bad", Some(TOKEN), None);
        json(&b)["last"].is_object()
    });
    let (code, _, body) = request(&local, "GET", "/api/v1/checks/bad", None, None);
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["comment"], "");
    assert_eq!(v["target"], "");
    assert_eq!(v["last"]["message"], "");
    let (_, _, body) = request(&local, "GET", "/api/v1/checks/bad", Some(TOKEN), None);
    assert_eq!(json(&body)["comment"], "call the shop");
    // The status page too: no comments, messages or delivery targets without the token.
    let (code, _, page) = request(&local, "GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(page.contains(r#"data-check="bad""#), "{page}");
    assert!(
        !page.contains("call the shop") && !page.contains("connection refused"),
        "{page}"
    );
    assert!(!page.contains("Alert delivery"), "{page}");
    let (_, _, page) = request(&local, "GET", "/", Some(TOKEN), None);
    assert!(
        page.contains("call the shop") && page.contains("Alert delivery"),
        "{page}"
    );
}

/// `--http-listen` (`VIGIA_HTTP_LISTEN`) moves the API, and survives a reload.
#[test]
fn the_listen_address_can_be_given_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let (_up, port) = listen();
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!("engine: {{ state_dir: state, status_log_interval: 1h }}\nhttp: {{ listen: 127.0.0.1:1 }}\nchecks:\n  - {{ name: up, type: tcp, host: 127.0.0.1, port: {port}, interval: 300ms }}\n{extra}"),
        )
        .unwrap();
    };
    write("");
    let p = start_engine(&config);
    let addr = http_addr(&p);
    assert_ne!(addr, "127.0.0.1:1");
    let (code, _, _) = request(&addr, "GET", "/healthz", None, None);
    assert_eq!(code, 200);
    write(&format!(
        "  - {{ name: up2, type: tcp, host: 127.0.0.1, port: {port}, interval: 300ms }}\n"
    ));
    p.wait_for("the reload", Duration::from_secs(10), |e| {
        e.iter().any(|x| x["event"] == "reloaded")
    });
    wait_until("the new check in the API", Duration::from_secs(10), || {
        request(&addr, "GET", "/api/v1/checks/up2", None, None).0 == 200
    });
    // Off loopback without a token file: refused at start, with the reason.
    let out = std::process::Command::new(vigia_bin())
        .args(["run", "--http-listen", "0.0.0.0:0", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.token_file"));
}

#[test]
fn validate_names_the_http_problems() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // `vigia validate` on `text`: (whether it passed, what it printed).
    let validate = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = vigia(&["validate"], &config);
        let printed = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), printed)
    };
    let (ok, err) =
        validate("engine: { state_dir: state }\nhttp:\n  listen: 0.0.0.0:2813\nchecks: []\n");
    assert!(!ok);
    assert!(err.contains("config.yaml:3:"), "{err}");
    assert!(err.contains("http.listen"), "{err}");
    assert!(err.contains("token_file"), "{err}");

    // A token file that cannot be read is an error at its line for validate and run,
    // but not for `vigia status`, which only needs the state directory.
    let (ok, err) = validate(
        "engine: { state_dir: state }\nhttp:\n  token_file: /nonexistent/http.token\nchecks: []\n",
    );
    assert!(!ok);
    assert!(err.contains("config.yaml:3:"), "{err}");
    assert!(err.contains("cannot read /nonexistent/http.token"), "{err}");
    let out = vigia(&["status"], &config);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("http.token"),
        "status read the token file: {err}"
    );
    assert!(err.contains("cannot reach the engine"), "{err}");

    // A token file others can read is a warning, not an error.
    let token = dir.path().join("t");
    std::fs::write(&token, "abc\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (ok, text) = validate(
        "engine: { state_dir: state }\nhttp: { listen: 127.0.0.1:0, token_file: t }\nchecks: []\n",
    );
    assert!(ok, "{text}");
    assert!(text.contains("chmod 600"), "{text}");
}

/// The `ok` and `failed` totals of a check's history over the last hour.
fn history_total(addr: &str, check: &str) -> (u64, u64) {
    let (code, _, body) = request(
        addr,
        "GET",
        &format!("/api/v1/checks/{check}/history?from=1h&step=1m"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let t = &json(&body)["total"];
    (t["ok"].as_u64().unwrap(), t["failed"].as_u64().unwrap())
}

#[test]
fn history_answers_over_http_and_the_cli_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr, up) = engine(dir.path(), "{ listen: 127.0.0.1:0 }");
    let config = dir.path().join("config.yaml");

    // Enough runs that losing more than the flush interval (5 s, ~17 runs) would show.
    wait_until("40 runs of good", Duration::from_secs(30), || {
        history_total(&addr, "good").0 >= 40
    });
    let (code, _, body) = request(
        &addr,
        "GET",
        "/api/v1/checks/bad/history?from=1h&step=1m",
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let h = json(&body);
    assert_eq!(h["step_ms"], 60_000);
    assert_eq!(h["resolution"], "minute");
    let buckets = h["buckets"].as_array().unwrap();
    assert!(
        !buckets.is_empty() && buckets.iter().all(|b| b["ok"] == 0),
        "{body}"
    );
    assert!(buckets[0]["mean_ms"].as_f64().unwrap() > 0.0, "{body}");
    assert_eq!(h["total"]["uptime"], 0.0);

    // The check's page carries uptime and its transitions with their messages.
    let (_, _, body) = request(&addr, "GET", "/api/v1/checks/bad", None, None);
    let c = json(&body);
    assert_eq!(c["history"]["uptime"]["24h"], 0.0, "{body}");
    let t = &c["history"]["transitions"][0];
    assert_eq!(t["to"], "failed", "{body}");
    assert!(!t["message"].as_str().unwrap().is_empty(), "{body}");

    let (_, _, body) = request(&addr, "GET", "/api/v1/uptime?window=7d", None, None);
    let u = json(&body);
    let of = |name: &str| {
        u["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap()["uptime"]
            .clone()
    };
    assert_eq!((of("good"), of("bad")), (1.0.into(), 0.0.into()), "{body}");

    let (code, head, svg) = request(&addr, "GET", "/badge/good.svg?uptime=24h", None, None);
    assert_eq!(code, 200, "{head}");
    assert!(svg.contains(">100%<") && svg.contains("good 24h"), "{svg}");

    // Bad requests say what is wrong.
    for (path, says) in [
        ("/api/v1/checks/good/history?step=7x", "`step=7x`"),
        (
            "/api/v1/checks/good/history?from=yesterday",
            "`from=yesterday`",
        ),
        ("/api/v1/checks/good/history?frm=1h", "unknown field `frm`"),
        (
            "/api/v1/checks/good/history?from=1h&to=2h",
            "`from` must come before `to`",
        ),
        ("/api/v1/uptime?window=week", "`window=week`"),
        ("/badge/good.svg?uptime=x", "`uptime=x`"),
    ] {
        let (code, _, body) = request(&addr, "GET", path, None, None);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    // Minutes are kept a day: a month at 1m comes at the finest step that has it.
    let (code, _, body) = request(
        &addr,
        "GET",
        "/api/v1/checks/good/history?from=30d&step=1m",
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            json(&body)["resolution"].clone(),
            json(&body)["step_ms"].clone()
        ),
        ("hour".into(), 3_600_000.into()),
        "{body}"
    );
    let (code, _, body) = request(&addr, "GET", "/api/v1/checks/god/history", None, None);
    assert_eq!(code, 404);
    assert!(body.contains("did you mean `good`"), "{body}");

    // The CLI, through the running engine.
    let out = vigia(&["history", "bad", "--since", "1h"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bad: uptime 24h 0.00 %"), "{text}");
    assert!(text.contains("DOWN"), "{text}");

    // kill -9 loses at most the flush interval.
    let before = history_total(&addr, "good").0;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let out = vigia(&["history", "good", "--json"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(offline["check"], "good");

    // Restarted without `good`: its history stays readable (30 days), and shows what
    // was saved before the kill.
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("name: good"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    let mut cmd = std::process::Command::new(vigia_bin());
    cmd.args(["run", "--log-format", "json", "-c"]).arg(&config);
    let p = Proc::spawn(cmd);
    let addr = http_addr(&p);
    let after = history_total(&addr, "good").0;
    assert!(
        after + 20 >= before && after <= before,
        "{before} runs before kill -9, {after} after the restart"
    );
    drop(up);
}
