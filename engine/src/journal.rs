//! The journal: the one writer of the state store's check states. It takes the
//! scheduler's observations in batches, commits each batch (states and the alert inbox
//! entries of its transitions, one transaction), and only then publishes the batch on
//! the bus of committed events.
//!
//! **Architecture invariant:** no transition reaches a subscriber before it is durable.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use vigia_core::alert::policy::Item;
use vigia_core::alert::AlertEvent;

use crate::bus::{Bus, Committed, CommittedTransition};
use crate::scheduler::Observation;
use crate::store::{Op, Store};

/// The most observations committed in one transaction.
const MAX_BATCH: usize = 4096;

pub struct Journal {
    pub store: Arc<Store>,
    /// `engine.hostname`, which a reload may change.
    pub host: watch::Receiver<Arc<str>>,
    pub bus: Bus,
}

impl Journal {
    /// Runs until `stop`, then commits and publishes what is still queued. The caller
    /// stops the check tasks first, so nothing is queued after that.
    pub async fn run(self, mut rx: mpsc::Receiver<Observation>, stop: CancellationToken) {
        let mut batch: Vec<Observation> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                o = rx.recv() => o,
                _ = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch).await;
        }
        while let Ok(o) = rx.try_recv() {
            batch.push(o);
            if batch.len() == MAX_BATCH {
                self.commit(&mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.commit(&mut batch).await;
        }
    }

    async fn commit(&self, batch: &mut Vec<Observation>) {
        let host = self.host.borrow().clone();
        let mut ops: Vec<Op> = batch
            .iter()
            .map(|o| Op::Check(o.spec.name.to_string(), Some(o.state.clone())))
            .collect();
        let mut committed = Vec::new();
        for o in batch.drain(..) {
            let Some(transition) = o.transition else {
                continue;
            };
            let event = AlertEvent {
                host: host.clone(),
                check: o.spec.name.clone(),
                group: o.spec.group.clone(),
                transition,
                message: o.outcome.message.clone(),
                value: o.outcome.value,
                failures: o.state.failures,
                threshold: o.spec.threshold,
                successes: o.state.successes,
                recover_after: o.spec.recover_after,
                comment: o.spec.comment.clone(),
                at: o.state.changed_at,
                previous_duration_ms: o.state.changed_at.saturating_sub(o.previous_change),
                failed_message: o.state.failed_message.clone(),
                transcript: None,
            };
            let seq = self.store.next_seq();
            ops.push(Op::Inbox(
                seq,
                serde_json::to_vec(&Item::Transition(event.clone())).ok(),
            ));
            committed.push(CommittedTransition {
                seq,
                event,
                remedy: o.spec.remedy.clone(),
            });
        }
        crate::store::persist(&self.store, ops, "the state of checks").await;
        let transitions = committed.len();
        for t in committed {
            self.bus.publish(Committed::Transition(Arc::new(t))).await;
        }
        if transitions > 0 {
            self.bus.publish(Committed::Batch { transitions }).await;
        }
    }
}
