//! `type: latency` — the average round trip to a host over a sliding window of samples.
//!
//! The original system's cluster-latency check: one far-away Galera node whose latency
//! stalls the whole cluster. One sample per run (ICMP echo, or the time of a TCP
//! connect), kept for `window`; the check fails when the average of the window is over
//! `max_avg`. A lost sample (no reply) counts in the loss, not in the average.
//!
//! `high_for` / `normal_for` make it patient, as the original system was: the check
//! fails only once the average has been over the limit on every run for `high_for`,
//! and once failing it stays failing until the average has been back under the limit
//! on every run for `normal_for` (use `threshold: 1` and `recover_after: 1` with them:
//! the periods do the counting). The periods restart when the engine restarts.
//!
//! ```yaml
//! - name: far_node_latency
//!   type: latency
//!   host: 10.0.0.7
//!   method: icmp          # or tcp, with port
//!   window: 5m
//!   max_avg: 150ms
//!   high_for: 5m          # over the limit for 5 minutes before it fails
//!   normal_for: 10m       # under it for 10 minutes before it recovers
//!   interval: 10s
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Dur, Node,
    RunContext,
};

use crate::icmp::Icmp;
use crate::net::{check_port, fmt_ms, host_problem, ms_since, resolve};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Icmp,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Host name or IP address to measure.
    pub host: String,
    /// How to take a sample: `icmp` (echo, default) or `tcp` (time to connect to `port`).
    #[serde(default = "default_method")]
    pub method: Method,
    /// The port for `method: tcp`.
    #[serde(default)]
    pub port: Option<u32>,
    /// How far back samples count (default 5m).
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Fail when the average round trip over the window is longer than this.
    pub max_avg: Dur,
    /// Samples needed before the check judges (default 3); until then it reports OK
    /// with "collecting samples".
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// How long to wait for one sample (default 1s).
    #[serde(default = "default_sample_timeout")]
    pub sample_timeout: Dur,
    /// Fail only when the average has been over `max_avg` on every run for this long
    /// (default 0s: at once).
    #[serde(default)]
    pub high_for: Option<Dur>,
    /// Once failing, recover only when the average has been under `max_avg` on every
    /// run for this long (default 0s: at once).
    #[serde(default)]
    pub normal_for: Option<Dur>,
}

fn default_method() -> Method {
    Method::Icmp
}
fn default_window() -> Dur {
    Dur::secs(300)
}
fn default_min_samples() -> u32 {
    3
}
fn default_sample_timeout() -> Dur {
    Dur::secs(1)
}

impl LatencyConfig {
    pub fn validate(&self, path: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Some(p) = host_problem(&self.host) {
            errors.push(ConfigError::new(&join_path(path, "host"), p));
        }
        match (self.method, self.port) {
            (Method::Tcp, None) => errors.push(ConfigError::new(
                &join_path(path, "port"),
                "`method: tcp` needs a `port`",
            )),
            (Method::Tcp, Some(p)) => check_port(p, &join_path(path, "port"), &mut errors),
            (Method::Icmp, Some(_)) => errors.push(ConfigError::new(
                &join_path(path, "port"),
                "`port` only applies to `method: tcp`",
            )),
            (Method::Icmp, None) => {}
        }
        if self.window.get().is_zero() {
            errors.push(ConfigError::new(
                &join_path(path, "window"),
                "must be longer than 0s",
            ));
        }
        if self.min_samples == 0 {
            errors.push(ConfigError::new(
                &join_path(path, "min_samples"),
                "must be at least 1",
            ));
        }
        errors
    }
}

/// Samples of one window: when each was taken and its round trip (None = lost).
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, Option<f64>)>,
}

/// What the window says right now.
#[derive(Debug, PartialEq)]
pub struct WindowStats {
    pub samples: usize,
    pub lost: usize,
    pub avg: Option<f64>,
}

impl Window {
    pub fn push(&mut self, at: Instant, rtt: Option<f64>, window: Duration) -> WindowStats {
        self.samples.push_back((at, rtt));
        while let Some((t, _)) = self.samples.front() {
            if at.duration_since(*t) > window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let got: Vec<f64> = self.samples.iter().filter_map(|(_, r)| *r).collect();
        WindowStats {
            samples: self.samples.len(),
            lost: self.samples.len() - got.len(),
            avg: (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64),
        }
    }
}

/// The patience of `high_for` / `normal_for`: whether the check is failing, given
/// whether the average is over the limit now.
#[derive(Debug, Default)]
pub struct Hysteresis {
    failing: bool,
    /// Since when the average has been over (while not failing) or under (while failing).
    since: Option<Instant>,
}

/// What the hysteresis says of one run.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Normal,
    /// Over the limit for this long, not yet `high_for`.
    HighFor(Duration),
    Failing,
    /// Failing, back under the limit for this long, not yet `normal_for`.
    NormalFor(Duration),
}

impl Hysteresis {
    pub fn judge(
        &mut self,
        now: Instant,
        over: bool,
        high_for: Duration,
        normal_for: Duration,
    ) -> Verdict {
        if over != self.failing {
            let since = *self.since.get_or_insert(now);
            let lasted = now.duration_since(since);
            let needed = if over { high_for } else { normal_for };
            if lasted >= needed {
                self.failing = over;
                self.since = None;
            } else if over {
                return Verdict::HighFor(lasted);
            } else {
                return Verdict::NormalFor(lasted);
            }
        } else {
            self.since = None;
        }
        if self.failing {
            Verdict::Failing
        } else {
            Verdict::Normal
        }
    }
}

pub struct LatencyCheck {
    cfg: LatencyConfig,
    icmp: Arc<Icmp>,
    window: Mutex<Window>,
    patience: Mutex<Hysteresis>,
}

impl LatencyCheck {
    /// One sample: Ok(Some(ms)), Ok(None) when lost, Err when sampling is impossible.
    async fn sample(&self) -> Result<Option<f64>, String> {
        let timeout = self.cfg.sample_timeout.get();
        match self.cfg.method {
            Method::Icmp => {
                let addr = resolve(&self.cfg.host, 0).await?.ip();
                let stats = self.icmp.ping(addr, 1, Duration::ZERO, timeout).await?;
                Ok(stats.avg())
            }
            Method::Tcp => {
                let addr = resolve(&self.cfg.host, self.cfg.port.unwrap_or(0) as u16).await?;
                let start = Instant::now();
                match tokio::time::timeout(timeout, crate::net::tcp_probe(addr)).await {
                    Ok(Ok(_)) => Ok(Some(ms_since(start))),
                    Ok(Err(_)) | Err(_) => Ok(None),
                }
            }
        }
    }
}

impl Check for LatencyCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let rtt = match self.sample().await {
                Ok(r) => r,
                Err(e) => return CheckOutcome::unknown(e),
            };
            let stats = self.window.lock().unwrap_or_else(|p| p.into_inner()).push(
                Instant::now(),
                rtt,
                self.cfg.window.get(),
            );
            let host = &self.cfg.host;
            let window = self.cfg.window;
            let limit = self.cfg.max_avg;
            let counts = format!("{} samples, {} lost", stats.samples, stats.lost);
            if stats.samples < self.cfg.min_samples as usize {
                return CheckOutcome::ok(format!(
                    "{host}: collecting samples ({}/{}), last {}",
                    stats.samples,
                    self.cfg.min_samples,
                    rtt.map(fmt_ms).unwrap_or_else(|| "lost".into())
                ));
            }
            let high_for = self.cfg.high_for.map(Dur::get).unwrap_or_default();
            let normal_for = self.cfg.normal_for.map(Dur::get).unwrap_or_default();
            let over = match stats.avg {
                None => true,
                Some(avg) => avg > limit.get().as_secs_f64() * 1000.0,
            };
            let verdict = self
                .patience
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .judge(Instant::now(), over, high_for, normal_for);
            let what = match stats.avg {
                None => format!("{host}: no reply in the last {window}"),
                Some(avg) if over => format!(
                    "{host}: average round trip over the last {window} is {}, over the limit {limit}",
                    fmt_ms(avg)
                ),
                Some(avg) => format!(
                    "{host}: average round trip over the last {window} is {}",
                    fmt_ms(avg)
                ),
            };
            let outcome = match verdict {
                Verdict::Normal => CheckOutcome::ok(format!("{what} ({counts})")),
                Verdict::HighFor(d) => CheckOutcome::ok(format!(
                    "{what} for {} of the {} it must last to fail ({counts})",
                    Dur(round_secs(d)),
                    Dur(high_for)
                )),
                Verdict::Failing if over && !high_for.is_zero() => CheckOutcome::critical(
                    format!("{what} for at least {} ({counts})", Dur(high_for)),
                ),
                Verdict::Failing => CheckOutcome::critical(format!("{what} ({counts})")),
                Verdict::NormalFor(d) => CheckOutcome::critical(format!(
                    "{what}, back under the limit for {} of the {} it must last to recover ({counts})",
                    Dur(round_secs(d)),
                    Dur(normal_for)
                )),
            };
            match stats.avg {
                Some(avg) => outcome.with_value(avg),
                None => outcome,
            }
        })
    }

    fn target(&self) -> String {
        match self.cfg.method {
            Method::Icmp => format!("latency icmp {}", self.cfg.host),
            Method::Tcp => format!(
                "latency tcp {}:{}",
                self.cfg.host,
                self.cfg.port.unwrap_or(0)
            ),
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

pub struct LatencyFactory {
    pub icmp: Arc<Icmp>,
}

impl CheckFactory for LatencyFactory {
    fn kind(&self) -> &'static str {
        "latency"
    }

    fn summary(&self) -> &'static str {
        "average round trip to a host over a sliding window (ICMP or TCP connect)"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        _ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: LatencyConfig = params.deserialize(path)?;
        let errors = cfg.validate(path);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let check = LatencyCheck {
            cfg,
            icmp: self.icmp.clone(),
            window: Mutex::new(Window::default()),
            patience: Mutex::new(Hysteresis::default()),
        };
        Ok(Built::one(name, check))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_fails_only_when_high_for_the_whole_period_and_recovers_after_its_own() {
        use super::{Hysteresis, Verdict};
        use std::time::{Duration, Instant};
        let (high, normal) = (Duration::from_secs(60), Duration::from_secs(120));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Hysteresis::default();
        assert_eq!(h.judge(at(0), false, high, normal), Verdict::Normal);
        // High for 50 s, then one normal run: the period starts over.
        assert_eq!(
            h.judge(at(10), true, high, normal),
            Verdict::HighFor(Duration::ZERO)
        );
        assert_eq!(
            h.judge(at(60), true, high, normal),
            Verdict::HighFor(Duration::from_secs(50))
        );
        assert_eq!(h.judge(at(65), false, high, normal), Verdict::Normal);
        assert_eq!(
            h.judge(at(70), true, high, normal),
            Verdict::HighFor(Duration::ZERO)
        );
        assert_eq!(
            h.judge(at(129), true, high, normal),
            Verdict::HighFor(Duration::from_secs(59))
        );
        assert_eq!(h.judge(at(130), true, high, normal), Verdict::Failing);
        // Normal again: failing until normal for 120 s without a high run.
        assert_eq!(
            h.judge(at(140), false, high, normal),
            Verdict::NormalFor(Duration::ZERO)
        );
        assert_eq!(h.judge(at(200), true, high, normal), Verdict::Failing);
        assert_eq!(
            h.judge(at(210), false, high, normal),
            Verdict::NormalFor(Duration::ZERO)
        );
        assert_eq!(
            h.judge(at(329), false, high, normal),
            Verdict::NormalFor(Duration::from_secs(119))
        );
        assert_eq!(h.judge(at(330), false, high, normal), Verdict::Normal);
        // Without periods it follows the average at once.
        let mut h = Hysteresis::default();
        assert_eq!(
            h.judge(at(0), true, Duration::ZERO, Duration::ZERO),
            Verdict::Failing
        );
        assert_eq!(
            h.judge(at(1), false, Duration::ZERO, Duration::ZERO),
            Verdict::Normal
        );
    }

    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn window_drops_old_samples_and_averages_the_rest() {
        let mut w = Window::default();
        let t0 = Instant::now();
        let win = Duration::from_secs(60);
        w.push(t0, Some(300.0), win);
        w.push(t0 + Duration::from_secs(30), None, win);
        let s = w.push(t0 + Duration::from_secs(61), Some(10.0), win);
        // The 300 ms sample is older than the window: only the lost one and 10 ms stay.
        assert_eq!(
            s,
            WindowStats {
                samples: 2,
                lost: 1,
                avg: Some(10.0)
            }
        );
    }

    fn build(yaml: &str) -> Result<Arc<dyn Check>, ConfigErrors> {
        let node = Node::parse(yaml).unwrap();
        let f = LatencyFactory {
            icmp: Arc::new(Icmp::default()),
        };
        let b = f.build("lat", &node, "checks[0]", &BuildContext::new("."))?;
        Ok(b.checks[0].check.clone())
    }

    fn ctx() -> RunContext<'static> {
        RunContext {
            check: "lat",
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn tcp_samples_against_a_real_listener() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ok = build(&format!(
            "host: 127.0.0.1\nmethod: tcp\nport: {port}\nmax_avg: 1s\nmin_samples: 2"
        ))
        .unwrap();
        let first = ok.run(ctx()).await;
        assert!(
            first.is_ok() && first.message.contains("collecting samples (1/2)"),
            "{first:?}"
        );
        let second = ok.run(ctx()).await;
        assert!(second.is_ok(), "{second:?}");
        assert!(
            second
                .message
                .contains("average round trip over the last 5m"),
            "{second:?}"
        );

        // A limit of 0ms is exceeded by any real round trip.
        let strict = build(&format!(
            "host: 127.0.0.1\nmethod: tcp\nport: {port}\nmax_avg: 0ms\nmin_samples: 1"
        ))
        .unwrap();
        let o = strict.run(ctx()).await;
        assert!(!o.is_ok());
        assert!(o.message.contains("over the limit 0s"), "{}", o.message);
        drop(l);
    }

    #[tokio::test]
    async fn refused_samples_are_losses() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = build(&format!(
            "host: 127.0.0.1\nmethod: tcp\nport: {port}\nmax_avg: 1s\nmin_samples: 1\nwindow: 1m"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert_eq!(
            o.message,
            "127.0.0.1: no reply in the last 1m (1 samples, 1 lost)"
        );
    }

    #[test]
    fn config_errors() {
        let e = build("host: h\nmethod: tcp\nmax_avg: 1s\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "checks[0].port: `method: tcp` needs a `port`");
        let e = build("host: h\nmethod: udp\nmax_avg: 1s\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "2:9: checks[0].method: unknown value `udp`; expected one of: icmp, tcp"
        );
    }
}
