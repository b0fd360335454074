//! Silence commands, carried out on the core's `SilenceBook`: one implementation for the
//! alert pipeline of a running engine and for `vigia silence` when none runs (the store
//! is then free to open).

use std::path::Path;
use std::time::Duration;

use vigia_core::command::{Command, Reply};
use vigia_core::silence::{Silence, SilenceBook};

use crate::store::{Op, Store, StoreError};

/// The silences the store holds.
pub fn load(store: &Store) -> Result<SilenceBook, StoreError> {
    let mut book = SilenceBook::default();
    for bytes in store.load_silences()? {
        match serde_json::from_slice::<Silence>(&bytes) {
            Ok(s) => book.insert(s),
            Err(e) => tracing::warn!(
                event = "alert_store",
                "A stored silence could not be read ({e}); it is dropped."
            ),
        }
    }
    Ok(book)
}

/// Carries out a silence command at `now`: the reply, and the store changes that make
/// it durable (the caller writes them, and answers an error if that fails). Not a
/// silence command: `None`.
pub fn execute(
    book: &mut SilenceBook,
    cmd: &Command,
    next_id: impl FnOnce() -> u64,
    now: u64,
) -> Option<(Reply, Vec<Op>)> {
    let mut ops: Vec<Op> = book
        .expire(now)
        .into_iter()
        .map(|s| {
            tracing::info!(event = "silence_expired", id = s.id, pattern = %s.pattern, "Silence {} ({}) expired.", s.id, s.pattern);
            Op::Silence(s.id, None)
        })
        .collect();
    let reply = match cmd {
        Command::SilenceAdd {
            pattern,
            for_ms,
            reason,
            by,
        } => match book.add(
            next_id(),
            pattern,
            Duration::from_millis(*for_ms),
            reason,
            by,
            now,
        ) {
            Ok(s) => {
                ops.push(Op::Silence(s.id, serde_json::to_vec(&s).ok()));
                Reply::Silence(s)
            }
            Err(e) => Reply::error(e),
        },
        Command::SilenceList => Reply::Silences {
            silences: book.active(now),
        },
        Command::SilenceRemove { id } => match book.remove(*id) {
            Ok(_) => {
                ops.push(Op::Silence(*id, None));
                Reply::Removed { id: *id }
            }
            Err(e) => Reply::error(e),
        },
        _ => return None,
    };
    Some((reply, ops))
}

/// The log line of a silence that was added or removed, or of an acknowledgement;
/// `whence` ends the sentence (" (in the cluster)" for one made on another replica).
pub fn log(reply: &Reply, tz: &jiff::tz::TimeZone, whence: &str) {
    match reply {
        Reply::Silence(s) => {
            let until = jiff::Timestamp::from_millisecond(s.until as i64)
                .map(|t| {
                    t.to_zoned(tz.clone())
                        .strftime("%Y-%m-%d %H:%M %Z")
                        .to_string()
                })
                .unwrap_or_else(|_| s.until.to_string());
            let by = if s.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", s.by)
            };
            tracing::info!(event = "silence_added", id = s.id, pattern = %s.pattern, reason = %s.reason, by = %s.by, until = %until, until_ms = s.until, "Silence {} added{by}{whence}: alerts of {} are not sent until {until} ({}).", s.id, s.pattern, s.reason);
        }
        Reply::Acked {
            check,
            ack,
            already: false,
        } => {
            tracing::info!(event = "ack", check = %check, by = %ack.by, since_ms = ack.since, "{check} acknowledged by {}: its reminders stop until it recovers.", ack.by);
        }
        Reply::Removed { id } => {
            tracing::info!(
                event = "silence_removed",
                id,
                "Silence {id} removed{whence}."
            )
        }
        _ => {}
    }
}

/// `vigia silence` while no engine runs: the same command on the stored book.
pub fn offline(state_dir: &Path, cmd: &Command) -> Reply {
    let store = match Store::open(state_dir) {
        Ok(s) => s,
        Err(e) => return Reply::error(e.to_string()),
    };
    let mut book = match load(&store) {
        Ok(b) => b,
        Err(e) => return Reply::error(e.to_string()),
    };
    let Some((reply, ops)) = execute(&mut book, cmd, || store.next_seq(), crate::clock::unix_ms())
    else {
        return Reply::error("not a silence command");
    };
    if let Err(e) = store.apply(&ops) {
        return Reply::error(format!("the silence could not be saved: {e}"));
    }
    reply
}
