//! `type: ping` — ICMP echo: count, loss and round-trip time.
//!
//! Needs root or CAP_NET_RAW (or the `net.ipv4.ping_group_range` sysctl); without them
//! the outcome is UNKNOWN with a message that says what to grant.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Dur, Node,
    RunContext,
};

use crate::icmp::Icmp;
use crate::net::{fmt_ms, host_problem};

/// `type: ping` takes `host` plus the keys of [`PingParams`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingConfig {
    /// Host name or IP address to ping.
    pub host: String,
}

/// How to ping, shared with `terminals`. (Each plugin splits its own keys off the entry
/// and deserializes the rest as this: serde's `flatten` would lose the refusal of
/// unknown keys.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingParams {
    /// Echo requests per run (default 3).
    #[serde(default = "default_count")]
    pub count: u32,
    /// Time between two requests (default 200ms).
    #[serde(default = "default_gap")]
    pub ping_interval: Dur,
    /// How long to wait for each reply (default 1s).
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout: Dur,
    /// Fail when more than this percentage of requests get no reply (default 50).
    #[serde(default = "default_max_loss")]
    pub max_loss: f64,
    /// Fail when the average round trip is longer than this (default: no limit).
    #[serde(default)]
    pub max_rtt: Option<Dur>,
}

fn default_count() -> u32 {
    3
}
fn default_gap() -> Dur {
    Dur::millis(200)
}
fn default_ping_timeout() -> Dur {
    Dur::secs(1)
}
fn default_max_loss() -> f64 {
    50.0
}

impl PingParams {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.count == 0 || self.count > 100 {
            errors.push(ConfigError::new(
                &join_path(path, "count"),
                format!("{} pings per run is out of range (1-100)", self.count),
            ));
        }
        if !(0.0..=100.0).contains(&self.max_loss) {
            errors.push(ConfigError::new(
                &join_path(path, "max_loss"),
                format!("{} is not a percentage (0-100)", self.max_loss),
            ));
        }
        if self.ping_timeout.get().is_zero() {
            errors.push(ConfigError::new(
                &join_path(path, "ping_timeout"),
                "must be longer than 0s",
            ));
        }
    }

    /// The longest a run can take: the check's timeout should be longer.
    pub fn worst_case(&self) -> Duration {
        self.ping_timeout.get() * self.count
            + self.ping_interval.get() * self.count.saturating_sub(1)
    }
}

pub struct PingCheck {
    pub host: String,
    /// Shown in messages instead of the bare host: `shop-12 (10.1.2.3)`.
    pub label: String,
    pub params: PingParams,
    pub icmp: Arc<Icmp>,
}

impl PingCheck {
    async fn resolve(&self) -> Result<IpAddr, String> {
        if let Ok(ip) = self.host.parse() {
            return Ok(ip);
        }
        crate::net::resolve(&self.host, 0).await.map(|a| a.ip())
    }
}

impl Check for PingCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let addr = match self.resolve().await {
                Ok(a) => a,
                Err(e) => return CheckOutcome::unknown(format!("{}: {e}", self.label)),
            };
            let p = &self.params;
            let stats = match self
                .icmp
                .ping(addr, p.count, p.ping_interval.get(), p.ping_timeout.get())
                .await
            {
                Ok(s) => s,
                Err(e) => return CheckOutcome::unknown(format!("{}: {e}", self.label)),
            };
            let loss = stats.loss_pct();
            let Some(avg) = stats.avg() else {
                return CheckOutcome::critical(format!(
                    "{}: no reply to {} ping{} (100% loss)",
                    self.label,
                    stats.sent,
                    if stats.sent == 1 { "" } else { "s" }
                ))
                .with_value(100.0);
            };
            let summary = format!(
                "{}/{} replies, avg {} (min {}, max {})",
                stats.received(),
                stats.sent,
                fmt_ms(avg),
                fmt_ms(stats.min().unwrap_or(avg)),
                fmt_ms(stats.max().unwrap_or(avg))
            );
            if loss > p.max_loss {
                return CheckOutcome::critical(format!(
                    "{}: {loss:.0}% loss, limit {}% ({summary})",
                    self.label, p.max_loss
                ))
                .with_value(avg);
            }
            if let Some(max) = p.max_rtt {
                if avg > max.get().as_secs_f64() * 1000.0 {
                    return CheckOutcome::critical(format!(
                        "{}: average round trip {} is over the limit {max} ({summary})",
                        self.label,
                        fmt_ms(avg)
                    ))
                    .with_value(avg);
                }
            }
            CheckOutcome::ok(format!("{}: {summary}", self.label)).with_value(avg)
        })
    }

    fn target(&self) -> String {
        format!("ping {}", self.label)
    }
}

pub struct PingFactory {
    pub icmp: Arc<Icmp>,
}

impl CheckFactory for PingFactory {
    fn kind(&self) -> &'static str {
        "ping"
    }

    fn summary(&self) -> &'static str {
        "ICMP echo to a host: loss and round-trip time"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        _ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let (own, rest) = params.split_keys(&["host"]);
        let cfg: PingConfig = own.deserialize(path)?;
        let ping: PingParams = rest.deserialize(path)?;
        let mut errors = Vec::new();
        if let Some(p) = host_problem(&cfg.host) {
            errors.push(ConfigError::new(&join_path(path, "host"), p));
        }
        ping.validate(path, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let check = PingCheck {
            label: cfg.host.clone(),
            host: cfg.host,
            params: ping,
            icmp: self.icmp.clone(),
        };
        Ok(Built::one(name, check))
    }
}
