//! The one read of the status map from outside the engine: what `vigia status`, the
//! control socket (and later the HTTP API, the cluster and the Telegram console) see.
//! These are wire types: they change only in ways old readers accept (fields added
//! with defaults), whatever the in-memory record or the store do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigia_api::Severity;

/// The whole engine, as seen at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub host: String,
    pub pid: u32,
    /// Unix ms.
    pub started_at: u64,
    pub now: u64,
    /// The config file it runs.
    pub config: String,
    pub checks: Vec<CheckSnapshot>,
    #[serde(default)]
    pub stats: Option<StatsSnapshot>,
    /// Per delivery target: pending, delivered, failed, last error.
    #[serde(default)]
    pub channels: BTreeMap<String, TargetStats>,
}

/// One check: its schedule and its state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckSnapshot {
    pub name: String,
    #[serde(default)]
    pub group: Option<String>,
    /// Its `type:`.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub interval_ms: u64,
    /// 0 when not known (a saved state read while no engine runs).
    #[serde(default)]
    pub threshold: u32,
    #[serde(default)]
    pub recover_after: u32,
    #[serde(default)]
    pub comment: String,
    /// true = OK.
    pub status: bool,
    pub failures: u32,
    pub successes: u32,
    /// Unix ms of the last change of status.
    pub changed_at: u64,
    #[serde(default)]
    pub failed_message: Option<String>,
    #[serde(default)]
    pub last: Option<LastRunSnapshot>,
    /// Runs and transitions since the engine started.
    #[serde(default)]
    pub counts: CountsSnapshot,
    /// Who acknowledged the current failure, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<crate::alert::Ack>,
    /// In a cluster, as `vigia status` shows it: the replica that runs the check, or
    /// `stopped` / `waiting` when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// What a check did since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CountsSnapshot {
    pub ok: u64,
    pub warning: u64,
    pub critical: u64,
    pub unknown: u64,
    pub failed: u32,
    pub recovered: u32,
}

impl From<&crate::status::RunCounts> for CountsSnapshot {
    fn from(c: &crate::status::RunCounts) -> Self {
        let [ok, warning, critical, unknown] = c.runs.map(u64::from);
        CountsSnapshot {
            ok,
            warning,
            critical,
            unknown,
            failed: c.failed,
            recovered: c.recovered,
        }
    }
}

impl CountsSnapshot {
    /// (outcome label, runs), in [`crate::status::RunCounts::OUTCOMES`] order.
    pub fn runs(&self) -> [(&'static str, u64); 4] {
        let o = crate::status::RunCounts::OUTCOMES;
        [
            (o[0], self.ok),
            (o[1], self.warning),
            (o[2], self.critical),
            (o[3], self.unknown),
        ]
    }
}

/// The last run of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRunSnapshot {
    pub ok: bool,
    pub severity: Severity,
    #[serde(default)]
    pub value: Option<f64>,
    pub message: String,
    pub duration_ms: f64,
    /// Unix ms.
    pub at: u64,
}

impl From<&crate::status::LastRun> for LastRunSnapshot {
    fn from(l: &crate::status::LastRun) -> Self {
        LastRunSnapshot {
            ok: l.ok,
            severity: l.severity,
            value: l.value,
            message: l.message.clone(),
            duration_ms: l.duration_ms,
            at: l.at,
        }
    }
}

impl CheckSnapshot {
    /// The state part without its texts (messages): what `/metrics` needs of 10 000
    /// checks, without copying 10 000 messages.
    pub fn of_state_without_texts(name: &str, s: &crate::status::CheckState) -> Self {
        CheckSnapshot {
            name: name.to_string(),
            status: s.status,
            failures: s.failures,
            successes: s.successes,
            changed_at: s.changed_at,
            last: s.last.as_ref().map(|l| LastRunSnapshot {
                ok: l.ok,
                severity: l.severity,
                value: l.value,
                message: String::new(),
                duration_ms: l.duration_ms,
                at: l.at,
            }),
            counts: (&s.counts).into(),
            ..Default::default()
        }
    }

    /// The state part of a snapshot, from the in-memory record.
    pub fn of_state(name: &str, s: &crate::status::CheckState) -> Self {
        let mut c = Self::of_state_without_texts(name, s);
        c.failed_message = s.failed_message.clone();
        if let (Some(view), Some(last)) = (c.last.as_mut(), s.last.as_ref()) {
            view.message = last.message.clone();
        }
        c
    }
}

/// The scheduler's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub executed: u64,
    /// Times the ticker woke to start due checks: `executed / wakeups` is how well
    /// the grid batches runs (each wakeup costs the runtime a thread wake).
    #[serde(default)]
    pub wakeups: u64,
    pub skipped: u64,
    pub timeouts: u64,
    pub panics: u64,
    /// Runs that failed for lack of file descriptors ("Too many open files").
    #[serde(default)]
    pub out_of_fds: u64,
    /// The soft open-files limit the engine runs with.
    #[serde(default)]
    pub fd_limit: u64,
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
}

/// Delivery figures of one alert target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    pub channel: String,
    /// `telegram chat 123`, `console`, `webhook https://…`.
    pub target: String,
    pub pending: usize,
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub last_delivered_at: Option<u64>,
    /// The wait the server last asked for (Telegram's `retry_after`, HTTP
    /// `Retry-After`), in ms, while deliveries are refused; the engine waits at most
    /// `alerting.max_retry_wait` and asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_wait_ms: Option<u64>,
}

impl TargetStats {
    /// Adds another replica's figures of the same target (a cluster's sum): counts add
    /// up, the latest error and delivery are kept.
    pub fn add(&mut self, other: &TargetStats) {
        if self.channel.is_empty() {
            self.channel.clone_from(&other.channel);
            self.target.clone_from(&other.target);
        }
        self.pending += other.pending;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.retries += other.retries;
        if other.last_error_at > self.last_error_at {
            self.last_error.clone_from(&other.last_error);
            self.last_error_at = other.last_error_at;
            self.asked_wait_ms = other.asked_wait_ms;
        }
        self.last_delivered_at = self.last_delivered_at.max(other.last_delivered_at);
    }
}

#[cfg(test)]
mod tests {
    use super::TargetStats;

    #[test]
    fn a_clusters_delivery_figures_add_up_and_keep_the_latest_error() {
        let mut sum = TargetStats::default();
        let a = TargetStats {
            channel: "tg".into(),
            target: "telegram chat 1".into(),
            pending: 1,
            delivered: 10,
            failed: 1,
            retries: 3,
            last_error: Some("old".into()),
            last_error_at: Some(100),
            last_delivered_at: Some(500),
            asked_wait_ms: None,
        };
        let b = TargetStats {
            channel: "tg".into(),
            target: "telegram chat 1".into(),
            pending: 2,
            delivered: 5,
            failed: 0,
            retries: 1,
            last_error: Some("429 Too Many Requests".into()),
            last_error_at: Some(300),
            last_delivered_at: Some(200),
            asked_wait_ms: Some(3000),
        };
        sum.add(&a);
        sum.add(&b);
        assert_eq!(sum.channel, "tg");
        assert_eq!(
            (sum.pending, sum.delivered, sum.failed, sum.retries),
            (3, 15, 1, 4)
        );
        assert_eq!(sum.last_error.as_deref(), Some("429 Too Many Requests"));
        assert_eq!(sum.last_error_at, Some(300));
        assert_eq!(sum.asked_wait_ms, Some(3000));
        assert_eq!(sum.last_delivered_at, Some(500));
    }
}
