//! The alert pipeline task and the sender tasks.
//!
//! The pipeline takes items (committed transitions, script errors) and silence commands,
//! drives the [`Policy`], renders its messages, and keeps every step durable in the
//! state store. One sender task per target (a console, a Telegram chat, a webhook)
//! delivers that target's outbox in order: a transient failure is retried with backoff
//! (or after Telegram's `retry_after`), a permanent one is logged, counted, and skipped,
//! and neither holds up any other target. Checks never wait on any of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{AlertingSetup, ChannelKind};
use super::policy::{CheckAlerting, Fate, Held, Item, Message, Policy, Silence};
use super::sink::{
    split_html, ConsoleSink, SendError, Sink, TelegramSink, WebhookSink, TELEGRAM_LIMIT,
};
use super::template::{Flavor, Templates};
use super::Console;
use crate::scheduler::{unix_ms, Shared};
use crate::status::Transition;
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
}

/// Delivery figures of one target, for `vigia status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetStats {
    pub channel: String,
    /// `telegram chat 123`, `console`, `webhook https://…`.
    pub target: String,
    pub pending: usize,
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub last_delivered_at: Option<u64>,
}

/// What `vigia status` shows of alerting.
#[derive(Default)]
pub struct AlertStatus {
    pub targets: Mutex<BTreeMap<String, TargetStats>>,
}

impl AlertStatus {
    pub fn snapshot(&self) -> BTreeMap<String, TargetStats> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut TargetStats)) -> TargetStats {
        let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let s = t.entry(target.to_string()).or_default();
        f(s);
        s.clone()
    }
}

/// A command for silences, with its answer.
pub enum SilenceCmd {
    Add {
        pattern: String,
        duration: Duration,
        reason: String,
    },
    List,
    Remove {
        id: u64,
    },
}

pub enum Input {
    Item(u64, Item),
    /// A reload: the checks' alert settings.
    Checks(HashMap<Arc<str>, Arc<CheckAlerting>>),
    Silence(
        SilenceCmd,
        oneshot::Sender<Result<serde_json::Value, String>>,
    ),
}

struct Target {
    key: String,
    channel: Arc<str>,
    flavor: Flavor,
    /// Telegram: split long messages.
    split: bool,
    sink: Arc<dyn Sink>,
    wake: Arc<Notify>,
}

pub struct Handles {
    pub tx: mpsc::Sender<Input>,
    pub status: Arc<AlertStatus>,
    pub pipeline: JoinHandle<()>,
    pub senders: Vec<JoinHandle<()>>,
    pub stop_senders: CancellationToken,
}

/// Builds the sinks (reading bot tokens), restores what the store holds, and starts the
/// pipeline and its senders. `console: None` prints nothing (`--no-console`).
pub fn start(
    setup: &AlertingSetup,
    host: Arc<str>,
    store: Arc<Store>,
    shared: Arc<Shared>,
    console: Option<Console>,
) -> Result<Handles, String> {
    let mut targets: Vec<Target> = Vec::new();
    for ch in &setup.channels {
        let mut add = |key: String, split: bool, sink: Arc<dyn Sink>| {
            targets.push(Target {
                key,
                channel: ch.name.clone(),
                flavor: ch.flavor(),
                split,
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
    let status = Arc::new(AlertStatus::default());
    let counts = store.outbox_counts().map_err(|e| e.to_string())?;
    let saved = store.load_targets().map_err(|e| e.to_string())?;
    for t in &targets {
        let mut s: TargetStats = saved
            .get(&t.key)
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        s.channel = t.channel.to_string();
        s.target = t.sink.describe();
        s.pending = counts.get(&t.key).copied().unwrap_or(0);
        status.update(&t.key, |x| *x = s);
    }
    let mut policy = Policy::new(setup.policy.clone(), host.clone());
    for (ch, _seq, bytes) in store.load_held().map_err(|e| e.to_string())? {
        match serde_json::from_slice::<Held>(&bytes) {
            Ok(h) => policy.restore(ch.as_str().into(), h),
            Err(e) => tracing::warn!(
                event = "alert_store",
                "A held alert could not be read ({e}); it is dropped."
            ),
        }
    }
    for bytes in store.load_silences().map_err(|e| e.to_string())? {
        if let Ok(s) = serde_json::from_slice::<Silence>(&bytes) {
            policy.silences.push(s);
        }
    }
    let inbox = store.load_inbox().map_err(|e| e.to_string())?;
    let stop_senders = CancellationToken::new();
    let senders = targets
        .iter()
        .map(|t| {
            tokio::spawn(sender(
                t.key.clone(),
                t.sink.clone(),
                t.wake.clone(),
                store.clone(),
                status.clone(),
                stop_senders.clone(),
                setup.max_retry_wait,
            ))
        })
        .collect();
    let (tx, rx) = mpsc::channel(16 * 1024);
    let p = Pipeline {
        policy,
        store,
        templates: setup.templates.clone(),
        targets,
        shared: Arc::downgrade(&shared),
        status: status.clone(),
        host,
    };
    drop(shared);
    let pipeline = tokio::spawn(p.run(rx, inbox));
    Ok(Handles {
        tx,
        status,
        pipeline,
        senders,
        stop_senders,
    })
}

struct Pipeline {
    policy: Policy,
    store: Arc<Store>,
    templates: Arc<Templates>,
    targets: Vec<Target>,
    /// Weak: `Shared` holds the recorder's sender, and the recorder ends (letting this
    /// pipeline end) only once every `Shared` is gone.
    shared: std::sync::Weak<Shared>,
    status: Arc<AlertStatus>,
    host: Arc<str>,
}

impl Pipeline {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, inbox: Vec<(u64, Vec<u8>)>) {
        // Reminders of checks that were down when the engine stopped.
        let now = unix_ms();
        let down: Vec<_> = match self.shared.upgrade() {
            Some(shared) => shared
                .status
                .iter()
                .filter(|e| !e.value().status)
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            None => Vec::new(),
        };
        for (name, st) in down {
            let event = super::AlertEvent {
                host: self.host.clone(),
                check: name,
                group: None,
                transition: Transition::Failed,
                message: st.failed_message.clone().unwrap_or_default(),
                value: None,
                failures: st.failures,
                threshold: 0,
                successes: st.successes,
                recover_after: 0,
                comment: "".into(),
                at: st.changed_at,
                previous_duration_ms: 0,
                failed_message: None,
                transcript: None,
            };
            self.policy.restore_reminder(event, now);
        }
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
        loop {
            let deadline = self.policy.next_deadline();
            let input = tokio::select! {
                i = rx.recv() => i,
                _ = sleep_until_ms(deadline) => {
                    self.flush().await;
                    continue;
                }
            };
            let Some(input) = input else { break };
            match input {
                Input::Item(seq, item) => self.accept(seq, item).await,
                Input::Checks(map) => self.policy.set_checks(map),
                Input::Silence(cmd, reply) => {
                    let r = self.silence(cmd).await;
                    let _ = reply.send(r);
                }
            }
            // Take whatever else is queued before flushing: one batch, one commit.
            while let Ok(input) = rx.try_recv() {
                match input {
                    Input::Item(seq, item) => self.accept(seq, item).await,
                    Input::Checks(map) => self.policy.set_checks(map),
                    Input::Silence(cmd, reply) => {
                        let r = self.silence(cmd).await;
                        let _ = reply.send(r);
                    }
                }
            }
            self.flush().await;
        }
        self.flush().await;
    }

    async fn persist(&self, ops: Vec<Op>) -> bool {
        if ops.is_empty() {
            return true;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.apply(&ops)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(
                    event = "store_error",
                    "Alerting could not save its state: {e}. It retries with the next change."
                );
                false
            }
            Err(e) => {
                tracing::error!(
                    event = "store_error",
                    "Alerting could not save its state: {e}."
                );
                false
            }
        }
    }

    async fn accept(&mut self, seq: u64, item: Item) {
        let store = self.store.clone();
        let check = item.check().map(str::to_string);
        let (fate, held) = self
            .policy
            .accept(seq, item, unix_ms(), &mut || store.next_seq());
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
        self.persist(ops).await;
    }

    /// Stores what the policy released: held entries out, messages into the outbox,
    /// in one transaction; then wakes the senders.
    async fn flush(&mut self) {
        let store = self.store.clone();
        let shared = self.shared.upgrade();
        let is_down = move |c: &str| {
            shared
                .as_ref()
                .and_then(|sh| sh.status.get(c).map(|s| !s.status))
                .unwrap_or(false)
        };
        let (new_held, messages) = self
            .policy
            .due(unix_ms(), &is_down, &mut || store.next_seq());
        if new_held.is_empty() && messages.is_empty() {
            return;
        }
        let mut ops: Vec<Op> = new_held
            .iter()
            .map(|(ch, h)| Op::Held(ch.to_string(), h.seq, serde_json::to_vec(h).ok()))
            .collect();
        let mut woken = Vec::new();
        for m in &messages {
            for seq in &m.seqs {
                ops.push(Op::Held(m.channel.to_string(), *seq, None));
            }
            if m.kind == "none" {
                continue;
            }
            for t in self.targets.iter().filter(|t| t.channel == m.channel) {
                for stored in self.render(t, m) {
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
        }
        if self.persist(ops).await {
            for w in woken {
                w.notify_one();
            }
        }
    }

    fn render(&self, t: &Target, m: &Message) -> Vec<Stored> {
        let text = self.templates.render(&t.channel, m.kind, t.flavor, &m.ctx);
        let now = unix_ms();
        let document = serde_json::json!({
            "kind": m.kind,
            "host": &*self.host,
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
        parts
            .into_iter()
            .map(|text| Stored {
                kind: m.kind.to_string(),
                text,
                document: document.clone(),
                created_at: now,
            })
            .collect()
    }

    async fn silence(&mut self, cmd: SilenceCmd) -> Result<serde_json::Value, String> {
        let now = unix_ms();
        match cmd {
            SilenceCmd::Add {
                pattern,
                duration,
                reason,
            } => {
                let s = Silence {
                    id: self.store.next_seq(),
                    pattern,
                    until: now + duration.as_millis() as u64,
                    reason,
                    created_at: now,
                };
                if !self
                    .persist(vec![Op::Silence(s.id, serde_json::to_vec(&s).ok())])
                    .await
                {
                    return Err("the silence could not be saved".into());
                }
                tracing::info!(event = "silence_added", id = s.id, pattern = %s.pattern, reason = %s.reason, "Silence {} added: alerts of {} are not sent until {} ({}).", s.id, s.pattern, s.until, s.reason);
                self.policy.silences.push(s.clone());
                Ok(serde_json::to_value(&s).unwrap_or_default())
            }
            SilenceCmd::List => {
                self.expire_silences(now).await;
                Ok(serde_json::to_value(&self.policy.silences).unwrap_or_default())
            }
            SilenceCmd::Remove { id } => {
                let before = self.policy.silences.len();
                self.policy.silences.retain(|s| s.id != id);
                if self.policy.silences.len() == before {
                    return Err(format!("there is no silence {id}"));
                }
                self.persist(vec![Op::Silence(id, None)]).await;
                tracing::info!(event = "silence_removed", id, "Silence {id} removed.");
                Ok(serde_json::json!({ "removed": id }))
            }
        }
    }

    async fn expire_silences(&mut self, now: u64) {
        let expired: Vec<Silence> = self
            .policy
            .silences
            .iter()
            .filter(|s| s.until <= now)
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        self.policy.silences.retain(|s| s.until > now);
        for s in &expired {
            tracing::info!(event = "silence_expired", id = s.id, pattern = %s.pattern, "Silence {} ({}) expired.", s.id, s.pattern);
        }
        self.persist(expired.iter().map(|s| Op::Silence(s.id, None)).collect())
            .await;
    }
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

/// Delivers one target's outbox, oldest first.
async fn sender(
    key: String,
    sink: Arc<dyn Sink>,
    wake: Arc<Notify>,
    store: Arc<Store>,
    status: Arc<AlertStatus>,
    stop: CancellationToken,
    max_wait: Duration,
) {
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
        let result = tokio::select! {
            r = sink.send(&msg) => r,
            _ = stop.cancelled() => return,
        };
        let now = unix_ms();
        match result {
            Ok(()) => {
                backoff = first_wait;
                let stats = status.update(&key, |s| {
                    s.pending = s.pending.saturating_sub(1);
                    s.delivered += 1;
                    s.last_delivered_at = Some(now);
                });
                let ops = vec![
                    Op::Outbox(key.clone(), seq, None),
                    Op::Target(key.clone(), serde_json::to_vec(&stats).unwrap_or_default()),
                ];
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.apply(&ops)).await;
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                let wait = retry_after.unwrap_or(backoff);
                backoff = (backoff * 2).min(max_wait);
                let first = status.update(&key, |s| {
                    s.retries += 1;
                    s.last_error = Some(reason.clone());
                    s.last_error_at = Some(now);
                });
                tracing::warn!(event = "delivery_retry", target = %key, pending = first.pending, "Delivery to {} failed ({reason}); retrying in {}.", sink.describe(), vigia_api::Dur(wait));
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
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.apply(&ops)).await;
            }
        }
    }
}
