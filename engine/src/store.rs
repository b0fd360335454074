//! The embedded, crash-safe state store (redb) under `engine.state_dir`.
//!
//! It holds the status map's durable part, so that after a restart — `kill -9`
//! included — a check that was down is still down with its counters, and no second
//! `failed` alert is sent. Every write is one redb transaction, committed with fsync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use crate::status::CheckState;

const CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("checks");

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
        let store = Store { db, path };
        // Make sure the table exists so that reads of a new store work.
        store.write(&[])?;
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
            match serde_json::from_slice::<CheckState>(v.value()) {
                Ok(state) => {
                    out.insert(k.value().to_string(), state);
                }
                Err(e) => tracing::warn!(
                    check = k.value(),
                    "The stored state of this check cannot be read ({e}); it starts afresh."
                ),
            }
        }
        Ok(out)
    }

    /// Writes a batch of changes in one durable transaction.
    pub fn write(&self, updates: &[StoreUpdate]) -> Result<(), StoreError> {
        let err = self.io_err("writing check states");
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = tx.open_table(CHECKS).map_err(|e| err(e.into()))?;
            for (name, state) in updates {
                match state {
                    Some(s) => {
                        let bytes = serde_json::to_vec(s).unwrap_or_default();
                        table
                            .insert(name.as_str(), bytes.as_slice())
                            .map_err(|e| err(e.into()))?;
                    }
                    None => {
                        table.remove(name.as_str()).map_err(|e| err(e.into()))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
