//! Runs every check on its own schedule.
//!
//! One ticker task holds every check's next tick in a timeline and wakes once per grid
//! slot; each due check then runs as a task of its own, which ends with its run. An
//! idle check is a [`Slot`] in the timeline, not a task (memory at 10 000 checks).
//! - First runs are spread over the interval by a stable hash of the name (members of a
//!   group share their group's phase), so 10 000 checks do not fire in one millisecond
//!   and a restart keeps each check's phase.
//! - Ticks are `epoch + phase + k * interval`, with one epoch (the scheduler's start) for
//!   every check, whenever it was added: the period does not drift with run time, and
//!   checks added later (a reload, a cluster placing checks here in batches) share their
//!   grid slot's wakeup with those already there. A check that runs at once (new after a
//!   reload, taken over) then rejoins its phase. A check never overlaps itself: a run
//!   that ends after its next tick makes that run late, and ticks missed by whole
//!   intervals (an overloaded machine) are skipped and counted.
//! - A global semaphore caps concurrent runs. A run that passes its timeout becomes the
//!   failure "timed out after 3s"; a panic becomes an UNKNOWN outcome. Neither touches
//!   other checks.
//! - The scheduler knows nothing of alert channels or the store: a changed state goes,
//!   as an [`Observation`], to the journal (`journal.rs`), and the check moves on.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigia_api::{fnv1a, CheckOutcome, Dur, RunContext};

use vigia_config::{Plan, PlannedCheck};
use vigia_core::snapshot::{CheckSnapshot, StatsSnapshot};
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
    /// The sum of the recorded values, in µs.
    sum_us: AtomicU64,
}

const BUCKET_US: u64 = 100;
const N_BUCKETS: usize = 10_001;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = (us / BUCKET_US).min(N_BUCKETS as u64 - 1) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// For each upper bound (in µs, ascending), how many values were at most it
    /// (to the bucket: 100 µs), then the count of all and their sum in µs: a
    /// Prometheus histogram.
    pub fn cumulative(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, u64) {
        let mut out = Vec::with_capacity(bounds_us.len());
        let mut seen = 0u64;
        let mut i = 0usize;
        for &b in bounds_us {
            // Bucket i holds [i·100 µs, (i+1)·100 µs): it is under b when its top is.
            let last = ((b / BUCKET_US) as usize).min(N_BUCKETS);
            while i < last {
                seen += self.buckets[i].load(Ordering::Relaxed);
                i += 1;
            }
            out.push(seen);
        }
        while i < N_BUCKETS {
            seen += self.buckets[i].load(Ordering::Relaxed);
            i += 1;
        }
        (out, seen, self.sum_us.load(Ordering::Relaxed))
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
        self.sum_us.store(0, Ordering::Relaxed);
    }
}

/// Counters a benchmark or `vigia status` reads.
#[derive(Default)]
pub struct Stats {
    pub executed: AtomicU64,
    /// Wakeups of the ticker that started at least one run.
    pub wakeups: AtomicU64,
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
            wakeups: self.wakeups.load(Ordering::Relaxed),
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
        self.wakeups.store(0, Ordering::Relaxed);
        self.skipped.store(0, Ordering::Relaxed);
        self.timeouts.store(0, Ordering::Relaxed);
        self.panics.store(0, Ordering::Relaxed);
        self.out_of_fds.store(0, Ordering::Relaxed);
        self.lateness.reset();
    }
}

/// What every check task of the scheduler shares: the status map it writes, the way to
/// the journal, the counters and the limit on concurrent runs.
/// Where every run is counted as it ends, whether or not it changed the check's state
/// (the result history). The scheduler knows only this much of it.
pub trait RunTally: Send + Sync {
    fn count(&self, check: &Arc<str>, ok: bool, duration_ms: f64, at: u64);
}

/// Where every run goes whole as it ends (the recording). The
/// scheduler knows only this much of it.
pub trait RunRecord: Send + Sync {
    fn run(&self, check: &str, outcome: &CheckOutcome, duration_ms: f64, at: u64);
}

pub struct SchedulerShared {
    pub book: Arc<StatusBook>,
    /// Set once at start when history is on.
    pub tally: std::sync::OnceLock<Arc<dyn RunTally>>,
    /// Set once at start when recording (`engine.record`, `--record`).
    pub recorder: std::sync::OnceLock<Arc<dyn RunRecord>>,
    pub observations: mpsc::Sender<Observation>,
    pub stats: Stats,
    semaphore: Arc<Semaphore>,
    /// The permits the semaphore is meant to have (`engine.max_concurrent_checks`).
    permits: std::sync::Mutex<usize>,
    /// Shutdown: no run starts any more.
    stop: CancellationToken,
    /// Shutdown after the grace period: runs in progress are cut short.
    abort: CancellationToken,
    /// The scheduled checks by name (written by [`Scheduler::apply`] alone; read by
    /// [`SchedulerShared::run_now`]).
    running: std::sync::RwLock<HashMap<Arc<str>, Arc<Slot>>>,
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
            tally: std::sync::OnceLock::new(),
            recorder: std::sync::OnceLock::new(),
            observations,
            stats: Stats::default(),
            semaphore: Arc::new(Semaphore::new(n)),
            permits: std::sync::Mutex::new(n),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            running: Default::default(),
        })
    }

    /// How many scheduled checks satisfy `f`, counted now.
    pub fn count_running(&self, f: impl Fn(&PlannedCheck) -> bool) -> usize {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| f(&s.spec))
            .count()
    }

    /// Runs `name` now, outside its schedule, and records the outcome like any run:
    /// its snapshot after the run. A run of it in progress ends first (a check never
    /// overlaps itself); a tick that comes during this run is skipped, as the check
    /// has just run. `None`: no such check is scheduled, or the engine is stopping.
    pub async fn run_now(&self, name: &str) -> Option<CheckSnapshot> {
        let slot = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()?;
        loop {
            if slot.is_retired() || self.stop.is_cancelled() {
                return None;
            }
            if slot
                .state
                .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break;
            }
            slot.wait_idle().await;
        }
        prepare(&slot, self).await;
        let ran = one_run(&slot, self, None).await;
        if slot.state.swap(IDLE, Ordering::AcqRel) == OWED {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        }
        slot.idle.notify_waiters();
        ran.then(|| self.book.check(name)).flatten()
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
    timeline: Arc<Timeline>,
    /// The runs in progress, for the grace period at shutdown.
    runs: TaskTracker,
    /// Whether the first plan was applied (and the ticker started): later ones are
    /// reloads.
    started: bool,
    /// Every check's ticks are `epoch + phase + k * interval` (set by the first apply).
    epoch: Option<Instant>,
    /// The grid new checks are phased on; kept while a plan's rate moves it less than
    /// [`GRID_HYSTERESIS`]×, so that checks added in batches land on one set of slots.
    grid_ms: Option<u64>,
}

/// On a reload, checks that are new or changed run at once (an operator who saved a
/// script wants to see it run), unless there are more than this many: then they are
/// spread over their intervals like at start, so a big reload is not a burst.
pub const RUN_AT_ONCE_MAX: usize = 100;

impl Scheduler {
    pub fn new(shared: Arc<SchedulerShared>) -> Self {
        Scheduler {
            shared,
            timeline: Arc::default(),
            runs: TaskTracker::new(),
            started: false,
            epoch: None,
            grid_ms: None,
        }
    }

    pub fn shared(&self) -> &Arc<SchedulerShared> {
        &self.shared
    }

    /// How many checks are scheduled.
    pub fn len(&self) -> usize {
        self.shared
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a scheduled check satisfies `f` (no copy of the list).
    pub fn any_spec(&self, f: impl Fn(&PlannedCheck) -> bool) -> bool {
        self.shared
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| f(&s.spec))
    }

    /// The checks currently scheduled.
    pub fn specs(&self) -> Vec<Arc<PlannedCheck>> {
        self.shared
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.spec.clone())
            .collect()
    }

    /// Makes the running set match `plan`: unchanged checks keep running untouched,
    /// changed ones restart (after their current run ends) with their status kept,
    /// removed ones stop and leave the status map (their state is kept a while, see
    /// [`crate::book::RETAIN_REMOVED_MS`]).
    pub fn apply(&mut self, plan: &Plan) -> ApplySummary {
        let shared = self.shared.clone();
        let mut running = shared.running.write().unwrap_or_else(|p| p.into_inner());
        let mut summary = ApplySummary::default();
        let mut next: HashMap<Arc<str>, Arc<Slot>> = HashMap::new();
        let fresh = plan
            .checks
            .iter()
            .filter(|p| !running.get(&p.name).is_some_and(|s| s.spec.same_as(p)))
            .count();
        let run_now = self.started && fresh <= RUN_AT_ONCE_MAX;
        let base = Instant::now();
        let epoch = *self.epoch.get_or_insert(base);
        if !self.started {
            self.started = true;
            tokio::spawn(ticker(
                self.timeline.clone(),
                self.shared.clone(),
                self.runs.clone(),
                epoch,
            ));
        }
        // A fixed grid for A/B benchmarks (BENCHMARKS.md); not a setting.
        let wanted = std::env::var("VIGIA_BENCH_GRID_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| grid_of(plan.checks.iter()));
        let grid_ms = sticky_grid(self.grid_ms, wanted);
        if !plan.checks.is_empty() {
            self.grid_ms = Some(grid_ms);
        }
        let mut ticks = Vec::new();
        for planned in &plan.checks {
            match running.remove(&planned.name) {
                Some(s) if s.spec.same_as(planned) => {
                    summary.kept += 1;
                    next.insert(planned.name.clone(), s);
                }
                old => {
                    let previous = old.inspect(|s| {
                        summary.changed += 1;
                        s.retire();
                    });
                    if previous.is_none() {
                        summary.added += 1;
                    }
                    let spec = Arc::new(planned.clone());
                    if self.shared.book.ensure(&spec.name, unix_ms()) {
                        summary.resumed.push(spec.name.clone());
                    }
                    let anchor = epoch + phase(&spec, grid_ms);
                    let at = match run_now {
                        true => base,
                        false => next_on_phase(anchor, spec.interval, base),
                    };
                    let slot = Slot::new(spec, previous, anchor);
                    ticks.push((at, slot.clone()));
                    next.insert(planned.name.clone(), slot);
                }
            }
        }
        for (name, s) in running.drain() {
            let broken = s
                .spec
                .source
                .as_deref()
                .is_some_and(|src| plan.broken.iter().any(|b| b.file == src));
            if broken {
                // Its file does not load any more: the last good version keeps running.
                next.insert(name, s);
                continue;
            }
            s.retire();
            self.shared.book.forget(&name, unix_ms());
            summary.removed.push(name);
        }
        summary.removed.sort();
        *running = next;
        drop(running);
        if summary.changed > 0 || !summary.removed.is_empty() {
            self.timeline.drop_retired();
        }
        self.timeline.push_all(ticks);
        summary
    }

    /// Stops scheduling; waits up to `grace` for running checks to finish, then stops
    /// what is left. Returns how many runs were stopped.
    pub async fn shutdown(&mut self, grace: Duration) -> usize {
        {
            let mut running = self
                .shared
                .running
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for s in running.values() {
                s.retire();
            }
            running.clear();
        }
        self.shared.stop.cancel();
        self.runs.close();
        let mut aborted = 0;
        if tokio::time::timeout(grace, self.runs.wait()).await.is_err() {
            aborted = self.runs.len();
            self.shared.abort.cancel();
        }
        aborted
    }
}

/// Phases sit on a grid: checks due in the same slot run in one wakeup of the runtime,
/// and a wakeup's cost is paid once for all of them (../shared/peer-bench/FLOOR.md: a
/// bare C connector pays 27 µs per connect in a burst, 129 µs alone in its wakeup).
/// The grid is the one that gives each wakeup about [`CHECKS_PER_WAKEUP`] checks at
/// the plan's rate, between [`MIN_GRID_MS`] and [`MAX_GRID_MS`], and never coarser than
/// a [`MIN_SLOTS_PER_INTERVAL`]th of a check's interval: an interval is never burst in
/// a few slots. 1 000 checks every 10 s (100/s): 1 s, 100 a wakeup; 10 000 every 10 s
/// (1 000/s): 250 ms; 1 000 every 1 s: 100 ms; 10 000 every 1 s: 25 ms.
/// Why 250: the runs of a wakeup start one after another on the worker (~40 µs of CPU
/// each, most of it the kernel's connect and close), so a wakeup is ~10 ms of work and
/// its last run starts that late: 500 a wakeup gave p99 lateness 28 ms at 10 000
/// checks/s, 250 gives 17 ms, 200 gives 12–14 ms; at 1 000 tcp checks/s, 50 a wakeup
/// used 41 µs of CPU per check, 200 35.5 and 500 32.5 (BENCHMARKS.md, "grid").
pub const MIN_GRID_MS: u64 = 10;
pub const MAX_GRID_MS: u64 = 1000;
pub const CHECKS_PER_WAKEUP: f64 = 250.0;
pub const MIN_SLOTS_PER_INTERVAL: u64 = 10;

/// How far (as a factor) a plan's grid may move from the scheduler's before new checks
/// are phased on the new one: a replica whose checks arrive in batches (1, 20, …, 3000
/// of them) would otherwise phase each batch on a grid of its own, and its checks
/// would spread over hundreds of wakeups an interval instead of a dozen.
pub const GRID_HYSTERESIS: u64 = 2;

/// The grid new checks are phased on: the scheduler's `current` one while `wanted` (the
/// plan's, [`grid_of`]) is within [`GRID_HYSTERESIS`]× of it, else `wanted`.
pub fn sticky_grid(current: Option<u64>, wanted: u64) -> u64 {
    match current {
        Some(g) if wanted * GRID_HYSTERESIS >= g && wanted <= g * GRID_HYSTERESIS => g,
        _ => wanted,
    }
}

/// The first tick on a check's phase (`anchor + k * interval`, k ≥ 0) at or after `t`.
pub fn next_on_phase(anchor: Instant, interval: Duration, t: Instant) -> Instant {
    if t <= anchor {
        return anchor;
    }
    let every = interval.as_nanos().max(1);
    let k = t.duration_since(anchor).as_nanos().div_ceil(every);
    anchor + Duration::from_nanos((k * every).min(u64::MAX as u128) as u64)
}

/// The grid for a plan's checks, in ms.
pub fn grid_of<'a>(checks: impl IntoIterator<Item = &'a PlannedCheck>) -> u64 {
    let rate: f64 = checks
        .into_iter()
        .map(|c| 1.0 / c.interval.as_secs_f64().max(0.001))
        .sum();
    if rate <= 0.0 {
        return MIN_GRID_MS;
    }
    ((CHECKS_PER_WAKEUP / rate * 1000.0).round() as u64).clamp(MIN_GRID_MS, MAX_GRID_MS)
}

/// Where in its interval a check runs, on a grid of `grid_ms`: a stable hash of its
/// name (or group), spread over the whole interval.
pub fn phase(spec: &PlannedCheck, grid_ms: u64) -> Duration {
    let key = spec.group.as_deref().unwrap_or(&spec.name);
    let ms = (spec.interval.as_millis() as u64).max(1);
    let grid = grid_ms
        .min((ms / MIN_SLOTS_PER_INTERVAL).max(MIN_GRID_MS))
        .min(ms);
    let slots = (ms / grid).max(1);
    Duration::from_millis((fnv1a(key) % slots) * grid)
}

/// One scheduled check, shared by the ticker and the run it starts. At rest a check is
/// this and its place in the [`Timeline`] (about 100 bytes), not a task of its own.
struct Slot {
    spec: Arc<PlannedCheck>,
    /// Its phase: its ticks are `anchor + k * interval` (a run at once is off it; the
    /// tick after it is back on it).
    anchor: Instant,
    /// [`IDLE`], [`RUNNING`] or [`OWED`].
    state: AtomicU8,
    /// Out of the plan (removed, changed, shut down): no new run starts.
    retired: AtomicBool,
    /// When the run owed by [`OWED`] was due, in ns since the scheduler's epoch.
    owed_due: AtomicU64,
    /// Taken by the first run.
    first: std::sync::Mutex<Option<FirstRun>>,
    /// Woken when a run ends and the slot is idle.
    idle: Notify,
}

/// What a check's first run does before it runs: wait for the version it replaces,
/// then take up the state the last run left.
struct FirstRun {
    previous: Option<Arc<Slot>>,
}

/// No run in progress.
const IDLE: u8 = 0;
/// A run in progress.
const RUNNING: u8 = 1;
/// A run in progress, and its next tick came: it runs again, late, as soon as it ends.
const OWED: u8 = 2;

impl Slot {
    fn new(spec: Arc<PlannedCheck>, previous: Option<Arc<Slot>>, anchor: Instant) -> Arc<Slot> {
        Arc::new(Slot {
            spec,
            anchor,
            state: AtomicU8::new(IDLE),
            retired: AtomicBool::new(false),
            owed_due: AtomicU64::new(0),
            first: std::sync::Mutex::new(Some(FirstRun { previous })),
            idle: Notify::new(),
        })
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    async fn wait_idle(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.state.load(Ordering::Acquire) == IDLE {
                return;
            }
            woken.await;
        }
    }
}

/// The next tick of every check, by time: checks of one grid slot share one entry
/// (the same instant), so the ticker takes a whole slot at once and puts it back at
/// its next tick in one move when its checks share an interval.
#[derive(Default)]
struct Timeline {
    ticks: std::sync::Mutex<BTreeMap<Instant, Vec<Arc<Slot>>>>,
    changed: Notify,
}

impl Timeline {
    fn push_all(&self, ticks: impl IntoIterator<Item = (Instant, Arc<Slot>)>) {
        let mut map = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        for (at, slot) in ticks {
            map.entry(at).or_default().push(slot);
        }
        drop(map);
        self.changed.notify_one();
    }

    /// Lets go of retired checks now rather than at their next tick (a removed check
    /// with a 1 h interval would otherwise keep its plugin, a Lua state say, for 1 h).
    fn drop_retired(&self) {
        let mut map = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, slots| {
            slots.retain(|s| !s.is_retired());
            !slots.is_empty()
        });
    }

    /// Hands every check due at `now` to `fire`, which says when it is due next;
    /// drops retired checks. Returns when the next tick is due.
    fn advance(
        &self,
        now: Instant,
        mut fire: impl FnMut(Instant, &Arc<Slot>) -> Instant,
    ) -> Option<Instant> {
        let mut map = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = map.first_entry().filter(|e| *e.key() <= now) {
            let (at, slots) = entry.remove_entry();
            let mut group: Option<(Instant, Vec<Arc<Slot>>)> = None;
            for slot in slots {
                if slot.is_retired() {
                    continue;
                }
                let next = fire(at, &slot);
                match &mut group {
                    Some((k, v)) if *k == next => v.push(slot),
                    _ => {
                        if let Some((k, v)) = group.take() {
                            insert(&mut map, k, v);
                        }
                        group = Some((next, vec![slot]));
                    }
                }
            }
            if let Some((k, v)) = group {
                insert(&mut map, k, v);
            }
        }
        map.first_key_value().map(|(at, _)| *at)
    }
}

fn insert(map: &mut BTreeMap<Instant, Vec<Arc<Slot>>>, at: Instant, mut slots: Vec<Arc<Slot>>) {
    match map.entry(at) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(slots);
        }
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().append(&mut slots),
    }
}

/// Fires every due tick: one wakeup for all the checks of a grid slot, which then run
/// as tasks of their own (so no check delays another). Ends when the scheduler stops.
async fn ticker(
    timeline: Arc<Timeline>,
    shared: Arc<SchedulerShared>,
    runs: TaskTracker,
    epoch: Instant,
) {
    loop {
        let now = Instant::now();
        let mut fired = false;
        let next = timeline.advance(now, |at, slot| {
            fired = true;
            fire(slot, at, &shared, &runs, epoch);
            let interval = slot.spec.interval.max(Duration::from_millis(1));
            // On its phase that is `at + interval`; after a run at once (off its phase)
            // the first tick of its phase at least half an interval on.
            let mut next = next_on_phase(slot.anchor, interval, at + interval / 2);
            // Behind by whole intervals (a machine that was suspended or overloaded):
            // those ticks are skipped and counted, not fired in a burst.
            if next + interval <= now {
                let missed = (now.duration_since(next).as_nanos() / interval.as_nanos()) as u32;
                shared
                    .stats
                    .skipped
                    .fetch_add(u64::from(missed), Ordering::Relaxed);
                next += interval * missed;
            }
            next
        });
        if fired {
            shared.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            _ = timeline.changed.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Starts a run of `slot` due at `at`, unless one is in progress: then it owes one more,
/// which starts, late, as soon as the current one ends (a check never overlaps itself).
fn fire(
    slot: &Arc<Slot>,
    at: Instant,
    shared: &Arc<SchedulerShared>,
    runs: &TaskTracker,
    epoch: Instant,
) {
    let at_ns = at.saturating_duration_since(epoch).as_nanos() as u64;
    loop {
        match slot
            .state
            .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                runs.spawn(run(slot.clone(), shared.clone(), at, epoch));
                return;
            }
            Err(RUNNING) => {
                slot.owed_due.store(at_ns, Ordering::Release);
                if slot
                    .state
                    .compare_exchange(RUNNING, OWED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                // The run ended in between: start this one.
            }
            Err(_) => {
                // Still running since before the previous tick: this tick is skipped,
                // and the owed run counts its lateness from this one.
                slot.owed_due.store(at_ns, Ordering::Release);
                shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One started run of a check, and the late ones it owes.
async fn run(slot: Arc<Slot>, shared: Arc<SchedulerShared>, mut due: Instant, epoch: Instant) {
    prepare(&slot, &shared).await;
    loop {
        if slot.is_retired() || !one_run(&slot, &shared, Some(due)).await {
            break;
        }
        match slot
            .state
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                slot.idle.notify_waiters();
                return;
            }
            Err(_) => {
                slot.state.store(RUNNING, Ordering::Release);
                due = epoch + Duration::from_nanos(slot.owed_due.load(Ordering::Acquire));
            }
        }
    }
    slot.state.store(IDLE, Ordering::Release);
    slot.idle.notify_waiters();
}

/// Before a check's first run: wait for the version it replaces, take up its state.
async fn prepare(slot: &Slot, shared: &SchedulerShared) {
    let first = slot.first.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(FirstRun { previous }) = first {
        // A changed check waits for its old version's last run: never two at once.
        if let Some(p) = previous {
            p.wait_idle().await;
        }
        // A script's ctx.state outlives restarts and new versions: the new check starts
        // from what the last run of the old one (or the store) left.
        if let Some(state) = shared.book.saved_state(&slot.spec.name) {
            slot.spec.check.restore_state(&state);
        }
    }
}

/// Waits for a concurrency slot, runs the check once and records the outcome. False if
/// the scheduler stopped (or the check left the plan) before it could run. `due`: when
/// the schedule wanted it (its lateness is counted); `None` for a run asked for now.
async fn one_run(slot: &Slot, shared: &SchedulerShared, due: Option<Instant>) -> bool {
    let permit = tokio::select! {
        biased;
        _ = shared.stop.cancelled() => return false,
        p = shared.semaphore.acquire() => p,
    };
    if slot.is_retired() {
        return false;
    }
    let spec = &slot.spec;
    let started = Instant::now();
    if let Some(due) = due {
        shared
            .stats
            .lateness
            .record(started.saturating_duration_since(due));
    }
    let outcome = tokio::select! {
        biased;
        _ = shared.abort.cancelled() => return false,
        o = run_once(spec, &shared.stats) => o,
    };
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(permit);
    shared.stats.executed.fetch_add(1, Ordering::Relaxed);
    if out_of_fds(&outcome) {
        shared.stats.out_of_fds.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(wait) = record(spec, shared, outcome, duration_ms) {
        wait.await;
    }
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

/// Applies a run's outcome to the status map; a change goes to the journal. Returns
/// the wait for room in the journal's queue when it is full.
fn record(
    spec: &Arc<PlannedCheck>,
    shared: &SchedulerShared,
    outcome: CheckOutcome,
    duration_ms: f64,
) -> Option<futures::future::BoxFuture<'static, ()>> {
    let now = unix_ms();
    let ok = outcome.is_ok();
    if let Some(t) = shared.tally.get() {
        t.count(&spec.name, ok, duration_ms, now);
    }
    if let Some(r) = shared.recorder.get() {
        r.run(&spec.name, &outcome, duration_ms, now);
    }
    let observation = shared
        .book
        .update(&spec.name, now, |entry: &mut CheckState| {
            let before = entry.durable_part();
            let previous_change = entry.changed_at;
            let transition = entry.record(ok, spec.threshold, spec.recover_after, now);
            entry.counts.count(outcome.severity);
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
            // The last message is written into the buffer the entry already has, not
            // moved from the run: a long-lived string allocated during a run lands
            // among the run's short-lived allocations (and those of the other runs of
            // its wakeup) and pins their pages once they are freed. Moving the run's
            // own string measured +0.9 KiB RSS per check at 10 000 tcp checks; a fresh
            // copy per run still cost +0.2 KiB with 250 runs a wakeup.
            match &mut entry.last {
                Some(last) => {
                    last.ok = ok;
                    last.severity = outcome.severity;
                    last.value = outcome.value;
                    reuse(&mut last.message, &outcome.message);
                    last.duration_ms = duration_ms;
                    last.at = now;
                }
                None => {
                    entry.last = Some(LastRun {
                        ok,
                        severity: outcome.severity,
                        value: outcome.value,
                        message: outcome.message.clone(),
                        duration_ms,
                        at: now,
                    })
                }
            }
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
    // The journal stops only after every check task has ended. Only the wait for room
    // is a future, and boxed: an observation held in the run's future would make every
    // run's task ~900 bytes larger.
    match shared.observations.try_send(observation?) {
        Err(mpsc::error::TrySendError::Full(o)) => {
            let tx = shared.observations.clone();
            Some(Box::pin(async move {
                let _ = tx.send(o).await;
            }))
        }
        _ => None,
    }
}

/// Puts `text` into `buf`, keeping its allocation when it fits (and is not far too
/// big: one long error once must not pin a large buffer for good).
fn reuse(buf: &mut String, text: &str) {
    if buf.capacity() >= text.len() && buf.capacity() <= (2 * text.len()).max(64) {
        buf.clear();
        buf.push_str(text);
    } else {
        *buf = text.to_owned();
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// 10 000 checks are 10 000 slots in the timeline at rest (no task each): what
    /// they hold is per-check memory.
    #[test]
    fn an_idle_check_is_small() {
        // Its slot, and its place in the timeline's list for its instant.
        let size = std::mem::size_of::<Slot>() + std::mem::size_of::<Arc<Slot>>();
        assert!(size <= 160, "an idle check grew to {size} bytes");
    }

    /// A run is a task: its future is what each run allocates and copies.
    #[tokio::test]
    async fn a_run_is_small() {
        let (tx, _rx) = mpsc::channel(1);
        let shared = SchedulerShared::new(1, StatusBook::new(), tx);
        let spec = Arc::new(PlannedCheck {
            name: "x".into(),
            kind: "test",
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
            pinned: false,
            labels: None,
            fingerprint: 0,
        });
        let slot = Slot::new(spec, None, Instant::now());
        let f = run(slot, shared, Instant::now(), Instant::now());
        let size = std::mem::size_of_val(&f);
        assert!(size <= 640, "a run's future grew to {size} bytes");
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
