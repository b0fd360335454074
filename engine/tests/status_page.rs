//! The status page in a real browser: Debian's chromium, headless, against a real
//! `vigia run` with a failing check, a healthy one and a folded group. It checks the
//! DOM the browser built (banner, the failing check first with its comment, the group,
//! the page's script following the event stream) and keeps a screenshot.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn chromium() -> String {
    std::env::var("VIGIA_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Chromium headless with the flags that keep it off the network and out of the
/// machine's profile (see ../shared/CRATES.md).
fn chromium_cmd(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn browser(profile: &Path, args: &[&str]) -> std::process::Output {
    let out = chromium_cmd(profile)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{} cannot run ({e}): scripts/test.sh installs Debian's chromium (or set VIGIA_CHROMIUM)", chromium())
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_status_page_renders_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, port) = listen();
    std::fs::write(
        dir.path().join("shops.txt"),
        "127.0.0.1 shop-1\n127.0.0.2 shop-2\n",
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"engine: {{ hostname: shop-server, state_dir: state, status_log_interval: 1h, shutdown_grace: 2s }}
checks:
  - {{ name: api, type: tcp, host: 127.0.0.1, port: {port}, interval: 300ms, timeout: 200ms, comment: "the shop API" }}
  - {{ name: payments, type: tcp, host: 127.0.0.1, port: {dead}, interval: 300ms, timeout: 200ms, threshold: 2, comment: "call the payment provider: 555-0101" }}
  - {{ name: shops, type: terminals, file: shops.txt, interval: 1s, timeout: 500ms }}
"#,
            dead = free_port()
        ),
    )
    .unwrap();
    let p = start_engine(&config);
    let addr = http_addr(&p);
    let start = Instant::now();
    while !get(&addr, "/api/v1/checks/payments").contains(r#""status":false"#) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "payments never went down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let out = browser(profile.path(), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains(r#"class="banner down""#), "no banner: {dom}");
    assert!(
        dom.contains("1 of 4 checks is down:</strong> payments"),
        "{dom}"
    );
    let rows: Vec<&str> = dom
        .match_indices("data-check=\"")
        .map(|(i, _)| {
            let rest = &dom[i + 12..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        rows.first(),
        Some(&"payments"),
        "the failing check comes first: {rows:?}"
    );
    assert!(
        dom.contains("call the payment provider: 555-0101"),
        "its comment is shown"
    );
    assert!(
        dom.contains("<summary><span class=\"name\">shops</span>"),
        "the group is folded: {dom}"
    );
    assert!(rows.contains(&"shops/127.0.0.1"), "{rows:?}");
    assert!(
        dom.contains(r#"<title>1 down · shop-server · Vigia</title>"#),
        "{dom}"
    );

    // The page's script (served under the page's CSP) follows the event stream: a
    // browser left on the page shows as a stream in /metrics, and leaving ends it.
    let streams = |addr: &str| -> u64 {
        get(addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("vigia_http_event_streams "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    assert_eq!(streams(&addr), 0);
    let live = tempfile::tempdir().unwrap();
    let mut open = chromium_cmd(live.path())
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while streams(&addr) != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the page never opened the event stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    open.kill().unwrap();
    open.wait().unwrap();
    let start = Instant::now();
    while streams(&addr) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stream outlived the browser"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A screenshot, kept as the test's artefact.
    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browser(
        profile.path(),
        &[
            "--window-size=1280,720",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
