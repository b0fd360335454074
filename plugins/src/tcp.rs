//! `type: tcp` — connect to a port; optionally send a request and expect a reply.
//!
//! The original system's `atto_socket` check is a `tcp` check with a send/expect exchange:
//! ```yaml
//! - name: atto_socket
//!   type: tcp
//!   host: 127.0.0.1
//!   port: 7000
//!   send: "PING\n"
//!   expect: "OK"
//! ```

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use regex::Regex;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigErrors, Dur, Node, RunContext,
};

use crate::net::{check_port, host_problem, ms_since, quote_reply, Host, Ms};

/// How much of a reply is read at most while looking for the expected text.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Host name or IP address to connect to.
    pub host: String,
    /// TCP port (1-65535).
    pub port: u32,
    /// Text sent once connected, e.g. "PING\n" (YAML double quotes understand \n).
    #[serde(default)]
    pub send: Option<String>,
    /// The reply must contain this text.
    #[serde(default)]
    pub expect: Option<String>,
    /// The reply must match this regular expression.
    #[serde(default)]
    pub expect_regex: Option<String>,
    /// How long to wait for the expected reply after sending (default: until the
    /// check's timeout).
    #[serde(default)]
    pub read_timeout: Option<Dur>,
}

impl TcpConfig {
    /// Semantic checks, no IO. Every problem is reported, each with its path.
    pub fn validate(&self, path: &str) -> Vec<vigia_api::ConfigError> {
        let mut errors = Vec::new();
        if let Some(p) = host_problem(&self.host) {
            errors.push(vigia_api::ConfigError::new(&join_path(path, "host"), p));
        }
        check_port(self.port, &join_path(path, "port"), &mut errors);
        if let Some(re) = &self.expect_regex {
            if let Err(e) = Regex::new(re) {
                errors.push(vigia_api::ConfigError::new(
                    &join_path(path, "expect_regex"),
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
        if self.expect.is_some() && self.expect_regex.is_some() {
            errors.push(vigia_api::ConfigError::new(
                path,
                "give either `expect` or `expect_regex`, not both",
            ));
        }
        errors
    }
}

/// What a reply must look like.
#[derive(Debug, Clone)]
pub enum Expect {
    Contains(String),
    Matches(Regex),
}

impl Expect {
    fn found(&self, reply: &[u8]) -> bool {
        match self {
            Expect::Contains(s) => reply.windows(s.len().max(1)).any(|w| w == s.as_bytes()),
            Expect::Matches(re) => re.is_match(&String::from_utf8_lossy(reply)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Contains(s) => format!("does not contain {}", quote_reply(s.as_bytes())),
            Expect::Matches(re) => format!("does not match /{}/", re.as_str()),
        }
    }
}

pub struct TcpCheck {
    pub host: Host,
    pub port: u16,
    pub send: Option<Vec<u8>>,
    pub expect: Option<Expect>,
    pub read_timeout: Option<Duration>,
}

/// The result of a connect (+ exchange), shared with the latency plugin and the Lua
/// `net.tcp` host function.
pub struct Exchange {
    pub connect_ms: f64,
    pub total_ms: f64,
    pub reply: Vec<u8>,
}

impl TcpCheck {
    /// Connects, sends, reads until the expectation is met, EOF, or `read_timeout`.
    /// The caller's timeout bounds the whole thing.
    pub async fn exchange(&self) -> Result<Exchange, String> {
        let addr = self.host.addr(self.port).await?;
        let start = Instant::now();
        if self.send.is_none() && self.expect.is_none() {
            crate::net::tcp_probe(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {}", io_reason(&e)))?;
            let connect_ms = ms_since(start);
            return Ok(Exchange {
                connect_ms,
                total_ms: connect_ms,
                reply: Vec::new(),
            });
        }
        let mut stream = crate::net::tcp_connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", io_reason(&e)))?;
        let connect_ms = ms_since(start);
        let mut reply = Vec::new();
        if let Some(data) = &self.send {
            stream.write_all(data).await.map_err(|e| {
                format!("connected to {addr} but sending failed: {}", io_reason(&e))
            })?;
        }
        if let Some(expect) = &self.expect {
            let read = async {
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<bool, std::io::Error>(false);
                    }
                    reply.extend_from_slice(&buf[..n]);
                    if expect.found(&reply) {
                        return Ok(true);
                    }
                    if reply.len() >= MAX_REPLY {
                        return Ok(false);
                    }
                }
            };
            let result = match self.read_timeout {
                Some(t) => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| format!("no matching reply from {addr} within {}", Dur(t)))?,
                None => read.await,
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "reply from {addr} {}: got {}",
                        expect.describe(),
                        quote_reply(&reply)
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "connected to {addr} but reading the reply failed: {}",
                        io_reason(&e)
                    ))
                }
            }
        }
        Ok(Exchange {
            connect_ms,
            total_ms: ms_since(start),
            reply,
        })
    }
}

/// "connection refused" rather than "Connection refused (os error 111)".
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        TimedOut => "timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        UnexpectedEof => "connection closed early".into(),
        _ => e.to_string(),
    }
}

impl Check for TcpCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            match self.exchange().await {
                Ok(x) => {
                    // One allocation: this runs 10 000 times a second on big configs.
                    let message = if self.expect.is_some() {
                        format!(
                            "{}:{} expected reply in {}",
                            self.host,
                            self.port,
                            Ms(x.total_ms)
                        )
                    } else {
                        format!(
                            "{}:{} connected in {}",
                            self.host,
                            self.port,
                            Ms(x.connect_ms)
                        )
                    };
                    CheckOutcome::ok(message).with_value(x.total_ms)
                }
                Err(reason) => CheckOutcome::critical(reason),
            }
        })
    }

    fn target(&self) -> String {
        format!("tcp {}:{}", self.host, self.port)
    }
}

pub struct TcpFactory;

impl CheckFactory for TcpFactory {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn summary(&self) -> &'static str {
        "connect to host:port; optionally send a line and expect a reply"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        _ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: TcpConfig = params.deserialize(path)?;
        let errors = cfg.validate(path);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let expect = match (cfg.expect, cfg.expect_regex) {
            (Some(s), _) => Some(Expect::Contains(s)),
            (None, Some(re)) => {
                Some(Expect::Matches(Regex::new(&re).map_err(|e| {
                    vigia_api::ConfigError::new(path, e.to_string())
                })?))
            }
            (None, None) => None,
        };
        let check = TcpCheck {
            host: Host::new(cfg.host),
            port: cfg.port as u16,
            send: cfg.send.map(String::into_bytes),
            expect,
            read_timeout: cfg.read_timeout.map(Dur::get),
        };
        Ok(Built::one(name, check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    use vigia_api::check::testing::{build_one, ctx};

    fn build(yaml: &str) -> Result<Arc<dyn Check>, ConfigErrors> {
        build_one(&TcpFactory, yaml)
    }

    /// A line server: answers `OK <line>` to every line, or `ERR` if told to fail.
    async fn line_server(reply_prefix: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = w
                            .write_all(format!("{reply_prefix} {line}\n").as_bytes())
                            .await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn connect_only_succeeds_against_a_listener() {
        let port = line_server("OK").await;
        let c = build(&format!("host: 127.0.0.1\nport: {port}")).unwrap();
        let o = c.run(ctx()).await;
        assert!(o.is_ok(), "{o:?}");
        assert!(o.message.contains("connected in"), "{}", o.message);
        assert!(o.value.unwrap() >= 0.0);
    }

    #[tokio::test]
    async fn refused_connection_is_a_failure_with_the_reason() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = build(&format!("host: 127.0.0.1\nport: {port}")).unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert_eq!(
            o.message,
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
    }

    #[tokio::test]
    async fn send_expect_exchange() {
        let port = line_server("OK").await;
        let c = build(&format!(
            "host: 127.0.0.1\nport: {port}\nsend: \"PING\\n\"\nexpect: \"OK PING\""
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(o.is_ok(), "{o:?}");

        let bad = line_server("ERR").await;
        let c = build(&format!(
            "host: 127.0.0.1\nport: {bad}\nsend: \"PING\\n\"\nexpect: \"OK\"\nread_timeout: 300ms"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert_eq!(
            o.message,
            format!("no matching reply from 127.0.0.1:{bad} within 300ms")
        );
    }

    #[tokio::test]
    async fn expect_regex_and_eof() {
        // A server that answers once and closes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"STATUS 503 busy\n").await;
            }
        });
        let c = build(&format!(
            "host: 127.0.0.1\nport: {port}\nexpect_regex: '^STATUS 2\\d\\d'"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert_eq!(
            o.message,
            format!(
                "reply from 127.0.0.1:{port} does not match /^STATUS 2\\d\\d/: got \"STATUS 503 busy\\n\""
            )
        );
    }

    #[tokio::test]
    async fn a_silent_server_hangs_until_the_engine_times_out() {
        // Accepts and never answers: without read_timeout the run waits; the engine's
        // timeout is what ends it (here simulated by tokio::time::timeout).
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let c = build(&format!(
            "host: 127.0.0.1\nport: {port}\nsend: \"X\\n\"\nexpect: Y"
        ))
        .unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), c.run(ctx())).await;
        assert!(r.is_err(), "the run should still be waiting");
    }

    #[test]
    fn config_errors_are_all_reported() {
        let err = build("host: 10.0.0.300\nport: 70000\nexpect_regex: '('\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "checks[0].host: `10.0.0.300` is not a valid IPv4 address\n\
             checks[0].port: 70000 is not a valid port (1-65535)\n\
             checks[0].expect_regex: invalid regular expression: regex parse error:\n    (\n    ^\nerror: unclosed group"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_a_hint() {
        let err = build("host: a\nport: 1\nexpectt: x\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "3:1: checks[0].expectt: unknown key `expectt` (did you mean `expect`?)"
        );
    }
}
