//! The live event feed: the log events an outside watcher follows (transitions,
//! deliveries, silences, reloads, remediation), as the same JSON objects the log
//! prints, for `GET /api/v1/events`.
//!
//! It is a tap on the log, not a second path: whatever the log contract says of an
//! event is what a feed reader gets, field for field. Only events at info level or
//! above are looked at (so no per-run debug event is ever built for it), and only
//! those of [`FEED_EVENTS`] are passed on. A reader that falls behind by more than
//! [`CAPACITY`] events is told how many it missed; nobody waits for readers. (The
//! engine opens no tracing spans, so an event's own fields are all of its fields.)

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

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

fn sender() -> &'static broadcast::Sender<Arc<str>> {
    static FEED: OnceLock<broadcast::Sender<Arc<str>>> = OnceLock::new();
    FEED.get_or_init(|| broadcast::channel(CAPACITY).0)
}

/// A new reader: every feed event from now on, one JSON object each.
pub fn subscribe() -> broadcast::Receiver<Arc<str>> {
    sender().subscribe()
}

/// The tracing layer that fills the feed.
pub struct FeedLayer;

impl<S: Subscriber> Layer<S> for FeedLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let feed = sender();
        if feed.receiver_count() == 0 {
            return;
        }
        let mut kind = EventKind(None);
        event.record(&mut kind);
        if !kind.0.is_some_and(|k| FEED_EVENTS.contains(&k.as_str())) {
            return;
        }
        let mut obj = Map::new();
        obj.insert(
            "ts".into(),
            Value::String(
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ),
        );
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        event.record(&mut crate::logging::JsonVisitor(&mut obj));
        if let Ok(line) = serde_json::to_string(&Value::Object(obj)) {
            let _ = feed.send(line.into());
        }
    }
}

/// Finds the `event` field.
struct EventKind(Option<String>);

impl Visit for EventKind {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "event" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }
}
