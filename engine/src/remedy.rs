//! Remediation: named, allow-listed actions run on a change of status.
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
//! The recorder hands a transition whose check has actions for it to the [`Remediator`]
//! instead of to alerting; the remediator runs the actions (one run per check at a time,
//! within `cooldown` and `max_runs` per hour), logs each as an `action` event, and then
//! passes the transition on to alerting with the transcript, so the alert says what was
//! done. The transition is already in the alert inbox: if the engine dies meanwhile, the
//! alert still goes out at the next start (without a transcript; actions are not re-run).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use vigia_api::yaml::{join_path, unknown_with_hint, Value};
use vigia_api::{ConfigError, ConfigErrors, Dur, Node};

use crate::alert::pipeline::Input as AlertInput;
use crate::alert::policy::Item;
use crate::alert::AlertEvent;
use crate::scheduler::{unix_ms, Shared};
use crate::status::Transition;

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
}

/// A check's actions, or its runbook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckRemedy {
    pub on_failed: Vec<String>,
    pub on_recovered: Vec<String>,
    pub runbook: Option<String>,
}

impl CheckRemedy {
    /// Whether a transition has anything to run.
    pub fn has(&self, t: Transition) -> bool {
        self.runbook.is_some() || !self.for_transition(t).is_empty()
    }
}

impl CheckRemedy {
    pub fn for_transition(&self, t: Transition) -> &[String] {
        match t {
            Transition::Failed => &self.on_failed,
            Transition::Recovered => &self.on_recovered,
        }
    }
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
        shared: Default::default(),
    })
}

/// Parses `runbooks:`; each script is loaded once to report its problems.
fn parse_runbooks(
    root: &Node,
    config_dir: &Path,
    commands: &Arc<BTreeMap<String, PathBuf>>,
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
    let env = runbook_env("validate", commands.clone());
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default().to_string();
        let path = format!("runbooks.{name}");
        let r: RunbookSection = match v.deserialize(&path) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let file = if r.script.is_absolute() {
            r.script.clone()
        } else {
            config_dir.join(&r.script)
        };
        let display = vigia_lua::display_path(&file, config_dir);
        if let Err(e) = vigia_lua::runbook::read(&file, &display, env.clone()) {
            let p = join_path(&path, "script");
            errors.push(ConfigError::at(root.pos_of(&p), &p, e));
            continue;
        }
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
                    errors.push(e);
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
                    errors.push(e);
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
        runbooks: parse_runbooks(root, config_dir, commands, errors),
        commands: commands.clone(),
    }
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

/// What one action did.
#[derive(Debug, Clone)]
pub struct ActionResult {
    pub ok: bool,
    /// One line for the transcript: `✓ stop_db: /usr/bin/systemctl stop mariadb (exit 0, 0.3s)`.
    pub line: String,
}

fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// Runs one program; `(exit code, output tail, duration)`.
async fn run_argv(
    argv: &[String],
    action: &Action,
) -> Result<(Option<i32>, String, Duration), String> {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C")
        .envs(action.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &action.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let read_o = async {
            if let Some(p) = out.as_mut() {
                let _ = p.read_to_end(&mut o).await;
            }
        };
        let read_e = async {
            if let Some(p) = err.as_mut() {
                let _ = p.read_to_end(&mut e).await;
            }
        };
        let (_, _, status) = tokio::join!(read_o, read_e, child.wait());
        o.extend_from_slice(&e);
        (status, o)
    };
    match tokio::time::timeout(action.timeout, work).await {
        Ok((status, output)) => Ok((
            status.ok().and_then(|s| s.code()),
            tail(&output, 1000),
            start.elapsed(),
        )),
        Err(_) => Err(format!(
            "did not finish within {} and was killed",
            Dur(action.timeout)
        )),
    }
}

fn atomic_write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("vigia-tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Runs an action (or says what it would run). Every outcome is an `action` event.
pub async fn run_action(action: &Action, check: &str, dry_run: bool) -> ActionResult {
    let started = Instant::now();
    let describe = match &action.kind {
        ActionKind::Command(argv) => argv.join(" "),
        ActionKind::FileSwitch { file, to, .. } => {
            format!("switch {} to {}", file.display(), to.display())
        }
    };
    if dry_run || action.dry_run {
        tracing::info!(event = "action", action = %action.name, check = %check, dry_run = true, argv = %describe, "Dry run: would run {}: {describe}", action.name);
        return ActionResult {
            ok: true,
            line: format!("· {}: would run: {describe} (dry run)", action.name),
        };
    }
    let (ok, detail, code, output) = match &action.kind {
        ActionKind::Command(argv) => match run_argv(argv, action).await {
            Ok((code, out, _)) => (
                code == Some(0),
                format!(
                    "exit {}",
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| "signal".into())
                ),
                code,
                out,
            ),
            Err(e) => (false, e, None, String::new()),
        },
        ActionKind::FileSwitch {
            file,
            to,
            validate,
            reload,
        } => {
            let previous = std::fs::read(file).ok();
            let written = std::fs::read(to)
                .map_err(|e| format!("cannot read the variant {}: {e}", to.display()))
                .and_then(|new| {
                    atomic_write(file, &new)
                        .map_err(|e| format!("cannot write {}: {e}", file.display()))
                });
            if let Err(r) = written {
                return finish(
                    action,
                    check,
                    &describe,
                    false,
                    r,
                    None,
                    String::new(),
                    started,
                );
            }
            let restore = || match &previous {
                Some(b) => atomic_write(file, b),
                None => std::fs::remove_file(file),
            };
            let mut result = (true, "switched".to_string(), Some(0), String::new());
            for (step, argv) in [("validation", validate), ("reload", reload)] {
                let Some(argv) = argv else { continue };
                match run_argv(argv, action).await {
                    Ok((Some(0), _, _)) => {}
                    Ok((code, out, _)) => {
                        let restored = match restore() {
                            Ok(()) => "the previous file is back".to_string(),
                            Err(e) => format!("restoring the previous file failed too: {e}"),
                        };
                        result = (
                            false,
                            format!(
                                "{step} failed (`{}` exit {}); {restored}",
                                argv.join(" "),
                                code.map(|c| c.to_string())
                                    .unwrap_or_else(|| "signal".into())
                            ),
                            code,
                            out,
                        );
                        break;
                    }
                    Err(e) => {
                        let _ = restore();
                        result = (
                            false,
                            format!("{step} {e}; the previous file is back"),
                            None,
                            String::new(),
                        );
                        break;
                    }
                }
            }
            result
        }
    };
    finish(action, check, &describe, ok, detail, code, output, started)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    action: &Action,
    check: &str,
    describe: &str,
    ok: bool,
    detail: String,
    code: Option<i32>,
    output: String,
    started: Instant,
) -> ActionResult {
    let secs = started.elapsed().as_secs_f64();
    if ok {
        tracing::info!(event = "action", action = %action.name, check = %check, argv = %describe, exit_code = code, duration_ms = secs * 1000.0, output = %output, "Action {} for {check} done: {describe} ({detail}).", action.name);
    } else {
        tracing::error!(event = "action", action = %action.name, check = %check, argv = %describe, exit_code = code, duration_ms = secs * 1000.0, output = %output, "Action {} for {check} failed: {describe}: {detail}.", action.name);
    }
    let mark = if ok { "✓" } else { "✗" };
    ActionResult {
        ok,
        line: format!("{mark} {}: {describe} ({detail}, {secs:.1}s)", action.name),
    }
}

/// Runs remediation for transitions, then hands them to alerting.
pub struct Remediator {
    setup: Arc<RemediationSetup>,
    alerts: mpsc::Sender<AlertInput>,
    /// Run counts per check (actions) or per runbook (`runbook NAME`).
    state: Arc<Mutex<HashMap<String, CheckRuns>>>,
    /// One run of a runbook at a time: a second transition waits for the first run.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// The last text of each runbook that loaded: a broken edit does not stop remediation.
    texts: Mutex<HashMap<String, Vec<u8>>>,
    env: Arc<vigia_lua::HostEnv>,
    status: Weak<Shared>,
}

#[derive(Default)]
struct CheckRuns {
    running: bool,
    runs: VecDeque<u64>,
    suspended_said: bool,
}

pub struct Job {
    pub seq: u64,
    pub event: AlertEvent,
    pub remedy: Arc<CheckRemedy>,
}

/// What a runbook sees of the engine: its actions and the status map.
struct RunbookHost {
    setup: Arc<RemediationSetup>,
    check: String,
    status: Weak<Shared>,
    /// Actions started (dry runs included): a run that started none is not counted
    /// against cooldown and max_runs.
    acted: Arc<std::sync::atomic::AtomicU32>,
}

impl vigia_lua::runbook::RunbookHost for RunbookHost {
    fn action(&self, name: &str) -> BoxFuture<'static, Result<(bool, String), String>> {
        let Some(action) = self.setup.actions.get(name).cloned() else {
            let names: Vec<&str> = self.setup.actions.keys().map(String::as_str).collect();
            let msg = format!("action: {}", unknown_with_hint("action", name, &names));
            return Box::pin(async move { Err(msg) });
        };
        self.acted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (check, dry_run) = (self.check.clone(), self.setup.dry_run);
        Box::pin(async move {
            let r = run_action(&action, &check, dry_run).await;
            Ok((r.ok, r.line))
        })
    }

    fn status(&self, check: &str) -> Result<vigia_lua::runbook::CheckView, String> {
        let Some(shared) = self.status.upgrade() else {
            return Err("status: the engine is stopping".into());
        };
        let found = shared
            .status
            .get(check)
            .map(|st| vigia_lua::runbook::CheckView {
                status: st.status,
                failures: st.failures,
                successes: st.successes,
                message: st
                    .last
                    .as_ref()
                    .map(|l| l.message.clone())
                    .unwrap_or_else(|| "not run yet".into()),
            });
        match found {
            Some(v) => Ok(v),
            None => {
                let names: Vec<String> =
                    shared.status.iter().map(|e| e.key().to_string()).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                Err(format!(
                    "status: {}",
                    unknown_with_hint("check", check, &names)
                ))
            }
        }
    }
}

impl Remediator {
    pub fn spawn(
        setup: RemediationSetup,
        hostname: &str,
        alerts: mpsc::Sender<AlertInput>,
        status: Weak<Shared>,
    ) -> (mpsc::Sender<Job>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        let env = runbook_env(hostname, setup.commands.clone());
        let mut texts = HashMap::new();
        for rb in setup.runbooks.values() {
            if let Ok(t) = std::fs::read(&rb.file) {
                texts.insert(rb.name.clone(), t);
            }
        }
        let r = Arc::new(Remediator {
            locks: setup
                .runbooks
                .keys()
                .map(|k| (k.clone(), Default::default()))
                .collect(),
            setup: Arc::new(setup),
            alerts,
            state: Default::default(),
            texts: Mutex::new(texts),
            env,
            status,
        });
        let handle = tokio::spawn(async move {
            let mut running = Vec::new();
            while let Some(job) = rx.recv().await {
                let r = r.clone();
                running.push(tokio::spawn(async move { r.handle(job).await }));
                running.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
            }
            for h in running {
                let _ = h.await;
            }
        });
        (tx, handle)
    }

    /// Whether a run may start now: `Err` says why not. `key` is the check (actions)
    /// or `runbook NAME`.
    fn admit(&self, key: &str, transition: Transition, wait_running: bool) -> Result<(), String> {
        let now = unix_ms();
        let hour = 3_600_000;
        let cooldown = self.setup.cooldown.as_millis() as u64;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let runs = st.entry(key.to_string()).or_default();
        runs.runs.retain(|t| now.saturating_sub(*t) < hour);
        if runs.running && !wait_running {
            Err("a remediation of this check is still running; this one is skipped".to_string())
        } else if runs.runs.len() as u32 >= self.setup.max_runs {
            let first = !runs.suspended_said;
            runs.suspended_said = true;
            Err(format!(
                "remediation suspended: it already ran {} times in the last hour (max_runs){}",
                runs.runs.len(),
                if first { "" } else { " (said before)" }
            ))
        } else if runs
            .runs
            .back()
            .is_some_and(|t| now.saturating_sub(*t) < cooldown)
            && transition == Transition::Failed
        {
            Err(format!(
                "remediation skipped: the last run was less than {} ago (cooldown)",
                Dur(self.setup.cooldown)
            ))
        } else {
            runs.running = true;
            runs.suspended_said = false;
            Ok(())
        }
    }

    /// Ends a run; `counted`: whether it goes against cooldown and max_runs.
    fn done(&self, key: &str, started: u64, counted: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let runs = st.entry(key.to_string()).or_default();
        runs.running = false;
        if counted {
            runs.runs.push_back(started);
        }
    }

    async fn handle(&self, job: Job) {
        let check = job.event.check.to_string();
        let transition = job.event.transition;
        let transcript = match &job.remedy.runbook {
            Some(name) => self.run_runbook(name, &job.event).await,
            None => {
                let actions = job.remedy.for_transition(transition);
                match self.admit(&check, transition, false) {
                    Err(why) => {
                        tracing::warn!(event = "remediation_skipped", check = %check, "{check}: {why}.");
                        why
                    }
                    Ok(()) => {
                        let started = unix_ms();
                        let mut lines = Vec::new();
                        for name in actions {
                            let Some(action) = self.setup.actions.get(name) else {
                                continue;
                            };
                            let r = run_action(action, &check, self.setup.dry_run).await;
                            let failed = !r.ok;
                            lines.push(r.line);
                            if failed {
                                lines.push("the remaining actions were not run".into());
                                break;
                            }
                        }
                        self.done(&check, started, true);
                        lines.join("\n")
                    }
                }
            }
        };
        let mut event = job.event;
        event.transcript = Some(transcript);
        let _ = self
            .alerts
            .send(AlertInput::Item(job.seq, Item::Transition(event)))
            .await;
    }

    /// Runs a runbook for a transition (after any run of it still under way); the
    /// transcript for the alert.
    async fn run_runbook(&self, name: &str, event: &AlertEvent) -> String {
        let check = event.check.to_string();
        let Some(rb) = self.setup.runbooks.get(name).cloned() else {
            return format!("✗ runbook {name} is not declared");
        };
        let key = format!("runbook {name}");
        let lock = self.locks.get(name).cloned().unwrap_or_default();
        let guard = match lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                tracing::info!(event = "runbook_waiting", runbook = %name, check = %check, "Runbook {name} is already running; its {} run for {check} waits for it to finish.", event.transition.as_str());
                lock.lock_owned().await
            }
        };
        if let Err(why) = self.admit(&key, event.transition, true) {
            tracing::warn!(event = "remediation_skipped", check = %check, runbook = %name, "{check}: runbook {name}: {why}.");
            drop(guard);
            return why;
        }
        let started = unix_ms();
        // The file as it is now; if it no longer loads, the last version that did.
        let env = self.env.clone();
        let mut lines = Vec::new();
        let now = std::fs::read(&rb.file)
            .map_err(|e| format!("{}: cannot read the runbook: {e}", rb.display))
            .and_then(|text| {
                vigia_lua::runbook::prepare(&text, &rb.display, env.clone()).map(|p| (text, p))
            });
        let prepared = match now {
            Ok((text, prepared)) => {
                self.texts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), text);
                Ok(prepared)
            }
            Err(e) => {
                tracing::error!(event = "script_error", runbook = %name, script = %rb.display, "{e}; running the last version that loaded.");
                lines.push(format!("· {e}; ran the last version that loaded"));
                let last = self
                    .texts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(name)
                    .cloned()
                    .unwrap_or_default();
                vigia_lua::runbook::prepare(&last, &rb.display, env)
            }
        };
        let acted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let host = Arc::new(RunbookHost {
            setup: self.setup.clone(),
            check: check.clone(),
            status: self.status.clone(),
            acted: acted.clone(),
        });
        tracing::info!(event = "runbook", runbook = %name, check = %check, transition = event.transition.as_str(), dry_run = self.setup.dry_run, "Runbook {name}: on_{} for {check}.", event.transition.as_str());
        let call = vigia_lua::runbook::Call {
            transition: event.transition.as_str().to_string(),
            check: check.clone(),
            message: event.message.clone(),
            params: rb.params.clone(),
            dry_run: self.setup.dry_run,
            timeout: rb.timeout,
        };
        let out = match prepared {
            Ok(prepared) => vigia_lua::runbook::run(prepared, &rb.display, host, call).await,
            Err(e) => vigia_lua::runbook::Outcome {
                ok: false,
                transcript: vec![format!("✗ runbook {}: {e}", rb.display)],
            },
        };
        let last = out.transcript.last().cloned().unwrap_or_default();
        if out.ok {
            tracing::info!(event = "runbook_done", runbook = %name, check = %check, transition = event.transition.as_str(), ok = true, "Runbook {name} for {check}: {last}");
        } else {
            tracing::error!(event = "runbook_done", runbook = %name, check = %check, transition = event.transition.as_str(), ok = false, "Runbook {name} for {check}: {last}");
        }
        let acted = acted.load(std::sync::atomic::Ordering::Relaxed);
        self.done(&key, started, acted > 0);
        drop(guard);
        lines.extend(out.transcript);
        lines.join("\n")
    }
}
