//! The scripts shipped in checks/, run against real servers with the expected outcomes
//! kept beside them in checks/tests/<script>.yaml (see that folder for the format).
//! Servers: vigia-mock in-process (HTTP + TCP line service, switchable), and a MariaDB
//! started by scripts/fixtures/mariadb.sh for the cases that say `needs: mariadb`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigia_api::{BuildContext, Node, RunContext};
use vigia_lua::LuaFactory;
use vigia_mocks::{Mocks, Mode, Options};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    script: String,
    #[serde(default)]
    needs: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    params: serde_json::Value,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Run {
    #[serde(default)]
    mock: Option<std::collections::BTreeMap<String, String>>,
    /// SQL run as root on the replica (mysql_replication cases) before the run.
    #[serde(default)]
    replica_sql: Option<String>,
    ok: bool,
    #[serde(default)]
    message: Option<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A MariaDB of our own, stopped when dropped.
struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
}

impl MariaDb {
    fn start() -> MariaDb {
        MariaDb::start_as(None)
    }

    fn start_as(role: Option<&str>) -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(repo().join("scripts/fixtures/mariadb.sh"))
            .args(["start", dir.path().to_str().unwrap(), &port.to_string()])
            .args(role)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/fixtures/mariadb.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        MariaDb { dir, port }
    }
}

/// A HAProxy of our own (scripts/fixtures/haproxy.sh), stopped when dropped.
struct HaProxy {
    dir: tempfile::TempDir,
    stats: u16,
}

impl HaProxy {
    fn start(up: u16, down: u16) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let stats = free_port();
        let out = Command::new(repo().join("scripts/fixtures/haproxy.sh"))
            .arg("start")
            .arg(dir.path())
            .args([stats.to_string(), up.to_string(), down.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/fixtures/haproxy.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Health checks every 200 ms: wait until HAProxy has marked both servers of the
        // fixture that point at the closed port (be_app/web2, be_dead/web3) DOWN.
        let start = std::time::Instant::now();
        loop {
            let csv = Command::new("curl")
                .args(["-s", &format!("http://127.0.0.1:{stats}/stats;csv")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let down = |server: &str| {
                csv.lines()
                    .any(|l| l.starts_with(server) && l.contains(",DOWN,"))
            };
            if down("be_app,web2,") && down("be_dead,web3,") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "HAProxy marked no server DOWN:\n{csv}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HaProxy { dir, stats }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/haproxy.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

impl MariaDb {
    fn query(&self, sql: &str) -> String {
        let out = Command::new(repo().join("scripts/fixtures/mariadb.sh"))
            .args(["sql", self.dir.path().to_str().unwrap(), sql])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sql(&self, sql: &str) {
        let out = Command::new(repo().join("scripts/fixtures/mariadb.sh"))
            .args(["sql", self.dir.path().to_str().unwrap(), sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/fixtures/mariadb.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

async fn run_cases(name: &str) {
    let file = repo().join("checks/tests").join(format!("{name}.yaml"));
    let mut text = std::fs::read_to_string(&file).unwrap();
    let mocks: Arc<Mocks> = vigia_mocks::start(Options {
        http: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        control: "127.0.0.1:0".parse().unwrap(),
        slow_delay: Duration::from_millis(300),
        telegram: "127.0.0.1:0".parse().unwrap(),
        telegram_rate: 0,
    })
    .await
    .unwrap();
    let db = text.contains("needs: mariadb\n").then(MariaDb::start);
    let closed = free_port();
    let pair = text.contains("needs: mariadb_replication").then(|| {
        let primary = MariaDb::start_as(Some("primary"));
        let replica = MariaDb::start_as(Some(&format!("replica-of={}", primary.port)));
        // Wait until the replica's SQL and I/O threads run.
        let start = std::time::Instant::now();
        while !replica
            .query("SHOW SLAVE STATUS\\G")
            .contains("Slave_SQL_Running: Yes")
        {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the replica does not run"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (primary, replica)
    });
    let haproxy = text
        .contains("needs: haproxy")
        .then(|| HaProxy::start(mocks.http.port(), closed));
    let subst = [
        ("$HTTP_PORT", mocks.http.port()),
        ("$TCP_PORT", mocks.tcp.port()),
        ("$CLOSED_PORT", closed),
        ("$MYSQL_PORT", db.as_ref().map(|d| d.port).unwrap_or(1)),
        (
            "$HAPROXY_STATS",
            haproxy.as_ref().map(|h| h.stats).unwrap_or(1),
        ),
        (
            "$MYSQL_PRIMARY_PORT",
            pair.as_ref().map(|p| p.0.port).unwrap_or(1),
        ),
        (
            "$MYSQL_REPLICA_PORT",
            pair.as_ref().map(|p| p.1.port).unwrap_or(1),
        ),
    ];
    for (k, v) in subst {
        text = text.replace(k, &v.to_string());
    }
    let node = Node::parse(&text).unwrap();
    let cases: CaseFile = node
        .deserialize("")
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let _ = &cases.needs;
    let factory = LuaFactory::default();
    let ctx = BuildContext::new(repo());
    let script = repo().join("checks").join(&cases.script);
    let mut failures = Vec::new();
    for case in &cases.cases {
        let built = factory
            .build_check(&script, Some("t"), Some(&case.params), 16 << 20, &ctx)
            .unwrap_or_else(|e| panic!("{e}"));
        let timeout = built.settings.timeout.unwrap_or(Duration::from_secs(5));
        for service in ["http", "tcp"] {
            mocks.set(service, Mode::Healthy).unwrap();
        }
        for (i, run) in case.runs.iter().enumerate() {
            if let (Some(sql), Some((_, replica))) = (&run.replica_sql, &pair) {
                replica.sql(sql);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for (service, mode) in run.mock.iter().flatten() {
                mocks.set(service, mode.parse().unwrap()).unwrap();
            }
            if run.mock.is_some() || i == 0 {
                // A listener closed by `refusing` is bound again in the background.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let outcome = built
                .check
                .run(RunContext {
                    check: "t",
                    timeout,
                })
                .await;
            let message_ok = run
                .message
                .as_ref()
                .is_none_or(|m| outcome.message.contains(m.as_str()));
            if outcome.is_ok() != run.ok || !message_ok {
                failures.push(format!(
                    "{} / {} / run {}: expected ok={} with {:?}, got ok={}: {}",
                    cases.script,
                    case.name,
                    i + 1,
                    run.ok,
                    run.message.as_deref().unwrap_or(""),
                    outcome.is_ok(),
                    outcome.message
                ));
            }
        }
    }
    drop(db);
    drop(haproxy);
    drop(pair);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn atto_socket() {
    run_cases("atto_socket").await;
}

#[tokio::test]
async fn web() {
    run_cases("web").await;
}

#[tokio::test]
async fn latency_window() {
    run_cases("latency_window").await;
}

#[tokio::test]
async fn galera_sync() {
    run_cases("galera_sync").await;
}

#[tokio::test]
async fn mysql_replication() {
    run_cases("mysql_replication").await;
}

#[tokio::test]
async fn haproxy() {
    run_cases("haproxy").await;
}

/// Scripts whose component needs a fixture of its own (two csync2 hosts, keepalived
/// in namespaces) are tested by an engine test that starts it, named here.
const TESTED_IN_ENGINE: &[(&str, &str)] = &[
    ("csync2", "engine/tests/csync2.rs"),
    ("vrrp", "engine/tests/keepalived.rs"),
];

/// Every shipped runbook is driven end to end by an engine test.
const RUNBOOKS_TESTED_IN: &[(&str, &str)] = &[("galera_far_node", "engine/tests/galera.rs")];

#[test]
fn every_runbook_has_an_end_to_end_test() {
    for script in vigia_lua::scripts_in(&repo().join("runbooks")) {
        let name = script.file_stem().unwrap().to_str().unwrap().to_string();
        let Some((_, test)) = RUNBOOKS_TESTED_IN.iter().find(|(n, _)| *n == name) else {
            panic!("runbooks/{name}.lua has no end-to-end test listed in RUNBOOKS_TESTED_IN");
        };
        let text = std::fs::read_to_string(repo().join(test)).unwrap();
        assert!(
            text.contains(&format!("runbooks/{name}.lua")),
            "{test} does not use runbooks/{name}.lua"
        );
    }
}

/// Every shipped script has its cases, and every one of them is run above.
#[test]
fn every_script_has_cases() {
    let run_above = [
        "atto_socket",
        "web",
        "latency_window",
        "galera_sync",
        "haproxy",
        "mysql_replication",
    ];
    for script in vigia_lua::scripts_in(&repo().join("checks")) {
        let name = script.file_stem().unwrap().to_str().unwrap().to_string();
        if let Some((_, test)) = TESTED_IN_ENGINE.iter().find(|(n, _)| *n == name) {
            let text = std::fs::read_to_string(repo().join(test)).unwrap();
            assert!(
                text.contains(&format!("checks/{name}.lua")),
                "{test} does not use checks/{name}.lua"
            );
            continue;
        }
        assert!(
            repo()
                .join("checks/tests")
                .join(format!("{name}.yaml"))
                .exists(),
            "checks/{name}.lua has no checks/tests/{name}.yaml"
        );
        assert!(
            run_above.contains(&name.as_str()),
            "checks/tests/{name}.yaml is not run by lua/tests/scripts.rs"
        );
    }
}
