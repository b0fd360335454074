//! The one way to act on a running engine from outside: a typed command, parsed once at
//! the edge, and a typed reply. The control socket carries them as one JSON line each
//! (`{"cmd":"silence_add","pattern":"web","for_ms":7200000,"reason":"deploy"}` →
//! `{"reply":"silence","id":12,...}`); the HTTP API, the cluster and the Telegram
//! console of later releases speak the same enum.

use serde::{Deserialize, Serialize};

use crate::silence::Silence;
use crate::snapshot::{CheckSnapshot, StatsSnapshot, StatusSnapshot};

/// What can be asked of a running engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// The status snapshot.
    Status,
    /// The scheduler's counters.
    Stats,
    /// Zero the counters (benchmarks), answering the zeroed ones.
    StatsReset,
    /// Silence `pattern` for `for_ms`.
    SilenceAdd {
        pattern: String,
        for_ms: u64,
        #[serde(default)]
        reason: String,
        /// Who asks: `telegram:@ana`, `cli:root` (kept with the silence, and logged).
        #[serde(default)]
        by: String,
    },
    SilenceList,
    SilenceRemove {
        id: u64,
    },
    /// Run a check now, outside its schedule; the outcome is recorded like any run.
    RunNow {
        name: String,
    },
    /// A check's transitions since `since_ms` (unix ms) and its uptime.
    History {
        name: String,
        since_ms: u64,
    },
    /// Acknowledge the failure of a check that is down: its reminders stop until it
    /// recovers.
    Ack {
        name: String,
        #[serde(default)]
        by: String,
    },
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(StatusSnapshot),
    Stats(StatsSnapshot),
    Silence(Silence),
    Silences {
        silences: Vec<Silence>,
    },
    Removed {
        id: u64,
    },
    /// A check after the run asked for.
    Ran {
        check: Box<CheckSnapshot>,
    },
    History(crate::history::HistoryReport),
    /// The check's acknowledgement; `already`: it was acknowledged before (by whom it
    /// says), nothing changed.
    Acked {
        check: String,
        ack: crate::alert::Ack,
        #[serde(default)]
        already: bool,
    },
    /// The command was understood and refused, or could not be carried out.
    Error {
        error: String,
    },
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply::Error { error: e.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let c: Command =
            serde_json::from_str(r#"{"cmd":"silence_add","pattern":"web","for_ms":60000}"#)
                .unwrap();
        assert_eq!(
            c,
            Command::SilenceAdd {
                pattern: "web".into(),
                for_ms: 60000,
                reason: String::new(),
                by: String::new(),
            }
        );
        let e = serde_json::from_str::<Command>(r#"{"cmd":"reboot"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `reboot`"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"cmd":"silence_remove"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `id`"), "{e}");
        let r = serde_json::to_string(&Reply::Removed { id: 3 }).unwrap();
        assert_eq!(r, r#"{"reply":"removed","id":3}"#);
    }
}
