//! Alerting at run time: from a committed transition to a delivered message.
//!
//! ```text
//! journal ──(state + inbox item, one commit)──▶ bus ──▶ pipeline ──▶ policy (vigia-core)
//!            held entries (durable) ◀─────────────────────┘   │ messages rendered by templates
//!                                           outbox (durable) ◀┘
//!                                               └──▶ one sender task per target ──▶ sink
//! ```
//!
//! - `pipeline.rs`: the stage that drives the policy and keeps every step durable, and
//!   the sender tasks that deliver the outbox in order, with retries. It is built with
//!   the whole alerting config and every check's alert settings before it takes its
//!   first item, so what it replays at start (the inbox, reminders of checks that are
//!   down) is routed, windowed and suppressed as the config says.
//! - `sink.rs`: console, Telegram (teloxide), webhook; Telegram HTML splitting.
//! - The policy, windows and templates are pure and live in `vigia-core`; the config
//!   sections in `vigia-config`.
//!
//! Every step is durable before the next: a transition is in the inbox in the same
//! transaction as the state that caused it; an item moves from the inbox to `held` in one
//! transaction, from `held` to the outbox in one, and leaves the outbox when its target
//! confirmed it. A crash (kill -9 included) loses nothing; the one message whose delivery
//! was in flight may be delivered twice.

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use vigia_core::alert::{human_duration, AlertEvent};

pub mod buttons;
pub mod pipeline;
pub mod sink;

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
