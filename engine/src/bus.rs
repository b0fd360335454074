//! The bus of committed events: what the journal publishes once a batch of states and
//! transitions is durable. Alerting, remediation and the log subscribe; later consumers
//! (the HTTP API, metrics, history, the Telegram console) subscribe the same way.
//!
//! Every subscriber has its own bounded queue and gets every event, in commit order: a
//! slow subscriber slows the journal (and so, beyond its queue, the checks' hand-over),
//! it never loses an event. Subscriptions are made before the journal starts; a stage
//! that is rebuilt on reload hands its queue to the next one, so nothing published
//! meanwhile is lost.

use std::sync::Arc;

use tokio::sync::mpsc;
use vigia_core::alert::AlertEvent;
use vigia_core::remedy::CheckRemedy;

/// One committed transition.
#[derive(Debug)]
pub struct CommittedTransition {
    /// Its alert inbox entry.
    pub seq: u64,
    pub event: AlertEvent,
    /// The check's remediation, if it has one.
    pub remedy: Option<Arc<CheckRemedy>>,
}

impl CommittedTransition {
    /// The remediation to run for this transition, if any: then remediation, not
    /// alerting, takes it (and hands it to alerting with its transcript).
    pub fn remedy_now(&self) -> Option<Arc<CheckRemedy>> {
        self.remedy.clone().filter(|r| r.has(self.event.transition))
    }
}

#[derive(Debug, Clone)]
pub enum Committed {
    Transition(Arc<CommittedTransition>),
    /// A batch with transitions was committed (published after its `Transition`s).
    Batch {
        transitions: usize,
    },
}

#[derive(Default)]
pub struct Bus {
    subscribers: Vec<(&'static str, mpsc::Sender<Committed>)>,
}

impl Bus {
    /// A queue of `capacity` events for the subscriber `who` (named in logs).
    pub fn subscribe(&mut self, who: &'static str, capacity: usize) -> mpsc::Receiver<Committed> {
        let (tx, rx) = mpsc::channel(capacity);
        self.subscribers.push((who, tx));
        rx
    }

    /// Gives `event` to every subscriber, waiting for room in each queue.
    pub async fn publish(&self, event: Committed) {
        for (who, tx) in &self.subscribers {
            if tx.send(event.clone()).await.is_err() {
                tracing::debug!(subscriber = who, "A bus subscriber has stopped.");
            }
        }
    }
}
