//! The alert pipeline stage and the sender tasks.
//!
//! The pipeline takes committed transitions from the bus, items from remediation (with
//! their transcript) and script errors, and silence commands; drives the [`Policy`],
//! renders its messages, and keeps every step durable in the state store. One sender
//! task per target (a console, a Telegram chat, a webhook) delivers that target's outbox
//! in order: a transient failure is retried with backoff (or after Telegram's
//! `retry_after`), a permanent one is logged, counted, and skipped, and neither holds up
//! any other target. Checks never wait on any of it.
//!
//! The stage is built whole: channels, templates, windows, every check's alert settings
//! and the reminders of checks that are down are in its policy before it replays the
//! inbox. A reload that changes `channels:`, `windows:` or `alerting:` stops it (it
//! hands back its queues) and builds the next one from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigia_config::alerting::{AlertingSetup, ChannelKind};
use vigia_core::alert::policy::{CheckAlerting, Fate, Held, Item, Message, Note, Policy};
use vigia_core::alert::template::{Flavor, Templates};
use vigia_core::alert::{Ack, AlertEvent};
use vigia_core::command::{Command, Reply};
use vigia_core::silence::Silence;
pub use vigia_core::snapshot::TargetStats;

use super::buttons::{Button, ButtonSet};
use super::sink::{
    split_html, ConsoleSink, SendError, Sink, TelegramSink, WebhookSink, TELEGRAM_LIMIT,
};
use super::Console;
use crate::book::StatusBook;
use crate::bus::Committed;
use crate::clock::unix_ms;
use crate::store::{Op, Store};

/// A message in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub kind: String,
    /// What a console or a chat shows.
    pub text: String,
    /// What a webhook POSTs (JSON).
    #[serde(default)]
    pub document: String,
    pub created_at: u64,
    /// What to do with it (a send, unless the Telegram console edits or answers).
    #[serde(default, skip_serializing_if = "Action::is_send")]
    pub action: Action,
    /// In a cluster, on the leader: the items of the cluster's stream it carries (their
    /// seqs here). The stream keeps an item until every message carrying it is out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<u64>,
}

/// What a stored message asks of its target. Only Telegram targets get anything but
/// `Send`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Action {
    /// Send it: every message of earlier releases.
    #[default]
    Send,
    /// Send it with buttons; once Telegram gave it an id, the set is stored under it.
    SendWithButtons { set: Box<ButtonSet> },
    /// A reply to a chat's message.
    Reply { to: i64 },
    /// Replace the text and buttons of a message sent before.
    Edit {
        message_id: i64,
        buttons: Vec<Button>,
    },
    /// Answer a button press with a short toast (`text`).
    Answer { callback_id: String },
}

impl Action {
    fn is_send(&self) -> bool {
        *self == Action::Send
    }
}

impl Stored {
    /// A message of the Telegram console (a reply, an edit, a toast).
    pub fn console(kind: &str, text: String, action: Action) -> Stored {
        Stored {
            kind: kind.to_string(),
            text,
            document: String::new(),
            created_at: unix_ms(),
            action,
            sources: Vec::new(),
        }
    }
}

/// What `vigia status` shows of alerting: one entry per delivery target.
#[derive(Default)]
pub struct AlertStatus {
    pub targets: Mutex<BTreeMap<String, TargetStats>>,
    /// The acknowledged failures, by check.
    pub acks: Mutex<HashMap<String, Ack>>,
    /// The recording, when there is one: silences and acknowledgements go into it for
    /// `vigia replay`.
    pub recorder: std::sync::OnceLock<Arc<crate::record::Recorder>>,
}

impl AlertStatus {
    pub fn snapshot(&self) -> BTreeMap<String, TargetStats> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The acknowledgement of a check's current failure.
    pub fn ack(&self, check: &str) -> Option<Ack> {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(check)
            .cloned()
    }

    fn set_ack(&self, check: &str, ack: Option<Ack>) {
        let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        match ack {
            Some(x) => a.insert(check.to_string(), x),
            None => a.remove(check),
        };
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut TargetStats)) -> TargetStats {
        let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let s = t.entry(target.to_string()).or_default();
        f(s);
        s.clone()
    }
}

/// What the Telegram console hands over after carrying out the rest: from the replies
/// to its commands, the store writes and the messages (target key, message) to keep with
/// them.
pub type Then = Box<dyn FnOnce(&[Reply]) -> (Vec<Op>, Vec<(String, Stored)>) + Send>;

/// Commands carried out together with writes of the caller's, in one transaction: the
/// Telegram console's update offset, a message's buttons, the replies it sends.
pub struct Work {
    pub commands: Vec<Command>,
    pub ops: Vec<Op>,
    pub then: Then,
}

/// What reaches the pipeline other than the bus.
pub enum Input {
    /// An item with its inbox entry: a transition with its remediation transcript, or a
    /// script error.
    Item(u64, Box<Item>),
    /// A reload changed the checks: their alert settings.
    Checks(HashMap<Arc<str>, Arc<CheckAlerting>>),
    /// Silence and acknowledgement commands with the caller's writes, and their answers
    /// (one per command), or why nothing could be stored.
    Work(Box<Work>, oneshot::Sender<Result<Vec<Reply>, String>>),
    /// In a cluster: an item for this replica's own policy, never forwarded: one the
    /// leader took from the cluster's stream (`settled` once every message carrying it
    /// is delivered or dropped, or the policy sends none: then the stream may forget
    /// it), or one of this replica's own that could not reach the stream while NATS was
    /// out of reach (fail open).
    Direct(u64, Box<Item>, Option<oneshot::Sender<()>>),
    /// In a cluster: this replica no longer leads. What it holds or has not delivered
    /// of the stream's items is dropped: the stream gives them to the next leader.
    StepDown,
    /// In a cluster: the cluster's silences, as read after this replica's changes up to
    /// `gen` were written (an older read, which may lack one of them, is not applied).
    Silences { gen: u64, set: Vec<Silence> },
}

/// In a cluster, where the pipeline hands its committed transitions (with their inbox
/// entries): the cluster's stream, whose one reader alerts them.
pub type Forward = mpsc::UnboundedSender<(u64, Item)>;

/// A silence added (`Some`) or ended (`None`) here, for the cluster's copy; `gen`
/// counts this replica's changes.
#[derive(Debug, Clone)]
pub struct SilenceChange {
    pub gen: u64,
    pub id: u64,
    pub silence: Option<Silence>,
}

/// In a cluster: until when (on [`crate::clock::mono_ms`]) this replica's lead is
/// proven: its last renewal of the lease, plus the lease, less a heartbeat; 0 while it
/// does not lead. A message carrying the stream's items goes out only while it holds:
/// a leader paused or cut off past it may have been replaced, and the next one sends it.
pub type LeadProof = Arc<std::sync::atomic::AtomicU64>;

/// What a pipeline in a cluster hands out: committed transitions to the cluster's
/// stream, silence changes to the cluster's copy of the silences; and what it is told:
/// whether its lead is proven.
#[derive(Clone)]
pub struct ClusterLink {
    pub forward: Forward,
    pub silences: mpsc::UnboundedSender<SilenceChange>,
    pub lead: LeadProof,
}

/// The other end of a [`ClusterLink`], which the cluster's tasks read.
pub struct ClusterFeed {
    pub transitions: mpsc::UnboundedReceiver<(u64, Item)>,
    pub silences: mpsc::UnboundedReceiver<SilenceChange>,
    /// The member keeps it.
    pub lead: LeadProof,
}

impl ClusterLink {
    pub fn new() -> (ClusterLink, ClusterFeed) {
        let (forward, transitions) = mpsc::unbounded_channel();
        let (silences, silences_rx) = mpsc::unbounded_channel();
        let lead = LeadProof::default();
        (
            ClusterLink {
                forward,
                silences,
                lead: lead.clone(),
            },
            ClusterFeed {
                transitions,
                silences: silences_rx,
                lead,
            },
        )
    }
}

/// The pipeline's queues; a stage hands them to the next one.
pub struct Inputs {
    pub commands: mpsc::Receiver<Input>,
    pub events: mpsc::Receiver<Committed>,
    pub shared: Shared,
}

/// In a cluster, on the leader: the items of the cluster's stream whose messages are
/// not all out yet. Outlives a stage, as the queues do.
pub struct Shared {
    open: HashMap<u64, Open>,
    /// The senders report here the sources of each message they are done with.
    tx: mpsc::UnboundedSender<Vec<u64>>,
    rx: mpsc::UnboundedReceiver<Vec<u64>>,
}

impl Shared {
    pub fn new() -> Shared {
        let (tx, rx) = mpsc::unbounded_channel();
        Shared {
            open: HashMap::new(),
            tx,
            rx,
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// One item of the stream, while something carries it.
struct Open {
    /// Its held entries (one per channel) and outbox messages (one per target and part).
    refs: usize,
    settled: oneshot::Sender<()>,
}

/// One delivery target: a console, a Telegram chat, a webhook.
pub struct Target {
    key: String,
    channel: Arc<str>,
    flavor: Flavor,
    /// Telegram: split long messages.
    split: bool,
    /// Telegram with `commands: true`: the silence buttons under failures.
    buttons: Option<Arc<[Duration]>>,
    sink: Arc<dyn Sink>,
    wake: Arc<Notify>,
}

/// Builds the sinks (reading bot tokens). `console: None` prints nothing
/// (`--no-console`). Done before a stage is replaced, so a channel that cannot be built
/// keeps the running stage.
pub fn build_targets(
    setup: &AlertingSetup,
    console: Option<Console>,
) -> Result<Vec<Target>, String> {
    let mut targets: Vec<Target> = Vec::new();
    for ch in &setup.channels {
        let buttons: Option<Arc<[Duration]>> = match &ch.kind {
            ChannelKind::Telegram {
                console: Some(c), ..
            } => Some(c.silence_buttons.clone().into()),
            _ => None,
        };
        let mut add = |key: String, split: bool, sink: Arc<dyn Sink>| {
            targets.push(Target {
                key,
                channel: ch.name.clone(),
                flavor: ch.flavor(),
                split,
                buttons: buttons.clone(),
                sink,
                wake: Arc::new(Notify::new()),
            })
        };
        match &ch.kind {
            ChannelKind::Console => add(
                ch.name.to_string(),
                false,
                Arc::new(ConsoleSink(console.clone())),
            ),
            ChannelKind::Telegram {
                token,
                chat_ids,
                api_url,
                ..
            } => {
                let token = token
                    .resolve()
                    .map_err(|e| format!("channel {}: {e}", ch.name))?;
                for chat in chat_ids {
                    let sink = TelegramSink::new(&token, api_url, *chat)
                        .map_err(|e| format!("channel {}: {e}", ch.name))?;
                    add(format!("{}#{chat}", ch.name), true, Arc::new(sink));
                }
            }
            ChannelKind::Webhook { url, headers } => {
                let sink = WebhookSink::new(url, headers.clone())
                    .map_err(|e| format!("channel {}: {e}", ch.name))?;
                add(ch.name.to_string(), false, Arc::new(sink));
            }
        }
    }
    Ok(targets)
}

/// Everything a pipeline stage starts with.
pub struct PipelineSetup<'a> {
    pub alerting: &'a AlertingSetup,
    /// Every check's alert settings (those with any).
    pub checks: HashMap<Arc<str>, Arc<CheckAlerting>>,
    /// The checks that are down, for their reminders (counted from their change).
    pub down: Vec<AlertEvent>,
    pub host: Arc<str>,
    /// Replay the alert inbox: at the engine's start. A rebuilt stage takes over the
    /// queues of the one before, which already hold what the inbox would replay.
    pub replay_inbox: bool,
    /// In a cluster: transitions go there instead of into this replica's policy, and
    /// silence changes to the cluster's copy.
    pub cluster: Option<ClusterLink>,
}

pub struct Handles {
    /// Ends once its `stop` token is cancelled and its queues are drained, giving them
    /// back.
    pub pipeline: JoinHandle<Inputs>,
    pub senders: Vec<JoinHandle<()>>,
    pub stop_senders: CancellationToken,
}

/// Restores what the store holds (held entries, silences, delivery counters, the inbox)
/// and starts the pipeline and its senders. On a store error the queues come back.
#[allow(clippy::too_many_arguments)]
pub fn start(
    setup: PipelineSetup<'_>,
    targets: Vec<Target>,
    store: Arc<Store>,
    book: Arc<StatusBook>,
    status: Arc<AlertStatus>,
    inputs: Inputs,
    stop: CancellationToken,
) -> Result<Handles, (String, Inputs)> {
    let loaded = (|| {
        if setup.replay_inbox && setup.cluster.is_some() {
            drop_shared(&store)?;
        }
        let counts = store.outbox_counts()?;
        let saved = store.load_targets()?;
        let held = store.load_held()?;
        let silences = crate::silences::load(&store)?;
        let acks = store.load_acks()?;
        let inbox = if setup.replay_inbox {
            store.load_inbox()?
        } else {
            Vec::new()
        };
        Ok::<_, crate::store::StoreError>((counts, saved, held, silences, acks, inbox))
    })();
    let (counts, saved, held, silences, acks, inbox) = match loaded {
        Ok(x) => x,
        Err(e) => return Err((e.to_string(), inputs)),
    };
    let mut fresh = BTreeMap::new();
    for t in &targets {
        let mut s: TargetStats = saved
            .get(&t.key)
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        s.channel = t.channel.to_string();
        s.target = t.sink.describe();
        s.pending = counts.get(&t.key).copied().unwrap_or(0);
        fresh.insert(t.key.clone(), s);
    }
    for (key, n) in &counts {
        if !fresh.contains_key(key) && *n > 0 {
            tracing::warn!(event = "alert_store", target = %key, pending = n, "{n} undelivered messages are for {key}, which the config no longer has; they stay in the store and go out if it comes back.");
        }
    }
    *status.targets.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    let mut policy_config = setup.alerting.policy.clone();
    policy_config.checks = setup.checks;
    let mut policy = Policy::new(policy_config, setup.host.clone());
    for (ch, _seq, bytes) in held {
        match serde_json::from_slice::<Held>(&bytes) {
            Ok(h) => policy.restore(ch.as_str().into(), h),
            Err(e) => tracing::warn!(
                event = "alert_store",
                "A held alert could not be read ({e}); it is dropped."
            ),
        }
    }
    policy.silences = silences;
    if let Some(r) = status.recorder.get() {
        // The silences in force when this stage starts (the engine's start, a reload):
        // a replay from here on knows them.
        let now = unix_ms();
        for s in policy.silences.active(now) {
            r.note(now, serde_json::json!({ "silence": s }));
        }
    }
    // An acknowledgement holds while its failure lasts: one whose check recovered (or
    // left the config) while the engine was stopped is forgotten.
    let mut stale = Vec::new();
    let mut held_acks = HashMap::new();
    for (check, bytes) in acks {
        let ack = serde_json::from_slice::<Ack>(&bytes).ok();
        let current = book.check(&check);
        match ack {
            Some(a) if current.is_some_and(|c| !c.status && c.changed_at == a.since) => {
                held_acks.insert(check.clone(), a.clone());
                policy.restore_ack(check.as_str().into(), a);
            }
            _ => stale.push(Op::Ack(check, None)),
        }
    }
    *status.acks.lock().unwrap_or_else(|p| p.into_inner()) = held_acks;
    if !stale.is_empty() {
        if let Err(e) = store.apply(&stale) {
            tracing::warn!(
                event = "alert_store",
                "Old acknowledgements could not be removed ({e}); they are ignored."
            );
        }
    }
    let now = unix_ms();
    for event in setup.down {
        policy.restore_reminder(event, now);
    }
    let Inputs {
        commands,
        events,
        shared: Shared { open, tx, rx },
    } = inputs;
    let stop_senders = CancellationToken::new();
    let senders = targets
        .iter()
        .map(|t| {
            tokio::spawn(sender(
                Outlet {
                    key: t.key.clone(),
                    sink: t.sink.clone(),
                    wake: t.wake.clone(),
                    max_wait: setup.alerting.max_retry_wait,
                    settled: tx.clone(),
                    lead: setup.cluster.as_ref().map(|c| c.lead.clone()),
                },
                store.clone(),
                status.clone(),
                stop_senders.clone(),
            ))
        })
        .collect();
    let p = Pipeline {
        policy,
        store,
        templates: setup.alerting.templates.clone(),
        tz: setup.alerting.policy.tz.clone(),
        targets,
        book,
        status,
        host: setup.host,
        stop: stop.clone(),
        cluster: setup.cluster,
        silence_gen: 0,
        open,
        settled_tx: tx,
    };
    let pipeline = tokio::spawn(p.run(commands, events, rx, inbox, stop));
    Ok(Handles {
        pipeline,
        senders,
        stop_senders,
    })
}

struct Pipeline {
    policy: Policy,
    store: Arc<Store>,
    templates: Arc<Templates>,
    tz: jiff::tz::TimeZone,
    targets: Vec<Target>,
    /// For `depends_on`: whether a check is down now.
    book: Arc<StatusBook>,
    status: Arc<AlertStatus>,
    host: Arc<str>,
    /// The stage's own stop: a write that waits for room on the disk gives up on it (the
    /// item stays in the inbox and is taken again at the next start).
    stop: CancellationToken,
    cluster: Option<ClusterLink>,
    /// This replica's silence changes handed to the cluster so far.
    silence_gen: u64,
    /// See [`Shared`].
    open: HashMap<u64, Open>,
    settled_tx: mpsc::UnboundedSender<Vec<u64>>,
}

impl Pipeline {
    async fn run(
        mut self,
        commands: mpsc::Receiver<Input>,
        events: mpsc::Receiver<Committed>,
        mut settled: mpsc::UnboundedReceiver<Vec<u64>>,
        inbox: Vec<(u64, Vec<u8>)>,
        stop: CancellationToken,
    ) -> Inputs {
        let mut inputs = Queues { commands, events };
        // Items committed before a crash that alerting had not taken yet.
        for (seq, bytes) in inbox {
            match serde_json::from_slice::<Item>(&bytes) {
                Ok(item) => self.accept(seq, item).await,
                Err(e) => {
                    tracing::warn!(
                        event = "alert_store",
                        "An alert in the inbox could not be read ({e}); it is dropped."
                    );
                    self.persist(vec![Op::Inbox(seq, None)]).await;
                }
            }
        }
        self.flush().await;
        // A queue whose senders are all gone (the journal at shutdown) is just quiet: the
        // stage ends on `stop` alone, after remediation has passed its last items on.
        let (mut events_open, mut commands_open) = (true, true);
        loop {
            let deadline = self.policy.next_deadline();
            tokio::select! {
                biased;
                e = inputs.events.recv(), if events_open => match e {
                    Some(e) => self.event(e).await,
                    None => events_open = false,
                },
                i = inputs.commands.recv(), if commands_open => match i {
                    Some(i) => self.input(i).await,
                    None => commands_open = false,
                },
                Some(seqs) = settled.recv() => self.settle(&seqs),
                _ = sleep_until_ms(deadline) => {}
                _ = stop.cancelled() => break,
            }
            // Take whatever else is queued before flushing: one batch, one commit.
            self.take_queued(&mut inputs).await;
            self.flush().await;
        }
        self.take_queued(&mut inputs).await;
        self.flush().await;
        while let Ok(seqs) = settled.try_recv() {
            self.settle(&seqs);
        }
        Inputs {
            commands: inputs.commands,
            events: inputs.events,
            shared: Shared {
                open: self.open,
                tx: self.settled_tx,
                rx: settled,
            },
        }
    }

    async fn take_queued(&mut self, inputs: &mut Queues) {
        loop {
            if let Ok(e) = inputs.events.try_recv() {
                self.event(e).await;
            } else if let Ok(i) = inputs.commands.try_recv() {
                self.input(i).await;
            } else {
                break;
            }
        }
    }

    async fn event(&mut self, e: Committed) {
        match e {
            // Remediation takes these and passes them on with their transcript.
            Committed::Transition(t) if t.remedy_now().is_some() => {}
            Committed::Transition(t) => self.accept(t.seq, Item::Transition(t.event.clone())).await,
            Committed::Batch { .. } => {}
        }
    }

    async fn input(&mut self, i: Input) {
        match i {
            Input::Item(seq, item) => self.accept(seq, *item).await,
            Input::Direct(seq, item, settled) => self.accept_here(seq, *item, settled).await,
            Input::StepDown => self.step_down().await,
            Input::Checks(map) => self.policy.set_checks(map),
            Input::Silences { gen, set } if gen >= self.silence_gen => {
                self.take_silences(set).await
            }
            Input::Silences { .. } => {}
            Input::Work(work, reply) => {
                let answers = self.work(*work).await;
                let _ = reply.send(answers);
            }
        }
    }

    /// Carries out silence and acknowledgement commands, and stores what they changed
    /// with the caller's writes and messages, in one transaction.
    async fn work(&mut self, work: Work) -> Result<Vec<Reply>, String> {
        let Work {
            commands,
            mut ops,
            then,
        } = work;
        let now = unix_ms();
        let mut replies = Vec::with_capacity(commands.len());
        for cmd in &commands {
            let (reply, more) = self.command(cmd, now);
            ops.extend(more);
            replies.push(reply);
        }
        let (more, messages) = then(&replies);
        ops.extend(more);
        let mut woken = Vec::new();
        for (key, stored) in messages {
            let Some(t) = self.targets.iter().find(|t| t.key == key) else {
                tracing::warn!(event = "alert_store", target = %key, "A reply for {key} is dropped: the config has no such target.");
                continue;
            };
            let seq = self.store.next_seq();
            ops.push(Op::Outbox(key, seq, serde_json::to_vec(&stored).ok()));
            self.status.update(&t.key, |s| s.pending += 1);
            woken.push(t.wake.clone());
        }
        let changes: Vec<(u64, Option<Silence>)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Silence(id, bytes) => Some((
                    *id,
                    bytes.as_ref().and_then(|b| serde_json::from_slice(b).ok()),
                )),
                _ => None,
            })
            .collect();
        if !self.persist(ops).await {
            return Err("the change could not be saved (see the engine's log)".into());
        }
        for w in woken {
            w.notify_one();
        }
        if let Some(link) = &self.cluster {
            for (id, silence) in changes {
                self.silence_gen += 1;
                let _ = link.silences.send(SilenceChange {
                    gen: self.silence_gen,
                    id,
                    silence,
                });
            }
        }
        for r in &replies {
            self.note_reply(r, now, "");
        }
        Ok(replies)
    }

    /// The log line of a silence or acknowledgement reply and its note in the recording;
    /// `whence` ends the log line (" on another replica").
    fn note_reply(&self, r: &Reply, now: u64, whence: &str) {
        crate::silences::log(r, &self.tz, whence);
        if let Some(rec) = self.status.recorder.get() {
            match r {
                Reply::Silence(s) => rec.note(now, serde_json::json!({ "silence": s })),
                Reply::Removed { id } => rec.note(now, serde_json::json!({ "unsilence": id })),
                Reply::Acked {
                    check,
                    ack,
                    already: false,
                } => rec.note(now, serde_json::json!({ "ack": check, "by": ack.by })),
                _ => {}
            }
        }
    }

    /// In a cluster: makes this replica's silences the cluster's (added or ended on
    /// another replica, or while this one was away).
    async fn take_silences(&mut self, set: Vec<Silence>) {
        let now = unix_ms();
        let active = self.policy.silences.active(now);
        let mut ops = Vec::new();
        let mut replies = Vec::new();
        for s in set.iter().filter(|s| s.until > now) {
            if !active.contains(s) {
                self.policy.silences.insert(s.clone());
                ops.push(Op::Silence(s.id, serde_json::to_vec(s).ok()));
                replies.push(Reply::Silence(s.clone()));
            }
        }
        for a in &active {
            if !set.iter().any(|s| s.id == a.id) {
                let _ = self.policy.silences.remove(a.id);
                ops.push(Op::Silence(a.id, None));
                replies.push(Reply::Removed { id: a.id });
            }
        }
        if ops.is_empty() {
            return;
        }
        self.persist(ops).await;
        for r in &replies {
            self.note_reply(r, now, " (in the cluster)");
        }
    }

    /// One command: its answer and the writes that keep it.
    fn command(&mut self, cmd: &Command, now: u64) -> (Reply, Vec<Op>) {
        if let Command::Ack { name, by } = cmd {
            let Some(state) = self.book.check(name).filter(|c| !c.status) else {
                return (
                    Reply::error(format!("{name} is up: there is no failure to acknowledge")),
                    Vec::new(),
                );
            };
            return match self.policy.acknowledge(name, by, state.changed_at, now) {
                Ok(ack) => {
                    self.status.set_ack(name, Some(ack.clone()));
                    let op = Op::Ack(name.clone(), serde_json::to_vec(&ack).ok());
                    let reply = Reply::Acked {
                        check: name.clone(),
                        ack,
                        already: false,
                    };
                    (reply, vec![op])
                }
                Err(ack) => (
                    Reply::Acked {
                        check: name.clone(),
                        ack,
                        already: true,
                    },
                    Vec::new(),
                ),
            };
        }
        let store = self.store.clone();
        // In a cluster, ids are made on every replica: a random one, not one of a
        // counter the replicas would share.
        let clustered = self.cluster.is_some();
        let taken: Vec<u64> = match clustered {
            true => self
                .policy
                .silences
                .active(0)
                .iter()
                .map(|s| s.id)
                .collect(),
            false => Vec::new(),
        };
        let host = self.host.clone();
        let next_id = move || {
            if clustered {
                cluster_silence_id(&host, &taken)
            } else {
                store.next_seq()
            }
        };
        match crate::silences::execute(&mut self.policy.silences, cmd, next_id, now) {
            Some(x) => x,
            None => (
                Reply::error("alerting does not carry out this command"),
                Vec::new(),
            ),
        }
    }

    fn log_notes(&mut self) {
        for n in self.policy.take_notes() {
            match n {
                Note::Suppressed {
                    check,
                    depends_on,
                    channel,
                } => {
                    tracing::info!(event = "alert_suppressed", check = %check, depends_on = %depends_on, channel = %channel, "The alert of {check} is suppressed: {depends_on}, which it depends on, is down.")
                }
            }
        }
    }

    async fn persist(&self, ops: Vec<Op>) -> bool {
        crate::store::persist_until_ok(&self.store, ops, "alerting's state", &self.stop).await
    }

    async fn accept(&mut self, seq: u64, item: Item) {
        // In a cluster the transitions are the alerting replica's to alert: they go to
        // the cluster's stream (the inbox entry stays until NATS has it).
        if let Some(f) = self
            .cluster
            .as_ref()
            .map(|c| &c.forward)
            .filter(|_| matches!(item, Item::Transition(_)))
        {
            if f.send((seq, item)).is_err() {
                tracing::warn!(event = "alert_store", "The cluster's forwarder has stopped: the alert stays in the inbox for the next start.");
            }
            return;
        }
        self.accept_here(seq, item, None).await;
    }

    /// Takes an item into this replica's policy and stores its fate. One of the
    /// cluster's stream (`settled`) stays open until its messages are out.
    async fn accept_here(&mut self, seq: u64, item: Item, settled: Option<oneshot::Sender<()>>) {
        let check = item.check().map(str::to_string);
        // A transition ends the acknowledged failure (the policy moves the ack into a
        // recovery's message).
        let ended_ack = match &item {
            Item::Transition(e) if self.policy.ack_of(&e.check).is_some() => {
                Some(e.check.to_string())
            }
            _ => None,
        };
        let (fate, mut held) = self.policy.accept(seq, item, unix_ms());
        if settled.is_some() {
            for (_, h) in &mut held {
                h.shared = true;
            }
        }
        match (&fate, &check) {
            (Fate::Silenced(id), Some(c)) => {
                tracing::info!(event = "alert_silenced", check = %c, silence = id, "The alert of {c} is not sent: silence {id} covers it.")
            }
            (Fate::HeldAsFlapping, Some(c)) => {
                tracing::info!(event = "alert_flapping", check = %c, "{c} is flapping: this change is held until it is stable.")
            }
            (Fate::FlappingStarted, Some(c)) => {
                tracing::warn!(event = "alert_flapping", check = %c, "{c} is flapping: one message says so, and its changes are held until it is stable.")
            }
            _ => {}
        }
        let mut ops: Vec<Op> = held
            .iter()
            .map(|(ch, h)| Op::Held(ch.to_string(), h.seq, serde_json::to_vec(h).ok()))
            .collect();
        ops.push(Op::Inbox(seq, None));
        if let Some(c) = ended_ack {
            self.status.set_ack(&c, None);
            ops.push(Op::Ack(c, None));
        }
        // Not stored (the stage stops): the stream gives the item to the next reader.
        if !self.persist(ops).await {
            return;
        }
        match settled {
            Some(s) if held.is_empty() => {
                let _ = s.send(());
            }
            Some(settled) => {
                self.open.insert(
                    seq,
                    Open {
                        refs: held.len(),
                        settled,
                    },
                );
            }
            None => {}
        }
    }

    /// Counts the stream's items' messages in (`+`) and out (`-`); an item nothing
    /// carries any more is settled: the stream may forget it.
    fn count(&mut self, seq: u64, delta: isize) {
        let Some(o) = self.open.get_mut(&seq) else {
            return;
        };
        o.refs = o.refs.saturating_add_signed(delta);
        if o.refs == 0 {
            if let Some(o) = self.open.remove(&seq) {
                let _ = o.settled.send(());
            }
        }
    }

    /// The senders are done with messages carrying these items.
    fn settle(&mut self, seqs: &[u64]) {
        for s in seqs {
            self.count(*s, -1);
        }
    }

    /// This replica no longer leads: what it holds or has not delivered of the stream's
    /// items goes (a message being sent now may still go out: the one repeat allowed).
    async fn step_down(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u64> = self.open.drain().map(|(s, _)| s).collect();
        let mut ops: Vec<Op> = self
            .policy
            .forget(&|s| gone.contains(&s))
            .into_iter()
            .map(|(ch, s)| Op::Held(ch.to_string(), s, None))
            .collect();
        let held = ops.len();
        let store = self.store.clone();
        let mine = gone.clone();
        let unsent = tokio::task::spawn_blocking(move || {
            carrying(&store, |sources| sources.iter().any(|s| mine.contains(s)))
        })
        .await;
        let list = match unsent {
            Ok(Ok(list)) => list,
            _ => Vec::new(),
        };
        let unsent = list.len();
        for (key, seq) in list {
            self.status
                .update(&key, |s| s.pending = s.pending.saturating_sub(1));
            ops.push(Op::Outbox(key, seq, None));
        }
        if self.persist(ops).await {
            tracing::info!(event = "cluster_alerts", held, unsent, "This replica no longer leads: the {} alerts of the cluster it had not sent all of ({held} held back, {unsent} messages undelivered) are left to the next leader; the cluster's stream keeps them until they are out.", gone.len());
        }
    }

    /// Stores what the policy released: held entries out, messages into the outbox,
    /// in one transaction; then wakes the senders.
    /// Renders each (message, target) job on the blocking pool: a template that takes
    /// its whole fuel holds a thread of its own, never a worker that checks run on.
    /// Returns each job's target and what it stores.
    async fn render_all(
        &self,
        messages: Vec<Message>,
        jobs: Vec<(usize, usize)>,
    ) -> Option<Vec<(usize, Vec<Stored>)>> {
        if jobs.is_empty() {
            return Some(Vec::new());
        }
        let looks: Vec<Look> = self.targets.iter().map(Target::look).collect();
        let templates = self.templates.clone();
        let host = self.host.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            jobs.iter()
                .map(|&(mi, ti)| (ti, render(&templates, &host, &looks[ti], &messages[mi])))
                .collect()
        })
        .await;
        rendered
            .inspect_err(|e| {
                tracing::error!(
                    event = "template_error",
                    "Rendering alerts failed ({e}); they stay held and are sent after a restart."
                )
            })
            .ok()
    }

    async fn flush(&mut self) {
        let store = self.store.clone();
        let book = self.book.clone();
        let is_down = move |c: &str| book.is_down(c);
        let (new_held, messages) = self
            .policy
            .due(unix_ms(), &is_down, &mut || store.next_seq());
        self.log_notes();
        if new_held.is_empty() && messages.is_empty() {
            return;
        }
        let mut ops: Vec<Op> = new_held
            .iter()
            .map(|(ch, h)| Op::Held(ch.to_string(), h.seq, serde_json::to_vec(h).ok()))
            .collect();
        for m in &messages {
            for seq in &m.seqs {
                ops.push(Op::Held(m.channel.to_string(), *seq, None));
            }
        }
        // The stream's items each message carries.
        let sources: Vec<Vec<u64>> = messages
            .iter()
            .map(|m| {
                m.seqs
                    .iter()
                    .copied()
                    .filter(|s| self.open.contains_key(s))
                    .collect()
            })
            .collect();
        let jobs: Vec<(usize, usize)> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind != "none")
            .flat_map(|(mi, m)| {
                self.targets
                    .iter()
                    .enumerate()
                    .filter(move |(_, t)| t.channel == m.channel)
                    .map(move |(ti, _)| (mi, ti))
            })
            .collect();
        let Some(rendered) = self.render_all(messages, jobs.clone()).await else {
            // Only when the runtime shuts down (render catches what a template can
            // throw). Nothing is stored: the held entries are still in the store and
            // are sent after the restart.
            return;
        };
        let mut woken = Vec::new();
        // Each item's held entries leave, its messages come in.
        let mut counts: HashMap<u64, isize> = HashMap::new();
        for s in sources.iter().flatten() {
            *counts.entry(*s).or_default() -= 1;
        }
        for (&(mi, _), (ti, stored)) in jobs.iter().zip(rendered) {
            let t = &self.targets[ti];
            for mut stored in stored {
                stored.sources = sources[mi].clone();
                for s in &stored.sources {
                    *counts.entry(*s).or_default() += 1;
                }
                let seq = self.store.next_seq();
                ops.push(Op::Outbox(
                    t.key.clone(),
                    seq,
                    serde_json::to_vec(&stored).ok(),
                ));
                self.status.update(&t.key, |s| s.pending += 1);
            }
            woken.push(t.wake.clone());
        }
        if self.persist(ops).await {
            for (s, delta) in counts {
                self.count(s, delta);
            }
            for w in woken {
                w.notify_one();
            }
        }
    }
}

/// The pipeline's own queues while it runs.
struct Queues {
    commands: mpsc::Receiver<Input>,
    events: mpsc::Receiver<Committed>,
}

/// The outbox messages (target, seq) whose sources, the stream's items they carry,
/// `pick` names.
fn carrying(
    store: &Store,
    pick: impl Fn(&[u64]) -> bool,
) -> Result<Vec<(String, u64)>, crate::store::StoreError> {
    Ok(store
        .outbox_entries()?
        .into_iter()
        .filter(|(_, _, bytes)| {
            serde_json::from_slice::<Stored>(bytes).is_ok_and(|m| pick(&m.sources))
        })
        .map(|(key, seq, _)| (key, seq))
        .collect())
}

/// At a start in a cluster: what this replica held or had not delivered as the leader
/// is still the stream's (the leader acknowledges an item once its messages are out),
/// and goes to whichever replica leads now: dropped here, or both would send it.
fn drop_shared(store: &Store) -> Result<(), crate::store::StoreError> {
    let mut ops = Vec::new();
    for (ch, seq, bytes) in store.load_held()? {
        if serde_json::from_slice::<Held>(&bytes).is_ok_and(|h| h.shared) {
            ops.push(Op::Held(ch, seq, None));
        }
    }
    let held = ops.len();
    let unsent = carrying(store, |sources| !sources.is_empty())?;
    ops.extend(
        unsent
            .into_iter()
            .map(|(key, seq)| Op::Outbox(key, seq, None)),
    );
    if ops.is_empty() {
        return Ok(());
    }
    store.apply(&ops)?;
    let unsent = ops.len() - held;
    tracing::info!(event = "cluster_alerts", held, unsent, "What this replica had not sent as the cluster's leader before it stopped ({held} alerts held back, {unsent} messages undelivered) is left to the leader: the cluster's stream keeps it until it is out.");
    Ok(())
}

/// What rendering needs of a target, to take to the blocking pool.
struct Look {
    channel: Arc<str>,
    flavor: Flavor,
    split: bool,
    buttons: Option<Arc<[Duration]>>,
}

impl Target {
    fn look(&self) -> Look {
        Look {
            channel: self.channel.clone(),
            flavor: self.flavor,
            split: self.split,
            buttons: self.buttons.clone(),
        }
    }
}

/// One message as one target stores it (Telegram: split at its length limit).
fn render(templates: &Templates, host: &str, t: &Look, m: &Message) -> Vec<Stored> {
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        templates.render_checked(&t.channel, m.kind, t.flavor, &m.ctx)
    }));
    let (text, error) = rendered.unwrap_or_else(|panic| {
        let why = crate::scheduler::panic_message(&*panic);
        (m.ctx.message.clone(), Some(format!("it crashed: {why}")))
    });
    if let Some(e) = error {
        tracing::warn!(event = "template_error", channel = %t.channel, kind = %m.kind, "The {} template of channel {} failed ({e}); the default text is sent.", m.kind, t.channel);
    }
    let now = unix_ms();
    let document = serde_json::json!({
        "kind": m.kind,
        "host": host,
        "channel": &*t.channel,
        "text": if t.flavor == Flavor::Text { text.clone() } else { String::new() },
        "check": m.ctx.check,
        "status": m.ctx.status,
        "message": m.ctx.message,
        "comment": m.ctx.comment,
        "items": m.items,
        "at": now,
    })
    .to_string();
    let parts = if t.split {
        split_html(&text, TELEGRAM_LIMIT)
    } else {
        vec![text]
    };
    let mut stored: Vec<Stored> = parts
        .into_iter()
        .map(|text| Stored {
            kind: m.kind.to_string(),
            text,
            document: document.clone(),
            created_at: now,
            action: Action::Send,
            sources: Vec::new(),
        })
        .collect();
    // The buttons go under the last part.
    if let (Some(silences), Some(last)) = (&t.buttons, stored.last_mut()) {
        if let Some(mut set) = ButtonSet::for_message(m, &t.channel, silences, now) {
            set.text = last.text.clone();
            last.action = Action::SendWithButtons { set: Box::new(set) };
        }
    }
    stored
}

async fn sleep_until_ms(deadline: Option<u64>) {
    match deadline {
        Some(at) => {
            let wait = at.saturating_sub(unix_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}

/// One target's sender: where it delivers and whom it tells.
struct Outlet {
    key: String,
    sink: Arc<dyn Sink>,
    wake: Arc<Notify>,
    /// `alerting.max_retry_wait`.
    max_wait: Duration,
    /// The pipeline, of each message carrying the stream's items that is done with.
    settled: mpsc::UnboundedSender<Vec<u64>>,
    /// In a cluster.
    lead: Option<LeadProof>,
}

/// Delivers one target's outbox, oldest first.
async fn sender(out: Outlet, store: Arc<Store>, status: Arc<AlertStatus>, stop: CancellationToken) {
    let Outlet {
        key,
        sink,
        wake,
        max_wait,
        settled,
        lead,
    } = out;
    let first_wait = Duration::from_secs(1).min(max_wait);
    let mut backoff = first_wait;
    loop {
        let next = {
            let store = store.clone();
            let key = key.clone();
            tokio::task::spawn_blocking(move || store.first_outbox(&key)).await
        };
        let (seq, msg) = match next {
            Ok(Ok(Some((seq, bytes)))) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(m) => (seq, m),
                Err(e) => {
                    tracing::warn!(event = "alert_store", target = %key, "A stored message could not be read ({e}); it is dropped.");
                    let _ = store.apply(&[Op::Outbox(key.clone(), seq, None)]);
                    continue;
                }
            },
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = wake.notified() => continue,
                    _ = stop.cancelled() => return,
                }
            }
            Ok(Err(e)) => {
                tracing::error!(event = "store_error", target = %key, "{e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            Err(_) => return,
        };
        // The stream's items go out only while the lead is proven; when it is not, they
        // wait (the lead is renewed, or it passed: then the pipeline drops them here).
        if let Some(l) = lead.as_ref().filter(|_| !msg.sources.is_empty()) {
            if crate::clock::mono_ms() >= l.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        }
        let result = tokio::select! {
            r = sink.send(&msg) => r,
            _ = stop.cancelled() => return,
        };
        let now = unix_ms();
        match result {
            Ok(sent) => {
                backoff = first_wait;
                let stats = status.update(&key, |s| {
                    s.pending = s.pending.saturating_sub(1);
                    s.delivered += 1;
                    s.last_delivered_at = Some(now);
                    s.asked_wait_ms = None;
                });
                let mut ops = vec![
                    Op::Outbox(key.clone(), seq, None),
                    Op::Target(key.clone(), serde_json::to_vec(&stats).unwrap_or_default()),
                ];
                // A message with buttons: they act from now on, on this message only.
                if let (Action::SendWithButtons { set }, Some((chat, id))) =
                    (&msg.action, sent.message)
                {
                    ops.push(Op::Buttons(chat, id, serde_json::to_vec(set).ok()));
                }
                // Recorded before the next message, or a restart would send it again.
                if !crate::store::persist_until_ok(&store, ops, "a delivered message", &stop).await
                {
                    return;
                }
                if !msg.sources.is_empty() {
                    let _ = settled.send(msg.sources);
                }
                tracing::info!(event = "delivered", target = %key, kind = %msg.kind, "A {} message was delivered to {}.", msg.kind, sink.describe());
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                // Every wait is capped at max_retry_wait, the server's too: a server
                // that still refuses says so again, one that recovered is used at once
                // (Telegram answered `retry_after: 3600` to a bot that was fine again
                // 20 s later).
                let wait = retry_after.unwrap_or(backoff).min(max_wait);
                backoff = (backoff * 2).min(max_wait);
                let first = status.update(&key, |s| {
                    s.retries += 1;
                    s.last_error = Some(reason.clone());
                    s.last_error_at = Some(now);
                    s.asked_wait_ms = retry_after.map(|r| r.as_millis() as u64);
                });
                let asked = match retry_after {
                    Some(r) if r > wait => format!(
                        " (the server asked for {}; waits are capped by alerting.max_retry_wait)",
                        vigia_api::Dur(r)
                    ),
                    _ => String::new(),
                };
                tracing::warn!(event = "delivery_retry", target = %key, pending = first.pending, "Delivery to {} failed ({reason}); retrying in {}{asked}.", sink.describe(), vigia_api::Dur(wait));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(SendError::Permanent { reason }) => {
                let stats = status.update(&key, |s| {
                    s.pending = s.pending.saturating_sub(1);
                    s.failed += 1;
                    s.last_error = Some(reason.clone());
                    s.last_error_at = Some(now);
                });
                tracing::error!(event = "delivery_failed", target = %key, kind = %msg.kind, "A {} message to {} could not be delivered and is dropped: {reason}", msg.kind, sink.describe());
                let ops = vec![
                    Op::Outbox(key.clone(), seq, None),
                    Op::Target(key.clone(), serde_json::to_vec(&stats).unwrap_or_default()),
                ];
                if !crate::store::persist_until_ok(&store, ops, "a dropped message", &stop).await {
                    return;
                }
                if !msg.sources.is_empty() {
                    let _ = settled.send(msg.sources);
                }
            }
        }
    }
}

/// A silence id for a replica of a cluster: six digits (short enough to type in
/// `vigia silence remove`), not one of `taken`. Two replicas picking the same one within
/// the moment before they see each other's is caught when the second is written.
fn cluster_silence_id(host: &str, taken: &[u64]) -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    loop {
        let id = 100_000 + vigia_api::fnv1a(format!("{host}{seed}").as_bytes()) % 900_000;
        if !taken.contains(&id) {
            return id;
        }
        seed = seed.wrapping_add(1);
    }
}
