//! The HTTP API under load: `vigia run` (release build) with 10 000 tcp checks every
//! 10 s (1 000 runs a second) against a local server, and
//! - the engine CPU and wall time of one `/metrics` scrape and one `/api/v1/status`
//!   (CPU: the process's user+sys over a burst of requests, minus what the checks use
//!   meanwhile, measured just before), with the body sizes (raw, and gzip as
//!   Prometheus asks);
//! - the p99 lateness of check starts while 50 clients follow `/api/v1/events` and
//!   `/metrics` is scraped every second.
//!
//! ```text
//! cargo bench -p vigia --bench http                     # N = 10 000, 20 requests each
//! cargo bench -p vigia --bench http -- --checks 1000 --requests 50 --window 20s
//! ```

mod procs;

use std::path::Path;
use std::time::{Duration, Instant};

use procs::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    checks: usize,
    requests: usize,
    window: Duration,
}

fn args() -> Args {
    let mut a = Args {
        checks: 10_000,
        requests: 20,
        window: Duration::from_secs(30),
    };
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or_default();
        match k.as_str() {
            "--checks" => a.checks = v.parse().expect("--checks N"),
            "--requests" => a.requests = v.parse().expect("--requests N"),
            "--window" => a.window = v.parse::<vigia_api::Dur>().expect("--window 30s").get(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn config(dir: &Path, n: usize, tcp: u16, http: u16) -> std::path::PathBuf {
    let mut out = format!(
        "engine:\n  state_dir: {}/state\n  status_log_interval: 1h\n  max_concurrent_checks: 4096\nhttp: {{ listen: 127.0.0.1:{http} }}\nchecks:\n",
        dir.display()
    );
    for i in 0..n {
        out.push_str(&format!(
            "  - {{name: shop-{i:05}, type: tcp, host: 127.0.0.1, port: {tcp}, interval: 10s, timeout: 500ms, comment: \"terminal {i} of the shop\"}}\n"
        ));
    }
    let file = dir.join("config.yaml");
    std::fs::write(&file, out).unwrap();
    file
}

/// One GET on a new connection: (status, body bytes, wall time).
async fn get(addr: &str, path: &str, gzip: bool) -> (u16, usize, Duration) {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{enc}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let took = started.elapsed();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw.len().saturating_sub(head_end + 4), took)
}

/// CPU of `pid` per second while nothing but the checks runs.
async fn baseline(pid: u32, over: Duration) -> f64 {
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    tokio::time::sleep(over).await;
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
}

struct Burst {
    cpu_ms: f64,
    wall_p50_ms: f64,
    wall_max_ms: f64,
    bytes: usize,
}

/// `n` requests one after another: engine CPU per request above the baseline rate.
async fn burst(pid: u32, addr: &str, path: &str, gzip: bool, n: usize, base: f64) -> Burst {
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut walls = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let (status, b, took) = get(addr, path, gzip).await;
        assert_eq!(status, 200, "{path}");
        walls.push(took.as_secs_f64() * 1000.0);
        bytes = b;
    }
    let cpu = cpu_seconds(pid) - c0 - base * t0.elapsed().as_secs_f64();
    walls.sort_by(|a, b| a.total_cmp(b));
    Burst {
        cpu_ms: (cpu * 1000.0 / n as f64).max(0.0),
        wall_p50_ms: walls[walls.len() / 2],
        wall_max_ms: walls[walls.len() - 1],
        bytes,
    }
}

/// A client that follows the event stream until the process ends.
async fn follow_events(addr: String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let _ = s
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let bin = std::env::var("VIGIA_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vigia"));
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p vigia",
        bin.display()
    );
    let targets = start_targets().await;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{http_port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), a.checks, targets.tcp, http_port);
    let (pid, _guard) = spawn_vigia(&bin, &cfg);
    let start = Instant::now();
    while get_ok(&addr).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the engine did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every check has run (first runs are spread over one interval).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rate = a.checks as f64 / 10.0;
    println!(
        "vigia: {} tcp checks every 10 s ({rate:.0} runs/s), {} requests each",
        a.checks, a.requests
    );
    println!();
    println!("| request | engine CPU per request | wall p50 / max | body |");
    println!("|---|---|---|---|");
    for (path, gzip, label) in [
        ("/metrics", false, "GET /metrics"),
        ("/metrics", true, "GET /metrics (gzip)"),
        ("/api/v1/status", false, "GET /api/v1/status"),
        ("/", false, "GET / (status page)"),
    ] {
        let base = baseline(pid, Duration::from_secs(5)).await;
        let b = burst(pid, &addr, path, gzip, a.requests, base).await;
        println!(
            "| {label} | {:.1} ms | {:.1} / {:.1} ms | {:.2} MB |",
            b.cpu_ms,
            b.wall_p50_ms,
            b.wall_max_ms,
            b.bytes as f64 / 1e6
        );
    }

    // Lateness with 50 event-stream readers and a scrape a second.
    let sock = dir.path().join("state/vigia.sock");
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(tokio::spawn(follow_events(addr.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    vigia_engine::control::send(&sock, &vigia_core::command::Command::StatsReset)
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut scrapes = 0;
    while t0.elapsed() < a.window {
        let (status, _, _) = get(&addr, "/metrics", true).await;
        assert_eq!(status, 200);
        scrapes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = vigia_engine::control::stats(&sock).await.unwrap();
    let scheduled = (rate * t0.elapsed().as_secs_f64()).round() as u64;
    println!();
    println!(
        "with 50 event-stream clients and {scrapes} scrapes in {:.0} s: {} runs of {scheduled} scheduled ({:.1} %), {} skipped, lateness p50 {:.1} ms, p99 {:.1} ms",
        t0.elapsed().as_secs_f64(),
        stats.executed,
        stats.executed as f64 * 100.0 / scheduled.max(1) as f64,
        stats.skipped,
        stats.lateness_p50_ms,
        stats.lateness_p99_ms
    );
    for r in readers {
        r.abort();
    }
}

async fn get_ok(addr: &str) -> Option<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .starts_with("HTTP/1.1 200")
        .then_some(())
}
