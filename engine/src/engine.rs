//! `vigia run`: wires config, store, scheduler, recorder, alerting and the control
//! socket together, and handles signals.
//!
//! Data flow: check task → (status map) → [`Update`] → recorder → redb commit →
//! [`AlertEvent`] → alert pipeline → JSON log + console. A transition reaches alerting
//! only once it is durable: after `kill -9` the engine restarts with the same statuses
//! and sends no second `failed`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::alert::pipeline::{self as alert_pipeline, Input as AlertInput};
use crate::alert::policy::Item;
use crate::alert::{self, AlertEvent, Console};
use crate::config::{system_hostname, Config, EngineConfig, Plan, Registry};
use crate::control::{self, ControlState};
use crate::scheduler::{unix_ms, Scheduler, Shared, Update};
use crate::status::CheckState;
use crate::store::{Op, Store, StoreUpdate};
use crate::systemd;

/// How `vigia run` was asked to run.
pub struct RunOptions {
    pub config: PathBuf,
    /// Print alerts on stderr (the console channel).
    pub console: bool,
}

/// Gives the memory freed after parsing a big config back to the OS (glibc keeps it
/// otherwise, and a 10 000-check config's YAML tree is tens of MB at its peak).
pub(crate) fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads and builds a config, logging its warnings. The error is every problem found.
pub fn load_plan(path: &Path, registry: &Registry) -> Result<(Config, Plan), String> {
    let (config, plan, warnings) =
        Config::load_and_build(path, registry).map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!(event = "config_warning", "{w}");
    }
    Ok((config, plan))
}

/// `load_plan` for a long-running engine: once valid, the plan is built again compactly,
/// without the file's tree (memory; see `Config::rebuild_compact`). A one-shot command
/// such as `vigia check` has no use for that second build.
fn load_plan_to_run(path: &Path, registry: &Registry) -> Result<(Config, Plan), String> {
    let (config, plan) = load_plan(path, registry)?;
    drop(plan);
    config.rebuild_compact(registry).map_err(|e| e.to_string())
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let registry = Registry::builtin();
    let (config, plan) = load_plan_to_run(&opts.config, &registry)
        .map_err(|e| anyhow::anyhow!("the config has problems, nothing was started:\n{e}"))?;
    let host: Arc<str> = config
        .engine
        .hostname
        .clone()
        .unwrap_or_else(system_hostname)
        .into();
    let state_dir = config.engine.state_dir.clone();
    let store = Arc::new(Store::open(&state_dir)?);
    let persisted = store.load_checks()?;

    let (updates_tx, updates_rx) = mpsc::channel::<Update>(16 * 1024);
    let shared = Shared::new(config.engine.max_concurrent_checks, updates_tx);
    restore(&shared, &store, &plan, persisted).await;

    let console = opts.console.then(Console::stderr);
    let alerting = alert_pipeline::start(
        &config.alerting,
        host.clone(),
        store.clone(),
        shared.clone(),
        console.clone(),
    )
    .map_err(|e| anyhow::anyhow!("alerting cannot start: {e}"))?;
    let _ = alerting.tx.send(AlertInput::Checks(plan.alerting())).await;
    let (remedy_tx, remediator) = crate::remedy::Remediator::spawn(
        config.remediation.clone(),
        &host,
        alerting.tx.clone(),
        Arc::downgrade(&shared),
    );
    let recorder = tokio::spawn(recorder(
        updates_rx,
        store.clone(),
        alerting.tx.clone(),
        remedy_tx,
        host.clone(),
        shared.clone(),
    ));

    let control_state = Arc::new(ControlState {
        host: host.to_string(),
        started_at: unix_ms(),
        config: opts.config.clone(),
        shared: shared.clone(),
        checks: Default::default(),
        alerts: alerting.status.clone(),
        alert_tx: alerting.tx.clone(),
    });
    let socket_path = state_dir.join(control::SOCKET_FILE);
    let control = control::serve(&socket_path, control_state.clone())
        .with_context(|| format!("cannot open the control socket {}", socket_path.display()))?;

    let mut scheduler = Scheduler::new(shared.clone());
    scheduler.apply(&plan);
    refresh_views(&control_state, &scheduler);
    let mut script_errors = ScriptErrors::new(host.clone(), alerting.tx.clone(), store.clone());
    script_errors.report(&plan, &scheduler, &config).await;
    let mut watcher = config
        .engine
        .watch
        .then(|| Watch::start(&opts.config, &config, &plan));
    let n_checks = plan.checks.len();
    // Only the engine section is needed from here on: the YAML tree and the plan go.
    let mut running = Running {
        engine: config.engine.clone(),
        alerting: config.alerting.fingerprint,
        remediation: config.remediation.clone(),
    };
    drop(config);
    drop(plan);
    trim_memory();
    tracing::info!(
        event = "started",
        host = %host,
        checks = n_checks,
        state_dir = %state_dir.display(),
        config = %opts.config.display(),
        "Vigia {} started: {} checks scheduled.",
        env!("CARGO_PKG_VERSION"),
        n_checks
    );
    systemd::notify("READY=1");
    let status_logger = tokio::spawn(status_ticker(
        shared.clone(),
        host.clone(),
        running.engine.status_log_interval.get(),
    ));
    let watchdog = systemd::watchdog_period().map(|period| {
        tokio::spawn(async move {
            loop {
                systemd::notify("WATCHDOG=1");
                tokio::time::sleep(period).await;
            }
        })
    });

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = loop {
        let changed = async {
            match watcher.as_mut() {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup.recv() => {
                systemd::notify("RELOADING=1");
                tracing::info!(event = "reload", "SIGHUP received: reloading {}.", opts.config.display());
                if let Some((engine, new_watch)) = reload(&opts.config, &registry, &running, &mut scheduler, &store, &control_state, &mut script_errors).await {
                    running.engine = engine;
                    if let Some(w) = watcher.as_mut() { w.rewatch(new_watch); }
                }
                systemd::notify("READY=1");
            }
            files = changed => {
                systemd::notify("RELOADING=1");
                tracing::info!(event = "reload", files = %files.join(", "), "Files changed ({}): reloading.", files.join(", "));
                if let Some((engine, new_watch)) = reload(&opts.config, &registry, &running, &mut scheduler, &store, &control_state, &mut script_errors).await {
                    running.engine = engine;
                    if let Some(w) = watcher.as_mut() { w.rewatch(new_watch); }
                }
                systemd::notify("READY=1");
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };

    systemd::notify("STOPPING=1");
    let grace = running.engine.shutdown_grace.get();
    tracing::info!(
        event = "stopping",
        signal = why,
        "Stopping on {why}: no new check runs; waiting up to {} for running ones.",
        vigia_api::Dur(grace)
    );
    let aborted = scheduler.shutdown(grace).await;
    if aborted > 0 {
        tracing::warn!(
            event = "stopping",
            aborted,
            "{aborted} checks did not finish within the grace period and were cancelled."
        );
    }
    drop(scheduler);
    control.abort();
    status_logger.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    // The recorder ends once every sender is gone: the check tasks have ended, and the
    // last one is in `shared`, shared with the control state.
    drop(control_state);
    drop(shared);
    drop(script_errors);
    let _ = recorder.await;
    // Running remediations finish (each action has its timeout) and pass their
    // transitions on before alerting stops.
    let _ = remediator.await;
    let alert_status = alerting.status.clone();
    drop(alerting.tx);
    let _ = alerting.pipeline.await;
    // Give the senders a moment to deliver what is pending; the rest stays in the
    // outbox for the next start.
    let drain_until = tokio::time::Instant::now() + grace.min(Duration::from_secs(5));
    while tokio::time::Instant::now() < drain_until
        && alert_status.snapshot().values().any(|t| t.pending > 0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending: usize = alert_status.snapshot().values().map(|t| t.pending).sum();
    if pending > 0 {
        tracing::warn!(event = "stopping", pending, "{pending} alert messages are not delivered yet; they stay in the outbox and go out at the next start.");
    }
    alerting.stop_senders.cancel();
    for s in alerting.senders {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(
        event = "stopped",
        "Stopped; state saved in {}.",
        store.path().display()
    );
    Ok(())
}

/// Puts persisted states back into the status map, and forgets the states of checks
/// that are no longer configured.
async fn restore(
    shared: &Shared,
    store: &Arc<Store>,
    plan: &Plan,
    persisted: std::collections::HashMap<String, CheckState>,
) {
    let names: HashSet<&str> = plan.checks.iter().map(|c| &*c.name).collect();
    let mut forget: Vec<StoreUpdate> = Vec::new();
    let mut down = Vec::new();
    for (name, state) in persisted {
        if names.contains(name.as_str()) {
            if !state.status {
                down.push(name.clone());
            }
            shared.status.insert(name.into(), state);
        } else {
            forget.push((name, None));
        }
    }
    if !down.is_empty() {
        down.sort();
        tracing::info!(
            event = "restored",
            down = %down.join(", "),
            "Restored the saved state: {} checks were down when the engine stopped and stay down until they recover.",
            down.len()
        );
    }
    if !forget.is_empty() {
        let names: Vec<String> = forget.iter().map(|(n, _)| n.clone()).collect();
        tracing::info!(event = "forgotten", checks = %names.join(", "), "Forgot the saved state of checks that are no longer configured.");
        persist(store, forget).await;
    }
}

async fn persist(store: &Arc<Store>, updates: Vec<StoreUpdate>) -> bool {
    persist_ops(
        store,
        updates.into_iter().map(|(n, s)| Op::Check(n, s)).collect(),
    )
    .await
}

async fn persist_ops(store: &Arc<Store>, ops: Vec<Op>) -> bool {
    let store = store.clone();
    let n = ops.len();
    match tokio::task::spawn_blocking(move || store.apply(&ops)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(
                event = "store_error",
                "Could not save the state of {n} checks: {e}. Alerts are still sent."
            );
            false
        }
        Err(e) => {
            tracing::error!(
                event = "store_error",
                "Saving the state of {n} checks failed: {e}."
            );
            false
        }
    }
}

/// Makes changed states durable in batches, with their transitions in the alert inbox
/// in the same transaction; then logs the transitions and hands them to alerting.
async fn recorder(
    mut rx: mpsc::Receiver<Update>,
    store: Arc<Store>,
    alerts: mpsc::Sender<AlertInput>,
    remedy: mpsc::Sender<crate::remedy::Job>,
    host: Arc<str>,
    shared: Arc<Shared>,
) {
    // Only the status map is needed here; holding `shared` would keep our own sender
    // alive and this loop would never end.
    let status_source = Arc::downgrade(&shared);
    drop(shared);
    let mut batch: Vec<Update> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        let mut ops: Vec<Op> = batch
            .iter()
            .map(|u| Op::Check(u.spec.name.to_string(), Some(u.state.clone())))
            .collect();
        let mut events = Vec::new();
        for u in batch.drain(..) {
            let Some(transition) = u.transition else {
                continue;
            };
            let event = AlertEvent {
                host: host.clone(),
                check: u.spec.name.clone(),
                group: u.spec.group.clone(),
                transition,
                message: u.outcome.message.clone(),
                value: u.outcome.value,
                failures: u.state.failures,
                threshold: u.spec.threshold,
                successes: u.state.successes,
                recover_after: u.spec.recover_after,
                comment: u.spec.comment.clone(),
                at: u.state.changed_at,
                previous_duration_ms: u.state.changed_at.saturating_sub(u.previous_change),
                failed_message: u.state.failed_message.clone(),
                transcript: None,
            };
            let seq = store.next_seq();
            let item = Item::Transition(event.clone());
            ops.push(Op::Inbox(seq, serde_json::to_vec(&item).ok()));
            let remedy = u.spec.remedy.clone().filter(|r| r.has(transition));
            events.push((seq, event, item, remedy));
        }
        persist_ops(&store, ops).await;
        let transitions = events.len();
        for (seq, event, item, check_remedy) in events {
            alert::log_event(&event);
            match check_remedy {
                None => {
                    let _ = alerts.send(AlertInput::Item(seq, item)).await;
                }
                Some(r) => {
                    // Remediation first; it passes the transition on with its transcript.
                    let _ = remedy
                        .send(crate::remedy::Job {
                            seq,
                            event,
                            remedy: r,
                        })
                        .await;
                }
            }
        }
        if transitions > 0 {
            if let Some(shared) = status_source.upgrade() {
                log_status(&shared, &host);
            }
        }
    }
}

/// Logs the whole status map as one `{"event":"status",...}` line.
pub fn log_status(shared: &Shared, host: &str) {
    let checks: BTreeMap<String, bool> = shared
        .status
        .iter()
        .map(|e| (e.key().to_string(), e.value().status))
        .collect();
    let down: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(n, _)| n.as_str())
        .collect();
    let summary = if down.is_empty() {
        format!("All {} checks are OK.", checks.len())
    } else {
        format!(
            "{} of {} checks are down: {}.",
            down.len(),
            checks.len(),
            down.join(", ")
        )
    };
    let json = serde_json::to_string(&checks).unwrap_or_default();
    tracing::info!(event = "status", host = %host, checks_json = %json, "{summary}");
}

async fn status_ticker(shared: Arc<Shared>, host: Arc<str>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        log_status(&shared, &host);
    }
}

fn refresh_views(control: &ControlState, scheduler: &Scheduler) {
    let mut specs: Vec<_> = scheduler.specs().cloned().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    *control.checks.write().unwrap_or_else(|p| p.into_inner()) = specs;
}

/// What a reload compares the new config with.
struct Running {
    engine: EngineConfig,
    /// The fingerprint of `alerting:`, `windows:` and `channels:` in force.
    alerting: u64,
    /// `remediation:` and `actions:` in force (they change at a restart).
    remediation: crate::remedy::RemediationSetup,
}

/// SIGHUP: build the new config aside; swap only if it is entirely valid.
async fn reload(
    path: &Path,
    registry: &Registry,
    running: &Running,
    scheduler: &mut Scheduler,
    store: &Arc<Store>,
    control: &ControlState,
    script_errors: &mut ScriptErrors,
) -> Option<(EngineConfig, WatchSet)> {
    let (config, plan) = match load_plan_to_run(path, registry) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(
                event = "reload_failed",
                errors = %e,
                "The new config was rejected; the running config stays in force. Problems:\n{e}"
            );
            return None;
        }
    };
    let old = &running.engine;
    let new = &config.engine;
    let mut needs_restart = Vec::new();
    if old.state_dir != new.state_dir {
        needs_restart.push("engine.state_dir");
    }
    if old.hostname != new.hostname {
        needs_restart.push("engine.hostname");
    }
    if old.max_concurrent_checks != new.max_concurrent_checks {
        needs_restart.push("engine.max_concurrent_checks");
    }
    if old.worker_threads != new.worker_threads {
        needs_restart.push("engine.worker_threads");
    }
    if old.status_log_interval != new.status_log_interval {
        needs_restart.push("engine.status_log_interval");
    }
    if config.alerting.fingerprint != running.alerting {
        needs_restart.push("channels/windows/alerting");
    }
    if config.remediation != running.remediation {
        needs_restart.push("actions/remediation");
    }
    if !needs_restart.is_empty() {
        tracing::warn!(
            event = "reload",
            "These settings changed and take effect at the next restart: {}.",
            needs_restart.join(", ")
        );
    }
    let summary = scheduler.apply(&plan);
    refresh_views(control, scheduler);
    let _ = control
        .alert_tx
        .send(AlertInput::Checks(plan.alerting()))
        .await;
    script_errors.report(&plan, scheduler, &config).await;
    let watch = WatchSet::of(path, &config, &plan);
    if !summary.removed.is_empty() {
        persist(
            store,
            summary
                .removed
                .iter()
                .map(|n| (n.to_string(), None))
                .collect(),
        )
        .await;
    }
    let removed: Vec<&str> = summary.removed.iter().map(|n| &**n).collect();
    tracing::info!(
        event = "reloaded",
        added = summary.added,
        changed = summary.changed,
        kept = summary.kept,
        removed = %removed.join(", "),
        "Reloaded: {} added, {} changed, {} unchanged, {} removed.",
        summary.added,
        summary.changed,
        summary.kept,
        removed.len()
    );
    let engine = config.engine.clone();
    drop(config);
    drop(plan);
    trim_memory();
    Some((engine, watch))
}

/// Reports scripts that do not load, once per distinct error, and when they load again.
struct ScriptErrors {
    host: Arc<str>,
    alerts: mpsc::Sender<AlertInput>,
    store: Arc<Store>,
    reported: HashMap<PathBuf, String>,
}

impl ScriptErrors {
    fn new(host: Arc<str>, alerts: mpsc::Sender<AlertInput>, store: Arc<Store>) -> Self {
        ScriptErrors {
            host,
            alerts,
            store,
            reported: HashMap::new(),
        }
    }

    async fn report(&mut self, plan: &Plan, scheduler: &Scheduler, config: &Config) {
        let dir = config.file.parent().unwrap_or(Path::new(""));
        let mut now = HashSet::new();
        for b in &plan.broken {
            now.insert(b.file.clone());
            if self.reported.get(&b.file) == Some(&b.error) {
                continue;
            }
            let kept = scheduler
                .specs()
                .any(|s| s.source.as_deref() == Some(b.file.as_path()));
            let file = vigia_lua::display_path(&b.file, dir);
            tracing::error!(event = "script_error", file = %file, kept_previous = kept, "{}", b.error);
            alert::log_script_error(&self.host, &file, &b.error, kept);
            let item = Item::ScriptError {
                host: self.host.clone(),
                file,
                error: b.error.clone(),
                kept,
                at: unix_ms(),
            };
            let _ = self
                .alerts
                .send(AlertInput::Item(self.store.next_seq(), item))
                .await;
            self.reported.insert(b.file.clone(), b.error.clone());
        }
        self.reported.retain(|file, _| {
            if now.contains(file) {
                return true;
            }
            let shown = vigia_lua::display_path(file, dir);
            tracing::info!(event = "script_fixed", file = %shown, "{shown} loads again.");
            false
        });
    }
}

/// What the watcher looks at: directories, and which names in them matter.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSet {
    dirs: BTreeSet<PathBuf>,
    files: HashSet<PathBuf>,
    scripts_dir: PathBuf,
}

impl WatchSet {
    fn of(config_file: &Path, config: &Config, plan: &Plan) -> Self {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut files: HashSet<PathBuf> = plan.files.iter().map(|f| abs(f)).collect();
        files.insert(abs(config_file));
        let scripts_dir = abs(&config.engine.checks_dir);
        let mut dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if scripts_dir.is_dir() {
            dirs.insert(scripts_dir.clone());
        }
        WatchSet {
            dirs,
            files,
            scripts_dir,
        }
    }

    /// Whether a change to `p` should reload.
    fn matters(&self, p: &Path) -> bool {
        if self.files.contains(p) {
            return true;
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        p.parent() == Some(self.scripts_dir.as_path())
            && name.ends_with(".lua")
            && !name.starts_with('.')
    }
}

/// Watches config.yaml, the files it names and the scripts directory (inotify through
/// notify); `changed` resolves once saves have settled for [`DEBOUNCE`].
struct Watch {
    set: WatchSet,
    watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    tx: mpsc::UnboundedSender<PathBuf>,
}

/// Editors save in several steps (write a temp file, rename, chmod): wait for quiet.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

impl Watch {
    fn start(config_file: &Path, config: &Config, plan: &Plan) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = Watch {
            set: WatchSet::of(config_file, config, plan),
            watcher: None,
            rx,
            tx,
        };
        w.arm();
        w
    }

    fn arm(&mut self) {
        use notify::Watcher;
        let tx = self.tx.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for p in event.paths {
                    let _ = tx.send(p);
                }
            }
        });
        let mut watcher = match made {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    event = "watch",
                    "Cannot watch files for changes ({e}); reload with SIGHUP."
                );
                return;
            }
        };
        for dir in &self.set.dirs {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(event = "watch", dir = %dir.display(), "Cannot watch {} for changes ({e}); reload with SIGHUP.", dir.display());
            }
        }
        self.watcher = Some(watcher);
    }

    fn rewatch(&mut self, set: WatchSet) {
        if set != self.set {
            self.set = set;
            self.watcher = None;
            self.arm();
        }
    }

    /// The files that changed, once no more changes came for [`DEBOUNCE`].
    async fn changed(&mut self) -> Vec<String> {
        let mut changed = BTreeSet::new();
        loop {
            let Some(p) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            if self.set.matters(&p) {
                changed.insert(p);
                break;
            }
        }
        while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
            if self.set.matters(&p) {
                changed.insert(p);
            }
        }
        changed.iter().map(|p| p.display().to_string()).collect()
    }
}
