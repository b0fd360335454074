//! What Lua checks cost: `cargo bench -p vigia --bench lua` (~1 min).
//!
//! 1. Engine overhead per run of a trivial script (`return { ok = true }`): the engine's
//!    `run_once` (timeout, panic guard) + entering the state + converting the result +
//!    updating the status map entry (`CheckState::record`, last run, state hand-over).
//!    Each run timed on its own; median and p99 of 200 000 runs.
//! 2. The same for a 30-line script without host calls (a latency window in ctx.state,
//!    string formatting): median and p99.
//! 3. 1 000 scripts loaded (each its own state, as the engine does): time, RSS per script
//!    (/proc/self/statm before and after) and Lua's own count.
//! 4. A saved script until it runs: `vigia run` (release) on a checks dir; the script is
//!    rewritten 10 times and the time from the write to the first `check` event of the
//!    new version is taken as the engine's log line arrives here.

mod procs;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use vigia_api::BuildContext;
use vigia_engine::config::PlannedCheck;
use vigia_engine::scheduler::{run_once, unix_ms, Stats};
use vigia_engine::status::{CheckState, LastRun};
use vigia_lua::LuaFactory;

const TRIVIAL: &str = "return { check = function(ctx) return { ok = true } end }\n";

const THIRTY_LINES: &str = r#"return {
  params = { host = "10.0.0.3", samples = 12, max_avg_ms = 50 },
  check = function(ctx)
    local p, s = ctx.params, ctx.state
    s.window = s.window or {}
    s.i = (s.i or 0) + 1
    -- A sample as a host call would give it (no host call here).
    local sample = 20 + (s.i * 7919) % 13
    table.insert(s.window, sample)
    while #s.window > p.samples do
      table.remove(s.window, 1)
    end
    local sum, max = 0, 0
    for _, v in ipairs(s.window) do
      sum = sum + v
      if v > max then max = v end
    end
    local avg = sum / #s.window
    local parts = {}
    for k, v in pairs({ host = p.host, n = #s.window }) do
      parts[#parts + 1] = k .. "=" .. tostring(v)
    end
    table.sort(parts)
    local msg = string.format("%s: average %.1f ms over %d samples (max %d ms) [%s]",
      p.host, avg, #s.window, max, table.concat(parts, " "))
    if avg > p.max_avg_ms then
      return { ok = false, value = avg, message = msg }
    end
    return { ok = true, value = avg, message = msg }
  end,
}
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn planned(factory: &LuaFactory, file: &Path, ctx: &BuildContext, name: &str) -> PlannedCheck {
    let b = factory
        .build_check(file, Some(name), None, 16 << 20, ctx)
        .unwrap();
    PlannedCheck {
        name: name.into(),
        kind: "test",
        group: None,
        check: b.check,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(3),
        threshold: 3,
        recover_after: 1,
        comment: "".into(),
        source: None,
        alerting: None,
        remedy: None,
        pinned: false,
        labels: None,
        fingerprint: 0,
    }
}

/// One engine run and its status-map update, as the scheduler's `record` does it.
async fn one(spec: &PlannedCheck, stats: &Stats, map: &DashMap<Arc<str>, CheckState>) {
    let start = Instant::now();
    let o = run_once(spec, stats).await;
    let now = unix_ms();
    let mut e = map
        .entry(spec.name.clone())
        .or_insert_with(|| CheckState::new(now));
    e.record(o.is_ok(), spec.threshold, spec.recover_after, now);
    if let Some(s) = spec.check.take_state() {
        e.state = Some(s);
    }
    e.last = Some(LastRun {
        ok: o.is_ok(),
        severity: o.severity,
        value: o.value,
        message: o.message,
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        at: now,
    });
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

async fn per_run(label: &str, spec: &PlannedCheck) {
    let stats = Stats::default();
    let map = DashMap::new();
    for _ in 0..20_000 {
        one(spec, &stats, &map).await;
    }
    let n = 200_000;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one(spec, &stats, &map).await;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = quantiles(times);
    println!("{label:<44} median {p50:6.2} µs   p99 {p99:6.2} µs   ({n} runs)");
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn load_many(factory: &LuaFactory, file: &Path, ctx: &BuildContext) {
    let n = 1000;
    let before = rss_kib();
    let start = Instant::now();
    let checks: Vec<_> = (0..n)
        .map(|i| {
            factory
                .build_check(file, Some(&format!("c{i}")), None, 16 << 20, ctx)
                .unwrap()
        })
        .collect();
    let took = start.elapsed();
    let after = rss_kib();
    println!(
        "{:<44} {:6.0} ms for {n}   RSS {:5.1} KiB per script",
        "load 1000 scripts (30-line, one state each)",
        took.as_secs_f64() * 1000.0,
        (after - before) as f64 / n as f64
    );
    drop(checks);
}

fn reload_latency(dir: &Path) {
    let checks = dir.join("checks");
    std::fs::create_dir_all(&checks).unwrap();
    let script = |v: usize| {
        format!("return {{ name = 'saved', interval = '1h', check = function(ctx) return {{ ok = true, message = 'v{v}' }} end }}\n")
    };
    std::fs::write(checks.join("saved.lua"), script(0)).unwrap();
    let config = write(
        dir,
        "config.yaml",
        "engine:\n  state_dir: state\n  status_log_interval: 1h\nchecks: []\n",
    );
    let mut child = procs::vigia_run(
        Path::new(env!("CARGO_BIN_EXE_vigia")),
        &config,
        "vigia=debug,warn",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["event"] == "check" && v["check"] == "saved" {
                let _ = tx.send((
                    Instant::now(),
                    v["message"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::new();
    for v in 1..=10 {
        let t0 = Instant::now();
        std::fs::write(checks.join("saved.lua"), script(v)).unwrap();
        let want = format!("v{v}");
        loop {
            let (at, msg) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("no run of the new version within 10 s");
            if msg == want {
                lat.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = child.kill();
    let _ = child.wait();
    let max = lat.iter().cloned().fold(0.0, f64::max);
    let (p50, _) = quantiles(lat);
    println!(
        "{:<44} median {p50:6.0} ms   max {max:6.0} ms   (10 saves; 300 ms of it is the debounce)",
        "saved script -> first run of the new version"
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::new(dir.path());
    let factory = LuaFactory::default();
    let trivial = write(dir.path(), "trivial.lua", TRIVIAL);
    let thirty = write(dir.path(), "thirty.lua", THIRTY_LINES);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        per_run(
            "trivial script: engine overhead per run",
            &planned(&factory, &trivial, &ctx, "trivial"),
        )
        .await;
        per_run(
            "30-line script, no host calls, per run",
            &planned(&factory, &thirty, &ctx, "thirty"),
        )
        .await;
    });
    load_many(&factory, &thirty, &ctx);
    reload_latency(&dir.path().join("engine"));
}
