//! The log's view of the bus: one `{"event":"alert",...}` line per committed transition
//! (every transition, silenced or not), and the whole status map as one
//! `{"event":"status",...}` line after each batch that had transitions and every
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
        loop {
            tokio::select! {
                biased;
                e = events.recv() => match e {
                    Some(e) => log(&e, &book, &host),
                    None => break,
                },
                _ = tick.tick() => log_status(&book, &host.borrow()),
                _ = stop.cancelled() => break,
            }
        }
        while let Ok(e) = events.try_recv() {
            log(&e, &book, &host);
        }
        events
    })
}

fn log(e: &Committed, book: &StatusBook, host: &watch::Receiver<Arc<str>>) {
    match e {
        Committed::Transition(t) => crate::alerting::log_event(&t.event),
        Committed::Batch { .. } => log_status(book, &host.borrow()),
    }
}

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
