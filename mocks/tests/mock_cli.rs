//! The `vigia-mock` binary as a process: ports line, mode switches, refusing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use vigia_mocks::Ports;

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn set(control: u16, service: &str, mode: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "set",
            service,
            mode,
            "--control",
            &format!("127.0.0.1:{control}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_switch_and_refuse() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "serve",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--control-port",
            "0",
            "--telegram-port",
            "0",
            "--slow-delay",
            "300ms",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _guard = Child(child);
    let ports: Ports = serde_json::from_str(&line).unwrap();

    let r = http_get(ports.http, "/health").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with(r#"{"status":"ok"}"#), "{r}");

    set(ports.control, "http", "failing");
    assert!(http_get(ports.http, "/health")
        .unwrap()
        .starts_with("HTTP/1.1 500"));

    // The TCP line service.
    let mut s = TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
    s.write_all(b"PING\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert_eq!(reply, "OK PING\n");
    set(ports.control, "tcp", "failing");
    s.write_all(b"PING\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    assert_eq!(reply, "ERR PING\n");

    set(ports.control, "http", "refusing");
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", ports.http)).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "the HTTP port should refuse connections");
    set(ports.control, "http", "healthy");
    let mut back = false;
    for _ in 0..50 {
        if let Ok(r) = http_get(ports.http, "/health") {
            back = r.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(back, "the HTTP port should answer again");

    set(ports.control, "http", "slow");
    let t = std::time::Instant::now();
    assert!(http_get(ports.http, "/health")
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() >= Duration::from_millis(300));

    let bad = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "set",
            "ftp",
            "healthy",
            "--control",
            &format!("127.0.0.1:{}", ports.control),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown service `ftp`"));
}
