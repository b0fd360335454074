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
    /// Whether the last write failed: what `/healthz` says.
    pub health: Arc<StoreHealth>,
    /// Result history (when on): its open minutes and closed buckets are written every
    /// [`crate::history::FLUSH_MS`], its transitions with the batch that made them.
    pub history: Option<Arc<crate::history::History>>,
    /// In a cluster: who may still commit a floating check's result (see [`Fence`]).
    pub fence: Option<Arc<dyn Fence>>,
}

/// Decides, before a batch is committed, which observations this engine may still
/// commit: in a cluster, a floating check's result counts only while this replica
/// owns the check (the cluster writes the check's state with the revision it last
/// wrote; a stale owner's write is refused and its result dropped, with whatever
/// alert or remediation it would have made). The journal knows nothing more of it.
pub trait Fence: Send + Sync {
    fn admit(&self, batch: Vec<Observation>) -> futures::future::BoxFuture<'_, Vec<Observation>>;
}

/// Whether the store can be written, as the journal last found it.
#[derive(Default)]
pub struct StoreHealth {
    /// Since when (unix ms) and why writes fail; `None` while they succeed.
    failing: std::sync::Mutex<Option<(u64, String)>>,
}

impl StoreHealth {
    pub fn failing(&self) -> Option<(u64, String)> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, v: Option<(u64, String)>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// What could not be written yet (a full disk): kept, retried, and published only once
/// it is durable, so that no alert goes out for a transition the store does not hold.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    transitions: Vec<CommittedTransition>,
    failing_since: Option<std::time::Instant>,
}

impl Pending {
    /// Adds a batch; a check's newer state replaces its older one.
    fn add(&mut self, ops: Vec<Op>, transitions: Vec<CommittedTransition>) {
        if self.ops.is_empty() {
            self.ops = ops;
        } else {
            let newer: std::collections::HashSet<String> = ops
                .iter()
                .filter_map(|o| match o {
                    Op::Check(name, _) => Some(name.clone()),
                    _ => None,
                })
                .collect();
            self.ops
                .retain(|o| !matches!(o, Op::Check(name, _) if newer.contains(name)));
            self.ops.extend(ops);
        }
        self.transitions.extend(transitions);
    }
}

impl Journal {
    /// Runs until `stop`, then commits and publishes what is still queued. The caller
    /// stops the check tasks first, so nothing is queued after that.
    pub async fn run(self, mut rx: mpsc::Receiver<Observation>, stop: CancellationToken) {
        let mut batch: Vec<Observation> = Vec::new();
        let mut pending = Pending::default();
        let mut history_tick =
            tokio::time::interval(std::time::Duration::from_millis(crate::history::FLUSH_MS));
        history_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = !pending.ops.is_empty();
            let first = tokio::select! {
                biased;
                o = rx.recv() => o,
                _ = history_tick.tick(), if self.history.is_some() => {
                    if let Some(h) = self.history.as_ref().filter(|h| h.due(crate::clock::unix_ms())) {
                        pending.add(h.flush_ops(crate::clock::unix_ms()), Vec::new());
                        self.flush(&mut pending).await;
                    }
                    continue;
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)), if retry => {
                    self.flush(&mut pending).await;
                    continue;
                }
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
            self.commit(&mut batch, &mut pending).await;
        }
        while let Ok(o) = rx.try_recv() {
            batch.push(o);
            if batch.len() == MAX_BATCH {
                self.commit(&mut batch, &mut pending).await;
            }
        }
        if !batch.is_empty() {
            self.commit(&mut batch, &mut pending).await;
        }
        // The open minutes, so that a restart goes on counting them.
        if let Some(h) = &self.history {
            pending.add(h.flush_ops(crate::clock::unix_ms()), Vec::new());
            self.flush(&mut pending).await;
        }
        if !pending.ops.is_empty() {
            tracing::error!(event = "store_error", "Stopping with {} unsaved changes ({} transitions not alerted): the state store could not be written.", pending.ops.len(), pending.transitions.len());
        }
    }

    /// Tries to write what is pending; publishes its transitions once it is durable.
    async fn flush(&self, pending: &mut Pending) {
        let store = self.store.clone();
        let ops = pending.ops.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = store.apply(&ops);
            // The history's flush leaves blocks glibc would keep: give them back.
            if ops.iter().any(|o| matches!(o, Op::Tables(_))) {
                crate::alloc::trim();
            }
            r
        })
        .await;
        match r {
            Ok(Ok(())) => {
                if let Some(t) = pending.failing_since.take() {
                    self.health.set(None);
                    tracing::info!(
                        event = "store_recovered",
                        "The state store can be written again after {}; {} held alerts go out now.",
                        vigia_api::Dur(t.elapsed()),
                        pending.transitions.len()
                    );
                }
                pending.ops.clear();
                let committed = std::mem::take(&mut pending.transitions);
                let transitions = committed.len();
                for t in committed {
                    self.bus.publish(Committed::Transition(Arc::new(t))).await;
                }
                if transitions > 0 {
                    self.bus.publish(Committed::Batch { transitions }).await;
                }
            }
            Ok(Err(e)) => {
                if pending.failing_since.is_none() {
                    pending.failing_since = Some(std::time::Instant::now());
                    self.health
                        .set(Some((crate::clock::unix_ms(), e.to_string())));
                    tracing::error!(event = "store_error", "The state store cannot be written: {e}. Check states and alerts are kept in memory and go out once it can be written (trying every second).");
                }
            }
            Err(e) => tracing::error!(
                event = "store_error",
                "Saving the state of checks failed: {e}."
            ),
        }
    }

    async fn commit(&self, batch: &mut Vec<Observation>, pending: &mut Pending) {
        if let Some(fence) = &self.fence {
            *batch = fence.admit(std::mem::take(batch)).await;
        }
        let host = self.host.borrow().clone();
        let mut ops: Vec<Op> = batch
            .iter()
            .map(|o| Op::Check(o.spec.name.to_string(), Some(o.state.clone())))
            .collect();
        if let Some(h) = &self.history {
            let now = crate::clock::unix_ms();
            if h.due(now) {
                ops.extend(h.flush_ops(now));
            }
        }
        let mut committed = Vec::new();
        for o in batch.drain(..) {
            let Some(transition) = o.transition else {
                continue;
            };
            let spec = vigia_core::status::CheckSpec {
                name: o.spec.name.clone(),
                group: o.spec.group.clone(),
                threshold: o.spec.threshold,
                recover_after: o.spec.recover_after,
                comment: o.spec.comment.clone(),
            };
            let event = AlertEvent::of_transition(
                host.clone(),
                &spec,
                transition,
                &o.outcome.message,
                o.outcome.value,
                &o.state,
                o.previous_change,
            );
            ops.extend(self.history.as_ref().and_then(|h| {
                h.transition_op(
                    &o.spec.name,
                    crate::history::TransitionRecord {
                        at: event.at,
                        to: event.transition.as_str().to_string(),
                        message: event.message.clone(),
                        after_ms: event.previous_duration_ms,
                    },
                )
            }));
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
        pending.add(ops, committed);
        self.flush(pending).await;
    }
}
