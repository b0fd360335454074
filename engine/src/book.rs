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

/// How long the state of a check removed from the config is kept: put back within it
/// (an editor that empties the file before writing it, an entry commented out for a
/// moment), the check resumes where it was — a check that was down is not alerted
/// `failed` a second time.
pub const RETAIN_REMOVED_MS: u64 = 60 * 60 * 1000;

/// Check names are the operator's own, not an attacker's: a fast hash (every run
/// looks its check up once).
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
pub struct StatusBook {
    map: DashMap<Arc<str>, CheckState, FastHash>,
    /// States of removed checks, and when they were removed.
    retired: std::sync::Mutex<std::collections::HashMap<Arc<str>, (CheckState, u64)>>,
}

impl StatusBook {
    pub fn new() -> Arc<StatusBook> {
        Arc::new(StatusBook::default())
    }

    /// Puts back a state saved by an earlier run of the engine.
    pub(crate) fn restore(&self, name: Arc<str>, state: CheckState) {
        self.map.insert(name, state);
    }

    /// A new check starts as OK, first seen `now`; one removed less than
    /// [`RETAIN_REMOVED_MS`] ago resumes its state. Whether it resumed.
    pub(crate) fn ensure(&self, name: &Arc<str>, now: u64) -> bool {
        if self.map.contains_key(name) {
            return false;
        }
        let resumed = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .filter(|(_, at)| now.saturating_sub(*at) < RETAIN_REMOVED_MS)
            .map(|(state, _)| state);
        let was = resumed.is_some();
        self.map
            .entry(name.clone())
            .or_insert_with(|| resumed.unwrap_or_else(|| CheckState::new(now)));
        was
    }

    /// A check left the config: out of the status map, its state kept for a while.
    pub(crate) fn forget(&self, name: &str, now: u64) {
        if let Some((name, state)) = self.map.remove(name) {
            self.retire(name, state, now);
        }
    }

    /// Keeps a state of a check that is not configured (removed now, or found in the
    /// store at start) for [`RETAIN_REMOVED_MS`].
    pub(crate) fn retire(&self, name: Arc<str>, state: CheckState, now: u64) {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, (state, now));
    }

    /// The removed checks whose kept state has expired: forgotten here, for the caller
    /// to delete from the store.
    pub(crate) fn expire_retired(&self, now: u64) -> Vec<Arc<str>> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<Arc<str>> = retired
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) >= RETAIN_REMOVED_MS)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &expired {
            retired.remove(n);
        }
        expired
    }

    /// A check's whole state (the cluster hands it to the check's next owner).
    pub(crate) fn state(&self, name: &str) -> Option<CheckState> {
        self.map.get(name).map(|e| e.clone())
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
        if let Some(mut entry) = self.map.get_mut(&**name) {
            return f(&mut entry);
        }
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

    /// One check's state without its messages (for `/metrics`).
    pub fn check_without_texts(&self, name: &str) -> Option<CheckSnapshot> {
        self.map
            .get(name)
            .map(|s| CheckSnapshot::of_state_without_texts(name, &s))
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
