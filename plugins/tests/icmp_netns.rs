//! ping, latency (icmp) and terminals against the real kernel ICMP stack, inside a
//! network namespace this test creates (so it can make loopback stop answering without
//! touching the machine's own settings). Needs root and iproute2, as CI has.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vigia_api::{BuildContext, Check, CheckFactory, CheckOutcome, Node, RunContext};
use vigia_plugins::icmp::Icmp;
use vigia_plugins::latency::LatencyFactory;
use vigia_plugins::ping::PingFactory;
use vigia_plugins::terminals::TerminalsFactory;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("vigia-t-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn ignore_pings(&self, ignore: bool) {
        let v = format!("net.ipv4.icmp_echo_ignore_all={}", u8::from(ignore));
        run(&["ip", "netns", "exec", &self.0, "sysctl", "-q", "-w", &v]);
    }

    /// Runs `f` on a thread inside the namespace: sockets made there belong to it.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e} (this test needs root and iproute2)"));
    assert!(
        out.status.success(),
        "{argv:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ctx() -> BuildContext {
    BuildContext::new(std::env::temp_dir())
}

/// Builds with `factory` and runs every built check once, in a fresh runtime.
fn run_checks(factory: impl CheckFactory, yaml: &str) -> Vec<CheckOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::parse(yaml).unwrap();
    rt.block_on(async {
        let built = factory.build("t", &node, "checks[0]", &ctx()).unwrap();
        let mut out = Vec::new();
        for b in built.checks {
            let c: Arc<dyn Check> = b.check;
            let ctx = RunContext {
                check: "t",
                timeout: Duration::from_secs(5),
            };
            out.push(c.run(ctx).await);
        }
        out
    })
}

fn ping() -> PingFactory {
    PingFactory {
        icmp: Arc::new(Icmp::default()),
    }
}

#[test]
fn ping_answers_then_loses_everything() {
    let ns = Netns::new("ping");
    let ok = ns.run(|| run_checks(ping(), "host: 127.0.0.1\ncount: 3\nping_interval: 10ms\n"));
    assert!(ok[0].is_ok(), "{:?}", ok[0]);
    assert!(
        ok[0].message.starts_with("127.0.0.1: 3/3 replies, avg "),
        "{}",
        ok[0].message
    );
    assert!(ok[0].value.unwrap() > 0.0);

    ns.ignore_pings(true);
    let yaml = "host: 127.0.0.1\ncount: 2\nping_interval: 10ms\nping_timeout: 200ms\n";
    let lost = ns.run(move || run_checks(ping(), yaml));
    assert_eq!(
        lost[0].message,
        "127.0.0.1: no reply to 2 pings (100% loss)"
    );
    assert!(!lost[0].is_ok());
}

#[test]
fn latency_over_icmp_and_terminals_from_a_file() {
    let ns = Netns::new("lat");
    let lat = ns.run(|| {
        let f = LatencyFactory {
            icmp: Arc::new(Icmp::default()),
        };
        run_checks(f, "host: 127.0.0.1\nmax_avg: 100ms\nmin_samples: 1\n")
    });
    assert!(lat[0].is_ok(), "{:?}", lat[0]);
    assert!(
        lat[0]
            .message
            .contains("average round trip over the last 5m"),
        "{}",
        lat[0].message
    );

    let dir = tempfile::tempdir().unwrap();
    let ips = dir.path().join("ips.txt");
    std::fs::write(&ips, "127.0.0.11 Till 1\n127.0.0.12\n").unwrap();
    let yaml = format!("file: {}\ncount: 1\nping_timeout: 200ms\n", ips.display());
    let terminals = || TerminalsFactory {
        icmp: Arc::new(Icmp::default()),
    };
    let y = yaml.clone();
    let up = ns.run(move || run_checks(terminals(), &y));
    assert_eq!(up.len(), 2);
    assert!(up.iter().all(CheckOutcome::is_ok), "{up:?}");
    ns.ignore_pings(true);
    let down = ns.run(move || run_checks(terminals(), &yaml));
    assert_eq!(
        down[0].message,
        "Till 1 (127.0.0.11): no reply to 1 ping (100% loss)"
    );
    assert_eq!(
        down[1].message,
        "127.0.0.12: no reply to 1 ping (100% loss)"
    );
}
