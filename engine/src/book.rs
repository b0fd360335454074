//! The status map: one [`CheckState`] per check, in memory.
//!
//! **Architecture invariant:** the only writer is the scheduler's `record` (one run's
//! outcome) plus restore/forget at start and reload; everything else reads it through
//! snapshots ([`CheckSnapshot`], [`StatusBook::statuses`]) and never sees the map itself.
//! No guard of the map outlives a method call, so no lock is ever held across an
//! `.await`.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use vigia_core::snapshot::CheckSnapshot;
use vigia_core::status::CheckState;

#[derive(Default)]
pub struct StatusBook {
    map: DashMap<Arc<str>, CheckState>,
}

impl StatusBook {
    pub fn new() -> Arc<StatusBook> {
        Arc::new(StatusBook::default())
    }

    /// Puts back a state saved by an earlier run of the engine.
    pub(crate) fn restore(&self, name: Arc<str>, state: CheckState) {
        self.map.insert(name, state);
    }

    /// A new check starts as OK, first seen `now`.
    pub(crate) fn ensure(&self, name: &Arc<str>, now: u64) {
        self.map
            .entry(name.clone())
            .or_insert_with(|| CheckState::new(now));
    }

    pub(crate) fn forget(&self, name: &str) {
        self.map.remove(name);
    }

    /// The state a check keeps between runs (a script's `ctx.state`).
    pub(crate) fn saved_state(&self, name: &str) -> Option<String> {
        self.map.get(name).and_then(|e| e.state.clone())
    }

    /// The one write: `f` applies a run's outcome to the check's state.
    pub(crate) fn update<R>(
        &self,
        name: &Arc<str>,
        now: u64,
        f: impl FnOnce(&mut CheckState) -> R,
    ) -> R {
        let mut entry = self
            .map
            .entry(name.clone())
            .or_insert_with(|| CheckState::new(now));
        f(&mut entry)
    }

    /// One check's state, as the wire sees it (schedule fields left empty).
    pub fn check(&self, name: &str) -> Option<CheckSnapshot> {
        self.map
            .get(name)
            .map(|s| CheckSnapshot::of_state(name, &s))
    }

    /// Whether a check is known and down.
    pub fn is_down(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|s| !s.status)
    }

    /// Every check's status (true = OK), by name.
    pub fn statuses(&self) -> BTreeMap<String, bool> {
        self.map
            .iter()
            .map(|e| (e.key().to_string(), e.value().status))
            .collect()
    }

    /// The checks that are down, with their state.
    pub fn down(&self) -> Vec<CheckSnapshot> {
        let mut v: Vec<CheckSnapshot> = self
            .map
            .iter()
            .filter(|e| !e.value().status)
            .map(|e| CheckSnapshot::of_state(e.key(), e.value()))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
