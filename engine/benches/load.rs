//! Load benchmark: N tcp or http checks against a local server, for a fixed time, with
//! the engine (`vigia run`, release build) as a separate process; and Monit on the same
//! workload, side by side, when Debian's `monit` is installed.
//!
//! ```text
//! cargo bench -p vigia --bench load                        # the whole matrix (~20 min)
//! cargo bench -p vigia --bench load -- --duration 10s      # shorter runs
//! cargo bench -p vigia --bench load -- --only tcp:1000:1s  # one scenario: kind:N:interval[:dead%]
//! ```
//!
//! Per run it prints: checks scheduled and executed (engine counters; the server's count
//! of connections as a cross-check), CPU (user+sys of the engine process from
//! /proc/PID/stat) per executed check, peak RSS (VmHWM), and the p50/p99 lateness of
//! check starts versus their schedule (engine histogram, 0.1 ms buckets).
//! The target server runs in this process and shares the machine's cores with the engine.

mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use procs::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Http,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    kind: Kind,
    n: usize,
    interval: Duration,
    /// Percentage of checks whose target never answers (connect or reply times out).
    dead_pct: usize,
}

impl Scenario {
    /// Whether check `i` targets the dead listener: every (100 / dead_pct)-th check.
    fn is_dead(&self, i: usize) -> bool {
        100usize
            .checked_div(self.dead_pct)
            .is_some_and(|every| i.is_multiple_of(every))
    }

    /// Runs due in `duration`: N × duration / interval.
    fn scheduled(&self, duration: Duration) -> u64 {
        (self.n as f64 * duration.as_secs_f64() / self.interval.as_secs_f64()).round() as u64
    }

    fn label(&self) -> String {
        let k = match self.kind {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
        };
        let dead = if self.dead_pct > 0 {
            format!(", {}% dead", self.dead_pct)
        } else {
            String::new()
        };
        format!("{k} × {} @ {}s{dead}", self.n, self.interval.as_secs())
    }
}

struct Measure {
    label: String,
    tool: &'static str,
    scheduled: u64,
    executed: u64,
    server_seen: u64,
    skipped: u64,
    cpu_s: f64,
    peak_rss_kib: u64,
    /// RSS at the end of the run (steady state; the peak includes parsing the config).
    rss_kib: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Measure {
    fn cpu_us_per_check(&self) -> f64 {
        self.cpu_s * 1e6 / self.executed.max(1) as f64
    }
}

fn vigia_config(s: &Scenario, t: &Targets, dir: &Path) -> PathBuf {
    // VIGIA_BENCH_HISTORY=off: result history off, for the A/B of what it costs.
    let history = std::env::var("VIGIA_BENCH_HISTORY").map_or(true, |v| v != "off");
    // VIGIA_BENCH_RECORD=on: every run recorded (`engine.record`), for the A/B of what
    // the recording costs.
    let record = match std::env::var("VIGIA_BENCH_RECORD").as_deref() {
        Ok("on") => format!("  record: {}/record\n", dir.display()),
        _ => String::new(),
    };
    let mut out = format!(
        "engine:\n  state_dir: {}/state\n  status_log_interval: 1h\n  max_concurrent_checks: 4096\n  history: {history}\n{record}http: {{ listen: 127.0.0.1:0 }}\nchecks:\n",
        dir.display()
    );
    let secs = s.interval.as_secs();
    for i in 0..s.n {
        let dead = s.is_dead(i);
        let line = match (s.kind, dead) {
            (Kind::Tcp, false) => format!("tcp, host: 127.0.0.1, port: {}", t.tcp),
            (Kind::Tcp, true) => format!(
                "tcp, host: 127.0.0.1, port: {}, send: \"PING\\n\", expect: OK",
                t.dead
            ),
            (Kind::Http, false) => format!("http, url: \"http://127.0.0.1:{}/health\"", t.http),
            (Kind::Http, true) => format!("http, url: \"http://127.0.0.1:{}/health\"", t.dead),
        };
        out.push_str(&format!(
            "  - {{name: c{i}, type: {line}, interval: {secs}s, timeout: 500ms}}\n"
        ));
    }
    let file = dir.join("config.yaml");
    std::fs::write(&file, out).unwrap();
    file
}

async fn run_vigia(bin: &Path, s: &Scenario, t: &Targets, duration: Duration) -> Measure {
    let dir = tempfile::tempdir().unwrap();
    let config = vigia_config(s, t, dir.path());
    let (pid, guard) = spawn_vigia(bin, &config);
    let sock = dir.path().join("state/vigia.sock");
    let start = Instant::now();
    while vigia_engine::control::stats(&sock).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the engine did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every check has run once (first runs are spread over one interval).
    tokio::time::sleep(s.interval + Duration::from_secs(2)).await;
    vigia_engine::control::send(&sock, &vigia_core::command::Command::StatsReset)
        .await
        .unwrap();
    let w = measure(pid, t, duration).await;
    let stats = vigia_engine::control::stats(&sock).await.unwrap();
    drop(guard);
    Measure {
        label: s.label(),
        tool: "vigia",
        scheduled: s.scheduled(duration),
        executed: stats.executed,
        server_seen: w.seen,
        skipped: stats.skipped,
        cpu_s: w.cpu_s,
        peak_rss_kib: w.peak_kib,
        rss_kib: w.rss_kib,
        p50_ms: Some(stats.lateness_p50_ms),
        p99_ms: Some(stats.lateness_p99_ms),
    }
}

/// What one measuring window saw of a process under load.
struct Window {
    /// Connections the target server accepted.
    seen: u64,
    cpu_s: f64,
    peak_kib: u64,
    rss_kib: u64,
}

async fn measure(pid: u32, t: &Targets, duration: Duration) -> Window {
    let seen0 = t.accepted.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(duration).await;
    let cpu1 = cpu_seconds(pid);
    let seen1 = t.accepted.load(Ordering::Relaxed);
    Window {
        seen: seen1 - seen0,
        cpu_s: cpu1 - cpu0,
        peak_kib: status_kib(pid, "VmHWM:"),
        rss_kib: status_kib(pid, "VmRSS:"),
    }
}

fn monit_bin() -> Option<PathBuf> {
    ["/usr/bin/monit", "/usr/sbin/monit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Monit on the same workload: `set daemon 1`, one `check host` per target. Monit runs
/// the tests of a cycle one after another; "executed" is what the server saw.
async fn run_monit(bin: &Path, s: &Scenario, t: &Targets, duration: Duration) -> Measure {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut rc = format!(
        "set daemon {}\nset pidfile {d}/monit.pid\nset idfile {d}/monit.id\nset statefile {d}/monit.state\nset logfile {d}/monit.log\n",
        s.interval.as_secs()
    );
    for i in 0..s.n {
        let dead = s.is_dead(i);
        let test = match (s.kind, dead) {
            (Kind::Tcp, false) => format!("port {} type tcp", t.tcp),
            (Kind::Tcp, true) => format!("port {} type tcp", t.dead),
            (Kind::Http, false) => format!("port {} protocol http request \"/health\"", t.http),
            (Kind::Http, true) => format!("port {} protocol http request \"/health\"", t.dead),
        };
        rc.push_str(&format!(
            "check host c{i} with address 127.0.0.1\n  if failed {test} with timeout 1 seconds then alert\n"
        ));
    }
    let rc_path = dir.path().join("monitrc");
    std::fs::write(&rc_path, rc).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let child = Command::new(bin)
        .args(["-I", "-c"])
        .arg(&rc_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = Guard(child);
    tokio::time::sleep(s.interval + Duration::from_secs(3)).await;
    let w = measure(pid, t, duration).await;
    drop(guard);
    // The dead targets are never accepted by the server: count them as executed in the
    // same proportion, so that "executed" means all checks, as for vigia.
    let alive_share = 1.0 - s.dead_pct as f64 / 100.0;
    Measure {
        label: s.label(),
        tool: "monit",
        scheduled: s.scheduled(duration),
        executed: (w.seen as f64 / alive_share).round() as u64,
        server_seen: w.seen,
        skipped: 0,
        cpu_s: w.cpu_s,
        peak_rss_kib: w.peak_kib,
        rss_kib: w.rss_kib,
        p50_ms: None,
        p99_ms: None,
    }
}

fn parse_dur(s: &str) -> Duration {
    s.parse::<vigia_api::Dur>()
        .expect("a duration like 60s")
        .get()
}

fn parse_scenario(s: &str) -> Scenario {
    let parts: Vec<&str> = s.split(':').collect();
    Scenario {
        kind: if parts[0] == "http" {
            Kind::Http
        } else {
            Kind::Tcp
        },
        n: parts[1].parse().unwrap(),
        interval: parse_dur(parts[2]),
        dead_pct: parts.get(3).map(|p| p.parse().unwrap()).unwrap_or(0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut duration = Duration::from_secs(60);
    let mut only: Vec<Scenario> = Vec::new();
    let mut monit = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => duration = parse_dur(it.next().unwrap()),
            "--only" => only.push(parse_scenario(it.next().unwrap())),
            "--no-monit" => monit = false,
            _ => {}
        }
    }
    let scenarios: Vec<Scenario> = if only.is_empty() {
        let mut v = Vec::new();
        for kind in [Kind::Tcp, Kind::Http] {
            for n in [1_000, 10_000] {
                for secs in [1, 10] {
                    v.push(Scenario {
                        kind,
                        n,
                        interval: Duration::from_secs(secs),
                        dead_pct: 0,
                    });
                }
            }
            v.push(Scenario {
                kind,
                n: 10_000,
                interval: Duration::from_secs(1),
                dead_pct: 10,
            });
        }
        v
    } else {
        only
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vigia"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let targets = start_targets().await;
        let monit_bin = monit.then(monit_bin).flatten();
        if monit && monit_bin.is_none() {
            eprintln!("monit is not installed (apt-get install monit): only vigia is measured");
        }
        println!(
            "| tool | workload | scheduled | executed | kept | server saw | skipped | CPU/check | RSS (peak) | lateness p50 / p99 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let mut rss: Vec<(Scenario, u64, u64)> = Vec::new();
        for s in &scenarios {
            let m = run_vigia(&bin, s, &targets, duration).await;
            rss.push((*s, m.rss_kib, m.peak_rss_kib));
            print_row(&m);
            if let Some(mb) = &monit_bin {
                if s.interval == Duration::from_secs(1) {
                    print_row(&run_monit(mb, s, &targets, duration).await);
                }
            }
        }
        // Memory per configured check: the difference between 10 000 and 1 000 checks
        // of the same kind and interval, so the engine's fixed base does not count.
        for (s, big, big_peak) in &rss {
            if s.n != 10_000 || s.dead_pct != 0 {
                continue;
            }
            let small = rss.iter().find(|(o, _, _)| {
                o.n == 1_000 && o.kind == s.kind && o.interval == s.interval && o.dead_pct == 0
            });
            if let Some((_, small, small_peak)) = small {
                println!(
                    "\nMemory per configured check, {}: steady ({big} - {small} KiB) / 9000 = {:.2} KiB; peak ({big_peak} - {small_peak} KiB) / 9000 = {:.2} KiB",
                    s.label(),
                    (*big as f64 - *small as f64) / 9000.0,
                    (*big_peak as f64 - *small_peak as f64) / 9000.0,
                );
            }
        }
    });
    std::io::stdout().flush().ok();
}

fn print_row(m: &Measure) {
    let lateness = match (m.p50_ms, m.p99_ms) {
        (Some(a), Some(b)) => format!("{a:.1} / {b:.1} ms"),
        _ => "n/a".into(),
    };
    println!(
        "| {} | {} | {} | {} | {:.1}% | {} | {} | {:.1} µs | {:.1} ({:.1}) MiB | {} |",
        m.tool,
        m.label,
        m.scheduled,
        m.executed,
        100.0 * m.executed as f64 / m.scheduled.max(1) as f64,
        m.server_seen,
        m.skipped,
        m.cpu_us_per_check(),
        m.rss_kib as f64 / 1024.0,
        m.peak_rss_kib as f64 / 1024.0,
        lateness
    );
    std::io::stdout().flush().ok();
}
