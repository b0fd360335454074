//! Alert policy, as a pure state machine: items in (transitions, script errors), held
//! entries and messages out, at times the caller gives. No IO and no clock of its own,
//! so every rule is tested with plain timestamps (see the tests below).
//!
//! For each item: flapping (a check that changed too often is reported once and then
//! held until stable), reminders, silences, then routing to each channel the check
//! notifies. On a channel an item is *held* until it is released:
//! - window open: with the channel's current batch, `group_wait` after the batch's first
//!   item (so things that fail together are one message);
//! - window closed (the channel's or the check's): at the next opening, as one digest.
//!
//! When a batch is released, failures of checks whose `depends_on` check is down are
//! suppressed (and named in that check's messages).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::window::{next_open, Window};
use super::{Ack, AlertEvent};
use crate::alert::human_duration;
use crate::silence::SilenceBook;
use crate::status::Transition;

/// What reached alerting. Kept durably (as JSON) from the moment it is accepted until
/// the message that carries it is in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum Item {
    Transition(AlertEvent),
    Reminder {
        event: AlertEvent,
        count: u32,
        at: u64,
    },
    /// `status`: "flapping" when it starts, then "up" or "down" when it ends.
    Flapping {
        event: AlertEvent,
        status: String,
        changes: u32,
        at: u64,
    },
    ScriptError {
        host: Arc<str>,
        file: String,
        error: String,
        kept: bool,
        at: u64,
    },
    /// In a cluster: NATS could not be reached for `cluster.unreachable_after`
    /// (`reachable: false`, `for_ms` so far, `error` the last one), or can be again
    /// (`reachable: true`, `for_ms` the whole outage). Sent by each replica on its own
    /// channels, not through the cluster.
    Cluster {
        host: Arc<str>,
        replica: String,
        reachable: bool,
        error: String,
        for_ms: u64,
        at: u64,
    },
}

impl Item {
    pub fn check(&self) -> Option<&str> {
        match self {
            Item::Transition(e)
            | Item::Reminder { event: e, .. }
            | Item::Flapping { event: e, .. } => Some(&e.check),
            Item::ScriptError { .. } | Item::Cluster { .. } => None,
        }
    }

    fn at(&self) -> u64 {
        match self {
            Item::Transition(e) => e.at,
            Item::Reminder { at, .. }
            | Item::Flapping { at, .. }
            | Item::ScriptError { at, .. }
            | Item::Cluster { at, .. } => *at,
        }
    }
}

/// An item on a channel, waiting for its release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Held {
    pub seq: u64,
    pub item: Item,
    /// Unix ms.
    pub release_at: u64,
    /// Held by a closed send window (it goes out in a digest).
    pub windowed: bool,
    /// In a cluster: an item the leader took from the cluster's stream, which keeps it
    /// until its messages are out; a replica that restarts or stops leading drops it
    /// (the next leader gets it from the stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// A message for one channel, ready to render.
#[derive(Clone, Debug)]
pub struct Message {
    pub channel: Arc<str>,
    pub kind: &'static str,
    pub ctx: Ctx,
    /// The held entries it carries (deleted when the message is stored).
    pub seqs: Vec<u64>,
    /// The items it carries, for a webhook's JSON.
    pub items: Vec<Item>,
}

/// What a template sees. Every field is always there (empty when it does not apply).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ctx {
    pub kind: String,
    pub host: String,
    pub check: String,
    /// failed, recovered; for a flapping message: flapping, up, down.
    pub status: String,
    pub message: String,
    pub value: Option<f64>,
    pub comment: String,
    /// When the status changed, in the configured time zone: `2026-11-23 02:10:05 WET`.
    pub since: String,
    /// How long the previous state lasted (recovered) or the current one (reminder).
    pub duration: String,
    pub failures: u32,
    pub threshold: u32,
    /// The time of the event, full and as `02:10`.
    pub time: String,
    pub clock: String,
    /// What remediation did, one line per action.
    pub transcript: String,
    pub reminders: u32,
    pub suppressed: Vec<String>,
    pub events: Vec<EventCtx>,
    /// For a digest: one line per check, "web failed 02:10, recovered 02:40".
    pub summary: Vec<String>,
    pub group: String,
    /// Members of a group, by their short names.
    pub names: Vec<String>,
    pub count: usize,
    pub changes: u32,
    pub within: String,
    pub stable_for: String,
    pub file: String,
    pub error: String,
    /// A recovery of an acknowledged failure: who acknowledged it, and at what time
    /// (`10:32`).
    pub acked_by: String,
    pub acked_at: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EventCtx {
    pub check: String,
    pub status: String,
    pub message: String,
    pub comment: String,
    pub time: String,
    pub clock: String,
    /// A recovery of an acknowledged failure: who acknowledged it.
    pub acked_by: String,
}

/// A channel as the policy sees it.
#[derive(Clone, Debug)]
pub struct ChannelPolicy {
    pub name: Arc<str>,
    pub window: Option<Arc<Window>>,
}

/// A check's alert settings (`notify`, `window`, `remind_every`, `depends_on`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckAlerting {
    /// `None`: every channel.
    pub notify: Option<Vec<Arc<str>>>,
    pub window: Option<String>,
    pub remind_every: Option<Duration>,
    pub depends_on: Vec<Arc<str>>,
}

#[derive(Clone, Debug)]
pub struct Flapping {
    /// More than this many status changes within `within` is flapping; 0 turns it off.
    pub changes: u32,
    pub within: Duration,
    pub stable_for: Duration,
}

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub tz: TimeZone,
    pub group_wait: Duration,
    pub flapping: Flapping,
    pub channels: Vec<ChannelPolicy>,
    pub windows: HashMap<String, Arc<Window>>,
    pub checks: HashMap<Arc<str>, Arc<CheckAlerting>>,
}

#[derive(Default, Debug)]
struct FlapState {
    times: Vec<u64>,
    flapping: bool,
    stable_until: u64,
    last: Option<AlertEvent>,
}

#[derive(Debug)]
struct Reminder {
    next_at: u64,
    count: u32,
    every: u64,
    event: AlertEvent,
}

/// What happened to an accepted item, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Routed(usize),
    Silenced(u64),
    HeldAsFlapping,
    FlappingStarted,
}

/// Something the policy decided that the caller should log.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A failure not sent because a check it depends on is down.
    Suppressed {
        check: Arc<str>,
        depends_on: Arc<str>,
        channel: Arc<str>,
    },
}

pub struct Policy {
    cfg: PolicyConfig,
    notes: Vec<Note>,
    host: Arc<str>,
    held: HashMap<Arc<str>, Vec<Held>>,
    flap: HashMap<Arc<str>, FlapState>,
    reminders: HashMap<Arc<str>, Reminder>,
    suppressed: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// The acknowledged failures, by check.
    acks: HashMap<Arc<str>, Ack>,
    pub silences: SilenceBook,
}

impl Policy {
    pub fn new(cfg: PolicyConfig, host: Arc<str>) -> Self {
        Policy {
            cfg,
            notes: Vec::new(),
            host,
            held: HashMap::new(),
            flap: HashMap::new(),
            reminders: HashMap::new(),
            suppressed: HashMap::new(),
            acks: HashMap::new(),
            silences: SilenceBook::default(),
        }
    }

    /// Acknowledges the failure of `check` that started at `since` (the caller read it
    /// from the status map: the check is down). Its reminders stop. `Err` holds the
    /// acknowledgement already there, which stays.
    pub fn acknowledge(&mut self, check: &str, by: &str, since: u64, now: u64) -> Result<Ack, Ack> {
        if let Some(a) = self.acks.get(check) {
            if a.since == since {
                return Err(a.clone());
            }
        }
        let ack = Ack {
            by: by.to_string(),
            at: now,
            since,
        };
        self.reminders.remove(check);
        self.acks.insert(check.into(), ack.clone());
        Ok(ack)
    }

    /// The acknowledgement of a check's current failure.
    pub fn ack_of(&self, check: &str) -> Option<&Ack> {
        self.acks.get(check)
    }

    /// Every acknowledgement held.
    pub fn acks(&self) -> impl Iterator<Item = (&Arc<str>, &Ack)> {
        self.acks.iter()
    }

    /// Puts back an acknowledgement from the store (before `restore_reminder`).
    pub fn restore_ack(&mut self, check: Arc<str>, ack: Ack) {
        self.acks.insert(check, ack);
    }

    /// A reload: new check settings (channels and windows need a restart).
    pub fn set_checks(&mut self, checks: HashMap<Arc<str>, Arc<CheckAlerting>>) {
        self.cfg.checks = checks;
    }

    /// What happened since the last call, for the log.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    fn alerting(&self, check: &str) -> Arc<CheckAlerting> {
        self.cfg.checks.get(check).cloned().unwrap_or_default()
    }

    /// Puts back an entry held before a restart.
    pub fn restore(&mut self, channel: Arc<str>, held: Held) {
        self.held.entry(channel).or_default().push(held);
    }

    /// Drops the held entries whose item `drop(seq)` names; returns their channels and
    /// seqs (for the store).
    pub fn forget(&mut self, drop: &dyn Fn(u64) -> bool) -> Vec<(Arc<str>, u64)> {
        let mut out = Vec::new();
        for (ch, list) in &mut self.held {
            list.retain(|h| {
                let gone = drop(h.seq);
                if gone {
                    out.push((ch.clone(), h.seq));
                }
                !gone
            });
        }
        out
    }

    /// After a restart: reminders of checks that are down, counted from their change.
    pub fn restore_reminder(&mut self, event: AlertEvent, now: u64) {
        let Some(every) = self.alerting(&event.check).remind_every else {
            return;
        };
        if self
            .acks
            .get(&event.check)
            .is_some_and(|a| a.since == event.at)
        {
            return;
        }
        let every = every.as_millis() as u64;
        let count = (now.saturating_sub(event.at) / every.max(1)) as u32;
        self.reminders.insert(
            event.check.clone(),
            Reminder {
                next_at: event.at + (u64::from(count) + 1) * every,
                count,
                every,
                event,
            },
        );
    }

    /// An item arrives with its sequence number. Returns the entries to hold durably
    /// (the caller stores them, and removes the item from the inbox, in one transaction).
    pub fn accept(&mut self, seq: u64, item: Item, now: u64) -> (Fate, Vec<(Arc<str>, Held)>) {
        let mut item = item;
        if let Item::Transition(e) = &mut item {
            // A transition ends the acknowledged failure: a recovery carries who
            // acknowledged it into its message; a new failure starts unacknowledged.
            let ack = self.acks.remove(&e.check);
            if e.transition == Transition::Recovered {
                e.ack = ack;
            }
        }
        if let Item::Transition(e) = &item {
            let e = e.clone();
            let f = &self.cfg.flapping;
            if f.changes > 0 {
                let within = f.within.as_millis() as u64;
                let stable_for = f.stable_for.as_millis() as u64;
                let st = self.flap.entry(e.check.clone()).or_default();
                st.times.push(now);
                st.times.retain(|t| now.saturating_sub(*t) <= within);
                st.last = Some(e.clone());
                if st.flapping {
                    st.stable_until = now + stable_for;
                    self.track_reminder(&e);
                    return (Fate::HeldAsFlapping, Vec::new());
                }
                if st.times.len() as u32 > f.changes {
                    st.flapping = true;
                    st.stable_until = now + stable_for;
                    let changes = st.times.len() as u32;
                    self.track_reminder(&e);
                    item = Item::Flapping {
                        event: e,
                        status: "flapping".into(),
                        changes,
                        at: now,
                    };
                    let held = self.route(seq, item, now);
                    return (Fate::FlappingStarted, held);
                }
            }
            self.track_reminder(&e);
        }
        if let Some(check) = item.check() {
            if let Some(s) = self.silences.covering(check, now) {
                return (Fate::Silenced(s.id), Vec::new());
            }
        }
        let held = self.route(seq, item, now);
        (Fate::Routed(held.len()), held)
    }

    fn track_reminder(&mut self, e: &AlertEvent) {
        match e.transition {
            Transition::Failed => {
                if let Some(every) = self.alerting(&e.check).remind_every {
                    let every = every.as_millis() as u64;
                    self.reminders.insert(
                        e.check.clone(),
                        Reminder {
                            next_at: e.at + every,
                            count: 0,
                            every,
                            event: e.clone(),
                        },
                    );
                }
            }
            Transition::Recovered => {
                self.reminders.remove(&e.check);
            }
        }
    }

    /// Puts an item on each channel its check notifies.
    fn route(&mut self, seq: u64, item: Item, now: u64) -> Vec<(Arc<str>, Held)> {
        let alerting = item.check().map(|c| self.alerting(c)).unwrap_or_default();
        let check_window = alerting
            .window
            .as_ref()
            .and_then(|w| self.cfg.windows.get(w).cloned());
        let group_wait = self.cfg.group_wait.as_millis() as u64;
        let mut out = Vec::new();
        for ch in &self.cfg.channels {
            if let Some(notify) = &alerting.notify {
                if !notify.iter().any(|n| **n == *ch.name) {
                    continue;
                }
            }
            let windows: Vec<&Window> = ch
                .window
                .iter()
                .chain(check_window.iter())
                .map(|w| &**w)
                .collect();
            let now_ts = ts(now);
            let open = windows.iter().all(|w| w.is_open(now_ts));
            let held_list = self.held.entry(ch.name.clone()).or_default();
            let (release_at, windowed) = if open {
                let batch = held_list
                    .iter()
                    .filter(|h| !h.windowed)
                    .map(|h| h.release_at)
                    .min();
                (batch.unwrap_or(now + group_wait), false)
            } else {
                let at = next_open(&windows, now_ts)
                    .map(|t| t.as_millisecond() as u64)
                    .unwrap_or(now + 86_400_000);
                (at, true)
            };
            let held = Held {
                seq,
                item: item.clone(),
                release_at,
                windowed,
                shared: false,
            };
            held_list.push(held.clone());
            out.push((ch.name.clone(), held));
        }
        out
    }

    /// How many entries the channels hold, waiting for their release.
    pub fn held_entries(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// The next moment something is due (a release, a reminder, the end of flapping).
    pub fn next_deadline(&self) -> Option<u64> {
        let held = self.held.values().flatten().map(|h| h.release_at);
        let reminders = self.reminders.values().map(|r| r.next_at);
        let flaps = self
            .flap
            .values()
            .filter(|f| f.flapping)
            .map(|f| f.stable_until);
        held.chain(reminders).chain(flaps).min()
    }

    /// Everything due at `now`: new entries to hold (reminders, ends of flapping) and
    /// messages ready to store. `is_down(check)` reads the status map.
    pub fn due(
        &mut self,
        now: u64,
        is_down: &dyn Fn(&str) -> bool,
        next_seq: &mut dyn FnMut() -> u64,
    ) -> (Vec<(Arc<str>, Held)>, Vec<Message>) {
        let mut new_held = Vec::new();
        // Reminders.
        let due_reminders: Vec<Arc<str>> = self
            .reminders
            .iter()
            .filter(|(_, r)| r.next_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for check in due_reminders {
            let Some(r) = self.reminders.get_mut(&check) else {
                continue;
            };
            if !is_down(&check) {
                self.reminders.remove(&check);
                continue;
            }
            r.count += 1;
            r.next_at += r.every;
            let item = Item::Reminder {
                event: r.event.clone(),
                count: r.count,
                at: now,
            };
            let silenced = self.silences.covering(&check, now).is_some();
            let flapping = self.flap.get(&check).is_some_and(|f| f.flapping);
            if !silenced && !flapping {
                let seq = next_seq();
                new_held.extend(self.route(seq, item, now));
            }
        }
        // Ends of flapping.
        let stable: Vec<Arc<str>> = self
            .flap
            .iter()
            .filter(|(_, f)| f.flapping && f.stable_until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for check in stable {
            let Some(f) = self.flap.get_mut(&check) else {
                continue;
            };
            f.flapping = false;
            f.times.clear();
            let Some(event) = f.last.clone() else {
                continue;
            };
            let status = if is_down(&check) { "down" } else { "up" };
            let item = Item::Flapping {
                event,
                status: status.into(),
                changes: 0,
                at: now,
            };
            let seq = next_seq();
            new_held.extend(self.route(seq, item, now));
        }
        // Releases.
        let mut messages = Vec::new();
        let channels: Vec<Arc<str>> = self.cfg.channels.iter().map(|c| c.name.clone()).collect();
        for ch in channels {
            let Some(list) = self.held.get_mut(&ch) else {
                continue;
            };
            let (due, keep): (Vec<Held>, Vec<Held>) =
                list.drain(..).partition(|h| h.release_at <= now);
            *list = keep;
            if due.is_empty() {
                continue;
            }
            let (windowed, batch): (Vec<Held>, Vec<Held>) =
                due.into_iter().partition(|h| h.windowed);
            if !windowed.is_empty() {
                messages.push(self.digest(&ch, windowed, now, is_down));
            }
            if !batch.is_empty() {
                messages.extend(self.release_batch(&ch, batch, now, is_down));
            }
        }
        (new_held, messages)
    }

    fn release_batch(
        &mut self,
        ch: &Arc<str>,
        batch: Vec<Held>,
        now: u64,
        is_down: &dyn Fn(&str) -> bool,
    ) -> Vec<Message> {
        // Dependencies: a failure whose check depends on a check that is down is
        // suppressed; it is named in that check's messages.
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for h in batch {
            let down_dep = match &h.item {
                Item::Transition(e) if e.transition == Transition::Failed => self
                    .alerting(&e.check)
                    .depends_on
                    .iter()
                    .find(|d| is_down(d))
                    .cloned(),
                Item::Reminder { event, .. } => self
                    .alerting(&event.check)
                    .depends_on
                    .iter()
                    .find(|d| is_down(d))
                    .cloned(),
                _ => None,
            };
            match down_dep {
                Some(dep) => {
                    if let Some(check) = h.item.check() {
                        let list = self.suppressed.entry(dep.clone()).or_default();
                        if !list.iter().any(|c| **c == *check) {
                            list.push(check.into());
                        }
                        self.notes.push(Note::Suppressed {
                            check: check.into(),
                            depends_on: dep.clone(),
                            channel: ch.clone(),
                        });
                    }
                    dropped.push(h.seq);
                }
                None => kept.push(h),
            }
        }
        let mut out = Vec::new();
        if kept.is_empty() {
            if !dropped.is_empty() {
                // Nothing to send, but the held entries must still go.
                out.push(Message {
                    channel: ch.clone(),
                    kind: "none",
                    ctx: Ctx::default(),
                    seqs: dropped,
                    items: Vec::new(),
                });
            }
            return out;
        }
        let mut seqs: Vec<u64> = dropped;
        if kept.len() == 1 {
            let h = kept.remove(0);
            seqs.push(h.seq);
            let (kind, ctx) = self.single(&h.item, now);
            out.push(Message {
                channel: ch.clone(),
                kind,
                ctx,
                seqs,
                items: vec![h.item],
            });
            return out;
        }
        seqs.extend(kept.iter().map(|h| h.seq));
        let items: Vec<Item> = kept.into_iter().map(|h| h.item).collect();
        let mut ctx = self.base_ctx("grouped", now);
        ctx.events = items.iter().map(|i| self.event_ctx(i)).collect();
        ctx.count = items.len();
        // One group, one direction: "3 of terminals failed".
        let groups: Vec<Option<&str>> = items
            .iter()
            .map(|i| match i {
                Item::Transition(e) => e.group.as_deref(),
                _ => None,
            })
            .collect();
        let statuses: Vec<&str> = ctx.events.iter().map(|e| e.status.as_str()).collect();
        if let Some(Some(g)) = groups.first() {
            if groups.iter().all(|x| x == &Some(*g)) && statuses.iter().all(|s| *s == statuses[0]) {
                ctx.group = g.to_string();
                ctx.status = statuses[0].to_string();
                let mut names: Vec<String> = ctx
                    .events
                    .iter()
                    .map(|e| {
                        e.check
                            .strip_prefix(*g)
                            .and_then(|s| s.strip_prefix('/'))
                            .unwrap_or(&e.check)
                            .to_string()
                    })
                    .collect();
                names.sort();
                ctx.names = names;
                if let Some(Item::Transition(e)) = items.first() {
                    ctx.comment = e.comment.to_string();
                }
            }
        }
        if ctx.group.is_empty() {
            // Several checks: each distinct comment once, in order (checks that fail
            // together often share the same advice).
            let mut seen: Vec<&str> = Vec::new();
            for e in &ctx.events {
                if !e.comment.is_empty() && !seen.contains(&e.comment.as_str()) {
                    seen.push(&e.comment);
                }
            }
            ctx.comment = seen.join(" · ");
        }
        out.push(Message {
            channel: ch.clone(),
            kind: "grouped",
            ctx,
            seqs,
            items,
        });
        out
    }

    fn digest(
        &mut self,
        ch: &Arc<str>,
        held: Vec<Held>,
        now: u64,
        is_down: &dyn Fn(&str) -> bool,
    ) -> Message {
        let mut ctx = self.base_ctx("digest", now);
        let seqs = held.iter().map(|h| h.seq).collect();
        let mut items: Vec<Item> = held.into_iter().map(|h| h.item).collect();
        items.sort_by_key(|i| i.at());
        ctx.events = items.iter().map(|i| self.event_ctx(i)).collect();
        ctx.count = items.len();
        // One line per check, in order of first appearance.
        let mut order: Vec<String> = Vec::new();
        let mut lines: HashMap<String, Vec<String>> = HashMap::new();
        for (i, e) in items.iter().zip(&ctx.events) {
            let key = match i {
                Item::ScriptError { file, .. } => file.clone(),
                Item::Cluster { .. } => "cluster".into(),
                _ => e.check.clone(),
            };
            if !lines.contains_key(&key) {
                order.push(key.clone());
            }
            lines
                .entry(key)
                .or_default()
                .push(format!("{} {}", e.status, e.clock));
        }
        ctx.summary = order
            .iter()
            .map(|k| {
                let mut s = format!("{k} {}", lines[k].join(", "));
                if is_down(k) {
                    s.push_str(", still failing");
                }
                s
            })
            .collect();
        Message {
            channel: ch.clone(),
            kind: "digest",
            ctx,
            seqs,
            items,
        }
    }

    fn base_ctx(&self, kind: &str, now: u64) -> Ctx {
        let (time, clock) = self.times(now);
        Ctx {
            kind: kind.into(),
            host: self.host.to_string(),
            time,
            clock,
            ..Ctx::default()
        }
    }

    fn times(&self, ms: u64) -> (String, String) {
        let z = ts(ms).to_zoned(self.cfg.tz.clone());
        (
            z.strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
            z.strftime("%H:%M").to_string(),
        )
    }

    fn event_ctx(&self, item: &Item) -> EventCtx {
        let (time, clock) = self.times(item.at());
        match item {
            Item::Transition(e) => EventCtx {
                check: e.check.to_string(),
                status: e.transition.as_str().into(),
                message: e.message.clone(),
                comment: e.comment.to_string(),
                time,
                clock,
                acked_by: e.ack.as_ref().map(|a| a.by.clone()).unwrap_or_default(),
            },
            Item::Reminder { event, count, .. } => EventCtx {
                check: event.check.to_string(),
                status: format!("still failing (reminder {count})"),
                message: event.message.clone(),
                comment: event.comment.to_string(),
                time,
                clock,
                acked_by: String::new(),
            },
            Item::Flapping { event, status, .. } => EventCtx {
                check: event.check.to_string(),
                status: if status == "flapping" {
                    "flapping".into()
                } else {
                    format!("stable ({status})")
                },
                message: event.message.clone(),
                comment: event.comment.to_string(),
                time,
                clock,
                acked_by: String::new(),
            },
            Item::ScriptError { file, error, .. } => EventCtx {
                check: file.clone(),
                status: "script error".into(),
                message: error.clone(),
                comment: String::new(),
                time,
                clock,
                acked_by: String::new(),
            },
            Item::Cluster {
                replica,
                reachable,
                error,
                ..
            } => EventCtx {
                check: format!("cluster (replica {replica})"),
                status: if *reachable {
                    "reachable again".into()
                } else {
                    "unreachable".into()
                },
                message: error.clone(),
                comment: String::new(),
                time,
                clock,
                acked_by: String::new(),
            },
        }
    }

    fn single(&mut self, item: &Item, now: u64) -> (&'static str, Ctx) {
        match item {
            Item::Transition(e) => {
                let kind = e.transition.as_str();
                let mut ctx = self.event_base(kind, e, now);
                ctx.status = kind.into();
                ctx.duration = human_duration(e.previous_duration_ms);
                if let Some(a) = &e.ack {
                    ctx.acked_by = a.by.clone();
                    ctx.acked_at = self.times(a.at).1;
                }
                ctx.suppressed = match e.transition {
                    Transition::Failed => self
                        .suppressed
                        .get(&e.check)
                        .map(|v| v.iter().map(|s| s.to_string()).collect())
                        .unwrap_or_default(),
                    Transition::Recovered => self
                        .suppressed
                        .remove(&e.check)
                        .map(|v| v.iter().map(|s| s.to_string()).collect())
                        .unwrap_or_default(),
                };
                let kind = if e.transition == Transition::Failed {
                    "failed"
                } else {
                    "recovered"
                };
                (kind, ctx)
            }
            Item::Reminder { event, count, at } => {
                let mut ctx = self.event_base("reminder", event, now);
                ctx.status = "failed".into();
                ctx.reminders = *count;
                ctx.duration = human_duration(at.saturating_sub(event.at));
                ("reminder", ctx)
            }
            Item::Flapping {
                event,
                status,
                changes,
                ..
            } => {
                let mut ctx = self.event_base("flapping", event, now);
                ctx.status = status.clone();
                ctx.changes = *changes;
                ctx.within = human_duration(self.cfg.flapping.within.as_millis() as u64);
                ctx.stable_for = human_duration(self.cfg.flapping.stable_for.as_millis() as u64);
                ("flapping", ctx)
            }
            Item::ScriptError {
                file, error, kept, ..
            } => {
                let mut ctx = self.base_ctx("script_error", now);
                ctx.file = file.clone();
                ctx.error = error.clone();
                ctx.message = if *kept {
                    "the last good version keeps running".into()
                } else {
                    "it is not running".into()
                };
                ("script_error", ctx)
            }
            Item::Cluster {
                replica,
                reachable,
                error,
                for_ms,
                ..
            } => {
                let mut ctx = self.base_ctx("cluster", now);
                ctx.check = replica.clone();
                ctx.error = error.clone();
                ctx.duration = human_duration(*for_ms);
                if *reachable {
                    ctx.status = "reachable".into();
                    ctx.message =
                        "this replica takes part in the cluster again; its floating checks are placed again".into();
                } else {
                    ctx.status = "unreachable".into();
                    ctx.message = "pinned checks go on here; floating checks do not run until NATS is back (this alert comes from the replica itself)".into();
                }
                ("cluster", ctx)
            }
        }
    }

    fn event_base(&self, kind: &str, e: &AlertEvent, now: u64) -> Ctx {
        let mut ctx = self.base_ctx(kind, now);
        let (since, _) = self.times(e.at);
        ctx.check = e.check.to_string();
        ctx.message = e.message.clone();
        ctx.comment = e.comment.to_string();
        ctx.since = since;
        ctx.failures = e.failures;
        ctx.threshold = e.threshold;
        ctx.value = e.value;
        ctx.group = e.group.as_deref().unwrap_or_default().to_string();
        ctx.transcript = e.transcript.clone().unwrap_or_default();
        let (time, clock) = self.times(e.at);
        ctx.time = time;
        ctx.clock = clock;
        ctx
    }
}

fn ts(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}
