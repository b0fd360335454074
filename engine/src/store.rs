//! The embedded, crash-safe state store (redb) under `engine.state_dir`.
//!
//! It holds the status map's durable part, so that after a restart — `kill -9`
//! included — a check that was down is still down with its counters, and no second
//! `failed` alert is sent. Every write is one redb transaction, committed with fsync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use vigia_api::Severity;
use vigia_core::status::{CheckState, LastRun};

/// A check's state as the store keeps it (JSON in the `checks` table). Its own type, so
/// that the in-memory record and the wire can change without breaking stored data:
/// every field a release added has a default, and the field names are those release
/// 0.1 wrote (tested against a store it made: `tests/fixtures/state-0.1.redb`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub status: bool,
    pub failures: u32,
    pub successes: u32,
    pub changed_at: u64,
    #[serde(default)]
    pub failed_message: Option<String>,
    #[serde(default)]
    pub last: Option<StoredRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    pub ok: bool,
    pub severity: Severity,
    #[serde(default)]
    pub value: Option<f64>,
    pub message: String,
    pub duration_ms: f64,
    pub at: u64,
}

impl From<&CheckState> for StoredCheck {
    fn from(s: &CheckState) -> Self {
        StoredCheck {
            status: s.status,
            failures: s.failures,
            successes: s.successes,
            changed_at: s.changed_at,
            failed_message: s.failed_message.clone(),
            last: s.last.as_ref().map(|l| StoredRun {
                ok: l.ok,
                severity: l.severity,
                value: l.value,
                message: l.message.clone(),
                duration_ms: l.duration_ms,
                at: l.at,
            }),
            state: s.state.clone(),
        }
    }
}

impl From<StoredCheck> for CheckState {
    fn from(s: StoredCheck) -> Self {
        CheckState {
            status: s.status,
            failures: s.failures,
            successes: s.successes,
            changed_at: s.changed_at,
            failed_message: s.failed_message,
            last: s.last.map(|l| LastRun {
                ok: l.ok,
                severity: l.severity,
                value: l.value,
                message: l.message,
                duration_ms: l.duration_ms,
                at: l.at,
            }),
            state: s.state,
        }
    }
}

const CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("checks");
/// Transitions committed with the state that caused them, until alerting took them.
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("alert_inbox");
/// Items waiting on a channel (group wait, closed window): (channel, seq).
const HELD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("alert_held");
/// Rendered messages not yet delivered: (target, seq); a target is a channel, or a
/// channel's chat (`ops#12345`).
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("alert_outbox");
/// Delivery counters per target (JSON).
const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("alert_targets");
const SILENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("silences");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One change in a transaction; `None` deletes.
#[derive(Debug, Clone)]
pub enum Op {
    Check(String, Option<CheckState>),
    Inbox(u64, Option<Vec<u8>>),
    Held(String, u64, Option<Vec<u8>>),
    Outbox(String, u64, Option<Vec<u8>>),
    Target(String, Vec<u8>),
    Silence(u64, Option<Vec<u8>>),
}

/// The file name of the store inside `state_dir`.
pub const STORE_FILE: &str = "state.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state store {path} is in use by another vigia process (only one engine may use a state_dir)")]
    InUse { path: PathBuf },
    #[error("cannot open the state store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the state store {path} failed while {doing}: {reason}")]
    Io {
        path: PathBuf,
        doing: &'static str,
        reason: String,
    },
}

pub struct Store {
    db: Database,
    path: PathBuf,
    /// The next sequence number for alert items and messages (never reused: the
    /// highest one used is kept in `meta`).
    seq: std::sync::atomic::AtomicU64,
}

/// One change to write: a state, or `None` to forget a check that left the config.
pub type StoreUpdate = (String, Option<CheckState>);

impl Store {
    /// Opens (or creates) `state_dir/state.redb`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(STORE_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Open {
                path: path.clone(),
                reason: io.to_string(),
            },
            other => StoreError::Open {
                path: path.clone(),
                reason: format!(
                    "{other} (if the file is damaged, move it aside to start with empty state)"
                ),
            },
        })?;
        let store = Store {
            db,
            path,
            seq: std::sync::atomic::AtomicU64::new(1),
        };
        // Make sure the tables exist so that reads of a new store work.
        store.apply(&[])?;
        let last = store.read_meta("seq")?;
        store
            .seq
            .store(last + 1, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, doing: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| StoreError::Io {
            path: self.path.clone(),
            doing,
            reason: e.to_string(),
        }
    }

    /// Every persisted check state. An entry that cannot be decoded is skipped with a
    /// warning: it only costs that check its history.
    pub fn load_checks(&self) -> Result<HashMap<String, CheckState>, StoreError> {
        let err = self.io_err("reading check states");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(CHECKS).map_err(|e| err(e.into()))?;
        let mut out = HashMap::new();
        for item in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            match serde_json::from_slice::<StoredCheck>(v.value()) {
                Ok(state) => {
                    out.insert(k.value().to_string(), state.into());
                }
                Err(e) => tracing::warn!(
                    check = k.value(),
                    "The stored state of this check cannot be read ({e}); it starts afresh."
                ),
            }
        }
        Ok(out)
    }

    /// Writes a batch of check states in one durable transaction.
    pub fn write(&self, updates: &[StoreUpdate]) -> Result<(), StoreError> {
        let ops: Vec<Op> = updates
            .iter()
            .map(|(n, s)| Op::Check(n.clone(), s.clone()))
            .collect();
        self.apply(&ops)
    }

    /// A new sequence number (alert items, messages).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    fn read_meta(&self, key: &str) -> Result<u64, StoreError> {
        let err = self.io_err("reading metadata");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(META).map_err(|e| err(e.into()))?;
        Ok(table
            .get(key)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Applies changes in one durable transaction (fsync on commit).
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let err = self.io_err("writing");
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut checks = tx.open_table(CHECKS).map_err(|e| err(e.into()))?;
            let mut inbox = tx.open_table(INBOX).map_err(|e| err(e.into()))?;
            let mut held = tx.open_table(HELD).map_err(|e| err(e.into()))?;
            let mut outbox = tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
            let mut targets = tx.open_table(TARGETS).map_err(|e| err(e.into()))?;
            let mut silences = tx.open_table(SILENCES).map_err(|e| err(e.into()))?;
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            let mut max_seq = 0;
            for op in ops {
                let r: Result<(), redb::StorageError> = match op {
                    Op::Check(name, Some(s)) => {
                        let bytes = serde_json::to_vec(&StoredCheck::from(s)).unwrap_or_default();
                        checks.insert(name.as_str(), bytes.as_slice()).map(|_| ())
                    }
                    Op::Check(name, None) => checks.remove(name.as_str()).map(|_| ()),
                    Op::Inbox(seq, v) => {
                        max_seq = max_seq.max(*seq);
                        match v {
                            Some(b) => inbox.insert(*seq, b.as_slice()).map(|_| ()),
                            None => inbox.remove(*seq).map(|_| ()),
                        }
                    }
                    Op::Held(ch, seq, v) => {
                        max_seq = max_seq.max(*seq);
                        match v {
                            Some(b) => held.insert((ch.as_str(), *seq), b.as_slice()).map(|_| ()),
                            None => held.remove((ch.as_str(), *seq)).map(|_| ()),
                        }
                    }
                    Op::Outbox(t, seq, v) => {
                        max_seq = max_seq.max(*seq);
                        match v {
                            Some(b) => outbox.insert((t.as_str(), *seq), b.as_slice()).map(|_| ()),
                            None => outbox.remove((t.as_str(), *seq)).map(|_| ()),
                        }
                    }
                    Op::Target(t, b) => targets.insert(t.as_str(), b.as_slice()).map(|_| ()),
                    Op::Silence(id, v) => {
                        max_seq = max_seq.max(*id);
                        match v {
                            Some(b) => silences.insert(*id, b.as_slice()).map(|_| ()),
                            None => silences.remove(*id).map(|_| ()),
                        }
                    }
                };
                r.map_err(|e| err(e.into()))?;
            }
            if max_seq > 0 {
                let current = meta
                    .get("seq")
                    .map_err(|e| err(e.into()))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                if max_seq > current {
                    meta.insert("seq", max_seq).map_err(|e| err(e.into()))?;
                }
            }
        }
        tx.commit().map_err(|e| err(e.into()))
    }

    pub fn load_inbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading the alert inbox");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(INBOX).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn load_held(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading held alerts");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(HELD).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let (ch, seq) = k.value();
            out.push((ch.to_string(), seq, v.value().to_vec()));
        }
        Ok(out)
    }

    /// The oldest undelivered message of a target.
    pub fn first_outbox(&self, target: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading the outbox");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        let mut range = t
            .range((target, 0u64)..=(target, u64::MAX))
            .map_err(|e| err(e.into()))?;
        match range.next() {
            Some(item) => {
                let (k, v) = item.map_err(|e| err(e.into()))?;
                Ok(Some((k.value().1, v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    /// How many messages each target has waiting.
    pub fn outbox_counts(&self) -> Result<HashMap<String, usize>, StoreError> {
        let err = self.io_err("reading the outbox");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        let mut out: HashMap<String, usize> = HashMap::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, _) = item.map_err(|e| err(e.into()))?;
            *out.entry(k.value().0.to_string()).or_default() += 1;
        }
        Ok(out)
    }

    pub fn load_targets(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let err = self.io_err("reading delivery counters");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(TARGETS).map_err(|e| err(e.into()))?;
        let mut out = HashMap::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(out)
    }

    pub fn load_silences(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let err = self.io_err("reading silences");
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = tx.open_table(SILENCES).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (_, v) = item.map_err(|e| err(e.into()))?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }
}

/// Applies `ops` off the async threads; a failure is logged (naming `what`) and
/// returned as false.
pub async fn persist(store: &std::sync::Arc<Store>, ops: Vec<Op>, what: &str) -> bool {
    if ops.is_empty() {
        return true;
    }
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.apply(&ops)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(event = "store_error", "Could not save {what}: {e}.");
            false
        }
        Err(e) => {
            tracing::error!(event = "store_error", "Saving {what} failed: {e}.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_through_its_stored_form() {
        let mut s = CheckState::new(0);
        for t in 0..3 {
            s.record(false, 3, 2, t);
        }
        s.state = Some("{\"n\":1}".into());
        let json = serde_json::to_vec(&StoredCheck::from(&s)).unwrap();
        let back: CheckState = serde_json::from_slice::<StoredCheck>(&json).unwrap().into();
        assert_eq!(back, s);
    }

    #[test]
    fn round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut down = CheckState::new(5);
        down.status = false;
        down.failures = 4;
        store
            .write(&[
                ("web".into(), Some(down.clone())),
                ("db".into(), Some(CheckState::new(1))),
            ])
            .unwrap();
        store.write(&[("db".into(), None)]).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let all = store.load_checks().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all["web"], down);
    }

    /// A store written by release 0.1 (made by `tests/fixtures/make-state-0.1.sh`, with
    /// something in every table) loads with today's types.
    #[test]
    fn a_store_written_by_release_0_1_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-0.1.redb");
        std::fs::copy(&fixture, dir.path().join(STORE_FILE)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let checks = store.load_checks().unwrap();
        let down = &checks["down_a"];
        assert!(!down.status && down.failures >= 1, "{down:?}");
        assert!(
            down.failed_message
                .as_deref()
                .unwrap_or("")
                .contains("127.0.0.1:9"),
            "{down:?}"
        );
        assert!(down.last.as_ref().is_some_and(|l| !l.ok), "{down:?}");
        assert!(!checks["slow_c"].status);
        let counter = &checks["counter"];
        assert!(
            counter.state.as_deref().unwrap_or("").contains("\"n\""),
            "a script's ctx.state survives: {counter:?}"
        );
        // slow_c's transition waited in the inbox for its action.
        let inbox = store.load_inbox().unwrap();
        assert!(!inbox.is_empty());
        for (_, bytes) in &inbox {
            let item: vigia_core::alert::policy::Item = serde_json::from_slice(bytes).unwrap();
            assert!(item.check().is_some());
        }
        let held = store.load_held().unwrap();
        assert!(held.iter().any(|(ch, _, _)| ch == "night"), "{held:?}");
        for (_, _, bytes) in &held {
            let _: vigia_core::alert::policy::Held = serde_json::from_slice(bytes).unwrap();
        }
        let outbox = store.outbox_counts().unwrap();
        assert!(outbox.get("ops#1").copied().unwrap_or(0) >= 1, "{outbox:?}");
        let (seq, bytes) = store.first_outbox("ops#1").unwrap().unwrap();
        assert!(seq > 0);
        let _: crate::alerting::pipeline::Stored = serde_json::from_slice(&bytes).unwrap();
        let silences = crate::silences::load(&store).unwrap();
        // (It expired a day after the file was made: read it as of then.)
        let all = silences.active(0);
        assert!(
            all.iter()
                .any(|s| s.pattern == "down_*" && s.reason == "fixture"),
            "{all:?}"
        );
        // New sequence numbers continue after the stored ones.
        assert!(store.next_seq() > seq);
    }

    #[test]
    fn a_second_engine_on_the_same_dir_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is in use by another vigia process"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE), vec![0xAB; 8192]).unwrap();
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.starts_with("cannot open the state store"), "{err}");
    }

    #[test]
    fn an_unwritable_dir_is_an_error() {
        let err = Store::open(Path::new("/proc/vigia-cannot-be-here"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("cannot create the state directory"),
            "{err}"
        );
    }
}
