//! The live event feed: the log events an outside watcher follows (transitions,
//! deliveries, silences, reloads, remediation), as the same JSON objects the log
//! prints, for `GET /api/v1/events`.
//!
//! It is filled by a tap on the log (`logging::FeedTap`), not by a second path:
//! whatever the log contract says of an event is what a feed reader gets, field for
//! field. Only events at info level or
//! above are looked at (so no per-run debug event is ever built for it), and only
//! those of [`FEED_EVENTS`] are passed on. A reader that falls behind by more than
//! [`CAPACITY`] events is told how many it missed; nobody waits for readers. (The
//! engine opens no tracing spans, so an event's own fields are all of its fields.)

use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

/// The `event` values a feed reader gets.
pub const FEED_EVENTS: &[&str] = &[
    "started",
    "alert",
    "alert_silenced",
    "alert_suppressed",
    "alert_flapping",
    "delivered",
    "delivery_retry",
    "delivery_failed",
    "silence_added",
    "silence_removed",
    "silence_expired",
    "ack",
    "telegram_press",
    "telegram_command",
    "telegram_denied",
    "telegram_refused",
    "telegram_poll",
    "reload",
    "reloaded",
    "reload_failed",
    "action",
    "runbook",
    "runbook_done",
    "remediation_skipped",
    "script_error",
    "script_fixed",
    "store_error",
    "store_recovered",
    "stopping",
];

/// Events kept for a slow reader.
pub const CAPACITY: usize = 1024;

/// One event of the feed.
#[derive(Debug)]
pub struct FeedEvent {
    /// Its `event` field (`alert`, `silence_added`, ...).
    pub kind: String,
    /// The JSON object, as the log prints it.
    pub line: String,
}

/// One feed per process, as the tracing subscriber it taps is one per process.
fn sender() -> &'static broadcast::Sender<Arc<FeedEvent>> {
    static FEED: OnceLock<broadcast::Sender<Arc<FeedEvent>>> = OnceLock::new();
    FEED.get_or_init(|| broadcast::channel(CAPACITY).0)
}

/// A new reader: every feed event from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<FeedEvent>> {
    sender().subscribe()
}

/// Whether readers follow the feed (else the log's tap builds nothing).
pub(crate) fn has_readers() -> bool {
    sender().receiver_count() > 0
}

/// Whether an event of this `event` value goes to the feed.
pub(crate) fn wants(kind: &str) -> bool {
    FEED_EVENTS.contains(&kind)
}

/// Gives one event to every reader.
pub(crate) fn publish(kind: String, line: String) {
    let _ = sender().send(Arc::new(FeedEvent { kind, line }));
}
