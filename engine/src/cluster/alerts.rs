//! Cluster-wide alerting: one replica alerts per change, with one policy (grouping,
//! send windows, silences, flapping, reminders).
//!
//! Every replica's pipeline hands the transitions it commits (their inbox entries stay
//! meanwhile) to the **forwarder**, which publishes each on the cluster's event stream
//! with a `Nats-Msg-Id` of the check, the time and the transition: a publish repeated
//! after a crash is dropped by the stream, and the fence already let only the check's
//! owner commit it. Once the stream has it, the inbox entry goes. The **alerter** runs
//! on the leader only: it reads the stream through one durable consumer and gives each
//! item to its own pipeline. The item is acknowledged once every message carrying it
//! is delivered (or dropped by policy: silenced, suppressed, a permanent refusal);
//! until then the leader tells the stream it is still at work on it. So what the
//! leader holds back (a closed send window, grouping, Telegram down) is the cluster's:
//! a leader that dies leaves it to the next one (after the consumer's ack wait), one
//! that steps down drops its copies at once, and a restarted one drops them at start.
//!
//! Silences are the cluster's too: see [`super::silences`].
//!
//! Fail open: when the stream cannot be reached for `cluster.unreachable_after`, a
//! replica alerts its own transitions itself until it can again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigia_core::alert::policy::Item;

use super::Nats;
use crate::alerting::pipeline::Input;
use crate::store::{Op, Store};

/// How long the leader may hold an item it took without saying it is still at work on
/// it before the stream gives it to the next reader.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How often the leader says so, for each item not out yet.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How many items the leader may hold unacknowledged: a night of a closed send window
/// or a long Telegram outage must not stop the items behind them.
const MAX_ACK_PENDING: i64 = 100_000;
/// How long the stream keeps its items and remembers their `Nats-Msg-Id` (a publish
/// repeated within it is dropped): the whole time, so a replica that comes back after
/// days, with a transition in its inbox that the leader alerted for it (a remediation
/// run it died in), does not alert it twice. Transitions are few: a week of their ids
/// is small.
const KEEP: Duration = Duration::from_secs(7 * 86_400);

/// The stream's name and its one subject.
fn names(nats: &Nats) -> (String, String) {
    (
        format!("{}-events", nats.prefix),
        format!("{}.events", nats.prefix),
    )
}

/// Opens (or creates) the cluster's event stream.
pub async fn open_stream(nats: &Nats) -> Result<jetstream::stream::Stream, String> {
    let (name, subject) = names(nats);
    let config = jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: KEEP,
        max_age: KEEP,
        ..Default::default()
    };
    let mut stream = nats
        .js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| format!("cannot open the JetStream stream {name}: {e}"))?;
    // A stream made by an older Vigia remembered ids for 10 minutes only.
    if stream.cached_info().config.duplicate_window != KEEP {
        nats.js
            .update_stream(config)
            .await
            .map_err(|e| format!("cannot update the JetStream stream {name}: {e}"))?;
        stream = nats
            .js
            .get_stream(&name)
            .await
            .map_err(|e| format!("cannot open the JetStream stream {name}: {e}"))?;
    }
    Ok(stream)
}

/// What makes a transition one: the same transition published twice (a replica that
/// crashed after the publish, before forgetting its inbox entry) has the same id.
pub(super) fn msg_id(item: &Item) -> Option<String> {
    match item {
        Item::Transition(e) => Some(format!("{}@{}:{}", e.check, e.at, e.transition.as_str())),
        _ => None,
    }
}

pub struct AlertTasks {
    stop: CancellationToken,
    forwarder: JoinHandle<()>,
    alerter: JoinHandle<()>,
    /// The cluster's copy of the silences ([`super::silences`]).
    silences: JoinHandle<()>,
}

impl AlertTasks {
    pub fn start(
        nats: Nats,
        store: Arc<Store>,
        feed: crate::alerting::pipeline::ClusterFeed,
        pipeline: mpsc::Sender<Input>,
        leading: watch::Receiver<bool>,
        direct_after: Duration,
    ) -> AlertTasks {
        let stop = CancellationToken::new();
        let silences =
            super::silences::start(nats.clone(), feed.silences, pipeline.clone(), stop.clone());
        let forwarder = tokio::spawn(forwarder(
            nats.clone(),
            store.clone(),
            feed.transitions,
            pipeline.clone(),
            direct_after,
            stop.clone(),
        ));
        let alerter = tokio::spawn(alerter(nats, store, pipeline, leading, stop.clone()));
        AlertTasks {
            stop,
            forwarder,
            alerter,
            silences,
        }
    }

    /// What is not forwarded yet stays in the inbox, what the leader took and did not
    /// store goes to the next leader.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.forwarder.await;
        let _ = self.alerter.await;
        let _ = self.silences.await;
    }
}

/// Whether the stream took it now (false: it had it already, from before a restart).
async fn publish(nats: &Nats, subject: &str, item: &Item) -> Result<bool, String> {
    let body = serde_json::to_vec(item).map_err(|e| e.to_string())?;
    let mut msg = PublishMessage::build().payload(body.into());
    if let Some(id) = msg_id(item) {
        msg = msg.message_id(id);
    }
    let ack = nats
        .js
        .send_publish(subject.to_string(), msg)
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .map_err(|_| "no answer from JetStream within 5s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(!ack.duplicate)
}

/// Publishes `item` on the cluster's event stream; whether the stream took it now.
pub(super) async fn publish_item(nats: &Nats, item: &Item) -> Result<bool, String> {
    publish(nats, &names(nats).1, item).await
}

/// Publishes each committed transition in order, then forgets its inbox entry.
async fn forwarder(
    nats: Nats,
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<(u64, Item)>,
    pipeline: mpsc::Sender<Input>,
    direct_after: Duration,
    stop: CancellationToken,
) {
    let (_, subject) = names(&nats);
    // Since when publishing fails, while it does.
    let mut failing: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = stop.cancelled() => None,
        };
        let Some((seq, item)) = next else { return };
        loop {
            let published = tokio::select! {
                r = publish(&nats, &subject, &item) => r,
                // Not published: the inbox entry stays for the next start.
                _ = stop.cancelled() => return,
            };
            match published {
                Ok(fresh) => {
                    if !fresh {
                        tracing::info!(event = "cluster_alerts", check = item.check().unwrap_or_default(), "A transition of {} was in the cluster's stream already (published before a restart): it is not alerted again.", item.check().unwrap_or_default());
                    }
                    crate::failpoint::hit("cluster_after_publish");
                    if failing.take().is_some() {
                        tracing::info!(event = "cluster_alerts", "The cluster's event stream takes alerts again: the alerting replica sends them.");
                    }
                    if !crate::store::persist_until_ok(
                        &store,
                        vec![Op::Inbox(seq, None)],
                        "a forwarded alert",
                        &stop,
                    )
                    .await
                    {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    let since = *failing.get_or_insert_with(Instant::now);
                    if since.elapsed() >= direct_after {
                        let check = item.check().unwrap_or_default().to_string();
                        tracing::warn!(event = "cluster_alerts", check = %check, "The cluster's event stream cannot be reached for {} ({e}): this replica alerts {check} itself (fail open).", vigia_api::Dur(since.elapsed()));
                        if pipeline
                            .send(Input::Direct(seq, Box::new(item), None))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// While this replica leads: takes the stream's items and alerts them here.
async fn alerter(
    nats: Nats,
    store: Arc<Store>,
    pipeline: mpsc::Sender<Input>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let consumer = match open_consumer(&nats).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(event = "cluster_alerts", "{e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        tracing::info!(
            event = "cluster_alerts",
            "This replica leads: it alerts the cluster's transitions now."
        );
        // Ends the items' watchers when the lead ends: unacknowledged, they go to the
        // next leader.
        let term = stop.child_token();
        let ended = lead(&consumer, &store, &pipeline, &leading, &term).await;
        term.cancel();
        if ended == Lead::Over {
            return;
        }
        // Stepped down: its copies go, or two replicas would send them.
        if pipeline.send(Input::StepDown).await.is_err() {
            return;
        }
    }
}

#[derive(PartialEq)]
enum Lead {
    /// The lead ended; this replica may lead again.
    Lost,
    /// The engine stops.
    Over,
}

/// Reads the stream while this replica leads.
async fn lead(
    consumer: &consumer::PullConsumer,
    store: &Store,
    pipeline: &mpsc::Sender<Input>,
    leading: &watch::Receiver<bool>,
    term: &CancellationToken,
) -> Lead {
    while *leading.borrow() {
        // Every wait on NATS is bounded and gives way to the stop: with NATS gone a
        // fetch may never end by itself.
        let fetch = consumer
            .fetch()
            .max_messages(64)
            .expires(Duration::from_secs(1))
            .messages();
        let batch = tokio::select! {
            b = tokio::time::timeout(Duration::from_secs(5), fetch) => b,
            _ = term.cancelled() => return Lead::Over,
        };
        let mut batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(event = "cluster_alerts", "Reading the event stream: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => continue,
        };
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(Duration::from_secs(5), batch.next()) => n,
                _ = term.cancelled() => return Lead::Over,
            };
            let Ok(Some(Ok(m))) = next else { break };
            let item = match serde_json::from_slice::<Item>(&m.payload) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(
                        event = "cluster_alerts",
                        "An item of the event stream could not be read ({e}); it is dropped."
                    );
                    let _ = m.ack().await;
                    continue;
                }
            };
            let (settled, out) = oneshot::channel();
            if pipeline
                .send(Input::Direct(
                    store.next_seq(),
                    Box::new(item),
                    Some(settled),
                ))
                .await
                .is_err()
            {
                return Lead::Over;
            }
            tokio::spawn(watch_item(m, out, term.clone()));
        }
    }
    Lead::Lost
}

/// Acknowledges an item once its messages are out, and says meanwhile that the leader
/// is at work on it. Ends without a word when the lead or the engine ends, or the
/// pipeline lets the item go (it stepped down): the stream gives it to the next reader.
async fn watch_item(
    m: jetstream::Message,
    mut out: oneshot::Receiver<()>,
    term: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut out => {
                if r.is_ok() && !term.is_cancelled() {
                    if let Err(e) = m.double_ack().await {
                        tracing::debug!(event = "cluster_alerts", "Acknowledging an item: {e}");
                    }
                }
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = m.ack_with(jetstream::AckKind::Progress).await {
                    tracing::debug!(event = "cluster_alerts", "Telling the stream an item is at work: {e}");
                }
            }
            _ = term.cancelled() => return,
        }
    }
}

async fn open_consumer(nats: &Nats) -> Result<consumer::PullConsumer, String> {
    let stream = open_stream(nats).await?;
    let config = consumer::pull::Config {
        durable_name: Some("alerter".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer("alerter", config.clone())
        .await
        .map_err(|e| format!("cannot open the alerter's consumer: {e}"))?;
    // One made by an older Vigia, which acknowledged items once their fate was stored,
    // took 1024 at a time.
    if consumer.cached_info().config.max_ack_pending != MAX_ACK_PENDING {
        consumer = stream
            .update_consumer(config)
            .await
            .map_err(|e| format!("cannot update the alerter's consumer: {e}"))?;
    }
    Ok(consumer)
}
