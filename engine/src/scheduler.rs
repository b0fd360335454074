//! Runs every check on its own schedule.
//!
//! One task per check, looping on `select!` over its next tick and its cancellation.
//! - First runs are spread over the interval by a stable hash of the name (members of a
//!   group share their group's phase), so 10 000 checks do not fire in one millisecond
//!   and a restart keeps each check's phase.
//! - Ticks are `start + k * interval`: the period does not drift with run time. A check
//!   never overlaps itself: a run that ends after its next tick makes that run late, and
//!   ticks missed by whole intervals (an overloaded machine) are skipped and counted.
//! - A global semaphore caps concurrent runs. A run that passes its timeout becomes the
//!   failure "timed out after 3s"; a panic becomes an UNKNOWN outcome. Neither touches
//!   other checks.
//! - The scheduler knows nothing of alert channels or the store: a changed state goes,
//!   as an [`Observation`], to the journal (`journal.rs`), and the check moves on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vigia_api::{fnv1a, CheckOutcome, Dur, RunContext};

use vigia_config::{Plan, PlannedCheck};
use vigia_core::snapshot::StatsSnapshot;
use vigia_core::status::{CheckState, LastRun, Transition};

use crate::book::StatusBook;
pub use crate::clock::unix_ms;

/// A changed entry of the status map, on its way to the journal.
#[derive(Clone)]
pub struct Observation {
    pub spec: Arc<PlannedCheck>,
    pub state: CheckState,
    pub transition: Option<Transition>,
    /// When the status had last changed before this transition (unix ms).
    pub previous_change: u64,
    pub outcome: CheckOutcome,
}

/// Lateness of check starts versus their schedule, in 100 µs buckets up to 1 s.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

const BUCKET_US: u64 = 100;
const N_BUCKETS: usize = 10_001;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let i = ((d.as_micros() as u64) / BUCKET_US).min(N_BUCKETS as u64 - 1) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The q-quantile in ms (upper edge of its bucket); 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        (N_BUCKETS as u64 * BUCKET_US) as f64 / 1000.0
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// Counters a benchmark or `vigia status` reads.
#[derive(Default)]
pub struct Stats {
    pub executed: AtomicU64,
    pub skipped: AtomicU64,
    pub timeouts: AtomicU64,
    pub panics: AtomicU64,
    pub out_of_fds: AtomicU64,
    pub lateness: Histogram,
}

/// Whether a check failed because the process had no file descriptor left.
fn out_of_fds(o: &CheckOutcome) -> bool {
    !o.is_ok() && (o.message.contains("Too many open files") || o.message.contains("os error 24"))
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            executed: self.executed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            out_of_fds: self.out_of_fds.load(Ordering::Relaxed),
            fd_limit: crate::fds::limit(),
            lateness_p50_ms: self.lateness.quantile_ms(0.5),
            lateness_p99_ms: self.lateness.quantile_ms(0.99),
            lateness_max_ms: self.lateness.quantile_ms(1.0),
        }
    }

    pub fn reset(&self) {
        self.executed.store(0, Ordering::Relaxed);
        self.skipped.store(0, Ordering::Relaxed);
        self.timeouts.store(0, Ordering::Relaxed);
        self.panics.store(0, Ordering::Relaxed);
        self.out_of_fds.store(0, Ordering::Relaxed);
        self.lateness.reset();
    }
}

/// What every check task of the scheduler shares: the status map it writes, the way to
/// the journal, the counters and the limit on concurrent runs.
pub struct SchedulerShared {
    pub book: Arc<StatusBook>,
    pub observations: mpsc::Sender<Observation>,
    pub stats: Stats,
    semaphore: Arc<Semaphore>,
    /// The permits the semaphore is meant to have (`engine.max_concurrent_checks`).
    permits: std::sync::Mutex<usize>,
}

impl SchedulerShared {
    pub fn new(
        max_concurrent: usize,
        book: Arc<StatusBook>,
        observations: mpsc::Sender<Observation>,
    ) -> Arc<SchedulerShared> {
        let n = max_concurrent.max(1);
        Arc::new(SchedulerShared {
            book,
            observations,
            stats: Stats::default(),
            semaphore: Arc::new(Semaphore::new(n)),
            permits: std::sync::Mutex::new(n),
        })
    }

    /// A reload changed `engine.max_concurrent_checks`: more permits at once; fewer as
    /// running checks give theirs back (none is cut short).
    pub fn set_max_concurrent(&self, n: usize) {
        let n = n.max(1);
        let mut current = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        if n > *current {
            self.semaphore.add_permits(n - *current);
        } else if n < *current {
            let fewer = (*current - n) as u32;
            let sem = self.semaphore.clone();
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many(fewer).await {
                    p.forget();
                }
            });
        }
        *current = n;
    }
}

struct Running {
    spec: Arc<PlannedCheck>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// What a reload changed, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub added: usize,
    pub changed: usize,
    pub removed: Vec<Arc<str>>,
    pub kept: usize,
    /// Added checks that resumed the state they had when they were removed.
    pub resumed: Vec<Arc<str>>,
}

pub struct Scheduler {
    shared: Arc<SchedulerShared>,
    running: HashMap<Arc<str>, Running>,
    /// Whether the first plan was applied: later ones are reloads.
    started: bool,
}

/// On a reload, checks that are new or changed run at once (an operator who saved a
/// script wants to see it run), unless there are more than this many: then they are
/// spread over their intervals like at start, so a big reload is not a burst.
pub const RUN_AT_ONCE_MAX: usize = 100;

impl Scheduler {
    pub fn new(shared: Arc<SchedulerShared>) -> Self {
        Scheduler {
            shared,
            running: HashMap::new(),
            started: false,
        }
    }

    pub fn shared(&self) -> &Arc<SchedulerShared> {
        &self.shared
    }

    /// The checks currently scheduled.
    pub fn specs(&self) -> impl Iterator<Item = &Arc<PlannedCheck>> {
        self.running.values().map(|r| &r.spec)
    }

    /// Makes the running set match `plan`: unchanged checks keep running untouched,
    /// changed ones restart (after their current run ends) with their status kept,
    /// removed ones stop and leave the status map (their state is kept a while, see
    /// [`crate::book::RETAIN_REMOVED_MS`]).
    pub fn apply(&mut self, plan: &Plan) -> ApplySummary {
        let mut summary = ApplySummary::default();
        let mut next: HashMap<Arc<str>, Running> = HashMap::new();
        let fresh = plan
            .checks
            .iter()
            .filter(|p| !self.running.get(&p.name).is_some_and(|r| r.spec.same_as(p)))
            .count();
        let run_now = self.started && fresh <= RUN_AT_ONCE_MAX;
        self.started = true;
        let base = Instant::now();
        // A fixed grid for A/B benchmarks (BENCHMARKS.md); not a setting.
        let grid_ms = std::env::var("VIGIA_BENCH_GRID_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| grid_of(plan.checks.iter()));
        for planned in &plan.checks {
            let old = self.running.remove(&planned.name);
            match old {
                Some(r) if r.spec.same_as(planned) => {
                    summary.kept += 1;
                    next.insert(planned.name.clone(), r);
                }
                old => {
                    let previous = old.map(|r| {
                        summary.changed += 1;
                        r.cancel.cancel();
                        r.handle
                    });
                    if previous.is_none() {
                        summary.added += 1;
                    }
                    let spec = Arc::new(planned.clone());
                    if self.shared.book.ensure(&spec.name, unix_ms()) {
                        summary.resumed.push(spec.name.clone());
                    }
                    let cancel = CancellationToken::new();
                    let handle = tokio::spawn(check_loop(
                        spec.clone(),
                        self.shared.clone(),
                        cancel.clone(),
                        previous,
                        Start {
                            base,
                            grid_ms,
                            run_now,
                        },
                    ));
                    next.insert(
                        spec.name.clone(),
                        Running {
                            spec,
                            cancel,
                            handle,
                        },
                    );
                }
            }
        }
        for (name, r) in self.running.drain() {
            let broken = r
                .spec
                .source
                .as_deref()
                .is_some_and(|src| plan.broken.iter().any(|b| b.file == src));
            if broken {
                // Its file does not load any more: the last good version keeps running.
                next.insert(name, r);
                continue;
            }
            r.cancel.cancel();
            self.shared.book.forget(&name, unix_ms());
            summary.removed.push(name);
        }
        summary.removed.sort();
        self.running = next;
        summary
    }

    /// Stops scheduling; waits up to `grace` for running checks to finish, then aborts
    /// what is left. Returns how many were aborted.
    pub async fn shutdown(&mut self, grace: Duration) -> usize {
        for r in self.running.values() {
            r.cancel.cancel();
        }
        let mut handles: Vec<JoinHandle<()>> =
            self.running.drain().map(|(_, r)| r.handle).collect();
        let deadline = Instant::now() + grace;
        let mut aborted = 0;
        for h in handles.iter_mut() {
            if tokio::time::timeout_at(deadline, &mut *h).await.is_err() {
                h.abort();
                aborted += 1;
            }
        }
        aborted
    }
}

/// Phases sit on a grid: checks due in the same slot run in one wakeup of the runtime,
/// and a wakeup's cost is paid once for all of them (../shared/peer-bench/FLOOR.md: a
/// bare C connector pays 27 µs per connect in a burst, 129 µs alone in its wakeup).
/// The grid is the one that gives each wakeup about [`CHECKS_PER_WAKEUP`] checks at
/// the plan's rate, between [`MIN_GRID_MS`] and [`MAX_GRID_MS`], and never coarser than
/// a twentieth of a check's interval: an interval is never burst in a few slots.
/// 1 000 checks every 10 s (100/s): 200 ms; 10 000 every 10 s or 1 000 every 1 s: 50 ms.
pub const MIN_GRID_MS: u64 = 50;
pub const MAX_GRID_MS: u64 = 1000;
pub const CHECKS_PER_WAKEUP: f64 = 20.0;

/// The grid for a plan's checks, in ms.
pub fn grid_of<'a>(checks: impl IntoIterator<Item = &'a PlannedCheck>) -> u64 {
    let rate: f64 = checks
        .into_iter()
        .map(|c| 1.0 / c.interval.as_secs_f64().max(0.001))
        .sum();
    if rate <= 0.0 {
        return MIN_GRID_MS;
    }
    ((CHECKS_PER_WAKEUP / rate * 1000.0) as u64).clamp(MIN_GRID_MS, MAX_GRID_MS)
}

/// Where in its interval a check runs, on a grid of `grid_ms`: a stable hash of its
/// name (or group), spread over the whole interval.
pub fn phase(spec: &PlannedCheck, grid_ms: u64) -> Duration {
    let key = spec.group.as_deref().unwrap_or(&spec.name);
    let ms = (spec.interval.as_millis() as u64).max(1);
    let grid = grid_ms.min((ms / 20).max(MIN_GRID_MS)).min(ms);
    let slots = (ms / grid).max(1);
    Duration::from_millis((fnv1a(key) % slots) * grid)
}

/// When a check task starts: the instant its phase counts from (one for every task
/// that one `apply` starts, so the checks of a slot share one deadline exactly), the
/// grid, and whether to run at once instead.
struct Start {
    base: Instant,
    grid_ms: u64,
    run_now: bool,
}

async fn check_loop(
    spec: Arc<PlannedCheck>,
    shared: Arc<SchedulerShared>,
    cancel: CancellationToken,
    previous: Option<JoinHandle<()>>,
    start: Start,
) {
    // A changed check waits for its old version's last run: never two at once.
    if let Some(h) = previous {
        let _ = h.await;
    }
    // A script's ctx.state outlives restarts and new versions: the new check starts
    // from what the last run of the old one (or the store) left.
    let saved = shared.book.saved_state(&spec.name);
    if let Some(state) = saved {
        spec.check.restore_state(&state);
    }
    let interval = spec.interval;
    let mut next = if start.run_now {
        Instant::now()
    } else {
        start.base + phase(&spec, start.grid_ms)
    };
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        // Boxed: the run's state exists only while it runs, so an idle check's task
        // holds just its timer (968 -> ~300 bytes per check at rest).
        let ran = Box::pin(one_run(&spec, &shared, &cancel, next)).await;
        if !ran {
            return;
        }

        next += interval;
        // Behind by less than an interval (a run cut off at timeout = interval): run
        // late. Behind by whole intervals (overload): skip those ticks and count them.
        let now = Instant::now();
        if next + interval <= now {
            let missed = (now.duration_since(next).as_nanos() / interval.as_nanos().max(1)) as u32;
            shared
                .stats
                .skipped
                .fetch_add(u64::from(missed), Ordering::Relaxed);
            next += interval * missed;
        }
    }
}

/// Waits for a concurrency slot, runs the check once and records the outcome. False if
/// cancelled while waiting for the slot.
async fn one_run(
    spec: &Arc<PlannedCheck>,
    shared: &SchedulerShared,
    cancel: &CancellationToken,
    due: Instant,
) -> bool {
    let permit = tokio::select! {
        biased;
        _ = cancel.cancelled() => return false,
        p = shared.semaphore.acquire() => p,
    };
    let started = Instant::now();
    shared
        .stats
        .lateness
        .record(started.saturating_duration_since(due));
    let outcome = run_once(spec, &shared.stats).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(permit);
    shared.stats.executed.fetch_add(1, Ordering::Relaxed);
    if out_of_fds(&outcome) {
        shared.stats.out_of_fds.fetch_add(1, Ordering::Relaxed);
    }
    record(spec, shared, outcome, duration_ms).await;
    true
}

/// One run, bounded by the check's timeout, with panics contained.
pub async fn run_once(spec: &PlannedCheck, stats: &Stats) -> CheckOutcome {
    let ctx = RunContext {
        check: &spec.name,
        timeout: spec.timeout,
    };
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| spec.check.run(ctx)));
    let fut = match started {
        Ok(f) => f,
        Err(panic) => {
            stats.panics.fetch_add(1, Ordering::Relaxed);
            return crashed(panic);
        }
    };
    match tokio::time::timeout(spec.timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            stats.panics.fetch_add(1, Ordering::Relaxed);
            crashed(panic)
        }
        Err(_) => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            CheckOutcome::critical(format!("timed out after {}", Dur(spec.timeout)))
        }
    }
}

fn crashed(panic: Box<dyn std::any::Any + Send>) -> CheckOutcome {
    CheckOutcome::unknown(format!("the check crashed: {}", panic_message(&*panic)))
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

async fn record(
    spec: &Arc<PlannedCheck>,
    shared: &SchedulerShared,
    outcome: CheckOutcome,
    duration_ms: f64,
) {
    let now = unix_ms();
    let ok = outcome.is_ok();
    let observation = shared
        .book
        .update(&spec.name, now, |entry: &mut CheckState| {
            let before = entry.durable_part();
            let previous_change = entry.changed_at;
            let transition = entry.record(ok, spec.threshold, spec.recover_after, now);
            let state_changed = match spec.check.take_state() {
                Some(state) => {
                    entry.state = Some(state);
                    true
                }
                None => false,
            };
            match transition {
                Some(Transition::Failed) => entry.failed_message = Some(outcome.message.clone()),
                Some(Transition::Recovered) => {}
                None => {}
            }
            entry.last = Some(LastRun {
                ok,
                severity: outcome.severity,
                value: outcome.value,
                message: outcome.message.clone(),
                duration_ms,
                at: now,
            });
            tracing::debug!(
                event = "check",
                check = &*spec.name,
                ok,
                failures = entry.failures,
                duration_ms,
                "{}",
                outcome.message
            );
            (state_changed || before != entry.durable_part()).then(|| Observation {
                spec: spec.clone(),
                state: entry.clone(),
                transition,
                previous_change,
                outcome,
            })
        });
    if let Some(o) = observation {
        // The journal stops only after every check task has ended.
        let _ = shared.observations.send(o).await;
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// 10 000 checks are 10 000 tasks: what a task holds between runs is per-check memory.
    #[tokio::test]
    async fn an_idle_check_task_is_small() {
        let (tx, _rx) = mpsc::channel(1);
        let shared = SchedulerShared::new(1, StatusBook::new(), tx);
        let spec = Arc::new(PlannedCheck {
            name: "x".into(),
            group: None,
            check: Arc::new(Nop),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            threshold: 1,
            recover_after: 1,
            comment: "".into(),
            source: None,
            alerting: None,
            remedy: None,
            fingerprint: 0,
        });
        let start = Start {
            base: Instant::now(),
            grid_ms: MIN_GRID_MS,
            run_now: false,
        };
        let f = check_loop(spec, shared, CancellationToken::new(), None, start);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 400, "the check task future grew to {size} bytes");
    }

    struct Nop;
    impl vigia_api::Check for Nop {
        fn run<'a>(&'a self, _: RunContext<'a>) -> futures::future::BoxFuture<'a, CheckOutcome> {
            Box::pin(async { CheckOutcome::ok("") })
        }
        fn target(&self) -> String {
            String::new()
        }
    }
}
