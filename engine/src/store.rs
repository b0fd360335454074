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
            counts: Default::default(),
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
/// Acknowledged failures: check → JSON `Ack`, until the check's next transition.
const ACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("acks");
/// Telegram messages sent with buttons: (chat, message id) → JSON (what the buttons act
/// on, and the token their data must carry).
const BUTTONS: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("telegram_buttons");

/// One change in a transaction; `None` deletes.
#[derive(Debug, Clone)]
pub enum Op {
    Check(String, Option<CheckState>),
    Inbox(u64, Option<Vec<u8>>),
    Held(String, u64, Option<Vec<u8>>),
    Outbox(String, u64, Option<Vec<u8>>),
    Target(String, Vec<u8>),
    Silence(u64, Option<Vec<u8>>),
    Ack(String, Option<Vec<u8>>),
    /// A message's buttons: (chat, message id).
    Buttons(i64, i64, Option<Vec<u8>>),
    /// A counter of the engine's own (`telegram_offset.ops`: the next update to take).
    Meta(String, u64),
    /// A write of another room's tables (the result history), applied in the same
    /// transaction: the store knows only that it writes.
    Tables(std::sync::Arc<dyn TableWrite>),
}

/// Writes to tables the store does not know, inside its write transaction.
pub trait TableWrite: Send + Sync + std::fmt::Debug {
    fn apply(&self, tx: &redb::WriteTransaction) -> Result<(), redb::Error>;
}

/// One writer (the engine), any number of readers in other processes: `vigia status`
/// while no engine runs never keeps one from starting.
fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    // redb's default is a 1 GiB cache that keeps every page ever touched: a status page
    // reading a year of history would keep it all in memory. The pages below it stay
    // in the kernel's page cache, so a small cache costs a pread, not a disk read.
    b.set_cache_size(CACHE_BYTES);
    b
}

/// The store's own page cache (read cache and write buffer together).
pub const CACHE_BYTES: usize = 1 << 20;

/// Runs `f`, turning a panic (redb's on some damaged pages) into its message, without
/// the default hook printing it.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    // One hook for the process, installed once, silent only on the thread (and for the
    // time) that asked: other threads' panics print as before.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|p| {
        format!(
            "reading it failed: {}",
            crate::scheduler::panic_message(&*p)
        )
    })
}

/// `20261201T131904Z`: when a damaged store was moved aside, in UTC.
fn utc_stamp(unix_ms: u64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms as i64)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| unix_ms.to_string())
}

/// The saved check states, read by another process than the engine (`vigia status`
/// while none runs): a read-only handle that never keeps the engine from opening the
/// store. `Ok(empty)` when there is no store yet.
pub fn read_checks(state_dir: &Path) -> Result<HashMap<String, CheckState>, StoreError> {
    let path = state_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let err = |e: String| StoreError::Open {
        path: path.clone(),
        reason: e,
    };
    let read = quietly(|| -> Result<HashMap<String, CheckState>, String> {
        let db = builder().open_read_only(&path).map_err(|e| e.to_string())?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let table = match tx.open_table(CHECKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = HashMap::new();
        for item in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = item.map_err(|e| e.to_string())?;
            if let Ok(state) = serde_json::from_slice::<StoredCheck>(v.value()) {
                out.insert(k.value().to_string(), state.into());
            }
        }
        Ok(out)
    });
    match read {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) | Err(e) => Err(err(e)),
    }
}

/// The file name of the store inside `state_dir`.
pub const STORE_FILE: &str = "state.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {reason}")]
    CreateDir { path: PathBuf, reason: String },
    #[error("the state store {path} is in use by another vigia process (only one engine may use a state_dir)")]
    InUse { path: PathBuf },
    #[error("cannot open the state store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the state store {path} is damaged ({reason}); the engine moves it aside at start and begins with an empty store")]
    Damaged { path: PathBuf, reason: String },
    #[error("the state store {path} failed while {doing}: {reason}")]
    Io {
        path: PathBuf,
        doing: &'static str,
        reason: String,
    },
}

pub struct Store {
    /// `None` only between a failed write and a successful reopen (redb refuses every
    /// operation after an I/O error until the file is opened again).
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
    /// The next sequence number for alert items and messages (never reused: the
    /// highest one used is kept in `meta`).
    seq: std::sync::atomic::AtomicU64,
}

/// One change to write: a state, or `None` to forget a check that left the config.
pub type StoreUpdate = (String, Option<CheckState>);

impl Store {
    /// Opens (or creates) `state_dir/state.redb` as its one writer, and reads every
    /// table once: a damaged file is [`StoreError::Damaged`] here, not a panic later.
    /// Readers in other processes (`vigia status` with no engine) open it with
    /// [`read_checks`] and never keep a writer out.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            reason: if state_dir.exists() && !state_dir.is_dir() {
                "it is a file, not a directory (engine.state_dir must name a directory)".into()
            } else {
                e.to_string()
            },
        })?;
        let path = state_dir.join(STORE_FILE);
        let damaged = |reason: String| StoreError::Damaged {
            path: path.clone(),
            reason,
        };
        let opened = quietly(|| {
            let mut db = builder().create(&path)?;
            let intact = db.check_integrity()?;
            Ok::<_, DatabaseError>((db, intact))
        });
        let (db, intact) = match opened {
            Err(panic) => return Err(damaged(panic)),
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::InUse { path: path.clone() })
            }
            Ok(Err(DatabaseError::Storage(redb::StorageError::Io(io))))
                if io.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(StoreError::Open {
                    path: path.clone(),
                    reason: io.to_string(),
                })
            }
            Ok(Err(other)) => return Err(damaged(other.to_string())),
            Ok(Ok(x)) => x,
        };
        let store = Store {
            db: std::sync::RwLock::new(Some(db)),
            path: path.clone(),
            seq: std::sync::atomic::AtomicU64::new(1),
        };
        if !intact {
            // redb repaired it: what it dropped is unknown, so treat it as damaged.
            return Err(damaged("its integrity check failed".into()));
        }
        let read_all = quietly(|| -> Result<u64, StoreError> {
            // Make sure the tables exist so that reads of a new store work.
            store.apply(&[])?;
            store.load_checks()?;
            store.load_inbox()?;
            store.load_held()?;
            store.outbox_counts()?;
            store.load_targets()?;
            store.load_silences()?;
            store.load_acks()?;
            store.all_buttons()?;
            store.read_meta("seq")
        });
        let last = match read_all {
            Err(panic) => return Err(damaged(panic)),
            Ok(r) => r?,
        };
        store
            .seq
            .store(last + 1, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    /// Opens the store for the engine. A damaged file is moved aside as
    /// `state.redb.damaged-<UTC time>` and the engine starts with an empty store: the
    /// states of the checks and the undelivered alerts it held are lost (they stay in
    /// the moved file for a post-mortem). Returns the store and, then, what to log.
    pub fn open_or_move_aside(state_dir: &Path) -> Result<(Store, Option<String>), StoreError> {
        match Store::open(state_dir) {
            Err(StoreError::Damaged { path, reason }) => {
                let stamp = utc_stamp(crate::clock::unix_ms());
                let aside = path.with_file_name(format!("{STORE_FILE}.damaged-{stamp}"));
                std::fs::rename(&path, &aside).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    reason: format!(
                        "it is damaged ({reason}) and cannot be moved aside to {}: {e}",
                        aside.display()
                    ),
                })?;
                let store = Store::open(state_dir)?;
                let notice = format!(
                    "The state store {} was damaged ({reason}). It was moved aside to {} and \
                     the engine starts with an empty store: the checks start as up, undelivered \
                     alerts and silences in it are lost (a check still down alerts again \
                     once it reaches its threshold).",
                    path.display(),
                    aside.display()
                );
                Ok((store, Some(notice)))
            }
            other => other.map(|s| (s, None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, doing: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| match e {
            // What redb found inconsistent in the file: the file's fault, not the disk's.
            redb::Error::Corrupted(_) => StoreError::Damaged {
                path: self.path.clone(),
                reason: format!("{e} while {doing}"),
            },
            redb::Error::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                StoreError::Damaged {
                    path: self.path.clone(),
                    reason: format!("{e} while {doing}"),
                }
            }
            _ => StoreError::Io {
                path: self.path.clone(),
                doing,
                reason: e.to_string(),
            },
        }
    }

    /// Every persisted check state. An entry that cannot be decoded is skipped with a
    /// warning: it only costs that check its history.
    pub fn load_checks(&self) -> Result<HashMap<String, CheckState>, StoreError> {
        let err = self.io_err("reading check states");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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

    /// A counter of [`Op::Meta`] (0 when never written).
    pub fn meta(&self, key: &str) -> Result<u64, StoreError> {
        self.read_meta(key)
    }

    /// The acknowledgements held: (check, JSON).
    pub fn load_acks(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading acknowledgements");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let t = tx.open_table(ACKS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The buttons of one sent message.
    pub fn buttons(&self, chat: i64, message: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let err = self.io_err("reading a message's buttons");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let t = tx.open_table(BUTTONS).map_err(|e| err(e.into()))?;
        Ok(t.get((chat, message))
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_vec()))
    }

    /// The messages with buttons, oldest first, as (chat, message id, JSON), for
    /// pruning.
    pub fn all_buttons(&self) -> Result<Vec<(i64, i64, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading messages' buttons");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let t = tx.open_table(BUTTONS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let (c, m) = k.value();
            out.push((c, m, v.value().to_vec()));
        }
        Ok(out)
    }

    fn read_meta(&self, key: &str) -> Result<u64, StoreError> {
        let err = self.io_err("reading metadata");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let table = tx.open_table(META).map_err(|e| err(e.into()))?;
        Ok(table
            .get(key)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Applies changes in one durable transaction (fsync on commit).
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let r = self.apply_once(ops);
        if r.is_err() {
            // After an I/O error (a full disk) redb refuses everything until the file is
            // opened again: reopen, so that the next attempt can succeed once there is
            // room. The caller keeps what it could not write and tries again.
            self.reopen();
        }
        r
    }

    /// Opens the file again (after a failed write).
    fn reopen(&self) {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        *slot = quietly(|| builder().create(&self.path))
            .ok()
            .and_then(|r| r.ok());
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(db) => f(db),
            None => {
                drop(slot);
                self.reopen();
                let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
                match slot.as_ref() {
                    Some(db) => f(db),
                    None => Err(StoreError::Io {
                        path: self.path.clone(),
                        doing: "opening it again",
                        reason: "it could not be opened".into(),
                    }),
                }
            }
        }
    }

    fn apply_once(&self, ops: &[Op]) -> Result<(), StoreError> {
        let err = self.io_err("writing");
        let tx = self.with_db(|db| db.begin_write().map_err(|e| err(e.into())))?;
        {
            let mut checks = tx.open_table(CHECKS).map_err(|e| err(e.into()))?;
            let mut inbox = tx.open_table(INBOX).map_err(|e| err(e.into()))?;
            let mut held = tx.open_table(HELD).map_err(|e| err(e.into()))?;
            let mut outbox = tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
            let mut targets = tx.open_table(TARGETS).map_err(|e| err(e.into()))?;
            let mut silences = tx.open_table(SILENCES).map_err(|e| err(e.into()))?;
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            let mut acks = tx.open_table(ACKS).map_err(|e| err(e.into()))?;
            let mut buttons = tx.open_table(BUTTONS).map_err(|e| err(e.into()))?;
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
                    Op::Tables(_) => Ok(()),
                    Op::Ack(check, Some(b)) => {
                        acks.insert(check.as_str(), b.as_slice()).map(|_| ())
                    }
                    Op::Ack(check, None) => acks.remove(check.as_str()).map(|_| ()),
                    Op::Buttons(chat, msg, Some(b)) => {
                        buttons.insert((*chat, *msg), b.as_slice()).map(|_| ())
                    }
                    Op::Buttons(chat, msg, None) => buttons.remove((*chat, *msg)).map(|_| ()),
                    Op::Meta(key, v) => meta.insert(key.as_str(), *v).map(|_| ()),
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
            for op in ops {
                if let Op::Tables(w) = op {
                    w.apply(&tx).map_err(&err)?;
                }
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
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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

    /// Every undelivered message: target, seq, bytes.
    pub fn outbox_entries(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let err = self.io_err("reading the outbox");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let t = tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let (target, seq) = k.value();
            out.push((target.to_string(), seq, v.value().to_vec()));
        }
        Ok(out)
    }

    /// How many messages each target has waiting.
    pub fn outbox_counts(&self) -> Result<HashMap<String, usize>, StoreError> {
        let err = self.io_err("reading the outbox");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        let t = tx.open_table(TARGETS).map_err(|e| err(e.into()))?;
        let mut out = HashMap::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(out)
    }

    /// Runs `f` in a read transaction (`doing` names it in an error).
    pub fn read<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let err = self.io_err(doing);
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
        f(&tx).map_err(err)
    }

    pub fn load_silences(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let err = self.io_err("reading silences");
        let tx = self.with_db(|db| db.begin_read().map_err(|e| err(e.into())))?;
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

/// Writes `ops`, trying again every second until it succeeds or `stop` is cancelled
/// (false then): for writes that must not be skipped, as going on without them could
/// send a message twice. Says the first failure, and the recovery.
pub async fn persist_until_ok(
    store: &std::sync::Arc<Store>,
    ops: Vec<Op>,
    what: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut failed_since: Option<std::time::Instant> = None;
    loop {
        let s = store.clone();
        let batch = ops.clone();
        let r = tokio::task::spawn_blocking(move || s.apply(&batch)).await;
        match r {
            Ok(Ok(())) => {
                if let Some(t) = failed_since {
                    tracing::info!(
                        event = "store_recovered",
                        "Saved {what} after {} of failures.",
                        vigia_api::Dur(t.elapsed())
                    );
                }
                return true;
            }
            Ok(Err(e)) => {
                if failed_since.is_none() {
                    tracing::error!(
                        event = "store_error",
                        "Could not save {what}: {e}. Kept in memory; trying again every second."
                    );
                    failed_since = Some(std::time::Instant::now());
                }
            }
            Err(e) => {
                tracing::error!(event = "store_error", "Saving {what} failed: {e}.");
                return false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return false,
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
        // Counts are Prometheus counters: they start at 0 with the process.
        assert_eq!(
            back,
            CheckState {
                counts: Default::default(),
                ..s
            }
        );
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
        assert!(err.contains("is damaged"), "{err}");
    }

    /// One 4 KiB page overwritten, at every page of a store with something in every
    /// table: never a panic; the engine's open moves the file aside and starts empty,
    /// or the store still opens whole.
    #[test]
    fn a_damaged_page_anywhere_is_moved_aside_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut ops = Vec::new();
            for i in 0..300u64 {
                let st = CheckState::new(i * 1000);
                ops.push(Op::Check(format!("check-{i}"), Some(st)));
                ops.push(Op::Inbox(i, Some(vec![7; 100])));
                ops.push(Op::Outbox("ops".into(), i, Some(vec![9; 200])));
            }
            ops.push(Op::Silence(1, Some(b"{}".to_vec())));
            ops.push(Op::Target("ops".into(), b"{}".to_vec()));
            store.apply(&ops).unwrap();
        }
        let good = std::fs::read(dir.path().join(STORE_FILE)).unwrap();
        let pages = good.len() / 4096;
        assert!(pages >= 4, "{pages}");
        let mut moved = 0;
        for page in 0..pages {
            let d = tempfile::tempdir().unwrap();
            let mut bad = good.clone();
            bad[page * 4096..(page + 1) * 4096].fill(0x5A);
            std::fs::write(d.path().join(STORE_FILE), &bad).unwrap();
            let (store, notice) =
                Store::open_or_move_aside(d.path()).unwrap_or_else(|e| panic!("page {page}: {e}"));
            if let Some(n) = notice {
                moved += 1;
                assert!(
                    n.contains("was damaged") && n.contains("state.redb.damaged-"),
                    "{n}"
                );
                let aside: Vec<_> = std::fs::read_dir(d.path())
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("state.redb.damaged-")
                    })
                    .collect();
                assert_eq!(aside.len(), 1, "page {page}");
                assert!(store.load_checks().unwrap().is_empty());
            }
        }
        assert!(moved > 0, "no page of {pages} was noticed as damaged");
    }

    #[test]
    fn a_reader_never_keeps_the_writer_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(&[("web".into(), Some(CheckState::new(5)))])
                .unwrap();
        }
        let path = dir.path().join(STORE_FILE);
        let reader = builder().open_read_only(&path).unwrap();
        let store = Store::open(dir.path()).expect("the writer opens beside a reader");
        assert_eq!(read_checks(dir.path()).unwrap().len(), 1);
        drop((reader, store));
    }

    #[test]
    fn the_stamp_is_utc_civil_time() {
        assert_eq!(utc_stamp(1_796_130_000_000), "20261201T130000Z");
        assert_eq!(utc_stamp(0), "19700101T000000Z");
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("st");
        std::fs::write(&st, "").unwrap();
        let err = Store::open(&st).err().unwrap().to_string();
        assert_eq!(
            err,
            format!("cannot create the state directory {}: it is a file, not a directory (engine.state_dir must name a directory)", st.display())
        );
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
