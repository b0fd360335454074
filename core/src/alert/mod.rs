//! Alerting's pure half: the policy (flapping, reminders, silences, windows, grouping,
//! dependencies) as a state machine over timestamps, send windows, and the templates
//! that render its messages. The runtime (`vigia` crate, `alerting/`) keeps every step
//! durable and delivers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::status::{CheckSpec, CheckState, Transition};

pub mod policy;
pub mod template;
pub mod window;

/// One transition of one check, as alerting sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub host: Arc<str>,
    pub check: Arc<str>,
    pub group: Option<Arc<str>>,
    #[serde(rename = "state")]
    pub transition: Transition,
    /// The message of the run that caused the transition.
    pub message: String,
    #[serde(default)]
    pub value: Option<f64>,
    pub failures: u32,
    pub threshold: u32,
    pub successes: u32,
    pub recover_after: u32,
    pub comment: Arc<str>,
    /// Unix ms of the transition.
    pub at: u64,
    /// How long the check had been in its previous state, in ms.
    pub previous_duration_ms: u64,
    /// For a recovery: the message of the failure it recovers from.
    pub failed_message: Option<String>,
    /// What remediation did about it, one line per action.
    #[serde(default)]
    pub transcript: Option<String>,
    /// For a recovery: who had acknowledged the failure, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
}

impl AlertEvent {
    /// The event of the transition `state.record` just returned (`state` is the check's
    /// state after the run, `previous_change` its `changed_at` before it): the one way
    /// the engine's journal and the replay build it.
    pub fn of_transition(
        host: Arc<str>,
        check: &CheckSpec,
        transition: Transition,
        message: &str,
        value: Option<f64>,
        state: &CheckState,
        previous_change: u64,
    ) -> AlertEvent {
        AlertEvent {
            host,
            check: check.name.clone(),
            group: check.group.clone(),
            transition,
            message: message.to_string(),
            value,
            failures: state.failures,
            threshold: check.threshold,
            successes: state.successes,
            recover_after: check.recover_after,
            comment: check.comment.clone(),
            at: state.changed_at,
            previous_duration_ms: state.changed_at.saturating_sub(previous_change),
            failed_message: state.failed_message.clone(),
            transcript: None,
            ack: None,
        }
    }
}

/// Someone said they are on it: an acknowledgement of one failure. It stops that
/// failure's reminders and ends with it (a new failure after a recovery is reminded
/// again); the recovery's message names who it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// `telegram:@ana`, `cli:root`, `http`.
    pub by: String,
    /// Unix ms of the acknowledgement.
    pub at: u64,
    /// Unix ms of the start of the failure it acknowledges (the check's `changed_at`).
    pub since: u64,
}

/// "3m12s" for a duration in ms.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 1 {
        return format!("{ms}ms");
    }
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    let parts = [(d, "d"), (h, "h"), (m, "m"), (sec, "s")];
    parts
        .iter()
        .skip_while(|(v, _)| *v == 0)
        .take(2)
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(192_000), "3m12s");
        assert_eq!(human_duration(3_725_000), "1h2m");
        assert_eq!(human_duration(90_061_000), "1d1h");
        assert_eq!(human_duration(500), "500ms");
    }
}
