//! `vigia run`: the supervisor. It builds every stage with its whole configuration,
//! starts them in order, applies reloads as a computed diff, and stops them in order
//! with a cancellation token each — never by the order in which things are dropped.
//!
//! ```text
//! scheduler ─observations─▶ journal ─commit─▶ store
//!                              └─publish─▶ bus ─┬─▶ alerting (pipeline + senders)
//!                                               ├─▶ remediation ──▶ alerting
//!                                               └─▶ log (alert and status lines)
//! control socket ─Command─▶ Door ─snapshot / silence─▶ status book, alerting
//! ```
//!
//! Start: store → status book restored → alerting (replays the inbox, restores
//! reminders, with every check's settings) → remediation → log → journal → control
//! socket → scheduler. Stop: scheduler (running checks get `shutdown_grace`) → control
//! socket → journal (commits and publishes what is queued) → log and remediation (which
//! end when the bus closes; running actions finish) → alerting (drains its queues) →
//! senders (a few seconds to deliver; the rest stays in the outbox).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigia_config::alerting::AlertingSetup;
use vigia_config::diff::{ConfigDiff, Running};
use vigia_config::{system_hostname, trim_memory, Config, Plan, PlannedCheck, Registry};
use vigia_core::alert::policy::Item;
use vigia_core::alert::AlertEvent;
use vigia_core::status::{CheckState, Transition};

use crate::alerting::pipeline::{
    self, AlertStatus, Handles, Input as AlertInput, Inputs, PipelineSetup,
};
use crate::alerting::{self, Console};
use crate::book::StatusBook;
use crate::bus::{Bus, Committed};
use crate::clock::unix_ms;
use crate::control::{self, Door};
use crate::journal::Journal;
use crate::remediation::{Claims, RemediationMemory, Remediator, StoreClaims};
use crate::scheduler::{Scheduler, SchedulerShared};
use crate::store::{Op, Store};
use crate::watch::{Watch, WatchSet};
use crate::{status_log, systemd};

/// How `vigia run` was asked to run.
pub struct RunOptions {
    pub config: PathBuf,
    /// Print alerts on stderr (the console channel).
    pub console: bool,
    /// Listen here instead of `http.listen` (`--http-listen`, `VIGIA_HTTP_LISTEN`).
    pub http_listen: Option<std::net::SocketAddr>,
    /// Record every run here instead of `engine.record` (`--record DIR`).
    pub record: Option<PathBuf>,
}

/// Queue sizes between the stages.
const OBSERVATIONS: usize = 16 * 1024;
const ALERT_INPUTS: usize = 16 * 1024;

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
fn load_plan_to_run(
    path: &Path,
    registry: &Registry,
    http_listen: Option<std::net::SocketAddr>,
) -> Result<(Config, Plan), String> {
    let (mut config, plan) = load_plan(path, registry)?;
    drop(plan);
    if let Some(addr) = http_listen {
        config.http.listen = addr;
        if config.http.enabled && !config.http.loopback_only() && config.http.token_file.is_none() {
            return Err(format!("--http-listen {addr} is reachable from other machines, and the config has no `http.token_file`: set one, or listen on 127.0.0.1"));
        }
    }
    config.rebuild_compact(registry).map_err(|e| e.to_string())
}

/// A running stage: its token, and the task that hands back its queue when it ends.
struct Stage<T> {
    stop: CancellationToken,
    handle: JoinHandle<T>,
}

impl<T> Stage<T> {
    /// Stops it and takes its queue back; `None` if the task panicked.
    async fn stop(self) -> Option<T> {
        self.stop.cancel();
        self.handle.await.ok()
    }
}

/// The alerting stage: the pipeline and its senders.
struct AlertStage {
    stop: CancellationToken,
    handles: Handles,
}

impl AlertStage {
    /// Stops the pipeline (it drains its queues and hands them back), then the senders
    /// (a message in flight stays in the outbox).
    async fn stop(self) -> Option<Inputs> {
        self.stop.cancel();
        let inputs = self.handles.pipeline.await.ok();
        self.handles.stop_senders.cancel();
        for s in self.handles.senders {
            let _ = s.await;
        }
        inputs
    }
}

/// The `failed` events of the checks that are down, for their reminders: what a
/// pipeline needs to know of the status book when it starts.
/// Only the checks that are down are looked up: nothing is copied per check.
fn down_events<'a>(
    book: &StatusBook,
    checks: impl Iterator<Item = &'a PlannedCheck>,
    host: &Arc<str>,
) -> Vec<AlertEvent> {
    let down = book.down();
    if down.is_empty() {
        return Vec::new();
    }
    let names: HashSet<&str> = down.iter().map(|c| c.name.as_str()).collect();
    let specs: HashMap<&str, &PlannedCheck> = checks
        .filter(|c| names.contains(&*c.name))
        .map(|c| (&*c.name, c))
        .collect();
    down.into_iter()
        .filter_map(|st| {
            let spec = specs.get(st.name.as_str())?;
            Some(AlertEvent {
                host: host.clone(),
                check: spec.name.clone(),
                group: spec.group.clone(),
                transition: Transition::Failed,
                message: st.failed_message.clone().unwrap_or_default(),
                value: None,
                failures: st.failures,
                threshold: spec.threshold,
                successes: st.successes,
                recover_after: spec.recover_after,
                comment: spec.comment.clone(),
                at: st.changed_at,
                previous_duration_ms: 0,
                failed_message: None,
                transcript: None,
                ack: None,
            })
        })
        .collect()
}

/// Everything the supervisor keeps while the engine runs.
struct Engine {
    config_file: PathBuf,
    registry: Registry,
    store: Arc<Store>,
    book: Arc<StatusBook>,
    host: watch::Sender<Arc<str>>,
    console: Option<Console>,
    alert_status: Arc<AlertStatus>,
    alert_tx: mpsc::Sender<AlertInput>,
    alerting: Option<AlertStage>,
    remediation: Option<Stage<mpsc::Receiver<Committed>>>,
    remedy: RemedyKeep,
    logger: Option<Stage<mpsc::Receiver<Committed>>>,
    tasks: Arc<SchedulerShared>,
    scheduler: Scheduler,
    door: Arc<Door>,
    script_errors: ScriptErrors,
    watcher: Option<Watch>,
    running: Running,
    http: Option<crate::http::HttpServer>,
    /// `--http-listen`: kept over every reload.
    http_listen: Option<std::net::SocketAddr>,
    /// The Telegram consoles (channels with `commands: true`), rebuilt with alerting.
    consoles: Option<crate::console::Consoles>,
    /// In a cluster: the member task, and the whole plan (the scheduler runs its
    /// pinned checks and the floating ones placed here).
    cluster: Option<ClusterRun>,
    /// In a cluster: where alerting hands the transitions and silences (kept over
    /// reloads).
    link: Option<pipeline::ClusterLink>,
}

/// What remediation keeps over a rebuild of its stage.
struct RemedyKeep {
    /// Run counts, runbook locks, the last good runbook texts.
    memory: Arc<RemediationMemory>,
    /// The runs under way (an old stage's finish in it).
    jobs: TaskTracker,
    /// Where runs are claimed: the store, and in a cluster NATS too.
    claims: Arc<dyn Claims>,
}

struct ClusterRun {
    member: crate::cluster::MemberHandle,
    /// The forwarder of this replica's transitions and, while it leads, the alerter of
    /// the cluster's.
    alerts: crate::cluster::AlertTasks,
    plan: Plan,
}

/// What the scheduler runs: every check standalone; in a cluster the pinned ones and
/// the floating ones placed here.
fn scheduled(plan: &Plan, assigned: Option<&BTreeSet<Arc<str>>>) -> Plan {
    match assigned {
        None => plan.clone(),
        Some(a) => Plan {
            checks: plan
                .checks
                .iter()
                .filter(|c| c.pinned || a.contains(&c.name))
                .cloned()
                .collect(),
            files: plan.files.clone(),
            broken: plan.broken.clone(),
        },
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let registry = Registry::builtin();
    let (config, plan) = load_plan_to_run(&opts.config, &registry, opts.http_listen)
        .map_err(|e| anyhow::anyhow!("the config has problems, nothing was started:\n{e}"))?;
    let host: Arc<str> = config
        .engine
        .hostname
        .clone()
        .unwrap_or_else(system_hostname)
        .into();
    let (host_tx, host_rx) = watch::channel(host.clone());
    let state_dir = config.engine.state_dir.clone();
    let store = Arc::new(open_store(&state_dir).await?);
    let book = StatusBook::new();
    // In a cluster, the floating checks' states come from NATS when they are placed
    // here; what the local store has of them is only kept aside.
    let nats = match &config.cluster {
        Some(c) => {
            let id = config.replica_id().unwrap_or_else(|| host.to_string());
            let nats = crate::cluster::connect(c, &format!("vigia {id}"))
                .await
                .map_err(|e| anyhow::anyhow!("the cluster cannot start: {e}"))?;
            tracing::info!(event = "cluster_joined", replica = %id, nats = %c.nats.join(","), "Joined the cluster at {} as {id} (capacity {}).", c.nats.join(","), c.capacity);
            Some((nats, c.clone(), id))
        }
        None => None,
    };
    let no_assignment = BTreeSet::new();
    let assigned0 = nats.as_ref().map(|_| &no_assignment);
    restore(
        &book,
        &store,
        &scheduled(&plan, assigned0),
        store.load_checks()?,
    )
    .await;
    let history = Arc::new(crate::history::History::load(store.clone())?);
    history.configure(plan.checks.iter().map(|c| &c.name), unix_ms());

    let (link, feed) = match nats {
        Some(_) => {
            let (link, feed) = pipeline::ClusterLink::new();
            (Some(link), Some(feed))
        }
        None => (None, None),
    };
    let (observations_tx, observations_rx) = mpsc::channel(OBSERVATIONS);
    let (alert_tx, alert_rx) = mpsc::channel(ALERT_INPUTS);
    let mut bus = Bus::default();
    let alert_events = bus.subscribe("alerting", ALERT_INPUTS);
    let remedy_events = bus.subscribe("remediation", 1024);
    let log_events = bus.subscribe("log", ALERT_INPUTS);

    // Alerting first, whole: what it replays from the inbox and the reminders it
    // restores see every check's routing, window, dependencies and reminder period.
    let console = opts.console.then(Console::stderr);
    let alert_status = Arc::new(AlertStatus::default());
    let tasks = SchedulerShared::new(
        config.engine.max_concurrent_checks,
        book.clone(),
        observations_tx,
    );
    if config.engine.history {
        let _ = tasks.tally.set(history.clone());
    }
    let recording = match opts.record.as_ref().or(config.engine.record.as_ref()) {
        Some(dir) => {
            let max = config.engine.record_size.0;
            let r = crate::record::Recording::start(dir, max, &host, &opts.config)
                .map_err(|e| anyhow::anyhow!("the recording cannot start: {e}"))?;
            let _ = tasks.recorder.set(r.recorder());
            let _ = alert_status.recorder.set(r.recorder());
            tracing::info!(event = "recording", dir = %dir.display(), max_bytes = max, "Every check run is recorded into {} (at most {}; the oldest files go).", dir.display(), vigia_api::Bytes(max));
            Some(r)
        }
        None => None,
    };
    let mut scheduler = Scheduler::new(tasks.clone());
    let targets = pipeline::build_targets(&config.alerting, console.clone())
        .map_err(|e| anyhow::anyhow!("alerting cannot start: {e}"))?;
    let console_bots = crate::console::build(&config.alerting)
        .map_err(|e| anyhow::anyhow!("alerting cannot start: {e}"))?;
    let alerting = start_alerting(
        &config.alerting,
        &plan,
        link.clone(),
        targets,
        host.clone(),
        &store,
        &book,
        &alert_status,
        Inputs {
            commands: alert_rx,
            events: alert_events,
            shared: pipeline::Shared::new(),
        },
        true,
    )
    .map_err(|(e, _)| anyhow::anyhow!("alerting cannot start: {e}"))?;
    let remedy = RemedyKeep {
        memory: Arc::new(RemediationMemory::default()),
        jobs: TaskTracker::new(),
        claims: match &nats {
            Some((n, _, id)) => Arc::new(crate::cluster::NatsClaims::new(
                n.clone(),
                id.clone(),
                store.clone(),
            )),
            None => Arc::new(StoreClaims(store.clone())),
        },
    };
    let remediation = start_remediation(&config, &host, &alert_tx, &book, &remedy, remedy_events);
    let logger = start_logger(&book, &host_rx, &config, log_events);
    let cluster = nats.zip(feed).map(|((nats, cfg, id), feed)| {
        let direct_after = cfg.unreachable_after.get();
        let member = crate::cluster::Member::start(
            nats.clone(),
            cfg,
            id,
            host.to_string(),
            crate::cluster::Ties {
                book: book.clone(),
                tasks: tasks.clone(),
                alerts: alert_status.clone(),
                proof: feed.lead.clone(),
            },
            &plan.checks,
        );
        let alerts = crate::cluster::AlertTasks::start(
            nats,
            store.clone(),
            feed,
            alert_tx.clone(),
            member.member.leading(),
            direct_after,
        );
        ClusterRun {
            member,
            alerts,
            plan: plan.clone(),
        }
    });
    let journal_stop = CancellationToken::new();
    let store_health = Arc::new(crate::journal::StoreHealth::default());
    let journal = tokio::spawn(
        Journal {
            store: store.clone(),
            host: host_rx.clone(),
            bus,
            health: store_health.clone(),
            history: config.engine.history.then(|| history.clone()),
            fence: cluster
                .as_ref()
                .map(|c| c.member.member.clone() as Arc<dyn crate::journal::Fence>),
        }
        .run(observations_rx, journal_stop.clone()),
    );

    let door = Arc::new(Door {
        host: host_rx.clone(),
        started_at: unix_ms(),
        config: opts.config.clone(),
        tasks: tasks.clone(),
        checks: Default::default(),
        alerts: alert_status.clone(),
        alert_tx: alert_tx.clone(),
        store: store_health,
        remediation: remedy.memory.clone(),
        history,
        cluster: cluster
            .as_ref()
            .map(|c| c.member.member.clone() as Arc<dyn control::ClusterDesk>),
    });
    let socket_path = state_dir.join(control::SOCKET_FILE);
    let control_stop = CancellationToken::new();
    let control = control::serve(&socket_path, door.clone(), control_stop.clone())
        .with_context(|| format!("cannot open the control socket {}", socket_path.display()))?;

    scheduler.apply(&scheduled(&plan, assigned0));
    let mut engine = Engine {
        config_file: opts.config.clone(),
        registry,
        store: store.clone(),
        book,
        host: host_tx,
        console,
        alert_status,
        alert_tx: alert_tx.clone(),
        alerting: Some(alerting),
        remediation: Some(remediation),
        remedy,
        logger: Some(logger),
        tasks,
        scheduler,
        door,
        script_errors: ScriptErrors::new(alert_tx, store.clone()),
        watcher: config
            .engine
            .watch
            .then(|| Watch::start(&opts.config, &config, &plan)),
        running: Running::of(&config),
        http: None,
        http_listen: opts.http_listen,
        consoles: None,
        cluster,
        link,
    };
    engine.refresh_door();
    engine.consoles = Some(crate::console::Consoles::start(
        console_bots,
        engine.door.clone(),
        store.clone(),
    ));
    if config.http.enabled {
        // After the first plan: `/healthz` answers 200 from its first request.
        engine.http = Some(
            crate::http::HttpServer::start(&config.http, engine.door.clone())
                .map_err(|e| anyhow::anyhow!("the HTTP API cannot start: {e}"))?,
        );
    }
    engine
        .script_errors
        .report(&plan, &engine.scheduler, &config, &host)
        .await;
    let n_checks = plan.checks.len();
    // The YAML tree and the plan go: what a reload compares with is in `running`.
    drop(config);
    drop(plan);
    trim_memory();
    tracing::info!(
        event = "started",
        host = %host,
        checks = n_checks,
        state_dir = %state_dir.display(),
        config = %opts.config.display(),
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("VIGIA_COMMIT"),
        "Vigia {} (commit {}) started: {} checks scheduled.",
        env!("CARGO_PKG_VERSION"),
        env!("VIGIA_COMMIT"),
        n_checks
    );
    systemd::notify("READY=1");
    let watchdog_stop = CancellationToken::new();
    let watchdog = systemd::watchdog_period().map(|period| {
        let stop = watchdog_stop.clone();
        tokio::spawn(async move {
            loop {
                systemd::notify("WATCHDOG=1");
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    });

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = loop {
        let changed = async {
            match engine.watcher.as_mut() {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        let cluster = async {
            match engine.cluster.as_mut() {
                Some(c) => tokio::select! {
                    Ok(()) = c.member.assigned.changed() => Some(None),
                    Some(r) = c.member.reach.recv() => Some(Some(r)),
                    else => None,
                },
                None => None,
            }
        };
        tokio::select! {
            Some(event) = cluster => match event {
                None => engine.apply_placement(),
                Some(reach) => engine.report_reach(reach).await,
            },
            _ = hup.recv() => {
                systemd::notify("RELOADING=1");
                tracing::info!(event = "reload", "SIGHUP received: reloading {}.", opts.config.display());
                engine.reload().await?;
                systemd::notify("READY=1");
            }
            files = changed => {
                systemd::notify("RELOADING=1");
                tracing::info!(event = "reload", files = %files.join(", "), "Files changed ({}): reloading.", files.join(", "));
                engine.reload().await?;
                systemd::notify("READY=1");
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };

    systemd::notify("STOPPING=1");
    let grace = engine.running.engine.shutdown_grace.get();
    tracing::info!(
        event = "stopping",
        signal = why,
        "Stopping on {why}: no new check runs; waiting up to {} for running ones.",
        vigia_api::Dur(grace)
    );
    let aborted = engine.scheduler.shutdown(grace).await;
    if aborted > 0 {
        tracing::warn!(
            event = "stopping",
            aborted,
            "{aborted} checks did not finish within the grace period and were cancelled."
        );
    }
    if let Some(r) = recording {
        r.stop();
    }
    control_stop.cancel();
    let _ = control.await;
    if let Some(c) = engine.consoles.take() {
        c.stop().await;
    }
    if let Some(h) = engine.http.take() {
        h.stop().await;
    }
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    // The journal commits and publishes what the checks left queued; the bus closes.
    journal_stop.cancel();
    let _ = journal.await;
    // After the last results are fenced and committed: the checks' states are handed
    // back for the next owner.
    if let Some(c) = engine.cluster.take() {
        c.alerts.stop().await;
        c.member.stop().await;
    }
    if let Some(l) = engine.logger.take() {
        let _ = l.handle.await;
    }
    // Remediation ends with the bus; its running actions (each has its timeout) finish
    // and pass their transitions on before alerting stops.
    if let Some(r) = engine.remediation.take() {
        let _ = r.handle.await;
    }
    engine.remedy.jobs.close();
    engine.remedy.jobs.wait().await;
    if let Some(a) = engine.alerting.take() {
        a.stop.cancel();
        let _ = a.handles.pipeline.await;
        // Give the senders a moment to deliver what is pending; the rest stays in the
        // outbox for the next start.
        let drain_until = tokio::time::Instant::now() + grace.min(Duration::from_secs(5));
        while tokio::time::Instant::now() < drain_until
            && engine
                .alert_status
                .snapshot()
                .values()
                .any(|t| t.pending > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pending: usize = engine
            .alert_status
            .snapshot()
            .values()
            .map(|t| t.pending)
            .sum();
        if pending > 0 {
            tracing::warn!(event = "stopping", pending, "{pending} alert messages are not delivered yet; they stay in the outbox and go out at the next start.");
        }
        a.handles.stop_senders.cancel();
        for s in a.handles.senders {
            let _ = s.await;
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(
        event = "stopped",
        "Stopped; state saved in {}.",
        store.path().display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_alerting(
    setup: &AlertingSetup,
    plan: &Plan,
    link: Option<pipeline::ClusterLink>,
    targets: Vec<pipeline::Target>,
    host: Arc<str>,
    store: &Arc<Store>,
    book: &Arc<StatusBook>,
    status: &Arc<AlertStatus>,
    inputs: Inputs,
    replay_inbox: bool,
) -> Result<AlertStage, (String, Inputs)> {
    // The reminders of the checks that are down. In a cluster the leader's policy
    // sends them, from the transitions it reads: a replica's own view of which checks
    // are down is not the cluster's.
    let down = match link {
        Some(_) => Vec::new(),
        None => down_events(book, plan.checks.iter(), &host),
    };
    let stop = CancellationToken::new();
    let handles = pipeline::start(
        PipelineSetup {
            alerting: setup,
            checks: plan.alerting(),
            down,
            host,
            replay_inbox,
            cluster: link,
        },
        targets,
        store.clone(),
        book.clone(),
        status.clone(),
        inputs,
        stop.clone(),
    )?;
    Ok(AlertStage { stop, handles })
}

fn start_remediation(
    config: &Config,
    host: &str,
    alert_tx: &mpsc::Sender<AlertInput>,
    book: &Arc<StatusBook>,
    keep: &RemedyKeep,
    events: mpsc::Receiver<Committed>,
) -> Stage<mpsc::Receiver<Committed>> {
    let stop = CancellationToken::new();
    let handle = Remediator::new(
        config.remediation.clone(),
        host,
        alert_tx.clone(),
        book.clone(),
        keep.memory.clone(),
        keep.claims.clone(),
    )
    .spawn(events, stop.clone(), keep.jobs.clone());
    Stage { stop, handle }
}

fn start_logger(
    book: &Arc<StatusBook>,
    host: &watch::Receiver<Arc<str>>,
    config: &Config,
    events: mpsc::Receiver<Committed>,
) -> Stage<mpsc::Receiver<Committed>> {
    let stop = CancellationToken::new();
    let handle = status_log::spawn(
        book.clone(),
        host.clone(),
        config.engine.status_log_interval.get(),
        events,
        stop.clone(),
    );
    Stage { stop, handle }
}

impl Engine {
    fn refresh_door(&self) {
        let mut specs = self.scheduler.specs();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        *self.door.checks.write().unwrap_or_else(|p| p.into_inner()) = specs;
    }

    fn host(&self) -> Arc<str> {
        self.host.borrow().clone()
    }

    /// A reloaded `http:` section: started, stopped, or handed to the running server.
    async fn apply_http(&mut self, http: &vigia_config::http::HttpConfig) -> Result<(), String> {
        match (self.http.take(), http.enabled) {
            (None, false) => Ok(()),
            (Some(old), false) => {
                old.stop().await;
                tracing::info!(
                    event = "http_stopped",
                    "The HTTP API is off (`http.enabled: false`)."
                );
                Ok(())
            }
            (None, true) => {
                self.http = Some(crate::http::HttpServer::start(http, self.door.clone())?);
                Ok(())
            }
            (Some(old), true) => match old.update(http).await {
                Ok(server) => {
                    self.http = Some(server);
                    Ok(())
                }
                Err((server, e)) => {
                    self.http = Some(server);
                    Err(e)
                }
            },
        }
    }

    /// NATS out of reach for `cluster.unreachable_after`, or back: this replica's own
    /// alert on its own channels (the cluster cannot carry it), and a log line.
    async fn report_reach(&mut self, reach: crate::cluster::Reach) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let replica = c.member.member.id.clone();
        let host = self.host();
        let now = unix_ms();
        let (reachable, error, for_ms) = match reach {
            crate::cluster::Reach::Unreachable { since_ms, error } => {
                let for_ms = now.saturating_sub(since_ms);
                tracing::error!(event = "alert", state = "cluster_unreachable", host = %host, replica = %replica, for_ms, "NATS cannot be reached for {} ({error}): this replica alerts on its own channels; pinned checks go on, floating ones wait for NATS.", vigia_api::Dur(std::time::Duration::from_millis(for_ms)));
                (false, error, for_ms)
            }
            crate::cluster::Reach::Back { for_ms } => {
                tracing::info!(event = "alert", state = "cluster_reachable", host = %host, replica = %replica, for_ms, "NATS can be reached again after {}: the cluster places this replica's checks again.", vigia_api::Dur(std::time::Duration::from_millis(for_ms)));
                (true, String::new(), for_ms)
            }
        };
        let item = Item::Cluster {
            host,
            replica,
            reachable,
            error,
            for_ms,
            at: now,
        };
        let _ = self
            .alert_tx
            .send(AlertInput::Item(self.store.next_seq(), Box::new(item)))
            .await;
    }

    /// The cluster placed checks here or moved some away: the scheduler runs the new
    /// set (taken-over checks start at once, from the state their last owner left).
    fn apply_placement(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let assigned = c.member.assigned.borrow_and_update().clone();
        let s = self.scheduler.apply(&scheduled(&c.plan, Some(&assigned)));
        if s.added > 0 || !s.removed.is_empty() {
            tracing::info!(event = "cluster_checks", added = s.added, removed = s.removed.len(), running = assigned.len(), "Placement changed: {} floating checks started here, {} stopped here; {} run here now.", s.added, s.removed.len(), assigned.len());
        }
        self.refresh_door();
    }

    /// SIGHUP or a saved file: build the new config aside; apply it only if it is
    /// entirely valid, as the diff with the running one says. `Err` only when a stage
    /// could not be handed over (its task died): the engine then stops.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let (config, plan) = match load_plan_to_run(
            &self.config_file,
            &self.registry,
            self.http_listen,
        ) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(
                    event = "reload_failed",
                    errors = %e,
                    "The new config was rejected; the running config stays in force. Problems:\n{e}"
                );
                return Ok(());
            }
        };
        let running_checks = self.scheduler.len();
        let blank = config.blank;
        let nothing_left =
            config.checks.is_empty() && plan.checks.is_empty() && plan.broken.is_empty();
        if running_checks > 0 && (nothing_left || blank) {
            // An editor that truncates the file and then writes it shows an empty file
            // for a moment; applied, it would stop every check.
            tracing::error!(
                event = "reload_failed",
                errors = "no checks",
                "The new config {} (the running one has {running_checks} checks); it was not applied, the running config stays in force. To stop every check, stop the engine, or set `enabled: false` on the entries.",
                if blank { "file is empty" } else { "has no checks at all" }
            );
            return Ok(());
        }
        let diff = self.running.diff(&config);
        let mut applied = diff.clone();
        let new_host: Arc<str> = config
            .engine
            .hostname
            .clone()
            .unwrap_or_else(system_hostname)
            .into();
        let host_changed = new_host != self.host();
        if host_changed {
            self.host.send_replace(new_host.clone());
        }
        let e = &config.engine;
        self.tasks.set_max_concurrent(e.max_concurrent_checks);

        // The checks first: a rebuilt alerting stage then sees the new set.
        let summary = match self.cluster.as_mut() {
            Some(c) => {
                c.member.member.set_checks(&plan.checks);
                c.plan = plan.clone();
                let assigned = c.member.assigned.borrow().clone();
                self.scheduler.apply(&scheduled(&plan, Some(&assigned)))
            }
            None => self.scheduler.apply(&plan),
        };
        self.refresh_door();
        self.door
            .history
            .configure(plan.checks.iter().map(|c| &c.name), unix_ms());

        if diff.alerting || host_changed {
            let built = pipeline::build_targets(&config.alerting, self.console.clone())
                .and_then(|t| crate::console::build(&config.alerting).map(|c| (t, c)));
            match built {
                Err(err) => {
                    applied.alerting = false;
                    tracing::error!(event = "reload_failed", "The new channels cannot be used ({err}); alerting keeps the running channels.");
                }
                Ok((targets, bots)) => {
                    // The consoles hand their work to the pipeline: they go first.
                    if let Some(c) = self.consoles.take() {
                        c.stop().await;
                    }
                    let old = self
                        .alerting
                        .take()
                        .context("the alerting stage is missing")?;
                    let inputs = old.stop().await.context(
                        "the alerting stage died; the engine stops so that systemd restarts it",
                    )?;
                    match start_alerting(
                        &config.alerting,
                        &plan,
                        self.link.clone(),
                        targets,
                        new_host.clone(),
                        &self.store,
                        &self.book,
                        &self.alert_status,
                        inputs,
                        false,
                    ) {
                        Ok(stage) => self.alerting = Some(stage),
                        Err((err, _)) => anyhow::bail!("alerting cannot start again: {err}"),
                    }
                    self.consoles = Some(crate::console::Consoles::start(
                        bots,
                        self.door.clone(),
                        self.store.clone(),
                    ));
                }
            }
        } else {
            let _ = self
                .alert_tx
                .send(AlertInput::Checks(plan.alerting()))
                .await;
        }
        if diff.remediation || host_changed {
            let old = self
                .remediation
                .take()
                .context("the remediation stage is missing")?;
            let events = old.stop().await.context(
                "the remediation stage died; the engine stops so that systemd restarts it",
            )?;
            self.remediation = Some(start_remediation(
                &config,
                &new_host,
                &self.alert_tx,
                &self.book,
                &self.remedy,
                events,
            ));
        }
        if self.running.engine.status_log_interval != e.status_log_interval {
            let old = self.logger.take().context("the log stage is missing")?;
            let events = old.stop().await.context("the log stage died")?;
            let host_rx = self.host.subscribe();
            self.logger = Some(start_logger(&self.book, &host_rx, &config, events));
        }
        if diff.http {
            if let Err(err) = self.apply_http(&config.http).await {
                applied.http = false;
                tracing::error!(event = "reload_failed", "The new `http:` section cannot be used ({err}); the HTTP API keeps its running settings.");
            }
        }
        match (&mut self.watcher, e.watch) {
            (Some(w), true) => w.rewatch(WatchSet::of(&self.config_file, &config, &plan)),
            (None, true) => self.watcher = Some(Watch::start(&self.config_file, &config, &plan)),
            (Some(_), false) => self.watcher = None,
            (None, false) => {}
        }
        let host = self.host();
        self.script_errors
            .report(&plan, &self.scheduler, &config, &host)
            .await;
        // Removed checks keep their stored state for a while (they may come back);
        // those removed long enough ago are deleted now.
        let expired = self.book.expire_retired(crate::clock::unix_ms());
        if !expired.is_empty() {
            let ops = expired
                .iter()
                .map(|n| Op::Check(n.to_string(), None))
                .collect();
            crate::store::persist(&self.store, ops, "the removal of checks").await;
        }
        log_reload(&applied, &summary);
        // What is in force now. Keys that wait for a restart keep their running value
        // (so the next reload says so again), and so do channels that could not be built.
        let mut running = Running::of(&config);
        running.engine.state_dir = self.running.engine.state_dir.clone();
        running.engine.worker_threads = self.running.engine.worker_threads;
        running.engine.history = self.running.engine.history;
        if !applied.alerting && diff.alerting {
            running.alerting = self.running.alerting;
        }
        if !applied.http && diff.http {
            running.http = self.running.http.clone();
        }
        self.running = running;
        drop(config);
        drop(plan);
        trim_memory();
        Ok(())
    }
}

fn log_reload(diff: &ConfigDiff, summary: &crate::scheduler::ApplySummary) {
    if !diff.needs_restart.is_empty() {
        tracing::warn!(
            event = "reload",
            keys = %diff.needs_restart.join(", "),
            "These settings changed and take effect at the next restart: {}.",
            diff.needs_restart.join(", ")
        );
    }
    let mut live: Vec<String> = diff.engine_live.clone();
    if diff.alerting {
        live.push("channels/windows/alerting".into());
    }
    if diff.remediation {
        live.push("actions/remediation/runbooks/commands".into());
    }
    if diff.http {
        live.push("http".into());
    }
    let removed: Vec<&str> = summary.removed.iter().map(|n| &**n).collect();
    let resumed: Vec<&str> = summary.resumed.iter().map(|n| &**n).collect();
    let mut sections = if live.is_empty() {
        String::new()
    } else {
        format!(" Applied: {}.", live.join(", "))
    };
    if !resumed.is_empty() {
        sections.push_str(&format!(
            " Resumed where they were when removed: {}.",
            resumed.join(", ")
        ));
    }
    tracing::info!(
        event = "reloaded",
        added = summary.added,
        changed = summary.changed,
        kept = summary.kept,
        removed = %removed.join(", "),
        resumed = %resumed.join(", "),
        applied = %live.join(", "),
        "Reloaded: {} added, {} changed, {} unchanged, {} removed.{sections}",
        summary.added,
        summary.changed,
        summary.kept,
        removed.len()
    );
}

/// Puts persisted states back into the status book, and forgets the states of checks
/// that are no longer configured.
async fn restore(
    book: &StatusBook,
    store: &Arc<Store>,
    plan: &Plan,
    persisted: HashMap<String, CheckState>,
) {
    let names: HashSet<&str> = plan.checks.iter().map(|c| &*c.name).collect();
    let now = crate::clock::unix_ms();
    let mut forget: Vec<Op> = Vec::new();
    let mut down = Vec::new();
    let mut forgotten = Vec::new();
    for (name, state) in persisted {
        if names.contains(name.as_str()) {
            if !state.status {
                down.push(name.clone());
            }
            book.restore(name.into(), state);
        } else if now.saturating_sub(
            state
                .changed_at
                .max(state.last.as_ref().map_or(0, |l| l.at)),
        ) < crate::book::RETAIN_REMOVED_MS
        {
            // Recently active, not configured now: kept a while, in case it comes back.
            book.retire(name.into(), state, now);
        } else {
            forgotten.push(name.clone());
            forget.push(Op::Check(name, None));
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
        forgotten.sort();
        tracing::info!(event = "forgotten", checks = %forgotten.join(", "), "Forgot the saved state of checks that are no longer configured.");
        crate::store::persist(store, forget, "the states of removed checks").await;
    }
}

/// Reports scripts that do not load, once per distinct error, and when they load again.
struct ScriptErrors {
    alerts: mpsc::Sender<AlertInput>,
    store: Arc<Store>,
    reported: HashMap<PathBuf, String>,
}

impl ScriptErrors {
    fn new(alerts: mpsc::Sender<AlertInput>, store: Arc<Store>) -> Self {
        ScriptErrors {
            alerts,
            store,
            reported: HashMap::new(),
        }
    }

    async fn report(
        &mut self,
        plan: &Plan,
        scheduler: &Scheduler,
        config: &Config,
        host: &Arc<str>,
    ) {
        let dir = config.file.parent().unwrap_or(Path::new(""));
        let mut now = HashSet::new();
        for b in &plan.broken {
            now.insert(b.file.clone());
            if self.reported.get(&b.file) == Some(&b.error) {
                continue;
            }
            let kept = scheduler.any_spec(|s| s.source.as_deref() == Some(b.file.as_path()));
            let file = vigia_lua::display_path(&b.file, dir);
            tracing::error!(event = "script_error", file = %file, kept_previous = kept, "{}", b.error);
            alerting::log_script_error(host, &file, &b.error, kept);
            let item = Item::ScriptError {
                host: host.clone(),
                file,
                error: b.error.clone(),
                kept,
                at: unix_ms(),
            };
            let _ = self
                .alerts
                .send(AlertInput::Item(self.store.next_seq(), Box::new(item)))
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

/// Opens the store for the engine: a damaged one is moved aside (said once, as an
/// error line); one held by a short-lived `vigia silence` is waited for a little.
async fn open_store(state_dir: &std::path::Path) -> Result<Store, crate::store::StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open_or_move_aside(state_dir) {
            Ok((store, notice)) => {
                if let Some(n) = notice {
                    tracing::error!(event = "store_damaged", "{n}");
                }
                return Ok(store);
            }
            Err(crate::store::StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
