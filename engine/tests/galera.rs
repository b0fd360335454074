//! Against a real 3-node MariaDB Galera cluster (scripts/fixtures/galera.sh: node1 and
//! node2 in netns vg_dc1, node3 in vg_dc2 behind a latency wire):
//! - checks/galera_sync.lua, healthy and in each failing state a node can be put in;
//! - the original system's runbook (runbooks/galera_far_node.lua) end to end, with the
//!   engine running on the far node's side (in vg_dc2) next to a real nginx: latency
//!   raised → web down → proxy_pass off and node3 stopped; latency normal → node3
//!   started, Synced, proxy_pass on. Then the same with `dry_run`: nothing changes,
//!   everything is logged.
//!
//! One cluster for the whole file (~10-20 s to start), so one test drives the phases in
//! order. The web app behind nginx is vigia-mock's HTTP API, set to `slow` to stand for
//! the stalled application.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const NGINX_PORT: u16 = 18580;
const BACKEND_PORT: u16 = 18581;
const MOCK_CONTROL: u16 = 18599;

fn galera_sh() -> PathBuf {
    repo().join("scripts/fixtures/galera.sh")
}

struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn up(dir: &Path) -> Cluster {
        let started = Instant::now();
        let out = Command::new(galera_sh())
            .args(["up"])
            .arg(dir)
            .env("VIGIA_MOCK", mock_bin())
            .output()
            .unwrap();
        // Stop it whatever happens next.
        let c = Cluster {
            dir: dir.to_path_buf(),
        };
        assert!(
            out.status.success(),
            "galera.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(galera_sh())
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .env("VIGIA_MOCK", mock_bin())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "galera.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(galera_sh())
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// Runs a command inside the far node's namespace.
fn in_dc2(program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", "vg_dc2"]).arg(program);
    c
}

/// `vigia check` of checks/galera_sync.lua against node N (from the root namespace).
fn galera_check(dir: &Path, node: u32) -> (i32, String) {
    let config = dir.join(format!("galera{node}.yaml"));
    std::fs::write(
        &config,
        format!(
            "engine: {{ state_dir: state{node} }}\nchecks:\n  - name: g{node}\n    type: lua\n    script: {}\n    params: {{ node: node{node}, port: 1340{node}, password: monitor, cluster_size: 3 }}\n",
            repo().join("checks/galera_sync.lua").display()
        ),
    )
    .unwrap();
    let out = vigia(&["check", &format!("g{node}")], &config);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn wait_check(dir: &Path, node: u32, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, text) = galera_check(dir, node);
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn galera_sync_paths(cluster: &Cluster, dir: &Path) {
    for n in 1..=3 {
        let (code, text) = galera_check(dir, n);
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains(&format!("node{n}: Synced, cluster of 3")),
            "{text}"
        );
    }
    // A desynced node: its state is the first problem named.
    cluster.run(&["desync", "2", "ON"]);
    let (code, text) = galera_check(dir, 2);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("node2: Donor/Desynced"), "{text}");
    cluster.run(&["desync", "2", "OFF"]);
    assert!(galera_check(dir, 2).1.contains("node2: Synced"));
    // A node stopped: it does not answer, and the others see a smaller cluster.
    cluster.run(&["stop", "3"]);
    let (code, text) = galera_check(dir, 3);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot connect to 127.0.0.1:13403"), "{text}");
    let text = wait_check(dir, 1, "cluster size 2 < 3", Duration::from_secs(15));
    assert!(text.contains("node1: cluster size 2 < 3"), "{text}");
    // Killed and restarted: crash recovery, then an IST, and Synced again.
    cluster.run(&["start", "3", "--wait"]);
    cluster.run(&["kill", "3"]);
    // Writes while it is away: it has to catch up when it comes back.
    cluster.run(&[
        "sql",
        "1",
        "INSERT INTO vigia.t (v) VALUES ('while node3 was down'), ('and another')",
    ]);
    let started = Instant::now();
    cluster.run(&["start", "3", "--wait"]);
    eprintln!(
        "node3 back after SIGKILL in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Position recovery made the rejoin an incremental transfer, not a full copy.
    let xfer = cluster.run(&["xfer", "3"]);
    assert!(xfer.starts_with("IST"), "node3 rejoined by {xfer}");
    let text = wait_check(
        dir,
        1,
        "node1: Synced, cluster of 3",
        Duration::from_secs(30),
    );
    assert!(text.contains("node1: Synced, cluster of 3"), "{text}");
    let text = wait_check(
        dir,
        3,
        "node3: Synced, cluster of 3",
        Duration::from_secs(30),
    );
    assert!(text.contains("node3: Synced, cluster of 3"), "{text}");
}

/// The far node's side: nginx in front of the web app, both in vg_dc2.
struct FarSide {
    nginx_dir: PathBuf,
    _mock: Proc,
}

impl FarSide {
    fn start(dir: &Path) -> FarSide {
        let mut cmd = in_dc2(&mock_bin());
        cmd.args(["serve", "--http-port", &BACKEND_PORT.to_string()])
            .args(["--tcp-port", "0", "--telegram-port", "0"])
            .args([
                "--control-port",
                &MOCK_CONTROL.to_string(),
                "--slow-delay",
                "5s",
            ]);
        let mock = Proc::spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mock.stdout.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "vigia-mock did not start in vg_dc2"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let nginx_dir = dir.join("nginx");
        let out = in_dc2(&repo().join("scripts/fixtures/nginx.sh"))
            .arg("start")
            .arg(&nginx_dir)
            .args([&NGINX_PORT.to_string(), &BACKEND_PORT.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FarSide {
            nginx_dir,
            _mock: mock,
        }
    }

    fn set_app(&self, mode: &str) {
        let out = in_dc2(&mock_bin())
            .args(["set", "http", mode, "--control"])
            .arg(format!("127.0.0.1:{MOCK_CONTROL}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn switch_file(&self) -> String {
        std::fs::read_to_string(self.nginx_dir.join("conf/proxy_switch.conf")).unwrap()
    }

    /// What nginx answers on /app/ once it answers `want` (within 10 s), or what it
    /// last answered. A reload is asynchronous, and a worker may still be finishing.
    fn app_until(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.app();
            if got.contains(want) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What nginx answers on /app/ now (status line and body).
    fn app(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", "vg_dc2", "curl", "-s", "-m", "10", "-i"])
            .arg(format!("http://127.0.0.1:{NGINX_PORT}/app/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for FarSide {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/nginx.sh"))
            .arg("stop")
            .arg(&self.nginx_dir)
            .status();
    }
}

fn runbook_config(dir: &Path, cluster: &Cluster, far: &FarSide, dry_run: bool) -> PathBuf {
    let ngx = &far.nginx_dir;
    let nginx = format!(
        "[/usr/sbin/nginx, -p, {d}/, -c, {d}/conf/nginx.conf, -e, {d}/logs/error.log",
        d = ngx.display()
    );
    let state = dir.join(if dry_run { "state-dry" } else { "state" });
    let file = dir.join(if dry_run { "far-dry.yaml" } else { "far.yaml" });
    std::fs::write(
        &file,
        format!(
            r#"engine: {{ hostname: node3, state_dir: {state}, status_log_interval: 1h }}
alerting: {{ group_wait: 0s, flapping: {{ changes: 0 }} }}
remediation: {{ dry_run: {dry_run}, cooldown: 0s, max_runs: 10 }}
commands: {{ grep: /usr/bin/grep }}
actions:
  proxy_off:
    file_switch: {{ file: {ngx}/conf/proxy_switch.conf, to: {ngx}/variants/proxy_off.conf,
                   validate: {nginx}, -t, -q], reload: {nginx}, -s, reload] }}
  proxy_on:
    file_switch: {{ file: {ngx}/conf/proxy_switch.conf, to: {ngx}/variants/proxy_on.conf,
                   validate: {nginx}, -t, -q], reload: {nginx}, -s, reload] }}
  stop_db: {{ command: [{galera}, stop, {cdir}, "3"], timeout: 60s }}
  start_db: {{ command: [{galera}, start, {cdir}, "3"], timeout: 60s }}
runbooks:
  galera_far_node:
    script: {runbook}
    timeout: 5m
    params:
      proxy_file: {ngx}/conf/proxy_switch.conf
      db: {{ host: 127.0.0.1, port: 13403, user: monitor, password: monitor }}
      sync_timeout: 3m
checks:
  - name: galera_latency
    type: latency
    host: 10.231.7.1
    window: 2s
    min_samples: 2
    max_avg: 50ms
    high_for: 3s
    normal_for: 3s
    interval: 500ms
    threshold: 1
    recover_after: 1
    runbook: galera_far_node
  - name: web
    type: http
    url: http://127.0.0.1:{port}/app/
    interval: 1s
    timeout: 800ms
    threshold: 2
    runbook: galera_far_node
  - name: galera_node3
    type: lua
    script: {sync}
    interval: 1s
    timeout: 900ms
    threshold: 2
    params: {{ node: node3, port: 13403, password: monitor }}
"#,
            state = state.display(),
            ngx = ngx.display(),
            galera = galera_sh().display(),
            cdir = cluster.dir.display(),
            runbook = repo().join("runbooks/galera_far_node.lua").display(),
            sync = repo().join("checks/galera_sync.lua").display(),
            port = NGINX_PORT,
        ),
    )
    .unwrap();
    file
}

fn start_far_engine(config: &Path) -> Proc {
    let mut cmd = in_dc2(&vigia_bin());
    cmd.args(["run", "--log-format", "json", "-c"]).arg(config);
    let p = Proc::spawn(cmd);
    p.wait_for("the engine to start", Duration::from_secs(20), |e| {
        has_event(e, "started")
    });
    p
}

fn runbook_runs(e: &[serde_json::Value]) -> Vec<serde_json::Value> {
    e.iter()
        .filter(|e| e["event"] == "runbook_done")
        .cloned()
        .collect()
}

/// The state of every check in the last status line.
fn all_ok(e: &[serde_json::Value]) -> bool {
    e.iter()
        .rev()
        .find(|e| e["event"] == "status")
        .is_some_and(|s| {
            s["checks"]
                .as_object()
                .is_some_and(|m| m.len() == 3 && m.values().all(|v| v == true))
        })
}

fn full_runbook(cluster: &Cluster, dir: &Path, far: &FarSide) {
    let config = runbook_config(dir, cluster, far, false);
    let engine = start_far_engine(&config);
    // Healthy first: each check runs, nothing is wrong.
    wait_rounds(&config, 2, Duration::from_secs(30));
    assert!(
        !engine.events().iter().any(|e| e["event"] == "alert"),
        "{}",
        engine.stderr_text()
    );
    let app = far.app_until("200 OK");
    assert!(app.contains("200 OK"), "{app}");
    // The far node's latency goes up: 200 ms RTT against a 50 ms limit.
    cluster.run(&["latency", "100"]);
    engine.wait_for("latency to fail", Duration::from_secs(30), |e| {
        alerts(e, "galera_latency", "failed") == 1
    });
    let failed = engine
        .events()
        .into_iter()
        .find(|e| e["event"] == "alert" && e["check"] == "galera_latency")
        .unwrap();
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("over the limit 50ms for at least 3s"),
        "{failed}"
    );
    // Latency alone does nothing: web still answers.
    engine.wait_for_stderr("still answers: nothing to do yet", Duration::from_secs(20));
    assert!(far.switch_file().contains("proxy_pass"));
    // The application stalls: web fails, and the runbook acts.
    far.set_app("slow");
    // The alert carries the transcript; it is printed once the run is over.
    engine.wait_for_stderr(
        "✓ runbook on_failed: proxy_pass off, local MariaDB stopped",
        Duration::from_secs(60),
    );
    let err = engine.stderr_text();
    let runs = runbook_runs(&engine.events());
    assert!(
        runs.len() >= 2 && runs.iter().all(|r| r["ok"] == true),
        "{err}"
    );
    assert!(
        err.contains("· latency high, web down, proxy_pass on: taking this node out"),
        "{err}"
    );
    assert!(err.contains("✓ proxy_off: switch"), "{err}");
    assert!(err.contains("✓ stop_db:"), "{err}");
    assert!(
        err.contains("✓ runbook on_failed: proxy_pass off, local MariaDB stopped"),
        "{err}"
    );
    assert!(
        !far.switch_file().contains("proxy_pass"),
        "{}",
        far.switch_file()
    );
    let app = far.app_until("503");
    assert!(
        app.contains("503") && app.contains("proxy disabled"),
        "{app}"
    );
    assert!(cluster.run(&["status"]).contains("node3: DOWN"));
    engine.wait_for("node3's own check to fail", Duration::from_secs(20), |e| {
        alerts(e, "galera_node3", "failed") == 1
    });
    // Latency back to normal: node3 comes back, Synced, and proxy_pass is on again.
    far.set_app("healthy");
    cluster.run(&["latency", "0"]);
    // The recovered alert carries the transcript; it is printed once the run is over.
    engine.wait_for_stderr(
        "✓ runbook on_recovered: MariaDB Synced, proxy_pass back on",
        Duration::from_secs(180),
    );
    assert!(runbook_runs(&engine.events())
        .iter()
        .any(|r| r["check"] == "galera_latency"
            && r["transition"] == "recovered"
            && r["ok"] == true));
    let err = engine.stderr_text();
    assert!(err.contains("✓ start_db:"), "{err}");
    assert!(err.contains("· MariaDB is Synced"), "{err}");
    assert!(err.contains("✓ proxy_on: switch"), "{err}");
    assert!(
        err.contains("✓ runbook on_recovered: MariaDB Synced, proxy_pass back on"),
        "{err}"
    );
    assert!(far.switch_file().contains("proxy_pass"));
    assert!(cluster
        .run(&["status"])
        .contains("node3: wsrep_local_recv_queue=0 wsrep_local_state_comment=Synced"));
    engine.wait_for(
        "every check to be OK again",
        Duration::from_secs(30),
        all_ok,
    );
    let app = far.app_until("200 OK");
    assert!(app.contains("200 OK"), "{app}");
}

fn dry_runbook(cluster: &Cluster, dir: &Path, far: &FarSide) {
    let config = runbook_config(dir, cluster, far, true);
    let before = far.switch_file();
    let engine = start_far_engine(&config);
    wait_rounds(&config, 1, Duration::from_secs(30));
    cluster.run(&["latency", "100"]);
    far.set_app("slow");
    engine.wait_for("the dry run to act", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e["event"] == "action" && e["action"] == "stop_db")
    });
    engine.wait_for_stderr(
        "✓ runbook on_failed: proxy_pass off, local MariaDB stopped",
        Duration::from_secs(10),
    );
    let err = engine.stderr_text();
    assert!(err.contains("· proxy_off: would run: switch"), "{err}");
    assert!(err.contains("· stop_db: would run: "), "{err}");
    // Nothing changed: the file, nginx, node3.
    assert_eq!(far.switch_file(), before);
    assert!(cluster
        .run(&["status"])
        .contains("node3: wsrep_local_recv_queue=0 wsrep_local_state_comment=Synced"));
    let actions: Vec<_> = engine
        .events()
        .into_iter()
        .filter(|e| e["event"] == "action")
        .collect();
    assert!(actions.iter().all(|a| a["dry_run"] == true), "{actions:?}");
    // Back to normal: proxy_pass was never off and node3 is Synced: nothing to undo.
    far.set_app("healthy");
    cluster.run(&["latency", "0"]);
    engine.wait_for_stderr(
        "✓ runbook on_recovered: proxy_pass is on and MariaDB is Synced: nothing to undo",
        Duration::from_secs(60),
    );
    let app = far.app_until("200 OK");
    assert!(app.contains("200 OK"), "{app}");
    assert_eq!(far.switch_file(), before);
}

#[test]
fn galera_checks_and_the_far_node_runbook_against_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(&dir.path().join("galera"));
    galera_sync_paths(&cluster, dir.path());
    let far = FarSide::start(dir.path());
    full_runbook(&cluster, dir.path(), &far);
    dry_runbook(&cluster, dir.path(), &far);
}
