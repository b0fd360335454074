//! What the benchmarks share: the engine's process (CPU, memory, stopping it) and the
//! local servers the checks point at.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Targets {
    pub tcp: u16,
    pub http: u16,
    /// A listener with a full accept queue that never accepts: SYNs are dropped, so
    /// connects time out (and the few that got in never get a reply).
    pub dead: u16,
    pub accepted: Arc<AtomicU64>,
}

/// A listener on 127.0.0.1 (a free port) with an accept queue of `backlog`.
pub fn listener(backlog: i32) -> std::net::TcpListener {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(backlog).unwrap();
    sock.into()
}

/// The mock servers of `vigia-mock` in this process, on free ports.
pub fn start_mocks(rt: &tokio::runtime::Runtime) -> Arc<vigia_mocks::Mocks> {
    rt.block_on(vigia_mocks::start(vigia_mocks::Options {
        http: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        control: "127.0.0.1:0".parse().unwrap(),
        slow_delay: Duration::from_secs(1),
        telegram: "127.0.0.1:0".parse().unwrap(),
        telegram_rate: 0,
    }))
    .unwrap()
}

pub async fn start_targets() -> Targets {
    let accepted = Arc::new(AtomicU64::new(0));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_sock = listener(0);
    let dead = dead_sock.local_addr().unwrap().port();
    std::mem::forget(dead_sock);
    let ports = (
        tcp.local_addr().unwrap().port(),
        http.local_addr().unwrap().port(),
    );
    let a = accepted.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = tcp.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        }
    });
    let a = accepted.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = http.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let mut got = 0;
                    loop {
                        match s.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || got == buf.len() {
                            break;
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        }
    });
    Targets {
        tcp: ports.0,
        http: ports.1,
        dead,
        accepted,
    }
}

pub fn clk_tck() -> f64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// user + sys CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / clk_tck()
}

pub fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vigia run -c CONFIG` without the console channel, JSON log at `level`, stderr
/// inherited and stdout thrown away (a caller that reads the log pipes it).
pub fn vigia_run(bin: &Path, config: &Path, level: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "run",
        "--no-console",
        "--log-format",
        "json",
        "--log-level",
        level,
        "-c",
    ])
    .arg(config)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    cmd
}

/// `vigia run` at log level warn: (pid, the guard that stops it).
pub fn spawn_vigia(bin: &Path, config: &Path) -> (u32, Guard) {
    let child = vigia_run(bin, config, "warn").spawn().unwrap();
    (child.id(), Guard(child))
}
