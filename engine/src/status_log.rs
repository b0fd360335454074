//! The log's view of the bus: one `{"event":"alert",...}` line per committed transition
//! (every transition, silenced or not), and the whole status map as one
//! `{"event":"status",...}` line after transitions (at most one a second) and every
//! `engine.status_log_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::book::StatusBook;
use crate::bus::Committed;

/// Logs until `stop` (having logged what was queued); returns the subscription for the
/// next stage (a reload that changes the interval builds a new one).
pub fn spawn(
    book: Arc<StatusBook>,
    host: watch::Receiver<Arc<str>>,
    every: Duration,
    mut events: mpsc::Receiver<Committed>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<mpsc::Receiver<Committed>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The map after transitions, at most once per STATUS_EVERY: with 10 000 checks
        // and flapping targets a line per batch was most of the engine's CPU (the whole
        // map serialized each time).
        let mut last = tokio::time::Instant::now() - STATUS_EVERY;
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                e = events.recv() => match e {
                    Some(Committed::Transition(t)) => crate::alerting::log_event(&t.event),
                    Some(Committed::Batch { .. }) => {
                        if last.elapsed() >= STATUS_EVERY {
                            log_status(&book, &host.borrow());
                            last = tokio::time::Instant::now();
                        } else {
                            due.get_or_insert(last + STATUS_EVERY);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    due = None;
                    log_status(&book, &host.borrow());
                    last = tokio::time::Instant::now();
                }
                _ = tick.tick() => log_status(&book, &host.borrow()),
                _ = stop.cancelled() => break,
            }
        }
        let mut batches = due.is_some();
        while let Ok(e) = events.try_recv() {
            match e {
                Committed::Transition(t) => crate::alerting::log_event(&t.event),
                Committed::Batch { .. } => batches = true,
            }
        }
        if batches {
            log_status(&book, &host.borrow());
        }
        events
    })
}

/// The shortest time between two status lines caused by transitions.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Logs the whole status map as one `{"event":"status",...}` line.
pub fn log_status(book: &StatusBook, host: &str) {
    let checks = book.statuses();
    let down: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(n, _)| n.as_str())
        .collect();
    let summary = if down.is_empty() {
        format!("All {} checks are OK.", checks.len())
    } else {
        format!(
            "{} of {} checks are down: {}.",
            down.len(),
            checks.len(),
            down.join(", ")
        )
    };
    let json = serde_json::to_string(&checks).unwrap_or_default();
    tracing::info!(event = "status", host = %host, checks_json = %json, "{summary}");
}
