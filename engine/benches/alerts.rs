//! Alert delivery: `cargo bench -p vigia --bench alerts` (~2 min).
//!
//! The engine (`vigia run`, release) watches N tcp checks whose listeners this bench
//! opens and closes, staggered so that transitions come one at a time; every transition
//! goes to the Telegram mock (in this process, `vigia_mocks`). Two parts:
//!
//! 1. Latency: window open, `group_wait: 0s`. For each transition, the time from the
//!    transition (`at` of its `alert` log event) to the mock accepting its message
//!    (`at` the mock recorded); both are this machine's wall clock. p50/p99/max.
//! 2. Backlog: the mock fails (HTTP 500) while ~1 000 transitions queue up in the
//!    engine's outbox; then the mock accepts at most 50 messages/s (the rest get 429
//!    with retry_after 1). Printed: the drain rate against that limit, and the engine's
//!    RSS before the backlog, with 1 000 queued, and after the drain.

mod procs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use vigia_mocks::telegram::TgMode;

const CHECKS: usize = 8;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A listener on a fixed port that can be closed (refused) and opened again.
async fn switchable(port: u16, mut up: watch::Receiver<bool>) {
    loop {
        if *up.borrow() {
            let l = match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    c = l.accept() => { drop(c); }
                    _ = up.changed() => break,
                }
            }
        } else if up.changed().await.is_err() {
            return;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Engine {
    child: Child,
    /// (check, state, at) of alert events.
    alerts: Arc<Mutex<Vec<(String, String, u64)>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_engine(dir: &std::path::Path, ports: &[u16], tg_port: u16) -> Engine {
    let mut checks = String::new();
    for (i, p) in ports.iter().enumerate() {
        checks.push_str(&format!(
            "  - name: c{i}\n    type: tcp\n    host: 127.0.0.1\n    port: {p}\n    interval: 100ms\n    timeout: 80ms\n    threshold: 1\n    recover_after: 1\n"
        ));
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "engine:\n  state_dir: state\n  status_log_interval: 1h\n\
alerting:\n  group_wait: 0s\n  max_retry_wait: 1s\n  flapping: {{ changes: 0 }}\n\
channels:\n  ops:\n    type: telegram\n    token_env: VIGIA_BENCH_TOKEN\n    chat_ids: [1]\n    api_url: http://127.0.0.1:{tg_port}\n\
checks:\n{checks}"
        ),
    )
    .unwrap();
    let mut child = procs::vigia_run(
        std::path::Path::new(env!("CARGO_BIN_EXE_vigia")),
        &config,
        "info",
    )
    .env("VIGIA_BENCH_TOKEN", "1:bench")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let sink = alerts.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == "alert" && v["check"].is_string() {
                sink.lock().unwrap().push((
                    v["check"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                    v["at"].as_u64().unwrap_or(0),
                ));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    Engine { child, alerts }
}

/// `(check, state)` of every event in a message (a grouped one has several).
fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in text.split("<b>").skip(1) {
        let Some((check, rest)) = part.split_once("</b>") else {
            continue;
        };
        let state = if rest.trim_start().starts_with("failed") {
            "failed"
        } else if rest.trim_start().starts_with("recovered") {
            "recovered"
        } else {
            continue;
        };
        out.push((check.to_string(), state.to_string()));
    }
    out
}

/// Flips the checks one after another, `gap` apart, `rounds` times each way.
async fn flip(switches: &[watch::Sender<bool>], rounds: usize, gap: Duration) {
    for _ in 0..rounds {
        for state in [false, true] {
            for s in switches {
                s.send_replace(state);
                tokio::time::sleep(gap).await;
            }
        }
    }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mocks = procs::start_mocks(&rt);
    let tg = mocks.tg.clone();
    let ports: Vec<u16> = (0..CHECKS).map(|_| free_port()).collect();
    let switches: Vec<watch::Sender<bool>> = ports
        .iter()
        .map(|p| {
            let (tx, rx) = watch::channel(true);
            rt.spawn(switchable(*p, rx));
            tx
        })
        .collect();

    // 1. Latency.
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &ports, mocks.telegram.port());
    rt.block_on(flip(&switches, 13, Duration::from_millis(150)));
    std::thread::sleep(Duration::from_secs(2));
    let alerts = engine.alerts.lock().unwrap().clone();
    let messages = tg.messages();
    let mut lat = Vec::new();
    let mut used = std::collections::HashMap::<(String, String), usize>::new();
    let mut delivered: std::collections::HashMap<(String, String), Vec<u64>> = Default::default();
    for m in &messages {
        for key in parse(&m.text) {
            delivered.entry(key).or_default().push(m.at);
        }
    }
    for (check, state, at) in &alerts {
        let key = (check.clone(), state.clone());
        let k = used.entry(key.clone()).or_default();
        if let Some(t) = delivered.get(&key).and_then(|v| v.get(*k)) {
            lat.push(t.saturating_sub(*at) as f64);
        }
        *k += 1;
    }
    println!(
        "transition -> accepted by the Telegram mock: {} transitions, {} messages",
        alerts.len(),
        messages.len()
    );
    println!(
        "  latency p50 {:.0} ms   p99 {:.0} ms   max {:.0} ms   ({} matched)",
        quantile(&mut lat, 0.5),
        quantile(&mut lat, 0.99),
        quantile(&mut lat, 1.0),
        lat.len()
    );
    drop(engine);

    // 2. Backlog.
    tg.clear();
    tg.set_mode(TgMode::Error);
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &ports, mocks.telegram.port());
    let pid = engine.child.id();
    let before = rss_kib(pid);
    let queue_start = Instant::now();
    while engine.alerts.lock().unwrap().len() < 1000 {
        rt.block_on(flip(&switches, 1, Duration::from_millis(12)));
        assert!(
            queue_start.elapsed() < Duration::from_secs(120),
            "too slow to queue"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let queued = engine.alerts.lock().unwrap().len();
    let with_backlog = rss_kib(pid);
    let rate = 50;
    tg.rate.store(rate, Ordering::Relaxed);
    tg.set_mode(TgMode::Ok);
    // teloxide waits 10 s after a 5xx before it reports it: the first delivery comes
    // up to that long after the switch. The drain is timed from first to last message.
    let mut peak = with_backlog;
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(rss_kib(pid));
        let n: usize = tg.messages().iter().map(|m| parse(&m.text).len()).sum();
        if n != last_count {
            last_count = n;
            last_change = Instant::now();
        }
        if n >= queued || last_change.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let msgs = tg.messages();
    let drained = msgs.len();
    let took = match (msgs.first(), msgs.last()) {
        (Some(a), Some(b)) => (b.at.saturating_sub(a.at)) as f64 / 1000.0,
        _ => 0.0,
    };
    let after = rss_kib(pid);
    println!(
        "backlog: {queued} transitions queued while Telegram failed; {drained} messages (carrying {last_count} transitions) delivered in {took:.1} s from first to last = {:.1} msg/s (mock limit {rate}/s; {} answered 429 or 500)",
        drained.saturating_sub(1) as f64 / took.max(0.001),
        tg.refused.load(Ordering::Relaxed)
    );
    println!(
        "  engine RSS: {:.1} MiB before, {:.1} MiB with the backlog, peak {:.1} MiB while draining, {:.1} MiB after",
        before as f64 / 1024.0,
        with_backlog as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
