//! A minimal HTTP/1.1 client for plain `http://` checks: one request per connection,
//! `Connection: close`. It exists for cost: a check needs the status and, sometimes, the
//! body — not a connection pool, a dispatcher task or header maps. The request is
//! rendered once, when the check is built. TLS and redirects go through reqwest.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::tcp::io_reason;

/// The longest status or header line accepted, and the most header lines.
const MAX_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// Renders a request once; `target` is the path and query.
pub fn render_request(
    method: &str,
    host: &str,
    target: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vigia/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        out.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    out.push_str("\r\n");
    if let Some(b) = body {
        out.push_str(b);
    }
    out.into_bytes()
}

/// Sends `request` (what is left of it: the connect may have sent it) and reads the status; the body too (up to `max_body` bytes) when
/// `wants_body`. Errors are short reasons ("connection refused", "not a valid HTTP
/// response: ..."). `seen` gets the status as soon as it is read, so that a caller that
/// times out can tell a slow body from a server that never answered.
pub async fn exchange(
    stream: TcpStream,
    request: &[u8],
    wants_body: bool,
    is_head: bool,
    max_body: usize,
    seen: &std::sync::atomic::AtomicU16,
) -> Result<(u16, Vec<u8>), String> {
    let mut reader = BufReader::with_capacity(4096, stream);
    if !request.is_empty() {
        reader
            .get_mut()
            .write_all(request)
            .await
            .map_err(|e| format!("sending the request failed: {}", io_reason(&e)))?;
    }
    let mut line = String::new();
    read_line(&mut reader, &mut line).await?;
    if line.is_empty() {
        return Err("the connection closed before a complete response".into());
    }
    let status = parse_status_line(&line)?;
    seen.store(status, std::sync::atomic::Ordering::Relaxed);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for n in 0.. {
        if n > MAX_HEADERS {
            return Err("not a valid HTTP response: too many header lines".into());
        }
        line.clear();
        read_line(&mut reader, &mut line).await?;
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            if line.is_empty() {
                return Err("the connection closed before a complete response".into());
            }
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(format!(
                "not a valid HTTP response: bad header line {header:?}"
            ));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("not a valid HTTP response: Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let no_body = is_head || status < 200 || status == 204 || status == 304;
    if !wants_body || no_body {
        return Ok((status, Vec::new()));
    }
    let body = if chunked {
        read_chunked(&mut reader, max_body).await?
    } else if let Some(len) = content_length {
        let mut body = vec![0u8; len.min(max_body)];
        reader
            .read_exact(&mut body)
            .await
            .map_err(|_| "the connection closed before a complete response".to_string())?;
        body
    } else {
        let mut body = Vec::new();
        (&mut reader)
            .take(max_body as u64)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("reading the body failed: {}", io_reason(&e)))?;
        body
    };
    Ok((status, body))
}

async fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String) -> Result<(), String> {
    let n = reader
        .take(MAX_LINE)
        .read_line(line)
        .await
        .map_err(|e| format!("reading the response failed: {}", io_reason(&e)))?;
    if n as u64 == MAX_LINE && !line.ends_with('\n') {
        return Err("not a valid HTTP response: a line is too long".into());
    }
    Ok(())
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let bad = || {
        format!(
            "not a valid HTTP response: {:?}",
            line.trim_end().chars().take(80).collect::<String>()
        )
    };
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let code = rest.get(2..5).ok_or_else(bad)?;
    if !rest[1..].starts_with(' ') || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

async fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    max_body: usize,
) -> Result<Vec<u8>, String> {
    let incomplete = || "the connection closed before a complete response".to_string();
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        read_line(reader, &mut line).await?;
        if line.is_empty() {
            return Err(incomplete());
        }
        let size_text = line.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("not a valid HTTP response: chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok(body);
        }
        let keep = size.min(max_body.saturating_sub(body.len()));
        let start = body.len();
        body.resize(start + keep, 0);
        reader
            .read_exact(&mut body[start..])
            .await
            .map_err(|_| incomplete())?;
        if keep < size || body.len() >= max_body {
            // Enough to judge the body; the rest is not read.
            return Ok(body);
        }
        let mut crlf = [0u8; 2];
        reader
            .read_exact(&mut crlf)
            .await
            .map_err(|_| incomplete())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line("HTTP/1.0 503\r\n"), Ok(503));
        assert!(parse_status_line("SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line("HTTP/1.1 2x0 OK\r\n").is_err());
    }

    #[test]
    fn requests_are_rendered_once_with_their_headers() {
        let r = render_request(
            "POST",
            "127.0.0.1:8080",
            "/api?x=1",
            &[("X-Token".into(), "abc".into())],
            Some("{}"),
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /api?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("\r\nX-Token: abc\r\nContent-Length: 2\r\n\r\n{}"));
    }
}
