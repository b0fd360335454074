//! `nagios` against real plugins from Debian's monitoring-plugins-basic (scripts/test.sh
//! installs it), and `process` against real processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vigia_api::{BuildContext, CheckFactory, CheckOutcome, Node, RunContext, Severity};
use vigia_plugins::nagios::NagiosFactory;
use vigia_plugins::process::ProcessFactory;

const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn ctx() -> BuildContext {
    let mut c = BuildContext::new(std::env::temp_dir());
    let mut commands = BTreeMap::new();
    for p in ["check_dummy", "check_tcp", "check_http", "check_disk"] {
        commands.insert(p.to_string(), PathBuf::from(PLUGINS).join(p));
    }
    c.commands = Arc::new(commands);
    c
}

async fn run(factory: &dyn CheckFactory, yaml: &str) -> CheckOutcome {
    let node = Node::parse(yaml).unwrap();
    let built = factory
        .build("t", &node, "checks[0]", &ctx())
        .unwrap_or_else(|e| panic!("{e}"));
    let check = built.checks[0].check.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        check.run(RunContext {
            check: "t",
            timeout: Duration::from_secs(10),
        }),
    )
    .await
    .unwrap()
}

fn plugins_installed() {
    assert!(
        PathBuf::from(PLUGINS).join("check_tcp").exists(),
        "{PLUGINS}/check_tcp is missing: run the suite with scripts/test.sh, which installs monitoring-plugins-basic"
    );
}

#[tokio::test]
async fn exit_codes_map_to_severities() {
    plugins_installed();
    let cases = [
        ("0", Severity::Ok, true),
        ("1", Severity::Warning, false),
        ("2", Severity::Critical, false),
        ("3", Severity::Unknown, false),
    ];
    for (code, severity, ok) in cases {
        let o = run(
            &NagiosFactory,
            &format!("command: check_dummy\nargs: [\"{code}\", \"said {code}\"]"),
        )
        .await;
        assert_eq!((o.severity, o.is_ok()), (severity, ok), "{o:?}");
        assert!(
            o.message.ends_with(&format!("said {code}")),
            "{}",
            o.message
        );
    }
    let o = run(
        &NagiosFactory,
        "command: check_dummy\nargs: [\"1\", \"meh\"]\nwarning: ok",
    )
    .await;
    assert_eq!((o.severity, o.is_ok()), (Severity::Ok, true));
    assert_eq!(o.message, "WARNING (counted as OK): WARNING: meh");
}

#[tokio::test]
async fn check_tcp_against_a_real_port_and_a_closed_one() {
    plugins_installed();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let o = run(
        &NagiosFactory,
        &format!("command: check_tcp\nargs: [\"-H\", \"127.0.0.1\", \"-p\", \"{port}\"]"),
    )
    .await;
    assert_eq!(o.severity, Severity::Ok, "{o:?}");
    assert!(o.message.starts_with("TCP OK"), "{}", o.message);
    assert!(
        o.value.is_some_and(|v| v >= 0.0),
        "the response time from perfdata: {o:?}"
    );
    drop(l);
    let o = run(
        &NagiosFactory,
        &format!("command: check_tcp\nargs: [\"-H\", \"127.0.0.1\", \"-p\", \"{port}\"]"),
    )
    .await;
    assert_eq!(o.severity, Severity::Critical, "{o:?}");
    assert!(o.message.contains("Connection refused"), "{}", o.message);
}

#[tokio::test]
async fn check_http_and_check_disk() {
    plugins_installed();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}")
                .await;
        }
    });
    let o = run(&NagiosFactory, &format!("command: check_http\nargs: [\"-H\", \"127.0.0.1\", \"-p\", \"{port}\", \"-u\", \"/health\", \"-s\", \"ok\"]")).await;
    assert_eq!(o.severity, Severity::Ok, "{o:?}");
    assert!(o.message.starts_with("HTTP OK"), "{}", o.message);
    let o = run(&NagiosFactory, &format!("command: check_http\nargs: [\"-H\", \"127.0.0.1\", \"-p\", \"{port}\", \"-s\", \"degraded\"]")).await;
    assert_eq!(o.severity, Severity::Critical, "{o:?}");
    // The root filesystem has some space: a 0% threshold cannot be crossed.
    let o = run(
        &NagiosFactory,
        "command: check_disk\nargs: [\"-w\", \"0%\", \"-c\", \"0%\", \"-p\", \"/\"]",
    )
    .await;
    assert_eq!(o.severity, Severity::Ok, "{o:?}");
    assert!(o.message.starts_with("DISK OK"), "{}", o.message);
}

#[test]
fn a_plugin_outside_the_allow_list_is_a_config_error() {
    let node = Node::parse("command: check_tpc\nargs: []").unwrap();
    let e = NagiosFactory
        .build("t", &node, "checks[0]", &ctx())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "checks[0].command: `check_tpc` is not in the `commands:` allow-list (did you mean `check_tcp`?)"
    );
}

/// A child we can find: `sleep` with an argument nobody else uses.
struct Sleeper(std::process::Child, String);

impl Sleeper {
    fn start() -> Sleeper {
        let arg = format!("{}.{}", 600 + std::process::id() % 100, rand_suffix());
        let child = Command::new("sleep").arg(&arg).spawn().unwrap();
        Sleeper(child, format!("sleep {arg}"))
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 100_000
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn process_by_name_command_line_and_pid_file() {
    let mut s = Sleeper::start();
    std::thread::sleep(Duration::from_millis(100));
    let o = run(
        &ProcessFactory,
        &format!("process: sleep\ncmdline: \"{}\"", s.1),
    )
    .await;
    assert!(o.is_ok(), "{o:?}");
    assert_eq!(
        o.message,
        format!("1 process `sleep` running (pid {})", s.0.id())
    );
    let o = run(&ProcessFactory, &format!("cmdline: \"{}\"\nmin: 2", s.1)).await;
    assert!(
        o.message.starts_with(&format!(
            "1 process with `{}` in its command line running, fewer than 2",
            s.1
        )),
        "{}",
        o.message
    );
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    std::fs::write(&pid_file, format!("{}\n", s.0.id())).unwrap();
    let yaml = format!("pid_file: {}\nprocess: sleep", pid_file.display());
    let o = run(&ProcessFactory, &yaml).await;
    assert_eq!(o.message, format!("pid {} (sleep) is running", s.0.id()));
    // A pid file naming another program: a reused pid.
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let o = run(&ProcessFactory, &yaml).await;
    assert!(
        !o.is_ok() && o.message.contains("its pid was reused"),
        "{}",
        o.message
    );
    // The process vanishes.
    std::fs::write(&pid_file, format!("{}\n", s.0.id())).unwrap();
    let _ = s.0.kill();
    let _ = s.0.wait();
    let o = run(&ProcessFactory, &yaml).await;
    assert_eq!(
        o.message,
        format!(
            "pid {} from {} is not running (the process vanished)",
            s.0.id(),
            pid_file.display()
        )
    );
    let o = run(&ProcessFactory, &format!("cmdline: \"{}\"", s.1)).await;
    assert_eq!(
        o.message,
        format!("no process with `{}` in its command line is running", s.1)
    );
    std::fs::remove_file(&pid_file).unwrap();
    let o = run(&ProcessFactory, &yaml).await;
    assert_eq!(
        o.message,
        format!("the pid file {} does not exist", pid_file.display())
    );
    // A FIFO in its place (nothing writes to it): said at once, the thread not held.
    let c = std::ffi::CString::new(pid_file.to_str().unwrap()).unwrap();
    // SAFETY: a plain syscall on a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = run(&ProcessFactory, &yaml).await;
    assert_eq!(
        o.message,
        format!(
            "the pid file {} is a FIFO, not a regular file",
            pid_file.display()
        )
    );
    let o = run(&ProcessFactory, "pid_file: /dev/zero").await;
    assert_eq!(
        o.message,
        "the pid file /dev/zero is a character device, not a regular file"
    );
}

#[test]
fn process_config_problems() {
    let node = Node::parse("min: 2").unwrap();
    let e = ProcessFactory
        .build("t", &node, "checks[0]", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "checks[0]: say which process: `process: NAME`, `cmdline: TEXT` or `pid_file: PATH`"
    );
    let node = Node::parse("process: a-very-long-process-name").unwrap();
    let e = ProcessFactory
        .build("t", &node, "checks[0]", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the kernel keeps 1 to 15 characters"), "{e}");
}

/// A redis-server of the test's own (Debian's redis-server), killed when dropped.
struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(replica_of: Option<u16>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null());
        if let Some(p) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server (Debian's redis-server package) must be installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_replication_against_a_real_primary_and_replica() {
    use vigia_plugins::redis::RedisFactory;
    let primary = Redis::start(None);
    let replica = Redis::start(Some(primary.port));
    // The replica links up after its first sync (a few hundred ms).
    let yaml = format!("host: 127.0.0.1\nport: {}\nrole: replica", replica.port);
    let mut o = run(&RedisFactory, &yaml).await;
    for _ in 0..50 {
        if o.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = run(&RedisFactory, &yaml).await;
    }
    assert!(o.is_ok(), "{o:?}");
    assert!(
        o.message
            .contains(&format!("replica of 127.0.0.1:{}, link up", primary.port)),
        "{}",
        o.message
    );
    // The primary sees its replica online once the first sync's bgsave is over.
    let yaml_primary = format!("host: 127.0.0.1\nport: {}\nrole: primary", primary.port);
    let mut o = run(&RedisFactory, &yaml_primary).await;
    for _ in 0..50 {
        if o.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = run(&RedisFactory, &yaml_primary).await;
    }
    assert!(o.is_ok(), "{o:?}");
    assert!(
        o.message.contains("primary with 1 replica online"),
        "{}",
        o.message
    );
    let o = run(
        &RedisFactory,
        &format!("host: 127.0.0.1\nport: {}\nmin_replicas: 2", primary.port),
    )
    .await;
    assert!(
        o.message
            .contains("primary with 1 replica online, fewer than 2"),
        "{}",
        o.message
    );
    let o = run(
        &RedisFactory,
        &format!("host: 127.0.0.1\nport: {}\nrole: replica", primary.port),
    )
    .await;
    assert!(
        o.message
            .ends_with("is a primary, expected a replica (a failover?)"),
        "{}",
        o.message
    );
    // The primary dies: the replica says its link is down.
    let primary_port = primary.port;
    drop(primary);
    let mut o = run(&RedisFactory, &yaml).await;
    for _ in 0..50 {
        if !o.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = run(&RedisFactory, &yaml).await;
    }
    assert!(!o.is_ok());
    assert!(
        o.message.contains(&format!(
            "the link to its primary 127.0.0.1:{primary_port} is down"
        )),
        "{}",
        o.message
    );
    let o = run(
        &RedisFactory,
        &format!("host: 127.0.0.1\nport: {primary_port}"),
    )
    .await;
    assert!(o.message.contains("connection refused"), "{}", o.message);
}
