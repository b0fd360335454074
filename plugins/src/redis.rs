//! `type: redis_replication` — a Redis primary has its replicas, a replica is linked to
//! its primary and not behind (`INFO replication`, over the plain protocol).
//!
//! ```yaml
//! - name: redis_replica
//!   type: redis_replication
//!   host: 127.0.0.1
//!   port: 6379
//!   role: replica          # replica | primary; default: whichever it is
//!   max_lag: 10s           # a replica: last I/O with its primary; a primary: each replica's lag
//!   min_replicas: 1        # a primary: at least this many replicas online
//!   password_env: REDIS_PASSWORD
//! ```

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Dur, Node,
    RunContext,
};

use crate::net::{check_port, host_problem, resolve};
use crate::tcp::io_reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(alias = "master")]
    Primary,
    #[serde(alias = "slave")]
    Replica,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u32,
    /// The role it must have (a failover that swapped roles is then a failure).
    #[serde(default)]
    pub role: Option<Role>,
    /// A replica: at most this long since its last I/O with the primary. A primary:
    /// every replica's lag at most this (default 10s).
    #[serde(default = "default_lag")]
    pub max_lag: Dur,
    /// A primary: at least this many replicas online (default 1).
    #[serde(default = "one")]
    pub min_replicas: u32,
    /// An environment variable holding the password (`AUTH`), if the server wants one.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_port() -> u32 {
    6379
}
fn default_lag() -> Dur {
    Dur::secs(10)
}
fn one() -> u32 {
    1
}

/// `INFO replication` as a map.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Judges a server's `INFO replication`.
pub fn judge(info: &HashMap<String, String>, cfg: &RedisJudge, at: &str) -> CheckOutcome {
    let role = info.get("role").map(String::as_str).unwrap_or("");
    let is = match role {
        "master" => Role::Primary,
        "slave" => Role::Replica,
        other => {
            return CheckOutcome::unknown(format!("{at}: INFO replication has no role (`{other}`)"))
        }
    };
    if let Some(want) = cfg.role {
        if want != is {
            return CheckOutcome::critical(format!(
                "{at} is a {}, expected a {} (a failover?)",
                name(is),
                name(want)
            ));
        }
    }
    let max_lag = cfg.max_lag.as_secs();
    match is {
        Role::Replica => {
            let primary = format!(
                "{}:{}",
                info.get("master_host").map(String::as_str).unwrap_or("?"),
                info.get("master_port").map(String::as_str).unwrap_or("?")
            );
            let link = info
                .get("master_link_status")
                .map(String::as_str)
                .unwrap_or("?");
            if link != "up" {
                let since = info
                    .get("master_link_down_since_seconds")
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s >= 0)
                    .map(|s| format!(" for {s} s"))
                    .unwrap_or_default();
                let syncing =
                    if info.get("master_sync_in_progress").map(String::as_str) == Some("1") {
                        " (a full sync is in progress)"
                    } else {
                        ""
                    };
                return CheckOutcome::critical(format!(
                    "{at}: the link to its primary {primary} is {link}{since}{syncing}"
                ));
            }
            let io = info
                .get("master_last_io_seconds_ago")
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(-1);
            if io < 0 || io as u64 > max_lag {
                return CheckOutcome::critical(format!(
                    "{at}: replica of {primary}, but its last I/O with it was {io} s ago (more than {max_lag} s)"
                ))
                .with_value(io as f64);
            }
            CheckOutcome::ok(format!(
                "{at}: replica of {primary}, link up, last I/O {io} s ago"
            ))
            .with_value(io as f64)
        }
        Role::Primary => {
            let n: u32 = info
                .get("connected_slaves")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut online = 0;
            let mut problems = Vec::new();
            let mut worst = 0i64;
            for i in 0..n {
                let Some(line) = info.get(&format!("slave{i}")) else {
                    continue;
                };
                let f: HashMap<&str, &str> = line
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                let who = format!(
                    "{}:{}",
                    f.get("ip").unwrap_or(&"?"),
                    f.get("port").unwrap_or(&"?")
                );
                let state = f.get("state").copied().unwrap_or("?");
                let lag: i64 = f.get("lag").and_then(|l| l.parse().ok()).unwrap_or(-1);
                worst = worst.max(lag);
                if state != "online" {
                    problems.push(format!("replica {who} is {state}"));
                } else if lag < 0 || lag as u64 > max_lag {
                    problems.push(format!("replica {who} lags {lag} s"));
                } else {
                    online += 1;
                }
            }
            if online < cfg.min_replicas {
                let detail = if problems.is_empty() {
                    String::new()
                } else {
                    format!(": {}", problems.join(", "))
                };
                return CheckOutcome::critical(format!(
                    "{at}: primary with {online} replica{} online, fewer than {}{detail}",
                    if online == 1 { "" } else { "s" },
                    cfg.min_replicas
                ))
                .with_value(f64::from(online));
            }
            let mut msg = format!(
                "{at}: primary with {online} replica{} online (max lag {worst} s)",
                if online == 1 { "" } else { "s" }
            );
            if !problems.is_empty() {
                msg.push_str(&format!("; {}", problems.join(", ")));
            }
            CheckOutcome::ok(msg).with_value(f64::from(online))
        }
    }
}

fn name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Replica => "replica",
    }
}

/// What `judge` needs of the config.
pub struct RedisJudge {
    pub role: Option<Role>,
    pub max_lag: Duration,
    pub min_replicas: u32,
}

pub struct RedisCheck {
    host: String,
    port: u16,
    password_env: Option<String>,
    judge: RedisJudge,
}

async fn line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<String, String> {
    let mut l = String::new();
    r.read_line(&mut l).await.map_err(|e| io_reason(&e))?;
    if l.is_empty() {
        return Err("the server closed the connection".into());
    }
    Ok(l.trim_end().to_string())
}

impl RedisCheck {
    async fn info(&self) -> Result<String, String> {
        let addr = resolve(&self.host, self.port).await?;
        let stream = crate::net::tcp_connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", io_reason(&e)))?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        if let Some(var) = &self.password_env {
            let pw = std::env::var(var)
                .map_err(|_| format!("the environment variable {var} (password_env) is not set"))?;
            let cmd = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len());
            w.write_all(cmd.as_bytes())
                .await
                .map_err(|e| io_reason(&e))?;
            let reply = line(&mut r).await?;
            if !reply.starts_with('+') {
                return Err(format!(
                    "{addr} refused the password: {}",
                    reply.trim_start_matches('-')
                ));
            }
        }
        w.write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
            .await
            .map_err(|e| io_reason(&e))?;
        let head = line(&mut r).await?;
        if let Some(err) = head.strip_prefix('-') {
            return Err(format!("{addr} answered: {err}"));
        }
        let len: usize = head
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{addr} does not speak the Redis protocol (got {head:?})"))?;
        let mut body = vec![0u8; len.min(1 << 20)];
        r.read_exact(&mut body).await.map_err(|e| io_reason(&e))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Check for RedisCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let at = format!("redis {}:{}", self.host, self.port);
            match self.info().await {
                Ok(text) => judge(&parse_info(&text), &self.judge, &at),
                Err(e) => CheckOutcome::critical(format!("{at}: {e}")),
            }
        })
    }

    fn target(&self) -> String {
        format!("redis {}:{}", self.host, self.port)
    }
}

pub struct RedisFactory;

impl CheckFactory for RedisFactory {
    fn kind(&self) -> &'static str {
        "redis_replication"
    }

    fn summary(&self) -> &'static str {
        "a Redis primary has its replicas online; a replica is linked and not behind"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        _ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: RedisConfig = params.deserialize(path)?;
        let mut errors = Vec::new();
        if let Some(p) = host_problem(&cfg.host) {
            errors.push(ConfigError::new(&join_path(path, "host"), p));
        }
        check_port(cfg.port, &join_path(path, "port"), &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Built::one(
            name,
            RedisCheck {
                host: cfg.host,
                port: cfg.port as u16,
                password_env: cfg.password_env,
                judge: RedisJudge {
                    role: cfg.role,
                    max_lag: cfg.max_lag.get(),
                    min_replicas: cfg.min_replicas,
                },
            },
        ))
    }
}
