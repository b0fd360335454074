//! `remediation:`, `actions:` and `runbooks:`: named, allow-listed actions run on a change
//! of status, and Lua runbooks.
//!
//! ```yaml
//! remediation: { dry_run: false, cooldown: 10m, max_runs: 3 }   # max_runs per hour
//! actions:
//!   proxy_off:
//!     file_switch: { file: /etc/nginx/conf.d/galera.conf, to: /etc/vigia/galera-off.conf,
//!                    validate: [/usr/sbin/nginx, -t], reload: [/usr/sbin/nginx, -s, reload] }
//!   stop_db:
//!     command: [/usr/bin/systemctl, stop, mariadb]
//!     timeout: 60s
//! checks:
//!   - name: web
//!     on_failed: [proxy_off, stop_db]
//!     on_recovered: [...]
//! ```
//!
//! Parsing reads no script: runbooks are loaded (Lua runs their top level) only by
//! [`validate_runbooks`], which `Config::load_and_build` calls, so `vigia status` and
//! `vigia silence` never run Lua to find `state_dir`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigia_api::yaml::{join_path, unknown_with_hint, Value};
use vigia_api::{ConfigError, ConfigErrors, Dur, Node};
pub use vigia_core::remedy::CheckRemedy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemediationSection {
    /// Log and alert "would run: …" and run nothing (default false).
    #[serde(default)]
    dry_run: bool,
    /// After a run, no new run for the same check within this (default 10m).
    #[serde(default = "default_cooldown")]
    cooldown: Dur,
    /// At most this many runs per check per hour (default 3); then remediation of that
    /// check is suspended, and one alert says so.
    #[serde(default = "default_max_runs")]
    max_runs: u32,
}

fn default_cooldown() -> Dur {
    Dur::secs(600)
}
fn default_max_runs() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSection {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    file_switch: Option<FileSwitchSection>,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunbookSection {
    /// The Lua runbook, relative to config.yaml: `runbooks/galera_far_node.lua`.
    script: PathBuf,
    /// Values for `rb.params`, laid over the script's own `params`.
    #[serde(default)]
    params: Option<serde_json::Value>,
    /// The whole run, waits included (default: the script's `timeout`, else 10m).
    #[serde(default)]
    timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSwitchSection {
    /// The file to replace.
    file: PathBuf,
    /// The variant that replaces it.
    to: PathBuf,
    /// A command that must accept the new file (`[/usr/sbin/nginx, -t]`).
    #[serde(default)]
    validate: Option<Vec<String>>,
    /// A command that makes the service read it (`[/usr/sbin/nginx, -s, reload]`).
    #[serde(default)]
    reload: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    Command(Vec<String>),
    FileSwitch {
        file: PathBuf,
        to: PathBuf,
        validate: Option<Vec<String>>,
        reload: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub kind: ActionKind,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub dry_run: bool,
}

/// A Lua runbook of `runbooks:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Runbook {
    pub name: String,
    pub file: PathBuf,
    /// The path as operators see it (`runbooks/galera_far_node.lua`).
    pub display: String,
    pub params: Option<serde_json::Value>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemediationSetup {
    pub dry_run: bool,
    pub cooldown: Duration,
    pub max_runs: u32,
    pub actions: HashMap<String, Arc<Action>>,
    pub runbooks: HashMap<String, Arc<Runbook>>,
    /// For runbooks' `exec`: the `commands:` allow-list; and the host name.
    pub commands: Arc<BTreeMap<String, PathBuf>>,
    /// Of the four sections' text, to tell whether a reload changed them.
    pub fingerprint: u64,
}

fn argv_problem(argv: &[String]) -> Option<String> {
    match argv.first() {
        None => Some(
            "is empty: give the program and its arguments, `[/usr/bin/systemctl, stop, mariadb]`"
                .into(),
        ),
        Some(p) if !Path::new(p).is_absolute() => Some(format!(
            "`{p}` must be an absolute path (no shell and no PATH lookup)"
        )),
        _ => None,
    }
}

/// A Lua host environment for runbooks (and for validating them).
pub fn runbook_env(
    hostname: &str,
    commands: Arc<BTreeMap<String, PathBuf>>,
) -> Arc<vigia_lua::HostEnv> {
    Arc::new(vigia_lua::HostEnv {
        hostname: hostname.to_string(),
        commands,
        clients: Default::default(),
    })
}

/// Parses `runbooks:` (without loading the scripts: see [`validate_runbooks`]).
fn parse_runbooks(
    root: &Node,
    config_dir: &Path,
    errors: &mut ConfigErrors,
) -> HashMap<String, Arc<Runbook>> {
    let mut out = HashMap::new();
    let Some(n) = root.get("runbooks") else {
        return out;
    };
    let Some(map) = n.as_map() else {
        if !matches!(n.value, Value::Null) {
            errors.push(ConfigError::at(
                n.pos,
                "runbooks",
                format!(
                    "`runbooks` must map names to {{script: FILE}}, not {}",
                    n.kind()
                ),
            ));
        }
        return out;
    };
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default().to_string();
        let path = format!("runbooks.{name}");
        let r: RunbookSection = match v.deserialize(&path) {
            Ok(r) => r,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let file = if r.script.is_absolute() {
            r.script.clone()
        } else {
            config_dir.join(&r.script)
        };
        let display = vigia_lua::display_path(&file, config_dir);
        if let Some(p) = &r.params {
            if !p.is_object() {
                let p = join_path(&path, "params");
                errors.push(ConfigError::at(
                    root.pos_of(&p),
                    &p,
                    "`params` must be a mapping (`{node: node3}`)".to_string(),
                ));
                continue;
            }
        }
        out.insert(
            name.clone(),
            Arc::new(Runbook {
                name,
                file,
                display,
                params: r.params,
                timeout: r.timeout.map(Dur::get),
            }),
        );
    }
    out
}

/// Parses `remediation:`, `actions:` and `runbooks:`.
pub fn parse(
    root: &Node,
    config_dir: &Path,
    commands: &Arc<BTreeMap<String, PathBuf>>,
    errors: &mut ConfigErrors,
) -> RemediationSetup {
    let section = match root.get("remediation") {
        Some(n) if !matches!(n.value, Value::Null) => {
            match n.deserialize::<RemediationSection>("remediation") {
                Ok(s) => s,
                Err(e) => {
                    errors.extend(e);
                    RemediationSection {
                        dry_run: false,
                        cooldown: default_cooldown(),
                        max_runs: default_max_runs(),
                    }
                }
            }
        }
        _ => RemediationSection {
            dry_run: false,
            cooldown: default_cooldown(),
            max_runs: default_max_runs(),
        },
    };
    let mut actions = HashMap::new();
    if let Some(map) = root.get("actions").and_then(|n| n.as_map()) {
        for (k, v) in map {
            let name = k.as_str().unwrap_or_default().to_string();
            let path = format!("actions.{name}");
            let a: ActionSection = match v.deserialize(&path) {
                Ok(a) => a,
                Err(e) => {
                    errors.extend(e);
                    continue;
                }
            };
            let mut err = |key: &str, msg: String| {
                let p = if key.is_empty() {
                    path.clone()
                } else {
                    join_path(&path, key)
                };
                errors.push(ConfigError::at(root.pos_of(&p), &p, msg));
            };
            let abs = |p: &PathBuf| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    config_dir.join(p)
                }
            };
            let kind = match (a.command, a.file_switch) {
                (Some(argv), None) => {
                    if let Some(p) = argv_problem(&argv) {
                        err("command", p);
                        continue;
                    }
                    ActionKind::Command(argv)
                }
                (None, Some(fs)) => {
                    for (key, argv) in [
                        ("file_switch.validate", &fs.validate),
                        ("file_switch.reload", &fs.reload),
                    ] {
                        if let Some(p) = argv.as_ref().and_then(|a| argv_problem(a)) {
                            err(key, p);
                        }
                    }
                    ActionKind::FileSwitch {
                        file: abs(&fs.file),
                        to: abs(&fs.to),
                        validate: fs.validate,
                        reload: fs.reload,
                    }
                }
                (Some(_), Some(_)) => {
                    err(
                        "",
                        "an action is a `command` or a `file_switch`, not both".into(),
                    );
                    continue;
                }
                (None, None) => {
                    err("", "an action needs `command: [program, args...]` or `file_switch: {file, to, validate, reload}`".into());
                    continue;
                }
            };
            actions.insert(
                name.clone(),
                Arc::new(Action {
                    name,
                    kind,
                    timeout: a.timeout.map(Dur::get).unwrap_or(Duration::from_secs(60)),
                    env: a.env.into_iter().collect(),
                    cwd: a.cwd,
                    dry_run: a.dry_run,
                }),
            );
        }
    } else if let Some(n) = root.get("actions") {
        if !matches!(n.value, Value::Null) {
            errors.push(ConfigError::at(
                n.pos,
                "actions",
                format!("`actions` must map names to actions, not {}", n.kind()),
            ));
        }
    }
    RemediationSetup {
        dry_run: section.dry_run,
        cooldown: section.cooldown.get(),
        max_runs: section.max_runs,
        actions,
        runbooks: parse_runbooks(root, config_dir, errors),
        commands: commands.clone(),
        fingerprint: ["remediation", "actions", "runbooks", "commands"]
            .iter()
            .filter_map(|k| root.get(k))
            .fold(0u64, |h, n| h.rotate_left(7) ^ n.fingerprint()),
    }
}

/// Loads every runbook once (its top level runs in the sandbox) and reports the ones
/// that do not load, at their `script:` key. Runbooks that do not load are taken out of
/// the setup: a check that names one is then reported by the semantic pass.
pub fn validate_runbooks(
    setup: &RemediationSetup,
    pos_of: &dyn Fn(&str) -> vigia_api::Pos,
) -> Vec<ConfigError> {
    let env = runbook_env("validate", setup.commands.clone());
    let mut names: Vec<&String> = setup.runbooks.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let rb = &setup.runbooks[name];
        if let Err(e) = vigia_lua::runbook::read(&rb.file, &rb.display, env.clone()) {
            let p = format!("runbooks.{name}.script");
            out.push(ConfigError::at(pos_of(&p), &p, e));
        }
    }
    out
}

/// Checks a check's `on_failed`/`on_recovered` against the actions.
pub fn check_names(
    setup: &RemediationSetup,
    remedy: &CheckRemedy,
    path: &str,
    pos_of: &dyn Fn(&str) -> vigia_api::Pos,
) -> Vec<ConfigError> {
    let names: Vec<&str> = setup.actions.keys().map(String::as_str).collect();
    let mut out = Vec::new();
    if let Some(rb) = &remedy.runbook {
        let p = join_path(path, "runbook");
        if !remedy.on_failed.is_empty() || !remedy.on_recovered.is_empty() {
            out.push(ConfigError::at(
                pos_of(&p),
                &p,
                "a check has a `runbook` or `on_failed`/`on_recovered` actions, not both: call the actions from the runbook with action(\"name\")".to_string(),
            ));
        }
        if !setup.runbooks.contains_key(rb) {
            let known: Vec<&str> = setup.runbooks.keys().map(String::as_str).collect();
            let msg = if known.is_empty() {
                format!("there is no runbook `{rb}`: declare it under `runbooks:` ({rb}: {{script: runbooks/{rb}.lua}})")
            } else {
                unknown_with_hint("runbook", rb, &known)
            };
            out.push(ConfigError::at(pos_of(&p), &p, msg));
        }
    }
    for (key, list) in [
        ("on_failed", &remedy.on_failed),
        ("on_recovered", &remedy.on_recovered),
    ] {
        for (i, a) in list.iter().enumerate() {
            if !setup.actions.contains_key(a) {
                let p = format!("{}[{i}]", join_path(path, key));
                out.push(ConfigError::at(
                    pos_of(&p),
                    &p,
                    unknown_with_hint("action", a, &names),
                ));
            }
        }
    }
    out
}
