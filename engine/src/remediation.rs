//! Remediation at run time: the stage that runs a check's actions (or its runbook) for
//! a committed transition, then hands the transition to alerting with the transcript.
//!
//! It subscribes to the bus of committed events and takes the transitions whose check
//! has something to run for them; alerting takes all the others. Admission (one run per
//! check at a time, cooldown, max_runs) is the core's pure `Admission`; programs run
//! through the one child runner (`vigia_plugins::child`). The transition is already in
//! the alert inbox: if the engine dies meanwhile, the alert still goes out at the next
//! start (without a transcript; actions are not re-run).
//!
//! A reload that changes `remediation:`, `actions:`, `runbooks:` or `commands:` builds a
//! new stage; runs under way finish in the old one, and run counts, runbook locks and
//! the last good runbook texts carry over ([`RemediationMemory`]).
//!
//! **Claims.** A run is claimed before it starts ([`Claims`]): the claim holds the
//! alert to send if the run never reports — the transition with the transcript
//! "outcome unknown". Standalone, the claim rewrites the transition's inbox entry, so
//! an engine killed mid-run alerts that at its next start; in a cluster the claim is
//! also a record in NATS that only one replica can create, and the leader alerts it
//! for a replica that died mid-run. A claimed run is never run again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigia_api::yaml::unknown_with_hint;
use vigia_config::remediation::{runbook_env, Action, ActionKind, RemediationSetup};
use vigia_core::alert::policy::Item;
use vigia_core::alert::AlertEvent;
use vigia_core::remedy::{Admission, CheckRemedy, Limits};
use vigia_core::status::Transition;
use vigia_plugins::child::{self, ChildSpec};

use crate::alerting::pipeline::Input as AlertInput;
use crate::book::StatusBook;
use crate::bus::{Committed, CommittedTransition};
use crate::clock::unix_ms;

/// Output kept of each of an action's stdout and stderr.
const ACTION_OUTPUT_CAP: usize = 64 << 10;

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

/// Runs one program of an action; `(exit code, output tail)`.
async fn run_argv(argv: &[String], action: &Action) -> Result<(Option<i32>, String), String> {
    let mut spec = ChildSpec::new(Path::new(&argv[0]), &argv[1..], ACTION_OUTPUT_CAP);
    spec.env = &action.env;
    spec.cwd = action.cwd.as_deref();
    spec.timeout = Some(action.timeout);
    // An action may start a service (`galera.sh start node3`): what it leaves running
    // stays. A timeout still kills its whole group.
    spec.kill_leftovers = false;
    match child::run(spec).await {
        Ok(out) => {
            let mut output = out.stdout;
            output.extend_from_slice(&out.stderr);
            Ok((out.code, tail(&output, 1000)))
        }
        Err(child::ChildError::Spawn(e)) => Err(format!("cannot start {}: {e}", argv[0])),
        Err(e) => Err(e.to_string()),
    }
}

fn atomic_write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("vigia-tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Runs an action (or says what it would run). Every outcome is an `action` event.
pub async fn run_action(
    action: &Action,
    check: &str,
    dry_run: bool,
    memory: &RemediationMemory,
) -> ActionResult {
    let dry = dry_run || action.dry_run;
    let r = execute(action, check, dry).await;
    let result = match (dry, r.ok) {
        (true, _) => "dry_run",
        (false, true) => "ok",
        (false, false) => "failed",
    };
    memory.count_run(&action.name, result);
    r
}

async fn execute(action: &Action, check: &str, dry_run: bool) -> ActionResult {
    let started = Instant::now();
    let describe = match &action.kind {
        ActionKind::Command(argv) => argv.join(" "),
        ActionKind::FileSwitch { file, to, .. } => {
            format!("switch {} to {}", file.display(), to.display())
        }
    };
    if dry_run {
        tracing::info!(event = "action", action = %action.name, check = %check, dry_run = true, argv = %describe, "Dry run: would run {}: {describe}", action.name);
        return ActionResult {
            ok: true,
            line: format!("· {}: would run: {describe} (dry run)", action.name),
        };
    }
    let (ok, detail, code, output) = match &action.kind {
        ActionKind::Command(argv) => match run_argv(argv, action).await {
            Ok((code, out)) => (
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
                    Ok((Some(0), _)) => {}
                    Ok((code, out)) => {
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

/// What outlives a rebuild of the stage: run counts, runbook locks, last good texts.
#[derive(Default)]
pub struct RemediationMemory {
    admission: Mutex<Admission>,
    /// One run of a runbook at a time: a second transition waits for the first run.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The last text of each runbook that loaded: a broken edit does not stop remediation.
    texts: Mutex<HashMap<String, Vec<u8>>>,
    /// Runs since the engine started, by action (a runbook is `runbook:NAME`) and
    /// result (`ok`, `failed`, `dry_run`), for `/metrics`. Action names come from the
    /// config, so the set is bounded.
    runs: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
    /// The last transcript of each check with a remedy, and the transition (unix ms)
    /// it answered: for the status page. One per check, so bounded by the config.
    transcripts: Mutex<HashMap<String, (u64, String)>>,
}

impl RemediationMemory {
    fn remember(&self, check: &str, at: u64, transcript: &str) {
        self.transcripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(check.to_string(), (at, transcript.to_string()));
    }

    /// The last remediation transcript of `check` and the transition it answered.
    pub fn transcript(&self, check: &str) -> Option<(u64, String)> {
        self.transcripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(check)
            .cloned()
    }

    fn count_run(&self, action: &str, result: &'static str) {
        *self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((action.to_string(), result))
            .or_default() += 1;
    }

    /// Every (action, result, runs) so far.
    pub fn run_counts(&self) -> Vec<(String, &'static str, u64)> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((a, r), n)| (a.clone(), *r, *n))
            .collect()
    }
}

/// Where a run is claimed before it starts: so that it runs once per transition, and
/// a run that never reported (the engine died during it) is alerted as "outcome
/// unknown" instead of being run again.
pub trait Claims: Send + Sync {
    /// Before the run of `seq`'s transition: `unknown` is what to alert if the run
    /// never reports. `false`: somebody else claimed this run: it is neither run nor
    /// alerted here (the claimant does both; the implementation dropped `seq`'s inbox
    /// entry).
    fn claim<'a>(&'a self, seq: u64, unknown: &'a Item) -> BoxFuture<'a, bool>;
    /// After the run: `done` is the transition with its transcript, which alerting
    /// takes next.
    fn finish<'a>(&'a self, done: &'a Item) -> BoxFuture<'a, ()>;
}

/// The standalone engine's claims: the transition's inbox entry, rewritten with the
/// "outcome unknown" transcript until alerting takes the real one.
pub struct StoreClaims(pub Arc<crate::store::Store>);

impl Claims for StoreClaims {
    fn claim<'a>(&'a self, seq: u64, unknown: &'a Item) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Ok(bytes) = serde_json::to_vec(unknown) else {
                return true;
            };
            let store = self.0.clone();
            let ops = vec![crate::store::Op::Inbox(seq, Some(bytes))];
            match tokio::task::spawn_blocking(move || store.apply(&ops)).await {
                Ok(Ok(())) => {}
                // A repair is not put off for a full disk: it runs, unclaimed.
                Ok(Err(e)) => {
                    tracing::warn!(event = "remediation_claim", check = unknown.check().unwrap_or_default(), "The remediation run of {} could not be claimed in the store ({e}); it runs anyway (if the engine dies during it, its alert will not say so).", unknown.check().unwrap_or_default())
                }
                Err(_) => {}
            }
            true
        })
    }

    fn finish<'a>(&'a self, _done: &'a Item) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The transcript of a run that began at `started` (unix ms) on `host` and never
/// reported.
pub fn unknown_outcome(host: &str, started: u64) -> String {
    let at = jiff::Timestamp::from_millisecond(started as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| started.to_string());
    format!(
        "⚠ outcome unknown: the remediation run that began at {at} on {host} never reported (the engine stopped during it); it is not run again, so check by hand"
    )
}

/// Runs remediation for transitions, then hands them to alerting.
pub struct Remediator {
    setup: Arc<RemediationSetup>,
    claims: Arc<dyn Claims>,
    host: String,
    alerts: mpsc::Sender<AlertInput>,
    memory: Arc<RemediationMemory>,
    env: Arc<vigia_lua::HostEnv>,
    book: Arc<StatusBook>,
}

/// What a runbook sees of the engine: its actions and the status map (a snapshot read).
struct RunbookHost {
    setup: Arc<RemediationSetup>,
    check: String,
    book: Arc<StatusBook>,
    /// Actions started (dry runs included): a run that started none is not counted
    /// against cooldown and max_runs.
    acted: Arc<std::sync::atomic::AtomicU32>,
    memory: Arc<RemediationMemory>,
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
        let memory = self.memory.clone();
        Box::pin(async move {
            let r = run_action(&action, &check, dry_run, &memory).await;
            Ok((r.ok, r.line))
        })
    }

    fn status(&self, check: &str) -> Result<vigia_lua::runbook::CheckView, String> {
        match self.book.check(check) {
            Some(st) => Ok(vigia_lua::runbook::CheckView {
                status: st.status,
                failures: st.failures,
                successes: st.successes,
                message: st
                    .last
                    .as_ref()
                    .map(|l| l.message.clone())
                    .unwrap_or_else(|| "not run yet".into()),
            }),
            None => {
                let names: Vec<String> = self.book.statuses().into_keys().collect();
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
    pub fn new(
        setup: RemediationSetup,
        hostname: &str,
        alerts: mpsc::Sender<AlertInput>,
        book: Arc<StatusBook>,
        memory: Arc<RemediationMemory>,
        claims: Arc<dyn Claims>,
    ) -> Remediator {
        let env = runbook_env(hostname, setup.commands.clone());
        {
            let mut texts = memory.texts.lock().unwrap_or_else(|p| p.into_inner());
            for rb in setup.runbooks.values() {
                if let Ok(t) = std::fs::read(&rb.file) {
                    texts.insert(rb.name.clone(), t);
                }
            }
        }
        Remediator {
            setup: Arc::new(setup),
            claims,
            host: hostname.to_string(),
            alerts,
            memory,
            env,
            book,
        }
    }

    /// Takes the transitions that have something to run from the bus until `stop`, each
    /// in a task of `jobs` (so a shutdown can wait for them); returns the subscription
    /// for the next stage.
    pub fn spawn(
        self,
        mut events: mpsc::Receiver<Committed>,
        stop: CancellationToken,
        jobs: TaskTracker,
    ) -> tokio::task::JoinHandle<mpsc::Receiver<Committed>> {
        let r = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    biased;
                    e = events.recv() => e,
                    _ = stop.cancelled() => None,
                };
                let Some(event) = event else { break };
                // Whatever the journal published before the stop is still taken.
                r.take(event, &jobs);
            }
            while let Ok(event) = events.try_recv() {
                r.take(event, &jobs);
            }
            events
        })
    }

    fn take(self: &Arc<Self>, event: Committed, jobs: &TaskTracker) {
        let Committed::Transition(t) = event else {
            return;
        };
        let Some(remedy) = t.remedy_now() else { return };
        let r = self.clone();
        jobs.spawn(async move { r.handle(&t, &remedy).await });
    }

    fn limits(&self) -> Limits {
        Limits {
            cooldown: self.setup.cooldown,
            max_runs: self.setup.max_runs,
        }
    }

    /// Whether a run may start now: `Err` says why not. `key` is the check (actions)
    /// or `runbook NAME`.
    fn admit(&self, key: &str, transition: Transition, wait_running: bool) -> Result<(), String> {
        self.memory
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(key, transition, wait_running, self.limits(), unix_ms())
    }

    /// Ends a run; `counted`: whether it goes against cooldown and max_runs.
    fn done(&self, key: &str, started: u64, counted: bool) {
        self.memory
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done(key, started, counted);
    }

    async fn handle(&self, t: &CommittedTransition, remedy: &CheckRemedy) {
        let check = t.event.check.to_string();
        let transition = t.event.transition;
        let mut unknown = t.event.clone();
        unknown.transcript = Some(unknown_outcome(&self.host, unix_ms()));
        let unknown = Item::Transition(unknown);
        if !self.claims.claim(t.seq, &unknown).await {
            // The claimant runs it and alerts it.
            tracing::warn!(event = "remediation_skipped", check = %check, "{check}: the remediation of its {} at {} was claimed by another replica already; it is neither run nor alerted here.", transition.as_str(), t.event.at);
            return;
        }
        let transcript = match &remedy.runbook {
            Some(name) => self.run_runbook(name, &t.event).await,
            None => {
                let actions = remedy.for_transition(transition);
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
                            let r =
                                run_action(action, &check, self.setup.dry_run, &self.memory).await;
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
        self.memory.remember(&check, t.event.at, &transcript);
        let mut event = t.event.clone();
        event.transcript = Some(transcript);
        let done = Item::Transition(event);
        self.claims.finish(&done).await;
        let _ = self
            .alerts
            .send(AlertInput::Item(t.seq, Box::new(done)))
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
        let lock = self
            .memory
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
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
                self.memory
                    .texts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), text);
                Ok(prepared)
            }
            Err(e) => {
                tracing::error!(event = "script_error", runbook = %name, script = %rb.display, "{e}; running the last version that loaded.");
                lines.push(format!("· {e}; ran the last version that loaded"));
                let last = self
                    .memory
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
            book: self.book.clone(),
            acted: acted.clone(),
            memory: self.memory.clone(),
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
        self.memory.count_run(
            &format!("runbook:{name}"),
            match (out.ok, self.setup.dry_run) {
                (_, true) => "dry_run",
                (true, false) => "ok",
                (false, false) => "failed",
            },
        );
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
