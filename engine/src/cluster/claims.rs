//! Remediation claims across the cluster: one run per transition, and a run whose
//! replica died during it alerted as "outcome unknown" by the leader, never run again.
//!
//! Before a run, its replica creates the record `<p>-remedy/<transition>` (`create()`:
//! one replica only can) holding the alert to send if the run never reports; after the
//! run it writes the alert with the real transcript over it (`update(revision)`). The
//! leader looks at the records each time a replica has left the live set: the alert of
//! a run whose replica is gone is published on the event stream with the transition's
//! own `Nats-Msg-Id` (so if the replica did publish it, or does after a restart, the
//! stream keeps one) and the record is marked reported.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use vigia_core::alert::policy::Item;

use super::{alerts, all_entries_rev, key_of, lock, within, Nats};
use crate::remediation::{Claims, StoreClaims};
use crate::store::{Op, Store};

/// How long a claim is kept: the leader needs it only until it has seen its replica
/// alive after the run, or reported it.
pub const KEEP: Duration = Duration::from_secs(86_400);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Claimed, not reported back yet.
    Running,
    /// Ran; `item` carries its transcript.
    Done,
    /// The leader alerted it for a replica that had gone.
    Reported,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub replica: String,
    pub started: u64,
    pub state: ClaimState,
    /// The alert to send if the replica cannot: "outcome unknown" while running, the
    /// real transcript once done.
    pub item: Item,
}

/// A replica's claims: in its store (for its own restart) and in NATS (for the others).
pub struct NatsClaims {
    nats: Nats,
    replica: String,
    store: Arc<Store>,
    /// Claim key → the revision this replica created and when, for the write after
    /// the run.
    revs: Mutex<HashMap<String, (u64, u64)>>,
}

impl NatsClaims {
    pub fn new(nats: Nats, replica: String, store: Arc<Store>) -> NatsClaims {
        NatsClaims {
            nats,
            replica,
            store,
            revs: Mutex::default(),
        }
    }
}

fn claim_key(item: &Item) -> Option<String> {
    alerts::msg_id(item).map(|id| key_of(&id))
}

impl NatsClaims {
    /// This replica's claim record of a run, as it is written.
    fn record(&self, started: u64, state: ClaimState, item: &Item) -> Option<Vec<u8>> {
        let rec = ClaimRecord {
            replica: self.replica.clone(),
            started,
            state,
            item: item.clone(),
        };
        serde_json::to_vec(&rec).ok()
    }
}

impl Claims for NatsClaims {
    fn claim<'a>(&'a self, seq: u64, unknown: &'a Item) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            StoreClaims(self.store.clone()).claim(seq, unknown).await;
            let (Some(key), Some(check)) = (claim_key(unknown), unknown.check()) else {
                return true;
            };
            let started = crate::clock::unix_ms();
            let Some(body) = self.record(started, ClaimState::Running, unknown) else {
                return true;
            };
            match within(self.nats.remedy.create(&key, body.into())).await {
                Ok(Ok(rev)) => {
                    lock(&self.revs).insert(key, (rev, started));
                    true
                }
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let store = self.store.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || store.apply(&[Op::Inbox(seq, None)]))
                            .await;
                    false
                }
                Ok(Err(e)) => unclaimed(check, &e.to_string()),
                Err(why) => unclaimed(check, &why),
            }
        })
    }

    fn finish<'a>(&'a self, done: &'a Item) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(key) = claim_key(done) else { return };
            let Some((rev, started)) = lock(&self.revs).remove(&key) else {
                return;
            };
            let Some(body) = self.record(started, ClaimState::Done, done) else {
                return;
            };
            let check = done.check().unwrap_or_default();
            match within(self.nats.remedy.update(&key, body.into(), rev)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(event = "remediation_claim", check = %check, "The remediation run of {check} ended, but the leader had already alerted it as \"outcome unknown\" (this replica was out of the cluster during the run); its transcript is in this log only.");
                }
                r => {
                    tracing::debug!(event = "remediation_claim", check = %check, "Could not record the end of the remediation run of {check}: {r:?}");
                }
            }
        })
    }
}

/// A run that could not be claimed runs anyway: a repair is not put off for NATS.
fn unclaimed(check: &str, why: &str) -> bool {
    tracing::warn!(event = "remediation_claim", check = %check, "The remediation run of {check} could not be claimed in the cluster ({why}); it runs here anyway (if this replica dies during it, no other one will say so).");
    true
}

/// The leader's part: the claims of replicas not in `live` that were not reported yet
/// are alerted (with what the record holds) and marked reported. The number published
/// now (a repeat the stream dropped is not counted).
pub async fn report_orphans(nats: &Nats, live: &BTreeSet<String>) -> Result<usize, String> {
    let mut fresh = 0;
    for (key, (bytes, rev)) in all_entries_rev(&nats.remedy).await? {
        let Ok(mut rec) = serde_json::from_slice::<ClaimRecord>(&bytes) else {
            continue;
        };
        if rec.state == ClaimState::Reported || live.contains(&rec.replica) {
            continue;
        }
        let check = rec.item.check().unwrap_or_default().to_string();
        if alerts::publish_item(nats, &rec.item).await? {
            fresh += 1;
            match rec.state {
                ClaimState::Running => {
                    tracing::warn!(event = "remediation_unknown", check = %check, replica = %rec.replica, "Replica {} left the cluster during the remediation run of {check}: its outcome is unknown. The alert says so; the run is not made again.", rec.replica)
                }
                _ => {
                    tracing::info!(event = "remediation_unknown", check = %check, replica = %rec.replica, "Replica {} left the cluster after the remediation run of {check} and before alerting it: the leader alerts it with its transcript.", rec.replica)
                }
            }
        }
        rec.state = ClaimState::Reported;
        if let Ok(body) = serde_json::to_vec(&rec) {
            let _ = within(nats.remedy.update(&key, body.into(), rev)).await;
        }
    }
    Ok(fresh)
}
