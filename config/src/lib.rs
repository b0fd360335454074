//! `config.yaml`: reading, validating, and building the checks it describes.
//!
//! Three stages, each reporting every problem it finds at once:
//! 1. YAML syntax (one error: the parser stops there);
//! 2. each section and each check entry is deserialized on its own, so a type error in
//!    one entry does not hide the problems of the others;
//! 3. semantic rules (duplicate names, threshold 0, timeout longer than interval, ...),
//!    then each entry's plugin builds it.
//!
//! Every error names `file:line:col` and a path such as `checks[2].threshold`.
//!
//! [`diff`] compares two built configs for a reload: which checks were added, changed or
//! removed, which sections changed, and which changes wait for a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigia_api::fnv1a;
use vigia_api::yaml::{did_you_mean, join_path, unknown_with_hint};
use vigia_api::{
    BrokenFile, BuildContext, Check, CheckFactory, ConfigError, ConfigErrors, Dur, Node, Pos,
};

pub mod alerting;
pub mod cluster;
pub mod diff;
pub mod http;
pub mod remediation;

pub use vigia_core::alert::policy::CheckAlerting;
pub use vigia_core::remedy::CheckRemedy;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/vigia";

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Name of this server in alerts and logs (default: the system host name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Where the state store and the control socket live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often the whole status map is logged (default 60s).
    #[serde(default = "default_status_log_interval")]
    pub status_log_interval: Dur,
    /// At most this many checks run at the same moment (default 512).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_checks: usize,
    /// On SIGTERM, how long running checks may take to finish (default 10s).
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Threads that run checks (default 1: one handles tens of thousands of network
    /// checks per second; more only help checks that do heavy CPU work).
    #[serde(default = "default_workers")]
    pub worker_threads: usize,
    /// Lua check scripts: a script here that declares a `name` runs as a check of its
    /// own (default `checks`, relative to the config file).
    #[serde(default = "default_checks_dir")]
    pub checks_dir: PathBuf,
    /// Reload by itself when config.yaml, a file it names (ips.txt) or a script in
    /// `checks_dir` is saved (default true). SIGHUP always reloads.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Keep each check's result history in the store: runs per minute (24 h), hour
    /// (30 days) and day (400 days) and the last 100 changes of status, for uptime, the
    /// status page and `vigia history` (default true; a change waits for a restart).
    #[serde(default = "yes")]
    pub history: bool,
    /// Record every check run (check, time, outcome, value, message, duration) as JSON
    /// lines in this directory (default: off; relative to the config
    /// file; `vigia run --record DIR` too).
    #[serde(default)]
    pub record: Option<PathBuf>,
    /// The most the recording keeps: its oldest files go (default 256MiB).
    #[serde(default = "default_record_size")]
    pub record_size: vigia_api::Bytes,
}

fn default_record_size() -> vigia_api::Bytes {
    vigia_api::Bytes(256 << 20)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_status_log_interval() -> Dur {
    Dur::secs(60)
}
fn default_max_concurrent() -> usize {
    512
}
fn default_grace() -> Dur {
    Dur::secs(10)
}
fn default_workers() -> usize {
    1
}
fn default_checks_dir() -> PathBuf {
    PathBuf::from("checks")
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hostname: None,
            state_dir: default_state_dir(),
            status_log_interval: default_status_log_interval(),
            max_concurrent_checks: default_max_concurrent(),
            shutdown_grace: default_grace(),
            worker_threads: default_workers(),
            history: true,
            checks_dir: default_checks_dir(),
            watch: true,
            record: None,
            record_size: default_record_size(),
        }
    }
}

/// The keys every check entry has; the rest of the entry belongs to its plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonCheckConfig {
    /// Unique name: letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The plugin: tcp, http, ping, latency, terminals.
    #[serde(rename = "type")]
    pub kind: String,
    /// How often the check runs (default 30s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// A run that takes longer is a failure (default: 10s, or the interval if shorter).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Consecutive failures before the status flips to false (default 3).
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Consecutive successes before it flips back to true (default 1).
    #[serde(default = "default_recover_after")]
    pub recover_after: u32,
    /// Carried into every alert of this check: what it means and whom to call.
    #[serde(default)]
    pub comment: String,
    /// A disabled check is validated but not run (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The channels its alerts go to (default: every channel).
    #[serde(default)]
    pub notify: Option<Vec<String>>,
    /// A send window of its own, on top of the channel's.
    #[serde(default)]
    pub send_window: Option<String>,
    /// While it is down, remind this often (default: never).
    #[serde(default)]
    pub remind_every: Option<Dur>,
    /// While one of these checks is down, this check's failures are not sent.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Actions (from `actions:`) run when the check fails.
    #[serde(default)]
    pub on_failed: Vec<String>,
    /// Actions run when it recovers.
    #[serde(default)]
    pub on_recovered: Vec<String>,
    /// A Lua runbook (from `runbooks:`) run on both changes of status.
    #[serde(default)]
    pub runbook: Option<String>,
    /// In a cluster: run only on the replica whose config has it (default: true for
    /// process checks, the VRRP and csync2 scripts and checks with remediation; false,
    /// placed by the cluster, for the rest). Standalone engines ignore it.
    #[serde(default)]
    pub pinned: Option<bool>,
    /// Labels to select checks by in `vigia cluster start/stop --label k=v`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl CommonCheckConfig {
    /// Its remediation actions, if any.
    pub fn remedy(&self) -> Option<Arc<CheckRemedy>> {
        (!self.on_failed.is_empty() || !self.on_recovered.is_empty() || self.runbook.is_some())
            .then(|| {
                Arc::new(CheckRemedy {
                    on_failed: self.on_failed.clone(),
                    on_recovered: self.on_recovered.clone(),
                    runbook: self.runbook.clone(),
                })
            })
    }

    /// Its alert settings; `None` when they are all defaults (most checks).
    pub fn alerting(&self) -> Option<Arc<CheckAlerting>> {
        let a = CheckAlerting {
            notify: self
                .notify
                .as_ref()
                .map(|v| v.iter().map(|s| s.as_str().into()).collect()),
            window: self.send_window.clone(),
            remind_every: self.remind_every.map(Dur::get),
            depends_on: self.depends_on.iter().map(|s| s.as_str().into()).collect(),
        };
        (a != CheckAlerting::default()).then(|| Arc::new(a))
    }
}

/// The engine's keys of a check entry, in the order the README documents them.
pub const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "interval",
    "timeout",
    "threshold",
    "recover_after",
    "comment",
    "enabled",
    "notify",
    "send_window",
    "remind_every",
    "depends_on",
    "on_failed",
    "on_recovered",
    "runbook",
    "pinned",
    "labels",
];

fn default_interval() -> Dur {
    Dur::secs(30)
}
fn default_threshold() -> u32 {
    3
}
fn default_recover_after() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl CommonCheckConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .map(Dur::get)
            .unwrap_or_else(|| self.interval.get().min(Duration::from_secs(10)))
    }
}

/// One check entry: the engine's part, parsed, and the plugin's part, as a node.
#[derive(Debug, Clone)]
pub struct CheckEntry {
    pub common: CommonCheckConfig,
    pub params: Node,
    /// The fingerprint of the whole entry, to tell on reload whether it changed.
    pub fingerprint: u64,
    /// `checks[2]`
    pub path: String,
    /// Which schedule keys the entry sets itself; the others may come from the check's
    /// own definition (a Lua script's `interval = "10s"`).
    pub explicit: Explicit,
}

/// Which of the schedule keys a config entry sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit {
    pub interval: bool,
    pub timeout: bool,
    pub threshold: bool,
    pub recover_after: bool,
    pub comment: bool,
}

impl Explicit {
    fn of(entry: &Node) -> Explicit {
        let has = |k: &str| entry.get(k).is_some();
        Explicit {
            interval: has("interval"),
            timeout: has("timeout"),
            threshold: has("threshold"),
            recover_after: has("recover_after"),
            comment: has("comment"),
        }
    }
}

/// A parsed and validated config file. Plugins have not built anything yet.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub engine: EngineConfig,
    pub checks: Vec<CheckEntry>,
    /// The `commands:` allow-list: what scripts may run with `exec`.
    pub commands: Arc<BTreeMap<String, PathBuf>>,
    /// `channels:`, `windows:`, `alerting:`.
    pub alerting: crate::alerting::AlertingSetup,
    /// `remediation:` and `actions:`.
    pub remediation: crate::remediation::RemediationSetup,
    /// `http:`: the API, `/metrics` and the status page.
    pub http: crate::http::HttpConfig,
    /// `cluster:`; `None`: standalone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The file held no YAML at all (empty, or only comments and blanks): an editor
    /// that truncates before it writes shows this for a moment.
    pub blank: bool,
    root: Node,
}

const TOP_KEYS: &[&str] = &[
    "engine",
    "alerting",
    "windows",
    "channels",
    "remediation",
    "runbooks",
    "actions",
    "commands",
    "http",
    "cluster",
    "checks",
];

impl Config {
    /// In a cluster, this replica's id: `cluster.replica_id`, else the host name
    /// (`engine.hostname`, else the system's).
    pub fn replica_id(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        Some(
            c.replica_id
                .clone()
                .unwrap_or_else(|| self.engine.hostname.clone().unwrap_or_else(system_hostname)),
        )
    }

    /// Reads, parses and validates a config file, without building checks (for the
    /// engine section alone, as `vigia status` needs). Every problem found is returned.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let (config, errors) = Config::load_partial(file)?;
        errors.into_result(config)
    }

    /// Reads a config file and builds its checks: every problem of every stage is
    /// reported at once. Returns the config, its plan, and warnings.
    pub fn load_and_build(
        file: &Path,
        registry: &Registry,
    ) -> Result<(Config, Plan, Vec<ConfigError>), ConfigErrors> {
        let (config, mut errors) = Config::load_partial(file)?;
        for e in crate::remediation::validate_runbooks(&config.remediation, &|p| config.pos_of(p)) {
            errors.push(e.in_file(file));
        }
        let built = config.build(registry);
        match &built {
            Err(e) => errors.extend(e.clone()),
            // A script that does not load is a check failure for a running engine, and
            // `vigia validate` lists it; when the file has other problems too, they are
            // all reported together.
            Ok((plan, _)) if !errors.is_empty() => {
                for b in &plan.broken {
                    errors.push(ConfigError::new("", b.error.clone()));
                }
            }
            Ok(_) => {}
        }
        // Top to bottom, as the operator reads the file.
        errors
            .0
            .sort_by_key(|e| e.pos.map(|p| (p.line, p.col)).unwrap_or((usize::MAX, 0)));
        match built {
            Ok((plan, warnings)) => errors.into_result((config, plan, warnings)),
            Err(_) => Err(errors),
        }
    }

    fn load_partial(file: &Path) -> Result<(Config, ConfigErrors), ConfigErrors> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigErrors::from(ConfigError::new(
                "",
                format!("cannot read the config file: {e}"),
            ))
            .in_file(file)
        })?;
        let (config, errors) = Config::parse_partial(&text, file).map_err(|e| e.in_file(file))?;
        Ok((config, errors.in_file(file)))
    }

    /// Parses what can be parsed. `Err` only when nothing can (a YAML syntax error);
    /// otherwise the entries that parsed, and the problems of the others.
    pub fn parse_partial(text: &str, file: &Path) -> Result<(Config, ConfigErrors), ConfigErrors> {
        let (root, mut errors) = Node::parse_lenient(text)?;
        let top: &[(Node, Node)] = match &root.value {
            vigia_api::yaml::Value::Map(m) => m,
            vigia_api::yaml::Value::Null => &[],
            _ => {
                return Err(ConfigError::at(
                    root.pos,
                    "",
                    format!(
                        "the config must be a mapping with `engine:` and `checks:`, not {}",
                        root.kind()
                    ),
                )
                .into())
            }
        };
        for (k, _) in top {
            let key = k.as_str().unwrap_or_default();
            if !TOP_KEYS.contains(&key) {
                errors.push(ConfigError::at(
                    k.pos,
                    key,
                    unknown_with_hint("section", key, TOP_KEYS),
                ));
            }
        }
        let engine = match root.get("engine") {
            Some(n) if !matches!(n.value, vigia_api::yaml::Value::Null) => {
                match n.deserialize::<EngineConfig>("engine") {
                    Ok(e) => e,
                    Err(e) => {
                        errors.extend(e);
                        EngineConfig::default()
                    }
                }
            }
            _ => EngineConfig::default(),
        };
        let mut checks = Vec::with_capacity(
            root.get("checks")
                .and_then(Node::as_seq)
                .map_or(0, <[Node]>::len),
        );
        match root.get("checks").map(|n| (&n.value, n)) {
            None | Some((vigia_api::yaml::Value::Null, _)) => {}
            Some((vigia_api::yaml::Value::Seq(items), _)) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("checks[{i}]");
                    if item.as_map().is_none() {
                        errors.push(ConfigError::at(
                            item.pos,
                            &path,
                            format!(
                                "a check must be a mapping with `name:` and `type:`, not {}",
                                item.kind()
                            ),
                        ));
                        continue;
                    }
                    let (own, params) = item.split_keys(COMMON_KEYS);
                    match own.deserialize::<CommonCheckConfig>(&path) {
                        Ok(common) => checks.push(CheckEntry {
                            common,
                            params,
                            fingerprint: item.fingerprint(),
                            path,
                            explicit: Explicit::of(&own),
                        }),
                        Err(e) => errors.extend(e),
                    }
                }
            }
            Some((_, n)) => errors.push(ConfigError::at(
                n.pos,
                "checks",
                format!("`checks` must be a list, not {}", n.kind()),
            )),
        }
        let commands = match root.get("commands") {
            None => BTreeMap::new(),
            Some(n) => parse_commands(n, &mut errors),
        };
        let mut engine = engine;
        // Relative to the config file, like every other path in it.
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if engine.state_dir.is_relative() {
                engine.state_dir = dir.join(&engine.state_dir);
            }
            if let Some(r) = engine.record.as_mut().filter(|r| r.is_relative()) {
                *r = dir.join(&*r);
            }
            if engine.checks_dir.is_relative() {
                engine.checks_dir = dir.join(&engine.checks_dir);
            }
        }
        let config_dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let alerting = crate::alerting::parse(&root, &config_dir, &mut errors);
        let commands = Arc::new(commands);
        let remediation = crate::remediation::parse(&root, &config_dir, &commands, &mut errors);
        let http = crate::http::parse(&root, &config_dir, &mut errors);
        let cluster = crate::cluster::parse(&root, &config_dir, &mut errors);
        let config = Config {
            file: file.to_path_buf(),
            engine,
            checks,
            commands,
            alerting,
            remediation,
            http,
            cluster,
            blank: matches!(root.value, vigia_api::yaml::Value::Null),
            root,
        };
        errors.extend(config.semantic_errors());
        Ok((config, errors))
    }

    /// The position of a path in the file, for errors raised after parsing.
    pub fn pos_of(&self, path: &str) -> Pos {
        self.root.pos_of(path)
    }

    /// Gives an error without a position the position of its path.
    pub fn locate(&self, mut e: ConfigError) -> ConfigError {
        if e.pos.is_none() && e.file.is_none() {
            e.pos = Some(self.pos_of(&e.path));
        }
        e
    }

    fn semantic_errors(&self) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        let mut err = |path: String, msg: String| {
            errors.push(ConfigError::at(self.pos_of(&path), &path, msg));
        };
        let e = &self.engine;
        if e.worker_threads == 0 || e.worker_threads > 64 {
            err(
                "engine.worker_threads".into(),
                format!("{} is out of range (1-64)", e.worker_threads),
            );
        }
        if e.max_concurrent_checks == 0 {
            err(
                "engine.max_concurrent_checks".into(),
                "must be at least 1".into(),
            );
        }
        if e.status_log_interval.get() < Duration::from_secs(1) {
            err(
                "engine.status_log_interval".into(),
                "must be at least 1s".into(),
            );
        }
        if e.hostname.as_deref().is_some_and(|h| h.trim().is_empty()) {
            err(
                "engine.hostname".into(),
                "is empty: remove it to use the system host name".into(),
            );
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for c in &self.checks {
            let p = |k: &str| join_path(&c.path, k);
            let name = c.common.name.as_str();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
            {
                err(
                    p("name"),
                    format!(
                        "`{}` is not a valid check name: use letters, digits, `_`, `-` and `.`",
                        name.escape_debug()
                    ),
                );
            }
            if let Some(first) = seen.insert(name, &c.path) {
                err(
                    p("name"),
                    format!(
                        "duplicate check name `{}` (also used by {first})",
                        name.escape_debug()
                    ),
                );
            }
            if c.common.threshold == 0 {
                err(p("threshold"), "must be at least 1 (the number of consecutive failures before the check is down)".into());
            }
            if let Some(notify) = &c.common.notify {
                let names: Vec<&str> = self.alerting.declared.iter().map(String::as_str).collect();
                for (i, n) in notify.iter().enumerate() {
                    if !names.contains(&n.as_str()) {
                        err(
                            format!("{}[{i}]", p("notify")),
                            unknown_with_hint("channel", n, &names),
                        );
                    }
                }
            }
            if let Some(w) = &c.common.send_window {
                if !self.alerting.policy.windows.contains_key(w) {
                    let names: Vec<&str> = self
                        .alerting
                        .policy
                        .windows
                        .keys()
                        .map(String::as_str)
                        .collect();
                    err(p("send_window"), unknown_with_hint("window", w, &names));
                }
            }
            if let Some(r) = c.common.remind_every {
                if r.get() < Duration::from_secs(60) {
                    err(p("remind_every"), format!("{r} is too short (at least 1m)"));
                }
            }
            let remedy = c.common.remedy();
            if let Some(r) = &remedy {
                for e in crate::remediation::check_names(&self.remediation, r, &c.path, &|p| {
                    self.pos_of(p)
                }) {
                    err(e.path, e.message);
                }
            }
            if c.common.depends_on.contains(&c.common.name) {
                err(p("depends_on"), "a check cannot depend on itself".into());
            }
            if c.common.recover_after == 0 {
                err(p("recover_after"), "must be at least 1 (the number of consecutive successes before the check is up again)".into());
            }
            let interval = c.common.interval.get();
            if interval < Duration::from_millis(100) {
                err(
                    p("interval"),
                    format!("{} is too short (at least 100ms)", c.common.interval),
                );
            }
            if let Some(t) = c.common.timeout {
                if t.get().is_zero() {
                    err(p("timeout"), "must be longer than 0s".into());
                } else if t.get() > interval {
                    err(
                        p("timeout"),
                        format!(
                            "{t} is longer than the interval {}: a check must finish before its next run",
                            c.common.interval
                        ),
                    );
                }
            }
        }
        errors
    }

    /// Builds every enabled check through its plugin. Collects every error of every
    /// entry; returns the plan and the warnings (e.g. skipped lines of ips.txt).
    pub fn build(&self, registry: &Registry) -> Result<(Plan, Vec<ConfigError>), ConfigErrors> {
        self.build_from(registry, None)
    }

    /// Builds the plan again, entry by entry, from each entry's keys as compact text,
    /// once the file's YAML tree has been dropped. Why: checks built while the tree is
    /// alive are allocated among its nodes and, once it is freed, pin its pages (measured
    /// at 10 000 idle http checks: 2.9 KiB RSS per check; see BENCHMARKS.md). Built one
    /// entry at a time, each entry's temporaries are freed before the next, and the
    /// long-lived checks pack densely. Call it after `build` succeeded (its errors and
    /// warnings, with positions, come from that first build).
    pub fn rebuild_compact(mut self, registry: &Registry) -> Result<(Config, Plan), ConfigErrors> {
        let texts: Vec<String> = self.checks.iter().map(|e| e.params.to_flow()).collect();
        for e in &mut self.checks {
            e.params = Node::empty_map(e.params.pos);
        }
        self.root = Node::empty_map(Pos::default());
        trim_memory();
        let (plan, _) = self.build_from(registry, Some(&texts))?;
        Ok((self, plan))
    }

    fn build_from(
        &self,
        registry: &Registry,
        texts: Option<&[String]>,
    ) -> Result<(Plan, Vec<ConfigError>), ConfigErrors> {
        let mut ctx = BuildContext::new(
            self.file
                .parent()
                .map(Path::to_path_buf)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(".")),
        );
        ctx.hostname = self.engine.hostname.clone().unwrap_or_else(system_hostname);
        ctx.commands = self.commands.clone();
        let mut errors = ConfigErrors::default();
        let mut warnings = Vec::new();
        let mut checks = Vec::with_capacity(self.checks.len());
        let mut files = Vec::new();
        let mut broken = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
        for (name, program) in self.commands.iter() {
            if !program.exists() {
                let path = format!("commands.{name}");
                warnings.push(ConfigError::at(
                    self.pos_of(&path),
                    &path,
                    format!("{} does not exist on this machine: a script's exec{{command = \"{name}\"}} will fail", program.display()),
                ));
            }
        }
        if let Some(e) = crate::http::token_file_problem(&self.http) {
            errors.push(ConfigError::at(
                self.pos_of("http.token_file"),
                "http.token_file",
                e,
            ));
        }
        if let Some(w) = crate::http::token_file_warning(&self.http) {
            warnings.push(ConfigError::at(
                self.pos_of("http.token_file"),
                "http.token_file",
                w,
            ));
        }
        for (i, entry) in self.checks.iter().enumerate() {
            let Some(factory) = registry.get(&entry.common.kind) else {
                let path = join_path(&entry.path, "type");
                let kind = &entry.common.kind;
                let msg = match did_you_mean(kind, registry.kinds()) {
                    Some(best) => format!("unknown check type `{kind}` (did you mean `{best}`?)"),
                    None => format!(
                        "unknown check type `{kind}`; the types are: {}",
                        registry.kinds().collect::<Vec<_>>().join(", ")
                    ),
                };
                errors.push(ConfigError::at(self.pos_of(&path), &path, msg));
                continue;
            };
            let reparsed;
            let params = match texts.and_then(|t| t.get(i)) {
                Some(text) => match Node::parse(text) {
                    Ok(n) => {
                        reparsed = n;
                        &reparsed
                    }
                    Err(e) => {
                        errors.push(ConfigError::new(&entry.path, e.message));
                        continue;
                    }
                },
                None => &entry.params,
            };
            match factory.build(&entry.common.name, params, &entry.path, &ctx) {
                Ok(built) => {
                    warnings.extend(built.warnings);
                    files.extend(built.files);
                    if !entry.common.enabled {
                        continue;
                    }
                    for mut b in built.broken {
                        if !b.file.exists() {
                            // Say which line of the config names the missing file.
                            let path = join_path(&entry.path, "script");
                            b.error = format!(
                                "{}:{}: {path}: {}",
                                self.file.display(),
                                self.pos_of(&path),
                                b.error
                            );
                        }
                        broken.push(b);
                    }
                    for b in built.checks {
                        if !names.insert(b.name.clone()) {
                            if b.group.is_none() {
                                // Two entries with one name: reported by the semantic pass.
                                continue;
                            }
                            errors.push(ConfigError::at(
                                self.pos_of(&entry.path),
                                &entry.path,
                                format!("this entry makes a check named `{}`, which another check already uses", b.name),
                            ));
                            continue;
                        }
                        let target_hash = fnv1a(b.check.target());
                        let c = &entry.common;
                        let x = entry.explicit;
                        let s = &b.settings;
                        let interval = match (x.interval, s.interval) {
                            (false, Some(i)) => i,
                            _ => c.interval.get(),
                        };
                        let timeout = match (x.timeout, s.timeout) {
                            (false, Some(t)) => t,
                            (false, None) => interval.min(Duration::from_secs(10)),
                            (true, _) => c.timeout(),
                        };
                        let from_definition = (!x.interval && s.interval.is_some())
                            || (!x.timeout && s.timeout.is_some());
                        if from_definition && timeout > interval {
                            let path = join_path(&entry.path, "interval");
                            errors.push(ConfigError::at(
                                self.pos_of(&entry.path),
                                &path,
                                format!(
                                    "the timeout {} (from the entry or its script) is longer than the interval {}: set both in the entry",
                                    Dur(timeout),
                                    Dur(interval)
                                ),
                            ));
                            continue;
                        }
                        let pinned = c.pinned.unwrap_or_else(|| {
                            pinned_by_default(
                                factory.kind(),
                                b.source.as_deref(),
                                c.remedy().is_some(),
                            )
                        });
                        let planned = PlannedCheck {
                            name: b.name.into(),
                            group: b.group.map(Into::into),
                            kind: factory.kind(),
                            check: b.check,
                            interval,
                            timeout,
                            threshold: pick(x.threshold, c.threshold, s.threshold),
                            recover_after: pick(x.recover_after, c.recover_after, s.recover_after),
                            comment: pick(x.comment, c.comment.clone(), s.comment.clone())
                                .as_str()
                                .into(),
                            source: b.source.map(Into::into),
                            alerting: c.alerting(),
                            pinned,
                            labels: (!c.labels.is_empty()).then(|| Arc::new(c.labels.clone())),
                            remedy: c.remedy(),
                            // The target too: a terminal renamed in ips.txt (same
                            // address) is a changed check, not a kept one. And the
                            // version: a script whose text changed.
                            fingerprint: entry.fingerprint ^ target_hash ^ b.version,
                        };
                        checks.push(planned);
                    }
                }
                Err(es) => {
                    for e in es.0 {
                        errors.push(self.locate(hint_common_key(e)));
                    }
                }
            }
        }
        if let Some(lua) = &registry.lua {
            // Scripts that declare their own name, unless a config entry uses them.
            let used: HashSet<PathBuf> = checks
                .iter()
                .filter_map(|c| c.source.as_deref().map(Path::to_path_buf))
                .chain(broken.iter().map(|b: &BrokenFile| b.file.clone()))
                .collect();
            let found = lua.discover(&self.engine.checks_dir, &ctx, &used);
            files.extend(found.files);
            broken.extend(found.broken);
            for b in found.checks {
                let src = b.source.clone().unwrap_or_default();
                if !names.insert(b.name.clone()) {
                    broken.push(BrokenFile {
                        error: format!(
                            "{}: declares the check name `{}`, which config.yaml already uses",
                            vigia_lua::display_path(&src, &ctx.config_dir),
                            b.name
                        ),
                        file: src,
                    });
                    continue;
                }
                let s = &b.settings;
                let interval = s.interval.unwrap_or(default_interval().get());
                let timeout = s.timeout.unwrap_or(interval.min(Duration::from_secs(10)));
                if timeout > interval {
                    broken.push(BrokenFile {
                        error: format!(
                            "{}: the timeout {} is longer than the interval {}",
                            vigia_lua::display_path(&src, &ctx.config_dir),
                            Dur(timeout),
                            Dur(interval)
                        ),
                        file: src,
                    });
                    continue;
                }
                let schedule = format!("{:?}", b.settings);
                let pinned = pinned_by_default("lua", Some(&src), false);
                checks.push(PlannedCheck {
                    pinned,
                    fingerprint: b.version ^ fnv1a(&schedule) ^ fnv1a(b.check.target()),
                    name: b.name.into(),
                    group: None,
                    kind: "lua",
                    check: b.check,
                    interval,
                    timeout,
                    threshold: s.threshold.unwrap_or(default_threshold()),
                    recover_after: s.recover_after.unwrap_or(default_recover_after()),
                    comment: s.comment.clone().unwrap_or_default().into(),
                    source: Some(src.into()),
                    alerting: None,
                    remedy: None,
                    labels: None,
                });
            }
        }
        for entry in &self.checks {
            for (i, d) in entry.common.depends_on.iter().enumerate() {
                if !names.contains(d.as_str()) {
                    let path = format!("{}[{i}]", join_path(&entry.path, "depends_on"));
                    let all: Vec<&str> = names.iter().map(String::as_str).collect();
                    errors.push(ConfigError::at(
                        self.pos_of(&path),
                        &path,
                        unknown_with_hint("check", d, &all),
                    ));
                }
            }
        }
        let mut errors = errors.in_file(&self.file);
        if !errors.is_empty() {
            // The plan is refused: the scripts that did not load are part of the report
            // (their messages name their own file and line).
            for b in &broken {
                errors.push(ConfigError::new("", b.error.clone()));
            }
        }
        let warnings = warnings
            .into_iter()
            .map(|w| self.locate(w).in_file(&self.file))
            .collect();
        errors.into_result((
            Plan {
                checks,
                files,
                broken,
            },
            warnings,
        ))
    }
}

/// A typo of an engine key (`intervl`) is not among the plugin's keys, so the plugin's
/// "unknown key" error lists its own; point at the engine key instead.
fn hint_common_key(mut e: ConfigError) -> ConfigError {
    let key = e.path.rsplit('.').next().unwrap_or_default().to_string();
    if e.message.starts_with(&format!("unknown key `{key}`")) {
        if let Some(best) = did_you_mean(&key, COMMON_KEYS.iter().copied()) {
            e.message = format!("unknown key `{key}` (did you mean `{best}`?)");
        }
    }
    e
}

/// The plugins an engine knows, by `type:`.
pub struct Registry {
    factories: Vec<Arc<dyn CheckFactory>>,
    /// The Lua runtime, which also finds the named scripts of `engine.checks_dir`.
    lua: Option<Arc<vigia_lua::LuaFactory>>,
}

impl Registry {
    pub fn new(factories: Vec<Arc<dyn CheckFactory>>) -> Self {
        Registry {
            factories,
            lua: None,
        }
    }

    /// Every built-in plugin, and Lua scripts.
    pub fn builtin() -> Self {
        let lua = Arc::new(vigia_lua::LuaFactory::default());
        let mut factories = vigia_plugins::registry();
        factories.push(lua.clone());
        Registry {
            factories,
            lua: Some(lua),
        }
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn CheckFactory>> {
        self.factories.iter().find(|f| f.kind() == kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.iter().map(|f| f.kind())
    }

    pub fn factories(&self) -> &[Arc<dyn CheckFactory>] {
        &self.factories
    }
}

/// Whether a check stays on its own replica unless its entry says `pinned: false`:
/// what reads this machine (processes; the shipped VRRP and csync2 scripts) or acts
/// on it (remediation).
pub fn pinned_by_default(kind: &str, source: Option<&Path>, remedy: bool) -> bool {
    let script = source
        .and_then(Path::file_stem)
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    remedy || kind == "process" || script.starts_with("vrrp") || script.starts_with("csync2")
}

/// A check ready to schedule.
#[derive(Clone)]
pub struct PlannedCheck {
    pub name: Arc<str>,
    pub group: Option<Arc<str>>,
    /// Its `type:` (`tcp`, `lua`, ...).
    pub kind: &'static str,
    pub check: Arc<dyn Check>,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
    pub recover_after: u32,
    pub comment: Arc<str>,
    /// The script that defines it, if any: while that file fails to load, a reload
    /// keeps the running version.
    pub source: Option<Arc<Path>>,
    /// `notify`, `window`, `remind_every`, `depends_on`; `None`: all defaults.
    pub alerting: Option<Arc<CheckAlerting>>,
    /// `on_failed`, `on_recovered`.
    pub remedy: Option<Arc<CheckRemedy>>,
    /// In a cluster, whether it runs only here (see `CommonCheckConfig::pinned`).
    pub pinned: bool,
    /// `labels:`; `None` when it has none.
    pub labels: Option<Arc<BTreeMap<String, String>>>,
    /// The fingerprint of the config entry it came from: equal fingerprints mean an
    /// unchanged check on reload. (A hash, not the node: a node per check would cost
    /// kilobytes at 10 000 checks.)
    pub fingerprint: u64,
}

impl PlannedCheck {
    /// Whether a reload may keep the running check as it is.
    pub fn same_as(&self, other: &PlannedCheck) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// Everything a config builds.
#[derive(Clone, Default)]
pub struct Plan {
    pub checks: Vec<PlannedCheck>,
    /// Files the checks read (ips.txt, scripts), which a reload re-reads.
    pub files: Vec<PathBuf>,
    /// Scripts that failed to load: `vigia validate` reports them as errors; a running
    /// engine reports them once and keeps their last good version.
    pub broken: Vec<BrokenFile>,
}

impl Plan {
    /// The alert settings of the checks that have any, for the alert pipeline.
    pub fn alerting(&self) -> std::collections::HashMap<Arc<str>, Arc<CheckAlerting>> {
        self.checks
            .iter()
            .filter_map(|c| c.alerting.clone().map(|a| (c.name.clone(), a)))
            .collect()
    }
}

/// The config entry's value if it sets the key, else the definition's, else the default.
fn pick<T>(explicit: bool, entry: T, definition: Option<T>) -> T {
    match (explicit, definition) {
        (false, Some(d)) => d,
        _ => entry,
    }
}

/// `commands:` — a mapping of names to absolute program paths.
fn parse_commands(n: &Node, errors: &mut ConfigErrors) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let Some(map) = n.as_map() else {
        if !matches!(n.value, vigia_api::yaml::Value::Null) {
            errors.push(ConfigError::at(
                n.pos,
                "commands",
                format!(
                    "`commands` must map names to programs (csync2: /usr/sbin/csync2), not {}",
                    n.kind()
                ),
            ));
        }
        return out;
    };
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default().to_string();
        let path = format!("commands.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            errors.push(ConfigError::at(
                k.pos,
                &path,
                format!(
                    "`{name}` is not a valid command name: use letters, digits, `_`, `-` and `.`"
                ),
            ));
            continue;
        }
        match v.as_str() {
            Some(p) if Path::new(p).is_absolute() => {
                out.insert(name, PathBuf::from(p));
            }
            Some(p) => errors.push(ConfigError::at(
                v.pos,
                &path,
                format!("`{p}` must be an absolute path (no shell and no PATH lookup: /usr/sbin/csync2)"),
            )),
            None => errors.push(ConfigError::at(
                v.pos,
                &path,
                format!("must be a program's path, not {}", v.kind()),
            )),
        }
    }
    out
}

/// Gives the memory freed after parsing a big config back to the OS (glibc keeps it
/// otherwise, and a 10 000-check config's YAML tree is tens of MB at its peak).
pub fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The system host name, for `engine.hostname`'s default.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
