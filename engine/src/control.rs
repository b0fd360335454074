//! The control socket, `state_dir/vigia.sock`: one JSON [`Command`] line in, one JSON
//! [`Reply`] line out (`{"cmd":"status"}` → `{"reply":"status","host":…,"checks":[…]}`).
//!
//! [`Door`] is the engine's one door for the outside: it reads through the status
//! snapshot and acts through the typed command. The socket is one adapter over it; the
//! HTTP API, the cluster and the Telegram console are others.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use vigia_config::PlannedCheck;
use vigia_core::command::{Command, Reply};
use vigia_core::snapshot::{CheckSnapshot, StatsSnapshot, StatusSnapshot};

use crate::alerting::pipeline::{AlertStatus, Input as AlertInput, Stored, Then, Work};
use crate::history::TransitionRecord;
use crate::scheduler::SchedulerShared;
use crate::store::Op;

pub const SOCKET_FILE: &str = "vigia.sock";

/// What the door reads and where it sends commands; the check list is refreshed on
/// reload.
pub struct Door {
    pub host: watch::Receiver<Arc<str>>,
    pub started_at: u64,
    pub config: PathBuf,
    pub tasks: Arc<SchedulerShared>,
    /// The scheduled checks (the scheduler's own `Arc`s: no copy per check).
    pub checks: RwLock<Vec<Arc<PlannedCheck>>>,
    pub alerts: Arc<AlertStatus>,
    pub alert_tx: mpsc::Sender<AlertInput>,
    /// Whether the journal can write the store.
    pub store: Arc<crate::journal::StoreHealth>,
    /// Remediation's counts (and what else outlives its stage).
    pub remediation: Arc<crate::remediation::RemediationMemory>,
    /// Result history (buckets and transitions), read by the API and `vigia history`.
    pub history: Arc<crate::history::History>,
    /// In a cluster: where the cluster commands go (the member, over its own NATS
    /// connection); `None` standalone.
    pub cluster: Option<Arc<dyn ClusterDesk>>,
}

/// The cluster's side of the door: it carries out [`Command::ClusterStatus`],
/// [`Command::ClusterInfo`] and [`Command::Cluster`]. The door knows only this much
/// of the cluster.
pub trait ClusterDesk: Send + Sync {
    fn execute(&self, cmd: Command) -> futures::future::BoxFuture<'_, Reply>;
}

/// What a cluster command gets from a standalone engine.
pub const STANDALONE: &str = "this engine runs standalone: its config has no `cluster:` section";

/// `no check is named `wbe` (did you mean `web`?)`: the one sentence for an unknown
/// name, on the socket and over HTTP.
pub fn no_such_check(name: &str, names: &[String]) -> String {
    let hint = vigia_api::yaml::did_you_mean(name, names.iter().map(String::as_str))
        .map(|b| format!(" (did you mean `{b}`?)"))
        .unwrap_or_default();
    format!("no check is named `{name}`{hint}")
}

impl Door {
    /// The status map and the engine's counters, as one snapshot.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.snapshot_of(Texts::All)
    }

    /// The snapshot with or without its texts (targets, comments, messages): `/metrics`
    /// and badges need only names, states and counts.
    pub fn snapshot_of(&self, texts: Texts) -> StatusSnapshot {
        let now = crate::clock::unix_ms();
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| match texts {
                Texts::All => self.view(c, now),
                Texts::None => {
                    let mut v = schedule_view(
                        c,
                        self.tasks.book.check_without_texts(&c.name),
                        now,
                        Texts::None,
                    );
                    if !v.status {
                        v.ack = self.alerts.ack(&c.name);
                    }
                    v
                }
            })
            .collect();
        StatusSnapshot {
            host: self.host.borrow().to_string(),
            pid: std::process::id(),
            started_at: self.started_at,
            now,
            config: self.config.display().to_string(),
            checks,
            stats: Some(self.tasks.stats.snapshot()),
            channels: self.alerts.snapshot(),
        }
    }

    /// One scheduled check, as the snapshot has it; `Err` holds the scheduled names, for
    /// a did-you-mean.
    pub fn check(&self, name: &str) -> Result<CheckSnapshot, Vec<String>> {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        match checks.iter().find(|c| &*c.name == name) {
            Some(c) => Ok(self.view(c, crate::clock::unix_ms())),
            None => Err(checks.iter().map(|c| c.name.to_string()).collect()),
        }
    }

    /// The names of the scheduled checks (for a did-you-mean).
    pub fn names(&self) -> Vec<String> {
        self.checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    }

    /// Why the engine is not healthy, if it is not: the store cannot be written.
    pub fn unhealthy(&self) -> Option<String> {
        self.store.failing().map(|(since, why)| {
            format!(
                "the state store cannot be written since {} ago: {why}",
                vigia_core::alert::human_duration(crate::clock::unix_ms().saturating_sub(since))
            )
        })
    }

    fn view(&self, c: &PlannedCheck, now: u64) -> CheckSnapshot {
        let mut v = schedule_view(c, self.tasks.book.check(&c.name), now, Texts::All);
        if !v.status {
            v.ack = self.alerts.ack(&c.name);
        }
        v
    }

    /// Carries out a command.
    pub async fn execute(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Status => Reply::Status(self.snapshot()),
            Command::Stats => Reply::Stats(self.tasks.stats.snapshot()),
            Command::StatsReset => {
                self.tasks.stats.reset();
                Reply::Stats(self.tasks.stats.snapshot())
            }
            Command::RunNow { name } => match self.check(&name) {
                Err(names) => Reply::error(no_such_check(&name, &names)),
                // The view after the run: its schedule part and the state it left.
                Ok(_) => match self
                    .tasks
                    .run_now(&name)
                    .await
                    .and_then(|_| self.check(&name).ok())
                {
                    Some(check) => Reply::Ran {
                        check: Box::new(check),
                    },
                    None => Reply::error("the engine is stopping, or the check left the config"),
                },
            },
            Command::History { name, since_ms } => {
                let history = self.history.clone();
                let now = crate::clock::unix_ms();
                let n = name.clone();
                let r =
                    tokio::task::spawn_blocking(move || history.report(&n, since_ms, now)).await;
                match r {
                    Ok(Ok(Some(report))) => Reply::History(report),
                    Ok(Ok(None)) => {
                        let names = self.check(&name).err().unwrap_or_default();
                        Reply::error(format!(
                            "{}, and history has none of that name from the last 30 days",
                            no_such_check(&name, &names)
                        ))
                    }
                    Ok(Err(e)) => Reply::error(e.to_string()),
                    Err(e) => Reply::error(format!("reading the history failed: {e}")),
                }
            }
            cmd @ (Command::ClusterStatus
            | Command::ClusterInfo { .. }
            | Command::Cluster { .. }) => match &self.cluster {
                Some(desk) => desk.execute(cmd).await,
                None => Reply::error(STANDALONE),
            },
            Command::Ack { name, .. } if self.check(&name).is_err() => {
                let names = self.check(&name).err().unwrap_or_default();
                Reply::error(no_such_check(&name, &names))
            }
            cmd @ (Command::SilenceAdd { .. }
            | Command::SilenceList
            | Command::SilenceRemove { .. }
            | Command::Ack { .. }) => {
                let then = self.noted_in_history();
                let replies = self
                    .work(Work {
                        commands: vec![cmd],
                        ops: Vec::new(),
                        then,
                    })
                    .await;
                match replies {
                    Ok(mut r) => r
                        .pop()
                        .unwrap_or_else(|| Reply::error("the alert pipeline has stopped")),
                    Err(e) => Reply::error(e),
                }
            }
        }
    }

    /// Carries out alerting's commands (silences, acknowledgements) together with the
    /// caller's writes, in one transaction: the Telegram console keeps its update offset
    /// and its replies with the change they report.
    pub async fn work(&self, work: Work) -> Result<Vec<Reply>, String> {
        let stopped = || "the alert pipeline has stopped".to_string();
        let (tx, rx) = oneshot::channel();
        if self
            .alert_tx
            .send(AlertInput::Work(Box::new(work), tx))
            .await
            .is_err()
        {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// What keeps acknowledgements and new silences in the checks' history (the
    /// status page's changes, `vigia history`), as a [`Work`]'s `then`.
    pub fn noted_in_history(&self) -> Then {
        self.noted_in_history_and(|_| (Vec::new(), Vec::new()))
    }

    /// [`Door::noted_in_history`], then the caller's writes and messages from the same
    /// replies.
    pub fn noted_in_history_and(
        &self,
        and: impl FnOnce(&[Reply]) -> (Vec<Op>, Vec<(String, Stored)>) + Send + 'static,
    ) -> Then {
        let history = self
            .tasks
            .tally
            .get()
            .is_some()
            .then(|| self.history.clone());
        let names: Vec<Arc<str>> = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.name.clone())
            .collect();
        Box::new(move |replies: &[Reply]| {
            let mut ops = Vec::new();
            if let Some(h) = history {
                let now = crate::clock::unix_ms();
                for r in replies {
                    match r {
                        Reply::Acked {
                            check,
                            ack,
                            already: false,
                        } => ops.extend(h.transition_op(
                            check,
                            TransitionRecord {
                                at: ack.at,
                                to: "acknowledged".into(),
                                message: format!("acknowledged by {}", ack.by),
                                after_ms: ack.at.saturating_sub(ack.since),
                            },
                        )),
                        Reply::Silence(s) => {
                            let length =
                                vigia_core::alert::human_duration(s.until.saturating_sub(now));
                            let by = if s.by.is_empty() {
                                String::new()
                            } else {
                                format!(" by {}", s.by)
                            };
                            let reason = if s.reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", s.reason)
                            };
                            // Noted on the checks it covers now (a wide pattern on the
                            // first hundred: the silence list has it whole).
                            for name in names.iter().filter(|n| s.matches(n)).take(100) {
                                ops.extend(h.transition_op(
                                    name,
                                    TransitionRecord {
                                        at: s.created_at,
                                        to: "silenced".into(),
                                        message: format!(
                                            "silenced{by} for {length} (silence {}){reason}",
                                            s.id
                                        ),
                                        after_ms: 0,
                                    },
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
            let (more, messages) = and(replies);
            ops.extend(more);
            (ops, messages)
        })
    }
}

/// A scheduled check and its state (a check that has not run yet is up since `now`).
fn schedule_view(
    c: &PlannedCheck,
    state: Option<CheckSnapshot>,
    now: u64,
    texts: Texts,
) -> CheckSnapshot {
    let state = state.unwrap_or(CheckSnapshot {
        status: true,
        changed_at: now,
        ..Default::default()
    });
    CheckSnapshot {
        name: c.name.to_string(),
        group: c.group.as_deref().map(str::to_string),
        kind: c.kind.to_string(),
        target: match texts {
            Texts::All => c.check.target(),
            Texts::None => String::new(),
        },
        interval_ms: c.interval.as_millis() as u64,
        threshold: c.threshold,
        recover_after: c.recover_after,
        comment: match texts {
            Texts::All => c.comment.to_string(),
            Texts::None => String::new(),
        },
        ..state
    }
}

/// Whether a snapshot carries the checks' texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Texts {
    All,
    /// No targets, comments or messages.
    None,
}

/// Binds the socket (replacing a stale one left by a crash) and serves it until `stop`.
pub fn serve(
    path: &Path,
    door: Arc<Door>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        // A socket nobody answers on is a leftover of a crash; a live one means another
        // engine, which the state store's lock has already refused, so this is stale.
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    }
    Ok(tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut errors = AcceptErrors::default();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    let say = |e: &std::io::Error| {
                        tracing::error!(
                            event = "control_error",
                            "The control socket cannot accept a connection ({e}); retrying."
                        )
                    };
                    if !errors.wait(&e, &stop, say).await {
                        return;
                    }
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Beyond the cap: a short answer, and the descriptor is freed at once.
                tokio::spawn(async move {
                    let mut stream = stream;
                    let busy = Reply::error(format!(
                        "the engine is busy: {MAX_CONNECTIONS} control connections are open; try again"
                    ));
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(&line_of(&busy)),
                    )
                    .await;
                });
                continue;
            };
            let door = door.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &door)).await;
                drop(permit);
            });
        }
    }))
}

/// Failed accepts of a listener (out of descriptors, say): said at most once a minute,
/// each followed by a short wait rather than a spin on a listener that stays readable.
/// For the control socket and the HTTP API alike.
#[derive(Default)]
pub(crate) struct AcceptErrors {
    last_said: Option<std::time::Instant>,
}

impl AcceptErrors {
    /// Says `e` through `say` unless it said one less than a minute ago, then waits
    /// 100 ms. False when `stop` came meanwhile.
    pub(crate) async fn wait(
        &mut self,
        e: &std::io::Error,
        stop: &tokio_util::sync::CancellationToken,
        say: impl FnOnce(&std::io::Error),
    ) -> bool {
        if self
            .last_said
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.last_said = Some(std::time::Instant::now());
            say(e);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// Control connections served at once; more are answered "busy". With the request
/// timeout, what the socket can hold of the engine's descriptors is bounded, and the
/// rest stay for the checks.
pub const MAX_CONNECTIONS: usize = 32;
/// The largest request accepted: a command is a line of a few hundred bytes.
pub const MAX_REQUEST: u64 = 64 << 10;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

async fn answer(stream: UnixStream, door: &Door) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(r.take(MAX_REQUEST + 1)).read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => Reply::error(format!(
            "no request within {}: send one JSON line",
            vigia_api::Dur(REQUEST_TIMEOUT)
        )),
        Ok(Err(e)) => Reply::error(format!("bad request: {e}")),
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => Reply::error(format!(
            "request too large: at most {}",
            vigia_api::Bytes(MAX_REQUEST as usize)
        )),
        Ok(Ok(_)) => match serde_json::from_str::<Command>(&line) {
            Ok(cmd) => door.execute(cmd).await,
            Err(e) => Reply::error(format!("bad request: {e}")),
        },
    };
    w.write_all(&line_of(&reply)).await?;
    w.shutdown().await
}

/// A reply as the protocol sends it: one JSON line.
fn line_of(reply: &Reply) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(reply).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the engine at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("the engine at {path} gave an answer this vigia does not understand: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// Sends one command to a running engine.
pub async fn send(path: &Path, cmd: &Command) -> Result<Reply, ClientError> {
    let unreachable = |e: std::io::Error| ClientError::Unreachable {
        path: path.to_path_buf(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no socket there (is vigia running with this config?)".into()
            }
            std::io::ErrorKind::ConnectionRefused => "nobody listens (vigia is not running)".into(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as root or as the vigia user)".into()
            }
            _ => e.to_string(),
        },
    };
    let mut stream = UnixStream::connect(path).await.map_err(unreachable)?;
    let mut req = serde_json::to_string(cmd).unwrap_or_default();
    req.push('\n');
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(unreachable)?;
    serde_json::from_str(&line).map_err(|e| ClientError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads the counters of a running engine (for the benchmarks).
pub async fn stats(path: &Path) -> Result<StatsSnapshot, ClientError> {
    match send(path, &Command::Stats).await? {
        Reply::Stats(s) => Ok(s),
        other => Err(ClientError::BadAnswer {
            path: path.to_path_buf(),
            reason: format!("expected the counters, got {other:?}"),
        }),
    }
}
