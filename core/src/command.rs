//! The one way to act on a running engine from outside: a typed command, parsed once at
//! the edge, and a typed reply. The control socket carries them as one JSON line each
//! (`{"cmd":"silence_add","pattern":"web","for_ms":7200000,"reason":"deploy"}` →
//! `{"reply":"silence","id":12,...}`); the HTTP API, the cluster and the Telegram
//! console of later releases speak the same enum.

use std::collections::BTreeMap;

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
    /// In a cluster: its replicas, its leader and where each floating check runs.
    ClusterStatus,
    /// In a cluster: how many checks each live replica (or `replica`) runs, asked of
    /// it now.
    ClusterInfo {
        #[serde(default)]
        replica: Option<String>,
    },
    /// In a cluster: a placement command, carried out by the leader.
    Cluster {
        command: ClusterCommand,
    },
}

/// Which floating checks a cluster start or stop means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Check names, or group names (a group's members).
    #[serde(default)]
    pub checks: Vec<String>,
    /// `--label k=v`: the checks with all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub all: bool,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.labels.is_empty() && !self.all
    }
}

/// A placement command to the cluster's leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "snake_case")]
pub enum ClusterCommand {
    Start(Selector),
    Stop(Selector),
    Drain(String),
    Undrain(String),
    Rebalance { dry_run: bool },
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
    /// The cluster's map (`vigia cluster status --json`'s document).
    ClusterStatus {
        status: serde_json::Value,
    },
    /// Each replica's live answer (`replica`, `host`, `capacity`, `floating`,
    /// `pinned`, `labels`), or `replica` and `error` for one that did not answer.
    ClusterInfo {
        replicas: Vec<serde_json::Value>,
    },
    /// The leader's answer, in the replica scheduler's words (`started 3 of 5: 2
    /// refused (all replicas at capacity)`).
    ClusterAnswer {
        text: String,
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
        let c: Command = serde_json::from_str(
            r#"{"cmd":"cluster","command":{"cmd":"stop","args":{"labels":{"company":"acme"}}}}"#,
        )
        .unwrap();
        let Command::Cluster {
            command: ClusterCommand::Stop(sel),
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(sel.labels["company"], "acme");
        assert!(!sel.all && sel.checks.is_empty());
        let e = serde_json::from_str::<Command>(
            r#"{"cmd":"cluster","command":{"cmd":"start","args":{"check":["a"]}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `check`"), "{e}");
    }
}
