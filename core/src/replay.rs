//! Replay: recorded runs fed through the same state machine (`CheckState::record`) and
//! the same alert policy as the engine, on the recorded clock. Nothing sleeps and
//! nothing is sent: the messages the policy releases are rendered with the channel's
//! templates and kept, with the time they would have gone out, and every status change
//! goes into a timeline. The caller reads the recording (the engine's `replay.rs`); this
//! file only applies it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::alert::policy::{Item, Message, Policy, PolicyConfig};
use crate::alert::template::{Flavor, Templates};
use crate::alert::AlertEvent;
use crate::silence::Silence;
pub use crate::status::CheckSpec;
use crate::status::{CheckState, Transition};

/// A message that would have gone out.
#[derive(Clone, Debug)]
pub struct ReplayMessage {
    /// Unix ms of its release.
    pub at: u64,
    pub channel: Arc<str>,
    pub kind: &'static str,
    pub text: String,
    /// The items it carries (transitions, reminders, flapping).
    pub items: Vec<Item>,
}

/// One status change of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub at: u64,
    /// true: up.
    pub status: bool,
    /// The message of the run that caused it.
    pub message: String,
    /// How long the check had been in its previous state, in ms.
    pub after_ms: u64,
}

pub struct Replay {
    host: Arc<str>,
    policy: Policy,
    templates: Arc<Templates>,
    flavors: HashMap<Arc<str>, Flavor>,
    specs: Vec<CheckSpec>,
    index: HashMap<Arc<str>, usize>,
    states: Vec<Option<CheckState>>,
    seq: u64,
    now: u64,
    /// The policy's next deadline, read again after each change of the policy: a run
    /// without a transition leaves it as it is (most runs; reading it costs a look at
    /// every check that ever changed).
    deadline: Option<u64>,
    /// Messages released before this instant are applied but not kept (`--from`).
    keep_from: u64,
    pub messages: Vec<ReplayMessage>,
    /// Messages released before `keep_from`.
    pub earlier_messages: u64,
    /// Each check's changes, in the order of `specs`.
    pub timeline: Vec<Vec<Change>>,
    /// Runs applied, in all and per check.
    pub runs: u64,
    pub runs_of: Vec<u64>,
    pub first: Option<u64>,
}

impl Replay {
    /// `channels`: each channel's name and flavor (the policy config names the same
    /// channels, in the same order).
    pub fn new(
        host: Arc<str>,
        policy: PolicyConfig,
        templates: Arc<Templates>,
        channels: Vec<(Arc<str>, Flavor)>,
        specs: Vec<CheckSpec>,
    ) -> Replay {
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let n = specs.len();
        Replay {
            policy: Policy::new(policy, host.clone()),
            host,
            templates,
            flavors: channels.into_iter().collect(),
            specs,
            index,
            states: vec![None; n],
            seq: 0,
            now: 0,
            deadline: None,
            keep_from: 0,
            messages: Vec::new(),
            earlier_messages: 0,
            timeline: vec![Vec::new(); n],
            runs: 0,
            runs_of: vec![0; n],
            first: None,
        }
    }

    /// Messages released before `at` are applied but not kept.
    pub fn keep_from(&mut self, at: u64) {
        self.keep_from = at;
    }

    pub fn specs(&self) -> &[CheckSpec] {
        &self.specs
    }

    /// The index of a check by name, for [`run`](Self::run).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Whether a check is down at this point of the replay.
    pub fn is_down(&self, check: usize) -> bool {
        self.states[check].as_ref().is_some_and(|s| !s.status)
    }

    /// The recorded clock: never goes back (runs end concurrently, so the lines of a
    /// recording are in time order only to within a run's length).
    fn clock(&mut self, at: u64) -> u64 {
        if self.deadline.is_some_and(|d| d <= at) {
            self.advance(at);
        }
        self.now = self.now.max(at);
        self.first.get_or_insert(at);
        self.now
    }

    /// One recorded run of check `check` at `at` (unix ms).
    pub fn run(&mut self, check: usize, ok: bool, message: &str, value: Option<f64>, at: u64) {
        let now = self.clock(at);
        self.runs += 1;
        self.runs_of[check] += 1;
        let spec = &self.specs[check];
        let state = self.states[check].get_or_insert_with(|| CheckState::new(now));
        let previous_change = state.changed_at;
        let Some(transition) = state.record(ok, spec.threshold, spec.recover_after, now) else {
            return;
        };
        if transition == Transition::Failed {
            state.failed_message = Some(message.to_string());
        }
        let event = AlertEvent::of_transition(
            self.host.clone(),
            spec,
            transition,
            message,
            value,
            state,
            previous_change,
        );
        self.timeline[check].push(Change {
            at: now,
            status: state.status,
            message: message.to_string(),
            after_ms: event.previous_duration_ms,
        });
        self.seq += 1;
        let _ = self.policy.accept(self.seq, Item::Transition(event), now);
        self.release(now);
    }

    /// A silence added at `at`, as the engine recorded it.
    pub fn silence(&mut self, silence: Silence, at: u64) {
        self.clock(at);
        self.policy.silences.insert(silence);
        self.deadline = self.policy.next_deadline();
    }

    /// A silence removed at `at`.
    pub fn unsilence(&mut self, id: u64, at: u64) {
        self.clock(at);
        let _ = self.policy.silences.remove(id);
        self.deadline = self.policy.next_deadline();
    }

    /// An acknowledgement of `check`'s failure at `at` (ignored if it is up by then).
    pub fn ack(&mut self, check: usize, by: &str, at: u64) {
        let now = self.clock(at);
        if let Some(s) = self.states[check].as_ref().filter(|s| !s.status) {
            let since = s.changed_at;
            let _ = self
                .policy
                .acknowledge(&self.specs[check].name, by, since, now);
            self.deadline = self.policy.next_deadline();
        }
    }

    /// Everything due up to `end` is released; returns how many entries are still held
    /// after it (a closed send window, a group still waiting).
    pub fn finish(&mut self, end: u64) -> usize {
        self.advance(end);
        self.policy.held_entries()
    }

    /// Releases everything due up to `t`, at the times it falls due.
    fn advance(&mut self, t: u64) {
        while let Some(d) = self.deadline {
            if d > t {
                break;
            }
            let at = d.max(self.now);
            self.now = at;
            self.release(at);
            if self.deadline == Some(d) {
                break;
            }
        }
    }

    fn release(&mut self, now: u64) {
        let states = &self.states;
        let index = &self.index;
        let is_down = |c: &str| {
            index
                .get(c)
                .and_then(|&i| states[i].as_ref())
                .is_some_and(|s| !s.status)
        };
        let mut seq = self.seq;
        let (_, messages) = self.policy.due(now, &is_down, &mut || {
            seq += 1;
            seq
        });
        self.seq = seq;
        self.deadline = self.policy.next_deadline();
        for m in messages {
            self.keep(m, now);
        }
    }

    fn keep(&mut self, m: Message, now: u64) {
        if m.kind == "none" {
            return;
        }
        if now < self.keep_from {
            self.earlier_messages += 1;
            return;
        }
        let flavor = self
            .flavors
            .get(&m.channel)
            .copied()
            .unwrap_or(Flavor::Text);
        let text = self.templates.render(&m.channel, m.kind, flavor, &m.ctx);
        self.messages.push(ReplayMessage {
            at: now,
            channel: m.channel,
            kind: m.kind,
            text,
            items: m.items,
        });
    }
}
