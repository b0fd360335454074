//! The host API against real servers on 127.0.0.1 and real programs, and the errors it
//! gives for bad arguments.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// (call, the message it raises; `checks/t.lua:3:` is where it is called from).
const ARGUMENT_ERRORS: &[(&str, &str)] = &[
    ("net.tcp('127.0.0.1')", "checks/t.lua:3: net.tcp: expects a table of named arguments, e.g. net.tcp{host = \"127.0.0.1\", port = 7000}, got string"),
    ("net.tcp{ port = 80 }", "checks/t.lua:3: net.tcp: argument `host` is missing"),
    ("net.tcp{ host = '127.0.0.1' }", "checks/t.lua:3: net.tcp: argument `port` is missing"),
    ("net.tcp{ host = '127.0.0.1', port = 70000 }", "checks/t.lua:3: net.tcp: argument `port` is 70000, out of range (1-65535)"),
    ("net.tcp{ host = '127.0.0.1', port = 'http' }", "checks/t.lua:3: net.tcp: argument `port` must be a whole number 1-65535, got string \"http\""),
    ("net.tcp{ hots = 'x', port = 1 }", "checks/t.lua:3: net.tcp: unknown argument `hots` (did you mean `host`?)"),
    ("net.tcp{ host = 'x', port = 1, timeout = 2 }", "checks/t.lua:3: net.tcp: argument `timeout` must be a duration with its unit, e.g. \"2s\" or \"500ms\", got number 2"),
    ("net.tcp{ host = 'x', port = 1, timeout = 'soon' }", "checks/t.lua:3: net.tcp: argument `timeout` must be a duration such as \"2s\" or \"500ms\", got string \"soon\""),
    ("net.tcp{ '127.0.0.1', 80 }", "checks/t.lua:3: net.tcp: takes named arguments only, got a integer key (did you write `net.tcp(a, b)` instead of `net.tcp{x = a}`?)"),
    ("net.ping{ host = 'x', count = 0 }", "checks/t.lua:3: net.ping: argument `count` is 0, out of range (1-100)"),
    ("http.request{ url = 'ftp://x/' }", "checks/t.lua:3: http.request: argument `url` must be http:// or https://, got \"ftp://x/\""),
    ("http.request{ url = 'not a url' }", "checks/t.lua:3: http.request: argument `url` \"not a url\" is not a URL: relative URL without a base"),
    ("http.request{ url = 'http://x/', headers = 'a' }", "checks/t.lua:3: http.request: argument `headers` must be a table, got string \"a\""),
    ("mysql.query{ sql = 'SELECT 1' }", "checks/t.lua:3: mysql.query: argument `user` is missing"),
    ("mysql.query{ user = 'm', sql = 'SELECT 1', pasword = 'x' }", "checks/t.lua:3: mysql.query: unknown argument `pasword` (did you mean `password`?)"),
    ("exec{ command = 'rm', args = { '-rf', '/' } }", "checks/t.lua:3: exec: command `rm` is not in the `commands:` allow-list of config.yaml (it has: echo, sh)"),
    ("exec{ command = 'ech' }", "checks/t.lua:3: exec: command `ech` is not in the `commands:` allow-list of config.yaml (did you mean `echo`?)"),
    ("exec{ command = 'echo', args = { {} } }", "checks/t.lua:3: exec: argument `args[1]` must be a string, got table"),
    ("sleep('1s')", "checks/t.lua:3: sleep: expects milliseconds as a number, e.g. sleep(500), got string"),
    ("sleep(120000)", "checks/t.lua:3: sleep: 120000 ms is out of range (0-60000)"),
    ("json.decode('{')", "checks/t.lua:3: json.decode: invalid JSON: EOF while parsing an object at line 1 column 1"),
];

fn allow_list() -> std::sync::Arc<vigia_lua::HostEnv> {
    env_with(&[("echo", "/bin/echo"), ("sh", "/bin/sh")])
}

async fn run_with_commands(b: &str) -> vigia_api::CheckOutcome {
    let c = lua_check_with(&body(b), None, allow_list()).unwrap();
    run(&c, Duration::from_secs(5)).await
}

#[tokio::test]
async fn bad_arguments_say_which_and_why_at_the_callers_line() {
    let mut wrong = Vec::new();
    for (call, expected) in ARGUMENT_ERRORS {
        let o = run_with_commands(&format!("local r = {call}\n return {{ ok = true }}")).await;
        if o.message != *expected {
            wrong.push(format!(
                "{call}:\n  got      {}\n  expected {expected}",
                o.message
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // pcall gets the message itself, as a string.
    let o = run_body("local ok, e = pcall(net.tcp, {})\n return { ok = not ok and type(e) == 'string', message = e }").await;
    assert!(o.is_ok(), "{}", o.message);
    assert_eq!(o.message, "net.tcp: argument `host` is missing");
}

/// A line service like atto: "OK <line>" for each line.
async fn line_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = w.write_all(format!("OK {line}\n").as_bytes()).await;
                }
            });
        }
    });
    port
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn net_tcp_exchanges_and_reports() {
    let port = line_server().await;
    let o = run_body(&format!(
        "local r = net.tcp{{ host = '127.0.0.1', port = {port}, send = 'PING\\n', expect = '\\n' }}\n\
         return {{ ok = r.ok and r.reply == 'OK PING\\n' and r.ms >= 0 and r.connect_ms <= r.ms, message = r.reply }}"
    ))
    .await;
    assert!(o.is_ok(), "{}", o.message);
    let o = run_body(&format!(
        "local r = net.tcp{{ host = '127.0.0.1', port = {port}, send = 'PING\\n', expect = 'PONG', timeout = '300ms' }}\n\
         return {{ ok = not r.ok, message = r.error }}"
    ))
    .await;
    assert!(o.is_ok());
    assert!(o.message.contains("within 300ms"), "{}", o.message);
    let closed = closed_port();
    let o = run_body(&format!(
        "local r = net.tcp{{ host = '127.0.0.1', port = {closed} }}\n return {{ ok = not r.ok, message = r.error }}"
    ))
    .await;
    assert_eq!(
        o.message,
        format!("cannot connect to 127.0.0.1:{closed}: connection refused")
    );
}

/// Answers one request with 201, a header and a body that echo what it received.
async fn echo_http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let head = text[..end].to_string();
                            let body = &text[end + 4..];
                            let first = head.lines().next().unwrap_or_default().to_string();
                            let custom = head
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("x-test:"))
                                .unwrap_or("")
                                .to_string();
                            let reply = format!("{first}|{custom}|{body}");
                            let resp = format!(
                                "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Reply: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                                reply.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn http_request_sends_method_headers_and_body_and_returns_the_answer() {
    let port = echo_http_server().await;
    let o = run_body(&format!(
        "local r = http.request{{ method = 'post', url = 'http://127.0.0.1:{port}/api?x=1', headers = {{ ['X-Test'] = 'yes' }}, body = 'hello' }}\n\
         return {{ ok = r.status == 201 and r.headers['x-reply'] == 'yes' and r.ms > 0, message = r.body }}"
    ))
    .await;
    assert!(o.is_ok(), "{}", o.message);
    assert_eq!(o.message, "POST /api?x=1 HTTP/1.1|x-test: yes|hello");
    let closed = closed_port();
    let o = run_body(&format!(
        "local r = http.request{{ url = 'http://127.0.0.1:{closed}/' }}\n return {{ ok = true }}"
    ))
    .await;
    assert_eq!(
        o.message,
        format!("checks/t.lua:3: http.request: http://127.0.0.1:{closed}/: connection refused")
    );
}

#[tokio::test]
async fn exec_runs_allow_listed_programs_without_a_shell() {
    // Arguments go to the program as they are: no shell expands them.
    let o = run_with_commands("local r = exec{ command = 'echo', args = { '$HOME;', 'ls', '*' } }\n return { ok = r.code == 0, message = r.stdout }").await;
    assert!(o.is_ok());
    assert_eq!(o.message, "$HOME; ls *\n");
    // Exit code and stderr.
    let o = run_with_commands("local r = exec{ command = 'sh', args = { '-c', 'echo oops >&2; exit 3' } }\n return { ok = r.code == 3, message = r.stderr }").await;
    assert!(o.is_ok(), "{}", o.message);
    assert_eq!(o.message, "oops\n");
    // Output is capped, and a program that writes more is not blocked by it.
    let o = run_with_commands("local r = exec{ command = 'sh', args = { '-c', 'head -c 1000000 /dev/zero; echo done >&2' } }\n return { ok = #r.stdout == 65536 and r.stderr == 'done\\n', message = tostring(#r.stdout) }").await;
    assert!(o.is_ok(), "{}", o.message);
    // stdin.
    let o = run_with_commands("local r = exec{ command = 'sh', args = { '-c', 'cat' }, stdin = 'abc' }\n return { ok = r.stdout == 'abc', message = r.stdout }").await;
    assert!(o.is_ok(), "{}", o.message);
}

#[tokio::test]
async fn exec_kills_a_program_that_runs_too_long() {
    let start = Instant::now();
    let o = run_with_commands("local r = exec{ command = 'sh', args = { '-c', 'sleep 30' }, timeout = '300ms' }\n return { ok = true }").await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        o.message,
        "checks/t.lua:3: exec: `sh` did not finish within 300ms and was killed"
    );
    // The check's own timeout kills it too (the child is dropped with the run).
    let marker = tempfile::NamedTempFile::new().unwrap();
    let path = marker.path().display().to_string();
    let c = lua_check_with(&body(&format!("exec{{ command = 'sh', args = {{ '-c', 'echo $$ > {path}; exec sleep 30' }}, timeout = '60s' }}")), None, allow_list()).unwrap();
    let o = run(&c, Duration::from_millis(500)).await;
    assert!(
        o.message.contains("still waiting for exec sh"),
        "{}",
        o.message
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the child {pid} outlived its check");
}

#[tokio::test]
async fn json_log_time() {
    let o = run_body(
        "local doc = json.decode('{\"a\": [1, 2, {\"b\": \"c\"}], \"n\": null, \"t\": true}')\n\
         log.info('decoded', #doc.a, 'items')\n log.warn('a warning') log.error('an error') print('printed')\n\
         local back = json.decode(json.encode(doc))\n\
         return { ok = back.a[3].b == 'c' and back.t == true and doc.n == nil and time.now() > 1.7e9, message = json.encode({ x = 1 }) }",
    )
    .await;
    assert!(o.is_ok(), "{}", o.message);
    assert_eq!(o.message, r#"{"x":1}"#);
}

#[tokio::test]
async fn net_ping_reports_loss_and_times() {
    // Loopback answers; needs root or CAP_NET_RAW (the test suite runs as root).
    let o = run_body("local r = net.ping{ host = '127.0.0.1', count = 2, timeout = '1s' }\n return { ok = r.sent == 2 and r.received == 2 and r.loss == 0 and r.avg_ms >= r.min_ms and r.max_ms >= r.avg_ms, message = json.encode(r) }").await;
    assert!(o.is_ok(), "{}", o.message);
    let o = run_body("local r = net.ping{ host = 'no-such-host.invalid' }\n return { ok = true }")
        .await;
    assert!(
        o.message
            .starts_with("checks/t.lua:3: net.ping: cannot resolve no-such-host.invalid"),
        "{}",
        o.message
    );
}

#[tokio::test]
async fn mysql_query_returns_typed_rows_from_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fixtures/mariadb.sh");
    let out = Command::new(&fixture)
        .args(["start", dir.path().to_str().unwrap(), &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Stop<'a>(&'a std::path::Path, &'a std::path::Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0)
                .args(["stop", self.1.to_str().unwrap()])
                .status();
        }
    }
    let _stop = Stop(&fixture, dir.path());
    let conn = format!("host = '127.0.0.1', port = {port}, user = 'monitor', password = 'monitor'");
    let o = run_body(&format!(
        "local rows = mysql.query{{ {conn}, sql = \"SELECT 1 AS i, 'x' AS s, NULL AS n, 2.5 AS f, CAST(3 AS UNSIGNED) AS u UNION ALL SELECT 2, 'y', NULL, 0.5, 4\" }}\n\
         local r = rows[1]\n\
         return {{ ok = #rows == 2 and r.i == 1 and math.type(r.i) == 'integer' and r.s == 'x' and r.n == nil and r.f == 2.5 and r.u == 3 and rows[2].s == 'y', message = json.encode(rows) }}"
    ))
    .await;
    assert!(o.is_ok(), "{}", o.message);
    let o = run_body(&format!(
        "local rows = mysql.query{{ {conn}, sql = 'SELEC 1' }}\n return {{ ok = true }}"
    ))
    .await;
    assert!(
        o.message.starts_with(&format!(
            "checks/t.lua:3: mysql.query on 127.0.0.1:{port}: You have an error in your SQL syntax"
        )),
        "{}",
        o.message
    );
    let o = run_body(&format!("local rows = mysql.query{{ host = '127.0.0.1', port = {port}, user = 'monitor', password = 'nope', sql = 'SELECT 1' }}\n return {{ ok = true }}")).await;
    assert!(
        o.message.contains("Access denied for user 'monitor'@"),
        "{}",
        o.message
    );
}
