//! The scheduler under paused tokio time: transitions at the right runs, no drift,
//! timeouts, panics, no overlap, the concurrency cap, spreading, reload and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vigia_api::{CheckOutcome, Node, RunContext};
use vigia_engine::book::StatusBook;
use vigia_engine::config::{Plan, PlannedCheck};
use vigia_engine::scheduler::{
    grid_of, next_on_phase, phase, sticky_grid, Observation as Update, Scheduler, SchedulerShared,
};
use vigia_engine::status::Transition;

/// A check that plays a script: '.' success, 'x' failure, 'p' panic; the last
/// character repeats. Each run takes `run_time`.
struct Scripted {
    script: Vec<char>,
    run_time: Duration,
    runs: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(script: &str, run_time: Duration) -> Arc<Scripted> {
        Scripted::sharing(script, run_time, Default::default(), Default::default())
    }

    fn sharing(
        script: &str,
        run_time: Duration,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: script.chars().collect(),
            run_time,
            runs: AtomicUsize::new(0),
            starts: Mutex::new(Vec::new()),
            in_flight,
            max_in_flight,
        })
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl vigia_api::Check for Scripted {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let n = self.runs.fetch_add(1, Ordering::SeqCst);
            self.starts.lock().unwrap().push(Instant::now());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let _guard = InFlight(&self.in_flight);
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.run_time).await;
            let c = *self.script.get(n).or(self.script.last()).unwrap_or(&'.');
            match c {
                '.' => CheckOutcome::ok(format!("run {n} ok")),
                'p' => panic!("boom"),
                _ => CheckOutcome::critical(format!("run {n} failed")),
            }
        })
    }

    fn target(&self) -> String {
        "scripted".into()
    }
}

fn planned(
    name: &str,
    check: Arc<Scripted>,
    interval: u64,
    timeout: u64,
    threshold: u32,
    version: u32,
) -> PlannedCheck {
    PlannedCheck {
        name: name.into(),
        kind: "test",
        group: None,
        check,
        interval: Duration::from_secs(interval),
        timeout: Duration::from_secs(timeout),
        threshold,
        recover_after: 1,
        comment: "".into(),
        source: None,
        alerting: None,
        remedy: None,
        pinned: false,
        labels: None,
        fingerprint: Node::parse(&format!("name: {name}\nversion: {version}"))
            .unwrap()
            .fingerprint(),
    }
}

fn plan(checks: Vec<PlannedCheck>) -> Plan {
    Plan {
        checks,
        broken: vec![],
        files: vec![],
    }
}

fn setup(max_concurrent: usize) -> (Scheduler, mpsc::Receiver<Update>) {
    let (tx, rx) = mpsc::channel(1_000_000);
    (
        Scheduler::new(SchedulerShared::new(max_concurrent, StatusBook::new(), tx)),
        rx,
    )
}

fn drain(rx: &mut mpsc::Receiver<Update>) -> Vec<Update> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        out.push(u);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn transitions_happen_at_the_threshold_and_ticks_do_not_drift() {
    let (mut s, mut rx) = setup(10);
    let check = Scripted::new("...xxxx...", Duration::from_millis(700));
    let spec = planned("web", check.clone(), 10, 5, 3, 1);
    let first = Instant::now() + phase(&spec, grid_of([&spec]));
    s.apply(&plan(vec![spec]));
    // Runs 0..=9 start at first + 0s ..= first + 90s.
    tokio::time::sleep_until(first + Duration::from_secs(95)).await;
    let transitions: Vec<(u32, Transition, String)> = drain(&mut rx)
        .into_iter()
        .filter_map(|u| {
            u.transition
                .map(|t| (u.state.failures, t, u.outcome.message))
        })
        .collect();
    assert_eq!(
        transitions,
        vec![
            (3, Transition::Failed, "run 5 failed".to_string()),
            (0, Transition::Recovered, "run 7 ok".to_string()),
        ]
    );
    // Each run starts at first + k * 10s, although each takes 0.7s.
    let starts = check.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 10);
    for (k, at) in starts.iter().enumerate() {
        assert_eq!(*at - first, Duration::from_secs(10 * k as u64), "run {k}");
    }
    assert_eq!(s.shared().stats.snapshot().skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_times_out_as_a_failure_and_keeps_its_schedule() {
    let (mut s, mut rx) = setup(10);
    let hang = Scripted::new(".", Duration::from_secs(3600));
    let spec = planned("hang", hang.clone(), 10, 2, 1, 1);
    let first = Instant::now() + phase(&spec, grid_of([&spec]));
    s.apply(&plan(vec![spec]));
    // Runs start at first + 0, 10, ..., 50s and each is cut off 2s later.
    tokio::time::sleep_until(first + Duration::from_secs(55)).await;
    let updates = drain(&mut rx);
    assert_eq!(updates[0].outcome.message, "timed out after 2s");
    assert_eq!(updates[0].transition, Some(Transition::Failed));
    let starts = hang.starts.lock().unwrap().clone();
    for (k, at) in starts.iter().enumerate() {
        assert_eq!(*at - first, Duration::from_secs(10 * k as u64), "run {k}");
    }
    assert_eq!(starts.len(), 6);
    assert_eq!(s.shared().stats.snapshot().timeouts, 6);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_is_contained_and_others_go_on() {
    let (mut s, mut rx) = setup(10);
    let bad = Scripted::new("p", Duration::ZERO);
    let good = Scripted::new(".", Duration::from_millis(10));
    s.apply(&plan(vec![
        planned("bad", bad.clone(), 10, 5, 1, 1),
        planned("good", good.clone(), 10, 5, 1, 1),
    ]));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(good.runs.load(Ordering::SeqCst), 6);
    assert_eq!(bad.runs.load(Ordering::SeqCst), 6);
    let updates = drain(&mut rx);
    let bad_update = updates.iter().find(|u| &*u.spec.name == "bad").unwrap();
    assert_eq!(bad_update.outcome.message, "the check crashed: boom");
    assert_eq!(bad_update.outcome.severity, vigia_api::Severity::Unknown);
    assert_eq!(s.shared().stats.snapshot().panics, 6);
}

#[tokio::test(start_paused = true)]
async fn slow_checks_do_not_delay_fast_ones() {
    let (mut s, _rx) = setup(100);
    let mut checks = Vec::new();
    for i in 0..5 {
        let hang = Scripted::new(".", Duration::from_secs(3600));
        checks.push(planned(&format!("hang{i}"), hang, 10, 9, 3, 1));
    }
    let fast: Vec<_> = (0..20)
        .map(|_| Scripted::new(".", Duration::from_millis(5)))
        .collect();
    for (i, f) in fast.iter().enumerate() {
        checks.push(planned(&format!("fast{i}"), f.clone(), 1, 1, 3, 1));
    }
    s.apply(&plan(checks));
    tokio::time::sleep(Duration::from_millis(60_500)).await;
    for f in &fast {
        let runs = f.runs.load(Ordering::SeqCst);
        assert!(
            (60..=61).contains(&runs),
            "a fast check ran {runs} times in 60s"
        );
    }
    let stats = s.shared().stats.snapshot();
    assert_eq!(stats.skipped, 0);
    assert!(stats.lateness_p99_ms <= 0.1, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_check_never_overlaps_itself() {
    let (mut s, _rx) = setup(10);
    let slow = Scripted::new(".", Duration::from_secs(15));
    // timeout = interval: every run is cut off exactly at its next tick.
    s.apply(&plan(vec![planned("slow", slow.clone(), 10, 10, 3, 1)]));
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(slow.max_in_flight.load(Ordering::SeqCst), 1);
    assert!(slow.runs.load(Ordering::SeqCst) >= 9);
}

/// A run asked for now waits for a scheduled run in progress (never two at once), is
/// recorded like any run, and answers with the state after it; an unknown name is
/// `None`.
#[tokio::test(start_paused = true)]
async fn a_run_asked_for_now_never_overlaps_the_schedule() {
    let (mut s, _rx) = setup(10);
    let slow = Scripted::new("..x", Duration::from_secs(3));
    let spec = planned("slow", slow.clone(), 60, 10, 1, 1);
    let first = Instant::now() + phase(&spec, grid_of([&spec]));
    s.apply(&plan(vec![spec]));
    // In the middle of the first scheduled run.
    tokio::time::sleep_until(first + Duration::from_secs(1)).await;
    assert_eq!(slow.in_flight.load(Ordering::SeqCst), 1);
    let shared = s.shared().clone();
    let asked = tokio::spawn(async move { shared.run_now("slow").await });
    let after = asked.await.unwrap().expect("the check is scheduled");
    assert_eq!(slow.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(slow.runs.load(Ordering::SeqCst), 2);
    assert_eq!(after.last.as_ref().unwrap().message, "run 1 ok");
    assert_eq!(after.counts.ok, 2);
    // The second run asked for fails: threshold 1, so the status flips.
    let after = s.shared().run_now("slow").await.unwrap();
    assert!(!after.status);
    assert_eq!((after.counts.critical, after.counts.failed), (1, 1));
    assert!(s.shared().run_now("nope").await.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_global_concurrency_cap_holds() {
    let (mut s, _rx) = setup(2);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let checks: Vec<_> = (0..10)
        .map(|i| {
            let c = Scripted::sharing(".", Duration::from_secs(5), in_flight.clone(), max.clone());
            planned(&format!("c{i}"), c, 60, 30, 3, 1)
        })
        .collect();
    s.apply(&plan(checks));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(max.load(Ordering::SeqCst), 2);
}

/// The grid gives each wakeup about 250 checks at the plan's rate, within 10 ms..1 s,
/// and never fewer than 10 slots an interval.
#[test]
fn the_grid_follows_the_rate() {
    let check = Scripted::new(".", Duration::ZERO);
    let many = |n: usize, every: u64| -> Vec<_> {
        (0..n)
            .map(|i| planned(&format!("c{i}"), check.clone(), every, 1, 3, 1))
            .collect()
    };
    assert_eq!(grid_of(&many(1000, 10)), 1000);
    assert_eq!(grid_of(&many(10_000, 10)), 250);
    assert_eq!(grid_of(&many(10_000, 1)), 25);
    assert_eq!(grid_of(&many(100_000, 1)), 10);
    assert_eq!(grid_of(&many(10, 10)), 1000);
    assert_eq!(grid_of(&[]), 10);
    // 1 000 checks every 1 s: the grid wants 250 ms, the interval allows 100 ms.
    let plan = many(1000, 1);
    assert_eq!(grid_of(&plan), 250);
    let mut slots = std::collections::HashMap::new();
    for c in &plan {
        *slots.entry(phase(c, grid_of(&plan))).or_insert(0) += 1;
    }
    assert_eq!(slots.len(), 10);
    assert!(slots.keys().all(|p| p.as_millis() % 100 == 0), "{slots:?}");
    // 1 000 checks every 10 s: 100 a slot, 10 slots an interval.
    let plan = many(1000, 10);
    let grid = grid_of(&plan);
    let mut slots = std::collections::HashMap::new();
    for c in &plan {
        *slots.entry(phase(c, grid)).or_insert(0) += 1;
    }
    assert_eq!(slots.len(), 10);
    assert!(slots.values().all(|n| *n < 150), "{slots:?}");
    // A 1 s check beside them keeps 10 slots of 100 ms.
    let fast = planned("fast", check.clone(), 1, 1, 3, 1);
    assert_eq!(phase(&fast, 1000).as_millis() % 100, 0);
    assert!(phase(&fast, 1000) < Duration::from_secs(1));
}

#[test]
fn first_runs_are_spread_over_the_interval() {
    let check = Scripted::new(".", Duration::ZERO);
    let mut buckets = vec![0u32; 100];
    for i in 0..10_000 {
        let p = phase(
            &planned(&format!("check-{i}"), check.clone(), 10, 5, 3, 1),
            50,
        );
        buckets[(p.as_millis() / 100) as usize] += 1;
    }
    // 100 per 100 ms bucket on average; nowhere near all in one instant.
    let max = *buckets.iter().max().unwrap();
    let min = *buckets.iter().min().unwrap();
    assert!(max <= 150 && min >= 50, "min {min}, max {max}");
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_the_state_of_surviving_checks() {
    let (mut s, mut rx) = setup(10);
    let a = Scripted::new("x", Duration::ZERO);
    s.apply(&plan(vec![planned("a", a.clone(), 10, 5, 2, 1)]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed: Vec<_> = drain(&mut rx)
        .into_iter()
        .filter(|u| u.transition.is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    let failures_before = s.shared().book.check("a").unwrap().failures;

    // `a` changes (new version of its entry), `b` is new.
    let a2 = Scripted::new("x", Duration::ZERO);
    let summary = s.apply(&plan(vec![
        planned("a", a2.clone(), 5, 5, 2, 2),
        planned("b", Scripted::new(".", Duration::ZERO), 10, 5, 2, 1),
    ]));
    assert_eq!((summary.added, summary.changed, summary.kept), (1, 1, 0));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let st = s.shared().book.check("a").unwrap();
    assert!(!st.status, "a must still be down");
    assert!(
        st.failures > failures_before,
        "{} -> {}",
        failures_before,
        st.failures
    );
    assert!(a2.runs.load(Ordering::SeqCst) >= 5);
    assert!(
        drain(&mut rx).iter().all(|u| u.transition.is_none()),
        "no second `failed` after a reload"
    );

    // An unchanged plan keeps the tasks untouched.
    let summary = s.apply(&plan(vec![
        planned("a", a2.clone(), 5, 5, 2, 2),
        planned("b", Scripted::new(".", Duration::ZERO), 10, 5, 2, 1),
    ]));
    assert_eq!((summary.added, summary.changed, summary.kept), (0, 0, 2));

    // Removing `a` stops it and forgets its state.
    let b = Scripted::new(".", Duration::ZERO);
    let summary = s.apply(&plan(vec![planned("b", b, 10, 5, 2, 1)]));
    assert_eq!(summary.removed, vec![Arc::<str>::from("a")]);
    assert!(s.shared().book.check("a").is_none());
    let runs = a2.runs.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        a2.runs.load(Ordering::SeqCst),
        runs,
        "a removed check no longer runs"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_running_checks_within_the_grace() {
    let (mut s, _rx) = setup(10);
    let quick = Scripted::new(".", Duration::from_secs(3));
    let stuck = Scripted::new(".", Duration::from_secs(100_000));
    s.apply(&plan(vec![
        planned("quick", quick.clone(), 10, 10, 3, 1),
        planned("stuck", stuck.clone(), 3600, 3600, 3, 1),
    ]));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        stuck.in_flight.load(Ordering::SeqCst),
        1,
        "stuck is running"
    );
    let aborted = s.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        aborted, 1,
        "only the stuck check is cancelled after the grace period"
    );
    assert_eq!(quick.in_flight.load(Ordering::SeqCst), 0);
}

/// The state machine driven through the real scheduler, under paused time: each row is
/// (threshold, recover_after, script of results) and the transitions it must produce,
/// with the run at which each happens.
#[tokio::test(start_paused = true)]
async fn table_of_thresholds_through_the_scheduler() {
    use Transition::{Failed as F, Recovered as R};
    type Row<'a> = (u32, u32, &'a str, Vec<(usize, Transition)>);
    let rows: Vec<Row> = vec![
        (1, 1, "x.", vec![(0, F), (1, R)]),
        (1, 1, "xxx.", vec![(0, F), (3, R)]),
        (3, 1, "xx.xx.", vec![]),
        (3, 1, "xxx.", vec![(2, F), (3, R)]),
        (3, 1, "xxxxxx.", vec![(2, F), (6, R)]),
        (3, 3, "xxx..x...", vec![(2, F), (8, R)]),
        (1, 3, "x..x...", vec![(0, F), (6, R)]),
        (3, 1, "x.x.x.x.x.x.x.x.x.x.", vec![]),
        (3, 3, "xxx..", vec![(2, F)]),
    ];
    for (row, (threshold, recover_after, script, expected)) in rows.into_iter().enumerate() {
        let (mut s, mut rx) = setup(10);
        // The script, then successes forever: only the scripted runs are judged.
        let check = Scripted::new(&format!("{script}."), Duration::ZERO);
        let mut spec = planned(&format!("row{row}"), check.clone(), 10, 5, threshold, 1);
        spec.recover_after = recover_after;
        let first = Instant::now() + phase(&spec, grid_of([&spec]));
        s.apply(&plan(vec![spec]));
        // Exactly the scripted runs: run k starts at first + 10k s.
        let runs = script.len() as u64;
        tokio::time::sleep_until(
            first + Duration::from_secs(10 * (runs - 1)) + Duration::from_secs(1),
        )
        .await;
        let got: Vec<(usize, Transition)> = drain(&mut rx)
            .into_iter()
            .filter_map(|u| {
                let run: usize = u
                    .outcome
                    .message
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                u.transition.map(|t| (run, t))
            })
            .collect();
        assert_eq!(
            got, expected,
            "row {row}: threshold {threshold}, recover_after {recover_after}, script {script}"
        );
        assert_eq!(check.runs.load(Ordering::SeqCst), script.len());
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// At start checks wait for their phase; after a reload, new and changed checks run at
/// once (a saved script is seen running), unless the reload brings too many of them.
#[tokio::test(start_paused = true)]
async fn after_a_reload_new_and_changed_checks_run_at_once() {
    let (mut s, _rx) = setup(1000);
    let name = (0..)
        .map(|i| format!("late-{i}"))
        .find(|n| {
            let p = planned(n, Scripted::new(".", Duration::ZERO), 60, 5, 3, 1);
            phase(&p, grid_of([&p])) > Duration::from_secs(30)
        })
        .unwrap();
    let first = Scripted::new(".", Duration::ZERO);
    s.apply(&plan(vec![planned(&name, first.clone(), 60, 5, 3, 1)]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        first.runs.load(Ordering::SeqCst),
        0,
        "waits for its phase at start"
    );

    let changed = Scripted::new(".", Duration::ZERO);
    let added = Scripted::new(".", Duration::ZERO);
    s.apply(&plan(vec![
        planned(&name, changed.clone(), 60, 5, 3, 2),
        planned(&format!("{name}-new"), added.clone(), 60, 5, 3, 1),
    ]));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(changed.runs.load(Ordering::SeqCst), 1);
    assert_eq!(added.runs.load(Ordering::SeqCst), 1);

    // A reload that changes more than RUN_AT_ONCE_MAX checks spreads them.
    let many: Vec<_> = (0..=vigia_engine::scheduler::RUN_AT_ONCE_MAX)
        .map(|i| {
            planned(
                &format!("many-{i}"),
                Scripted::new(".", Duration::ZERO),
                60,
                5,
                3,
                1,
            )
        })
        .collect();
    s.apply(&plan(many));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ran = (0..101)
        .filter_map(|i| s.shared().book.check(&format!("many-{i}")))
        .filter(|c| c.last.is_some())
        .count();
    assert!(ran < 10, "{ran} of 101 ran at once");
}

/// Checks that arrive in many small batches (a cluster replica taking over its checks
/// as the leader places them) share their grid slots' wakeups with the checks already
/// there: every batch is phased from the scheduler's one epoch on one grid. Before,
/// each batch ran at once and kept that instant as its phase: 300 checks took 30
/// wakeups an interval of 10 runs each (a replica of 3000 took ~450 of ~7).
#[tokio::test(start_paused = true)]
async fn checks_added_in_batches_share_the_wakeups_of_their_slots() {
    let (mut s, _rx) = setup(1000);
    let mut checks = Vec::new();
    for batch in 0..30 {
        for i in 0..10 {
            checks.push(planned(
                &format!("b{batch}-{i}"),
                Scripted::new(".", Duration::ZERO),
                10,
                1,
                3,
                1,
            ));
        }
        s.apply(&plan(checks.clone()));
        // Batches come at odd times, as placements do.
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    // Every check has run at once and rejoined its phase by then.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let stats = &s.shared().stats;
    stats.reset();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let runs = stats.executed.load(Ordering::SeqCst);
    let wakeups = stats.wakeups.load(Ordering::SeqCst);
    assert_eq!(runs, 900, "300 checks every 10 s for 30 s");
    // 300 checks @ 10 s: a 1 s grid, 10 slots of ~30; some slots may be empty.
    assert!(
        wakeups <= 30 + 3,
        "{wakeups} wakeups for {runs} runs ({} a wakeup)",
        runs / wakeups.max(1)
    );
}

/// A check that ran at once after a reload then runs on its phase: its ticks are the
/// scheduler's epoch + phase + k * interval, the first at least half an interval after
/// the run at once.
#[tokio::test(start_paused = true)]
async fn a_check_run_at_once_rejoins_its_phase() {
    let (mut s, _rx) = setup(10);
    let epoch = Instant::now();
    let first = planned("first", Scripted::new(".", Duration::ZERO), 60, 5, 3, 1);
    s.apply(&plan(vec![first.clone()]));
    tokio::time::sleep(Duration::from_millis(12_345)).await;
    let added = Scripted::new(".", Duration::ZERO);
    let spec = planned("added", added.clone(), 60, 5, 3, 1);
    let reloaded = Instant::now();
    s.apply(&plan(vec![first, spec.clone()]));
    tokio::time::sleep(Duration::from_secs(200)).await;
    let starts = added.starts.lock().unwrap().clone();
    assert_eq!(starts[0], reloaded, "ran at once");
    assert!(starts.len() >= 3, "{starts:?}");
    let anchor = epoch + phase(&spec, grid_of([&spec]));
    assert!(
        starts[1] - starts[0] >= Duration::from_secs(30),
        "{starts:?}"
    );
    for (k, at) in starts[1..].iter().enumerate() {
        let off = at.duration_since(anchor).as_millis() % 60_000;
        assert_eq!(
            off,
            0,
            "run {} at {:?} is off its phase",
            k + 1,
            *at - epoch
        );
        if k > 0 {
            assert_eq!(*at - starts[k], Duration::from_secs(60), "{starts:?}");
        }
    }
}

#[test]
fn the_grid_stays_while_the_rate_moves_less_than_twice() {
    assert_eq!(sticky_grid(None, 833), 833);
    assert_eq!(sticky_grid(Some(1000), 833), 1000);
    assert_eq!(sticky_grid(Some(1000), 500), 1000);
    assert_eq!(sticky_grid(Some(1000), 499), 499);
    assert_eq!(sticky_grid(Some(250), 500), 250);
    assert_eq!(sticky_grid(Some(250), 501), 501);

    let anchor = Instant::now();
    let s = Duration::from_secs(1);
    assert_eq!(next_on_phase(anchor + s, 10 * s, anchor), anchor + s);
    assert_eq!(next_on_phase(anchor, 10 * s, anchor), anchor);
    assert_eq!(
        next_on_phase(anchor, 10 * s, anchor + Duration::from_millis(1)),
        anchor + 10 * s
    );
    assert_eq!(
        next_on_phase(anchor, 10 * s, anchor + 25 * s),
        anchor + 30 * s
    );
}

/// A check changed while it runs: its new version starts only once the old version's
/// run has ended, and then at once (never two runs of one check at a time).
#[tokio::test(start_paused = true)]
async fn a_changed_check_waits_for_its_old_versions_run() {
    let (mut s, _rx) = setup(10);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let old = Scripted::sharing(".", Duration::from_secs(20), in_flight.clone(), max.clone());
    s.apply(&plan(vec![planned("c", old.clone(), 60, 30, 3, 1)]));
    let deadline = Instant::now() + Duration::from_secs(61);
    while old.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the old version never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changed_at = Instant::now();
    let new = Scripted::sharing(".", Duration::from_secs(1), in_flight.clone(), max.clone());
    s.apply(&plan(vec![planned("c", new.clone(), 60, 30, 3, 2)]));
    while new.runs.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < changed_at + Duration::from_secs(30),
            "the new version never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = new.starts.lock().unwrap()[0];
    let old_started = old.starts.lock().unwrap()[0];
    assert!(
        started >= old_started + Duration::from_secs(20),
        "the new version started {:?} after the old one, during its run",
        started - old_started
    );
    assert_eq!(max.load(Ordering::SeqCst), 1);
    assert_eq!(
        old.runs.load(Ordering::SeqCst),
        1,
        "the old version does not run again"
    );
}

/// A run that takes 2.5 intervals: the tick during it is owed and runs as soon as it
/// ends; the one after that is skipped and counted.
#[tokio::test(start_paused = true)]
async fn ticks_missed_by_a_whole_interval_are_skipped_and_counted() {
    let (mut s, _rx) = setup(10);
    let slow = Scripted::new(".", Duration::from_secs(25));
    s.apply(&plan(vec![planned("slow", slow.clone(), 10, 30, 3, 1)]));
    tokio::time::sleep(Duration::from_secs(200)).await;
    let stats = s.shared().stats.snapshot();
    let runs = slow.runs.load(Ordering::SeqCst) as u64;
    // Every 25 s one run, back to back; the ticks in between are either owed (one per
    // run) or skipped.
    assert!((7..=9).contains(&runs), "{runs} runs in 200 s");
    assert!(stats.skipped >= runs - 2, "{stats:?} after {runs} runs");
    let starts = slow.starts.lock().unwrap().clone();
    for w in starts.windows(2) {
        assert_eq!(
            w[1] - w[0],
            Duration::from_secs(25),
            "runs follow each other at once"
        );
    }
    assert_eq!(slow.max_in_flight.load(Ordering::SeqCst), 1);
}

/// A removed check lets go of its plugin at once, not at its next tick (an hour away
/// here): a Lua check's state would otherwise stay in memory that long.
#[tokio::test(start_paused = true)]
async fn a_removed_check_is_let_go_at_once() {
    let (mut s, mut rx) = setup(10);
    let hourly = Scripted::new(".", Duration::ZERO);
    let other = Scripted::new(".", Duration::ZERO);
    s.apply(&plan(vec![
        planned("hourly", hourly.clone(), 3600, 5, 3, 1),
        planned("other", other.clone(), 3600, 5, 3, 1),
    ]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(Arc::strong_count(&hourly) > 1, "the scheduler holds it");
    s.apply(&plan(vec![planned("other", other.clone(), 3600, 5, 3, 1)]));
    drain(&mut rx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(Arc::strong_count(&hourly), 1, "only the test holds it now");
    assert!(
        Arc::strong_count(&other) > 1,
        "the kept check is still scheduled"
    );
}
