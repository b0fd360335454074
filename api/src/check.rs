//! What a check is, what it returns, and how a plugin builds one from config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigErrors};
use crate::yaml::Node;

/// The verdict of one run, in Nagios terms so `vigia check` can use its exit codes.
/// Only `Ok` counts as a success in the status map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Critical,
    /// The check could not tell: a missing permission, a name that does not resolve.
    Unknown,
}

/// What one run of a check found. A failure is an outcome with a reason, never a panic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub severity: Severity,
    /// A measured value where the check has one (ms of latency, % of loss, ...).
    pub value: Option<f64>,
    /// A sentence an operator understands: "HTTP 500 from http://…/health (expected 200)".
    pub message: String,
}

impl CheckOutcome {
    pub fn ok(message: impl Into<String>) -> Self {
        CheckOutcome {
            severity: Severity::Ok,
            value: None,
            message: message.into(),
        }
    }

    pub fn critical(message: impl Into<String>) -> Self {
        CheckOutcome {
            severity: Severity::Critical,
            value: None,
            message: message.into(),
        }
    }

    pub fn unknown(message: impl Into<String>) -> Self {
        CheckOutcome {
            severity: Severity::Unknown,
            value: None,
            message: message.into(),
        }
    }

    pub fn with_value(mut self, value: f64) -> Self {
        self.value = Some(value);
        self
    }

    pub fn is_ok(&self) -> bool {
        self.severity == Severity::Ok
    }
}

/// What the engine tells a check about the run it is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct RunContext<'a> {
    pub check: &'a str,
    /// The engine cancels the run at this deadline; a check may use it to size its own
    /// waits (e.g. how long to wait for a ping reply).
    pub timeout: Duration,
}

/// A check: run it, get an outcome. Must not block the thread (use async IO); a run that
/// hangs is cancelled by the engine at its timeout, and a panic is caught and becomes a
/// failure, but neither is a way to report one.
pub trait Check: Send + Sync + 'static {
    fn run<'a>(&'a self, ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome>;

    /// A short description of the target for logs and `vigia check`: `tcp 127.0.0.1:7000`.
    fn target(&self) -> String;

    /// State the check keeps between runs that should survive a restart and a reload
    /// (a Lua script's `ctx.state`), as JSON. The engine asks after every run and
    /// persists what it gets with the check's status; `None` means "unchanged".
    fn take_state(&self) -> Option<String> {
        None
    }

    /// Gives a newly built check the state its predecessor saved (after a restart, or
    /// when a reload replaced it).
    fn restore_state(&self, _json: &str) {}
}

/// Schedule settings a check's own definition may carry (a Lua script declares them).
/// The engine uses them where the config entry does not set the key itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub threshold: Option<u32>,
    pub recover_after: Option<u32>,
    pub comment: Option<String>,
}

/// A file that defines checks (a Lua script) and could not be loaded. The engine keeps
/// running the checks it had from that file and reports the error once.
#[derive(Clone, Debug)]
pub struct BrokenFile {
    pub file: PathBuf,
    /// `checks/x.lua:3: unexpected symbol near 'end'`
    pub error: String,
}

/// One check built from a config entry. Most entries give one; `terminals` gives one per
/// line of its file.
#[derive(Clone)]
pub struct BuiltCheck {
    /// Full check name: the entry's name, or `entry/member` for the members of a group.
    pub name: String,
    /// Members of a group are scheduled in the same phase and their alerts are grouped.
    pub group: Option<String>,
    pub check: Arc<dyn Check>,
    /// The file that defines the check beyond its config entry (a Lua script), if any.
    pub source: Option<PathBuf>,
    /// A hash of whatever defines the check beyond its config entry (a script's text):
    /// a different version on reload means a changed check.
    pub version: u64,
    /// Defaults for the schedule that the definition carries.
    pub settings: Settings,
}

impl BuiltCheck {
    pub fn new(name: impl Into<String>, check: Arc<dyn Check>) -> Self {
        BuiltCheck {
            name: name.into(),
            group: None,
            check,
            source: None,
            version: 0,
            settings: Settings::default(),
        }
    }
}

/// What a factory built from one config entry.
#[derive(Default)]
pub struct Built {
    pub checks: Vec<BuiltCheck>,
    /// Problems that did not stop the build, e.g. a bad line in ips.txt that was skipped.
    pub warnings: Vec<ConfigError>,
    /// Files the entry read, which a reload should watch.
    pub files: Vec<PathBuf>,
    /// Definition files that failed to load (see [`BrokenFile`]).
    pub broken: Vec<BrokenFile>,
}

impl Built {
    /// What most entries build: one check, named after the entry.
    pub fn one(name: &str, check: impl Check) -> Built {
        Built {
            checks: vec![BuiltCheck::new(name, std::sync::Arc::new(check))],
            ..Built::default()
        }
    }
}

/// For plugin tests: builds the first check of a YAML entry (the plugin's own keys) as
/// `checks[0]`, and the context to run it with.
pub mod testing {
    use super::*;

    pub fn build_one(
        factory: &dyn CheckFactory,
        yaml: &str,
    ) -> Result<std::sync::Arc<dyn Check>, ConfigErrors> {
        let node = Node::parse(yaml).map_err(ConfigErrors::from)?;
        let ctx = BuildContext::new(".");
        let built = factory.build("t", &node, "checks[0]", &ctx)?;
        Ok(built.checks[0].check.clone())
    }

    /// A run context with a 2 s timeout.
    pub fn ctx() -> RunContext<'static> {
        RunContext {
            check: "t",
            timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// Where a config entry lives, for resolving relative paths and naming errors.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The directory of config.yaml: relative paths in the config are relative to it.
    pub config_dir: PathBuf,
    /// This server's name in alerts (`engine.hostname`).
    pub hostname: String,
    /// The `commands:` allow-list: a name to the program it runs.
    pub commands: Arc<BTreeMap<String, PathBuf>>,
}

impl BuildContext {
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        BuildContext {
            config_dir: config_dir.into(),
            hostname: "localhost".into(),
            commands: Arc::default(),
        }
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.config_dir.join(p)
        }
    }
}

/// Builds checks of one `type:`. The engine hands it the entry's own keys (the engine's
/// common keys such as `interval` are removed) as a node that keeps its positions.
pub trait CheckFactory: Send + Sync + 'static {
    /// The `type:` value, e.g. `tcp`.
    fn kind(&self) -> &'static str;

    /// One line for `vigia plugins` and error hints.
    fn summary(&self) -> &'static str;

    /// Parses and validates `params` (no network IO), then builds the check(s).
    /// `path` is the entry's path in the file (`checks[2]`), for error messages.
    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors>;
}
