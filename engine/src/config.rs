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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigia_api::yaml::{did_you_mean, join_path, unknown_with_hint};
use vigia_api::{BuildContext, Check, CheckFactory, ConfigError, ConfigErrors, Dur, Node, Pos};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/vigia";

#[derive(Debug, Clone, Deserialize)]
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

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hostname: None,
            state_dir: default_state_dir(),
            status_log_interval: default_status_log_interval(),
            max_concurrent_checks: default_max_concurrent(),
            shutdown_grace: default_grace(),
            worker_threads: default_workers(),
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
}

/// A parsed and validated config file. Plugins have not built anything yet.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub engine: EngineConfig,
    pub checks: Vec<CheckEntry>,
    root: Node,
}

const TOP_KEYS: &[&str] = &["engine", "checks"];

impl Config {
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
        let built = config.build(registry);
        if let Err(e) = &built {
            errors.extend(e.clone());
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

    /// Parses config text; `file` locates relative paths and names errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let (config, errors) = Config::parse_partial(text, file)?;
        errors.into_result(config)
    }

    /// Parses what can be parsed. `Err` only when nothing can (a YAML syntax error);
    /// otherwise the entries that parsed, and the problems of the others.
    pub fn parse_partial(text: &str, file: &Path) -> Result<(Config, ConfigErrors), ConfigErrors> {
        let root = Node::parse(text)?;
        let mut errors = ConfigErrors::default();
        let top = match &root.value {
            vigia_api::yaml::Value::Map(m) => m.clone(),
            vigia_api::yaml::Value::Null => Vec::new(),
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
        for (k, _) in &top {
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
                        errors.push(e);
                        EngineConfig::default()
                    }
                }
            }
            _ => EngineConfig::default(),
        };
        let mut checks = Vec::new();
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
                        }),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Some((_, n)) => errors.push(ConfigError::at(
                n.pos,
                "checks",
                format!("`checks` must be a list, not {}", n.kind()),
            )),
        }
        let mut engine = engine;
        if engine.state_dir.is_relative() {
            // Relative to the config file, like every other path in it.
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                engine.state_dir = dir.join(&engine.state_dir);
            }
        }
        let config = Config {
            file: file.to_path_buf(),
            engine,
            checks,
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
                        "`{name}` is not a valid check name: use letters, digits, `_`, `-` and `.`"
                    ),
                );
            }
            if let Some(first) = seen.insert(name, &c.path) {
                err(
                    p("name"),
                    format!("duplicate check name `{name}` (also used by {first})"),
                );
            }
            if c.common.threshold == 0 {
                err(p("threshold"), "must be at least 1 (the number of consecutive failures before the check is down)".into());
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
        crate::engine::trim_memory();
        let (plan, _) = self.build_from(registry, Some(&texts))?;
        Ok((self, plan))
    }

    fn build_from(
        &self,
        registry: &Registry,
        texts: Option<&[String]>,
    ) -> Result<(Plan, Vec<ConfigError>), ConfigErrors> {
        let ctx = BuildContext {
            config_dir: self
                .file
                .parent()
                .map(Path::to_path_buf)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let mut errors = ConfigErrors::default();
        let mut warnings = Vec::new();
        let mut checks = Vec::new();
        let mut files = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
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
                        let target_hash = fnv1a(&b.check.target());
                        checks.push(PlannedCheck {
                            name: b.name.into(),
                            group: b.group.map(Into::into),
                            check: b.check,
                            interval: entry.common.interval.get(),
                            timeout: entry.common.timeout(),
                            threshold: entry.common.threshold,
                            recover_after: entry.common.recover_after,
                            comment: entry.common.comment.as_str().into(),
                            // The target too: a terminal renamed in ips.txt (same
                            // address) is a changed check, not a kept one.
                            fingerprint: entry.fingerprint ^ target_hash,
                        });
                    }
                }
                Err(es) => {
                    for e in es.0 {
                        errors.push(self.locate(hint_common_key(e)));
                    }
                }
            }
        }
        let errors = errors.in_file(&self.file);
        let warnings = warnings
            .into_iter()
            .map(|w| self.locate(w).in_file(&self.file))
            .collect();
        errors.into_result((Plan { checks, files }, warnings))
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
}

impl Registry {
    pub fn new(factories: Vec<Arc<dyn CheckFactory>>) -> Self {
        Registry { factories }
    }

    /// Every built-in plugin.
    pub fn builtin() -> Self {
        Registry::new(vigia_plugins::registry())
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

/// A check ready to schedule.
#[derive(Clone)]
pub struct PlannedCheck {
    pub name: Arc<str>,
    pub group: Option<Arc<str>>,
    pub check: Arc<dyn Check>,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
    pub recover_after: u32,
    pub comment: Arc<str>,
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
    /// Files the checks read (ips.txt), which a reload re-reads.
    pub files: Vec<PathBuf>,
}

/// FNV-1a of a string.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The system host name, for `engine.hostname`'s default.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
