//! Alerting: from a committed transition to a delivered message.
//!
//! ```text
//! recorder ──(state + inbox item, one commit)──▶ pipeline ──▶ policy (pure)
//!            held entries (durable) ◀──────────────┘   │ messages rendered by templates
//!                                    outbox (durable) ◀┘
//!                                        └──▶ one sender task per target ──▶ sink
//! ```
//!
//! - `policy.rs`: flapping, reminders, silences, send windows, grouping, dependencies —
//!   a pure state machine over timestamps.
//! - `template.rs`: minijinja templates per channel and kind.
//! - `pipeline.rs`: the task that drives the policy and keeps everything durable, and
//!   the sender tasks that deliver the outbox in order, with retries.
//! - `sink.rs`: console, Telegram (teloxide), webhook; Telegram HTML splitting.
//! - `config.rs`: `channels:`, `windows:`, `alerting:`; `window.rs`: send windows.
//!
//! Every step is durable before the next: a transition is in the inbox in the same
//! transaction as the state that caused it; an item moves from the inbox to `held` in one
//! transaction, from `held` to the outbox in one, and leaves the outbox when its target
//! confirmed it. A crash (kill -9 included) loses nothing; the one message whose delivery
//! was in flight may be delivered twice.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::status::Transition;

pub mod config;
pub mod pipeline;
pub mod policy;
pub mod sink;
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
}

/// Where console alerts go: stderr in production, a buffer in tests.
#[derive(Clone)]
pub struct Console {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Console {
    pub fn stderr() -> Self {
        Console::to(Box::new(std::io::stderr()))
    }

    pub fn to(w: Box<dyn Write + Send>) -> Self {
        Console {
            out: Arc::new(Mutex::new(w)),
        }
    }

    pub fn print(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
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

/// The `{"event":"alert",...}` line of a transition (before any policy: every
/// transition is logged, silenced or not).
pub fn log_event(e: &AlertEvent) {
    tracing::info!(
        event = "alert",
        check = %e.check,
        state = e.transition.as_str(),
        host = %e.host,
        failures = e.failures,
        threshold = e.threshold,
        successes = e.successes,
        recover_after = e.recover_after,
        comment = %e.comment,
        group = e.group.as_deref(),
        previous_duration_ms = e.previous_duration_ms,
        at = e.at,
        "{}",
        e.message
    );
}

/// The log line of a script that does not load (its alert goes through the pipeline).
pub fn log_script_error(host: &str, file: &str, error: &str, kept: bool) {
    let what = if kept {
        "the last good version keeps running"
    } else {
        "it is not running"
    };
    tracing::warn!(
        event = "alert",
        state = "script_error",
        host = %host,
        file = %file,
        kept_previous = kept,
        "{error} ({what})"
    );
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
