//! Small helpers shared by the network plugins: ports, host names, addresses, timing.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use vigia_api::ConfigError;

/// Checks a port number read as a wider integer so that `70000` is reported as a
/// semantic error next to the others, not as a type error that stops parsing.
pub fn check_port(port: u32, path: &str, errors: &mut Vec<ConfigError>) {
    if port == 0 || port > 65535 {
        errors.push(ConfigError::new(
            path,
            format!("{port} is not a valid port (1-65535)"),
        ));
    }
}

/// A host is an IP address or a DNS name. `10.0.0.300` is neither.
pub fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("the host is empty".into());
    }
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Some(format!("`{host}` is not a valid IPv4 address"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Some(format!(
            "`{host}` is neither an IP address nor a valid host name"
        ));
    }
    None
}

/// Resolves `host:port`, without a DNS lookup when the host is an address.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// Reads a pipe to its end, keeping the first `cap` bytes (the rest is read and
/// dropped, so a chatty child never blocks on a full pipe).
pub async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, cap: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

/// Milliseconds since `start`, as a float with µs precision.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Formats milliseconds for messages: `0.31 ms`, `12.4 ms`, `1503 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 0.1 {
        format!("{ms:.3} ms")
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Quotes a reply for a message: at most 120 characters, control characters escaped.
pub fn quote_reply(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(120)
        .flat_map(|c| c.escape_debug())
        .collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_problem("10.0.0.5"), None);
        assert_eq!(host_problem("::1"), None);
        assert_eq!(host_problem("db-1.shop.example"), None);
        assert_eq!(
            host_problem("10.0.0.300").unwrap(),
            "`10.0.0.300` is not a valid IPv4 address"
        );
        assert!(host_problem("bad host").is_some());
        assert!(host_problem("-x.example").is_some());
    }
}
