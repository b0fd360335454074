//! A replica's member task: its heartbeat, the leader's lease and placement, the
//! checks placed here taken over (their state loaded before their first run) and
//! released, the fence every floating result passes, and the answers to `info` and
//! to the cluster commands (the leader's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigia_config::cluster::ClusterConfig;
use vigia_config::PlannedCheck;
use vigia_core::placement::{Placement, Replica, StartSummary};
use vigia_core::status::CheckState;

use super::client::{ClusterCommand, Selector};
use super::{key_of, lock, name_of, CheckRecord, Nats, PlaceRecord, ReplicaRecord};
use crate::book::StatusBook;
use crate::clock::unix_ms;
use crate::scheduler::{Observation, SchedulerShared};
use crate::store::StoredCheck;

/// What placement needs of a floating check of the config.
#[derive(Clone, Debug)]
struct Floating {
    group: Option<Arc<str>>,
    labels: Option<Arc<BTreeMap<String, String>>>,
}

/// How many placement or check-record writes the member has on the way at once: one
/// at a time, a round trip each, 3000 of them took ~2 s.
const WRITES_IN_FLIGHT: usize = 64;

/// A burst of placement changes is over when none came for this long.
const SETTLE_QUIET: Duration = Duration::from_millis(20);
/// The longest a replica waits for a burst to end before it takes over what came.
const SETTLE_MAX: Duration = Duration::from_millis(250);

/// The leader's look at every floating check when nothing changed: a backstop.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// The leader's next look after a pass that could not write all it decided.
const LOOK_RETRY: Duration = Duration::from_secs(5);

/// The shortest time between two whole reads of the replicas' bucket while its watch
/// is silent.
const LIVE_READ_EVERY: Duration = Duration::from_secs(5);

/// The leader writes its placements in chunks of this many, each whole, and looks at
/// its deadline between them.
const PLACE_CHUNK: usize = 256;

/// A placement the leader decided, to write.
struct Decision {
    name: Arc<str>,
    rec: PlaceRecord,
    rev: Option<u64>,
    from: Option<String>,
    why: &'static str,
    /// The round-robin index once this one is placed.
    rr_after: usize,
}

impl Decision {
    /// Its log line, once written.
    fn log(&self) {
        let name = &self.name;
        match (&self.from, &self.rec.replica) {
            (Some(f), Some(t)) => {
                tracing::info!(event = "cluster_move", check = %name, from = %f, to = %t, "{name} moves from {f} ({}) to {t}.", self.why)
            }
            (None, Some(t)) if self.why == "new" => {
                tracing::debug!(event = "cluster_place", check = %name, to = %t, "{name} is placed on {t}.")
            }
            (_, Some(t)) => {
                tracing::info!(event = "cluster_place", check = %name, to = %t, "{name} is placed on {t}.")
            }
            (_, None) => {
                tracing::warn!(event = "cluster_refused", check = %name, "{name} cannot run anywhere: {}.", self.rec.refused.map_or("", |r| r.as_str()))
            }
        }
    }
}

/// The set of floating checks placed here and taken over: what the scheduler runs
/// (with the pinned ones).
pub type Assigned = Arc<BTreeSet<Arc<str>>>;

/// NATS out of reach for `cluster.unreachable_after`, and back: what the supervisor
/// turns into this replica's own "cluster unreachable" alert and its "reachable again".
#[derive(Clone, Debug, PartialEq)]
pub enum Reach {
    /// Nothing succeeded since `since_ms` (unix ms); `error` is the last failure.
    Unreachable { since_ms: u64, error: String },
    /// A heartbeat went through again after an outage that was reported.
    Back { for_ms: u64 },
}

pub struct Member {
    pub nats: Nats,
    pub id: String,
    cfg: ClusterConfig,
    host: String,
    book: Arc<StatusBook>,
    tasks: Arc<SchedulerShared>,
    /// This replica's delivery figures, which its heartbeat carries.
    alerts: Arc<crate::alerting::pipeline::AlertStatus>,
    /// Until when its lead is proven (for alerting's senders).
    proof: crate::alerting::pipeline::LeadProof,
    floating: Mutex<Arc<BTreeMap<Arc<str>, Floating>>>,
    pinned: Mutex<usize>,
    /// Floating checks owned here → the revision of their record we last wrote.
    owned: Mutex<HashMap<Arc<str>, u64>>,
    /// The placements as the watch last showed them: check → (record, revision).
    places: Mutex<BTreeMap<String, (PlaceRecord, u64)>>,
    /// The replicas alive at the last look.
    live: Mutex<BTreeMap<String, ReplicaRecord>>,
    assigned: watch::Sender<Assigned>,
    reach: tokio::sync::mpsc::UnboundedSender<Reach>,
    /// Whether this replica holds the leader's lease (and so alerts for the cluster).
    leading: watch::Sender<bool>,
    /// Cut off from NATS for a whole lease: the floating checks were dropped; set and
    /// cleared by the heartbeat task, read by the loop before it hands out checks.
    cut: Mutex<bool>,
    /// Whether the last heartbeat got through.
    beating: AtomicBool,
    /// Counts what may change placement (the config's checks, the placements, the live
    /// replicas, a command): the loop reconciles and takes over only when it moved (or
    /// every few seconds), not on every tick.
    changes: AtomicU64,
    wake: Notify,
    /// The leader's key was seen deleted or expired (its watch): try to take the lease
    /// now rather than at the next heartbeat.
    leader_free: AtomicBool,
    /// When (mono ms) the replicas' watch last showed a heartbeat: every live replica,
    /// this one too, puts one each `heartbeat`, so a watch silent for longer is stalled
    /// (after a NATS restart, for seconds) and `live` is read whole instead.
    replicas_seen: AtomicU64,
    /// When (mono ms) the leader's watch last showed its key: the leader renews it
    /// twice a heartbeat, so while it is seen there is nothing to try.
    leader_seen: AtomicU64,
    started: Instant,
    started_ms: u64,
}

/// The cluster commands from the door (the socket, the HTTP API), over this
/// replica's own NATS connection.
impl crate::control::ClusterDesk for Member {
    fn execute(
        &self,
        cmd: vigia_core::command::Command,
    ) -> futures::future::BoxFuture<'_, vigia_core::command::Reply> {
        use vigia_core::command::{Command, Reply};
        Box::pin(async move {
            let r = match cmd {
                Command::ClusterStatus => super::client::status_on(&self.nats)
                    .await
                    .map(|status| Reply::ClusterStatus { status }),
                Command::ClusterInfo { replica } => {
                    super::client::info_on(&self.nats, replica.as_deref())
                        .await
                        .map(|replicas| Reply::ClusterInfo { replicas })
                }
                Command::Cluster { command } => {
                    super::client::command_on(&self.nats, self.lease(), &command)
                        .await
                        .map(|text| Reply::ClusterAnswer { text })
                }
                other => Err(format!("{other:?} is not a cluster command")),
            };
            r.unwrap_or_else(Reply::error)
        })
    }
}

/// What the member shares with the rest of the engine.
pub struct Ties {
    pub book: Arc<StatusBook>,
    pub tasks: Arc<SchedulerShared>,
    /// This replica's delivery figures, for its heartbeat.
    pub alerts: Arc<crate::alerting::pipeline::AlertStatus>,
    /// Alerting's senders read it (the pipeline's [`crate::alerting::pipeline::ClusterLink`]).
    pub proof: crate::alerting::pipeline::LeadProof,
}

/// The running member: its task and what it tells the supervisor.
pub struct MemberHandle {
    pub member: Arc<Member>,
    /// The floating checks to run here.
    pub assigned: watch::Receiver<Assigned>,
    /// NATS lost and found again (only outages longer than `unreachable_after`).
    pub reach: tokio::sync::mpsc::UnboundedReceiver<Reach>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    watchers: [JoinHandle<()>; 3],
}

impl MemberHandle {
    /// Leaves the cluster: releases its checks (their state stays for the next owner),
    /// drops its heartbeat and, if it leads, the lease, so the others need not wait.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        for w in &self.watchers {
            w.abort();
        }
    }
}

impl Member {
    pub fn start(
        nats: Nats,
        cfg: ClusterConfig,
        id: String,
        host: String,
        ties: Ties,
        checks: &[PlannedCheck],
    ) -> MemberHandle {
        let Ties {
            book,
            tasks,
            alerts,
            proof,
        } = ties;
        let (assigned, rx) = watch::channel(Arc::new(BTreeSet::new()));
        let (reach, reach_rx) = tokio::sync::mpsc::unbounded_channel();
        let member = Arc::new(Member {
            nats,
            id,
            cfg,
            host,
            book,
            tasks,
            alerts,
            proof,
            floating: Mutex::default(),
            pinned: Mutex::new(0),
            owned: Mutex::default(),
            places: Mutex::default(),
            live: Mutex::default(),
            assigned,
            reach,
            leading: watch::channel(false).0,
            cut: Mutex::new(false),
            beating: AtomicBool::new(true),
            changes: AtomicU64::new(0),
            wake: Notify::new(),
            leader_free: AtomicBool::new(true),
            replicas_seen: AtomicU64::new(0),
            leader_seen: AtomicU64::new(0),
            started: Instant::now(),
            started_ms: unix_ms(),
        });
        member.set_checks(checks);
        let stop = CancellationToken::new();
        let watchers = [
            tokio::spawn(member.clone().watch_places()),
            tokio::spawn(member.clone().watch_replicas()),
            tokio::spawn(member.clone().watch_leader()),
        ];
        let task = tokio::spawn(member.clone().run(stop.clone()));
        MemberHandle {
            member,
            assigned: rx,
            reach: reach_rx,
            stop,
            task,
            watchers,
        }
    }

    /// The config's checks (at start and after each reload): the floating ones are
    /// the cluster's to place.
    pub fn set_checks(&self, checks: &[PlannedCheck]) {
        let floating: BTreeMap<Arc<str>, Floating> = checks
            .iter()
            .filter(|c| !c.pinned)
            .map(|c| {
                (
                    c.name.clone(),
                    Floating {
                        group: c.group.clone(),
                        labels: c.labels.clone(),
                    },
                )
            })
            .collect();
        *lock(&self.pinned) = checks.iter().filter(|c| c.pinned).count();
        *lock(&self.floating) = Arc::new(floating);
        self.poke();
    }

    /// Something placement depends on changed: the loop looks again, now.
    fn poke(&self) {
        self.changes.fetch_add(1, Relaxed);
        self.wake.notify_one();
    }

    /// Whether this replica leads, now and as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn set_leading(&self, now: bool) {
        if !now {
            self.proof.store(0, Relaxed);
        }
        self.leading
            .send_if_modified(|l| std::mem::replace(l, now) != now);
    }

    fn hb(&self) -> Duration {
        self.cfg.heartbeat.get()
    }

    fn lease(&self) -> Duration {
        self.cfg.lease.get()
    }

    /// Keeps `places` equal to the bucket: a whole read, then a watch of its changes,
    /// both again on an error (after a NATS restart the watch stalls for seconds) and
    /// when the bucket's last sequence, asked every minute, is past what was seen (a
    /// change the watch missed, or one between the read and the watch). With 9000
    /// checks a whole read each minute on every replica was most of what crossed NATS.
    async fn watch_places(self: Arc<Self>) {
        loop {
            // Asked before the read: a change after it is in the read or comes later.
            let before = self.place_seq().await;
            match self.nats.placements().await {
                Ok(all) => {
                    *lock(&self.places) = all;
                    self.poke();
                }
                Err(e) => {
                    tracing::debug!(event = "cluster", "Reading placements: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let Ok(mut w) = self.nats.place.watch_all().await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut seen = before.unwrap_or(0);
            'watch: loop {
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let next = match tokio::time::timeout_at(until, w.next()).await {
                        Ok(Some(Ok(e))) => e,
                        // Time to look whether the watch missed anything.
                        Err(_) => break,
                        Ok(_) => break 'watch,
                    };
                    seen = seen.max(next.revision);
                    self.place_entry(next);
                }
                match self.place_seq().await {
                    Some(last) if last <= seen => continue,
                    _ => break,
                }
            }
        }
    }

    /// The placement bucket's last sequence, fresh from the server.
    async fn place_seq(&self) -> Option<u64> {
        let mut stream = self.nats.place.stream.clone();
        let info = tokio::time::timeout(Duration::from_secs(5), stream.info()).await;
        info.ok()?.ok().map(|i| i.state.last_sequence)
    }

    fn place_entry(&self, e: kv::Entry) {
        let Some(name) = name_of(&e.key) else {
            return;
        };
        {
            let mut places = lock(&self.places);
            match e.operation {
                kv::Operation::Put => match serde_json::from_slice::<PlaceRecord>(&e.value) {
                    Ok(r) => {
                        places.insert(name, (r, e.revision));
                    }
                    Err(_) => return,
                },
                _ => {
                    places.remove(&name);
                }
            }
        }
        self.poke();
    }

    /// Keeps `live` equal to the replicas' bucket: a heartbeat is a put, an expired
    /// one a purge (the bucket has limit markers), so a death is seen ~0.1 s after the
    /// lease without polling. The loop reads the whole bucket when this watch has been
    /// silent for two heartbeats (it stalls for seconds after a NATS restart).
    async fn watch_replicas(self: Arc<Self>) {
        let nats = self.nats.clone();
        follow(
            || nats.replicas.watch_all(),
            |e| {
                self.replicas_seen.store(crate::clock::mono_ms(), Relaxed);
                let changed = {
                    let mut live = lock(&self.live);
                    match e.operation {
                        kv::Operation::Put => {
                            match serde_json::from_slice::<ReplicaRecord>(&e.value) {
                                // A new replica, or one whose capacity changed (it
                                // restarted with another config): placement may change.
                                Ok(r) => {
                                    let capacity = r.capacity;
                                    live.insert(e.key.clone(), r)
                                        .is_none_or(|old| old.capacity != capacity)
                                }
                                Err(_) => false,
                            }
                        }
                        _ => live.remove(&e.key).is_some(),
                    }
                };
                if changed {
                    self.poke();
                }
            },
        )
        .await
    }

    /// Watches the leader's key: deleted (a leader that left) or expired (one that
    /// died), the others try to take the lease at once.
    async fn watch_leader(self: Arc<Self>) {
        let nats = self.nats.clone();
        follow(
            || nats.leader.watch("leader"),
            |e| {
                let free = e.operation != kv::Operation::Put;
                self.leader_seen.store(crate::clock::mono_ms(), Relaxed);
                self.leader_free.store(free, Relaxed);
                if free {
                    self.wake.notify_one();
                }
            },
        )
        .await
    }

    /// Whether a watch showed nothing yet (0: `mono_ms` is never 0), or last showed
    /// something more than `silent` ago.
    fn silent(seen: &AtomicU64, silent: Duration) -> bool {
        let seen = seen.load(Relaxed);
        seen == 0 || crate::clock::mono_ms().saturating_sub(seen) > silent.as_millis() as u64
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let client = self.nats.client.clone();
        let mut info = client
            .subscribe(self.nats.info_subject(&self.id))
            .await
            .ok();
        let mut cmds = client.subscribe(self.nats.cmd_subject(&self.id)).await.ok();
        // The heartbeat has a task of its own: the lease is given up on time even while
        // this loop waits on NATS (each request may wait for its timeout).
        let beats = tokio::spawn(self.clone().heartbeats(stop.clone()));
        // The leader renews its lease each tick (four times a lease at least); the
        // others try to take it when its key goes (watch_leader) or once a heartbeat.
        let mut tick = tokio::time::interval(self.hb() / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader_rev: Option<u64> = None;
        let mut rr = 0usize;
        // What the last full look saw: the count of changes, whether it could place.
        let mut seen: Option<(u64, bool)> = None;
        let mut last_look = Instant::now();
        let mut last_live: Option<Instant> = None;
        // Whether the leader's last pass wrote all it decided.
        let mut complete = true;
        let mut last_try = None::<Instant>;
        // The live replicas when the leader last looked at the remediation claims: one
        // gone since may have died during a run.
        let mut claims_seen: Option<BTreeSet<String>> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                Some(m) = next_msg(&mut info) => {
                    self.answer_info(m).await;
                    continue;
                }
                Some(m) = next_msg(&mut cmds) => {
                    self.answer_command(m, leader_rev.is_some(), &mut rr).await;
                    continue;
                }
                _ = stop.cancelled() => break,
            }
            if *lock(&self.cut) {
                leader_rev = None;
                self.set_leading(false);
                continue;
            }
            // While the heartbeat does not get through, nothing else is tried.
            if !self.beating.load(Relaxed) {
                continue;
            }
            // A replica that does not lead tries when the leader's key went, and, as
            // the backstop of that watch, once a heartbeat while the watch has not
            // shown the key for a lease (a create refused each second by a live
            // leader was a round trip a second on every replica, for nothing).
            if leader_rev.is_some()
                || self.leader_free.load(Relaxed)
                || last_try.is_none_or(|t: Instant| t.elapsed() >= self.hb())
                    && Self::silent(&self.leader_seen, self.lease())
            {
                last_try = Some(Instant::now());
                leader_rev = self.lead(leader_rev).await;
            }
            self.set_leading(leader_rev.is_some() && !*lock(&self.cut));
            let places = leader_rev.is_some() && self.started.elapsed() >= self.lease();
            // `live` follows the replicas' bucket (watch_replicas); a whole read at
            // start and, at most every 5 s, while that watch is stalled is the backstop
            // for what it missed. Read every 5 s on every replica, it was a new
            // consumer and a handful of round trips each time, for nothing.
            if last_live.is_none_or(|t| {
                t.elapsed() >= LIVE_READ_EVERY && Self::silent(&self.replicas_seen, 2 * self.hb())
            }) {
                last_live = Some(Instant::now());
                self.refresh_live().await;
            }
            if places {
                self.report_orphan_claims(&mut claims_seen).await;
            } else {
                claims_seen = None;
            }
            let mut now = (self.changes.load(Relaxed), places);
            // A full look costs a pass over every floating check: only when something
            // changed (the config's checks, the placements, a replica come, gone or
            // with another capacity, a command: refused checks are tried again then),
            // when the last one could not take everything over (`seen` is None: a last
            // owner that has not let go), or, on the leader, once a minute as a
            // backstop. Every 5 s over 9000 checks, that pass was most of an idle
            // leader's CPU, and a fifth of an idle follower's. The placements' watch
            // (with its own backstop each minute) moves `changes` when they change.
            let every = if complete { LOOK_EVERY } else { LOOK_RETRY };
            let periodic = places && last_look.elapsed() >= every;
            if seen == Some(now) && !periodic {
                continue;
            }
            // The leader writes a burst of placements (thousands at start or when a
            // replica dies): taken over as one batch once it is quiet, not one batch a
            // watch event (a replica's 3000 checks came in ~450 batches, each a
            // scheduler apply and a log line).
            if !places && seen.map(|(c, _)| c) != Some(now.0) {
                now.0 = self.settle().await;
            }
            last_look = Instant::now();
            if places {
                complete = self.reconcile(&mut rr).await;
            }
            // Not all taken over (a last owner that has not let go yet): again soon.
            seen = self.take_assigned().await.then_some(now);
        }
        let _ = beats.await;
        self.set_leading(false);
        // With NATS out of reach there is nothing to hand over: the others take the
        // checks after the lease. The stop is not held up for it.
        if tokio::time::timeout(Duration::from_secs(5), self.leave(leader_rev))
            .await
            .is_err()
        {
            tracing::warn!(event = "cluster_left", replica = %self.id, "Left the cluster without handing over: NATS did not answer within 5s (the others take the checks after the lease).");
        }
    }

    /// Waits until the changes stop coming for [`SETTLE_QUIET`], at most
    /// [`SETTLE_MAX`] (or a quarter heartbeat: the loop renews the lease too); the count
    /// of changes it settled at.
    async fn settle(&self) -> u64 {
        let until = Instant::now() + SETTLE_MAX.min(self.hb() / 4);
        let mut count = self.changes.load(Relaxed);
        loop {
            tokio::time::sleep(SETTLE_QUIET).await;
            let c = self.changes.load(Relaxed);
            if c == count || Instant::now() >= until {
                return c;
            }
            count = c;
        }
    }

    /// Renews the heartbeat every `heartbeat`. Silent for a whole lease: cut off, the
    /// floating checks stop here at once; out of reach for `unreachable_after`: the
    /// supervisor is told (and again when NATS is back).
    async fn heartbeats(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.hb());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok = Instant::now();
        let mut last_ok_ms = unix_ms();
        // Since when (unix ms) NATS is out of reach, once that was reported.
        let mut reported: Option<u64> = None;
        // The delivery figures last written to `<p>-figures`.
        let mut figures_written = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let beat = self.beat().await;
            self.beating.store(beat.is_ok(), Relaxed);
            match beat {
                Ok(()) => {
                    last_ok = Instant::now();
                    last_ok_ms = unix_ms();
                    self.write_figures(&mut figures_written).await;
                    if std::mem::replace(&mut *lock(&self.cut), false) {
                        tracing::info!(event = "cluster_reachable", replica = %self.id, "NATS can be reached again: this replica takes part in the cluster again.");
                        self.poke();
                    }
                    if let Some(since) = reported.take() {
                        let _ = self.reach.send(Reach::Back {
                            for_ms: last_ok_ms.saturating_sub(since),
                        });
                    }
                }
                Err(e) => {
                    if last_ok.elapsed() >= self.lease() {
                        let mut cut = lock(&self.cut);
                        if !*cut {
                            *cut = true;
                            let n = self.assigned.borrow().len();
                            lock(&self.owned).clear();
                            self.assigned.send_replace(Arc::new(BTreeSet::new()));
                            drop(cut);
                            self.set_leading(false);
                            tracing::error!(event = "cluster_cut_off", replica = %self.id, stopped = n, "Cut off from NATS for {} ({e}): this replica's lease cannot be renewed, so its {n} floating checks stop here (the others take them over); pinned checks go on.", vigia_api::Dur(last_ok.elapsed()));
                        }
                    } else {
                        tracing::debug!(event = "cluster", "Heartbeat failed: {e}");
                    }
                    if reported.is_none() && last_ok.elapsed() >= self.cfg.unreachable_after.get() {
                        reported = Some(last_ok_ms);
                        let _ = self.reach.send(Reach::Unreachable {
                            since_ms: last_ok_ms,
                            error: e,
                        });
                    }
                }
            }
        }
    }
    /// Writes this replica's delivery figures to `<p>-figures` when they changed since
    /// `written`: what `vigia status` sums for a replica once it is gone.
    async fn write_figures(
        &self,
        written: &mut Option<BTreeMap<String, vigia_core::snapshot::TargetStats>>,
    ) {
        let targets = self.alerts.snapshot();
        if written.as_ref() == Some(&targets) {
            return;
        }
        let rec = super::FiguresRecord {
            at: unix_ms(),
            targets,
        };
        let bytes = serde_json::to_vec(&rec).unwrap_or_default();
        match tokio::time::timeout(self.hb(), self.nats.figures.put(&self.id, bytes.into())).await {
            Ok(Ok(_)) => *written = Some(rec.targets),
            Ok(Err(e)) => tracing::debug!(event = "cluster", "Writing the delivery figures: {e}"),
            Err(_) => tracing::debug!(event = "cluster", "Writing the delivery figures: timed out"),
        }
    }

    async fn beat(&self) -> Result<(), String> {
        let running = self.assigned.borrow().len();
        let rec = ReplicaRecord {
            id: self.id.clone(),
            host: self.host.clone(),
            capacity: self.cfg.capacity,
            labels: self.cfg.labels.clone(),
            running,
            pinned: *lock(&self.pinned),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_ms,
            at: unix_ms(),
            targets: self.alerts.snapshot(),
        };
        let bytes = serde_json::to_vec(&rec).unwrap_or_default();
        tokio::time::timeout(self.hb(), self.nats.replicas.put(&self.id, bytes.into()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn refresh_live(&self) {
        match self.nats.live_replicas().await {
            Ok(l) => {
                let mut live = lock(&self.live);
                // What placement depends on, as the watch counts it: who, and how much
                // room each has.
                let room = |m: &BTreeMap<String, ReplicaRecord>| {
                    m.iter()
                        .map(|(k, r)| (k.clone(), r.capacity))
                        .collect::<Vec<_>>()
                };
                if room(&live) != room(&l) {
                    self.changes.fetch_add(1, Relaxed);
                }
                *live = l;
            }
            Err(e) => tracing::debug!(event = "cluster", "Reading the replicas: {e}"),
        }
    }

    /// The leader's look at the remediation claims, when a replica left the live set
    /// since the last one (or this replica just took the lead).
    async fn report_orphan_claims(&self, seen: &mut Option<BTreeSet<String>>) {
        let live: BTreeSet<String> = lock(&self.live).keys().cloned().collect();
        if seen.as_ref().is_some_and(|s| s.is_subset(&live)) {
            *seen = Some(live);
            return;
        }
        match super::claims::report_orphans(&self.nats, &live).await {
            Ok(_) => *seen = Some(live),
            Err(e) => tracing::debug!(event = "cluster", "Reading the remediation claims: {e}"),
        }
    }

    /// Takes or keeps the leader's lease; the revision while this replica leads.
    async fn lead(&self, rev: Option<u64>) -> Option<u64> {
        let kv = &self.nats.leader;
        let me = bytes::Bytes::from(self.id.clone());
        // The lease runs from the server's write, which is after this.
        let proven =
            crate::clock::mono_ms() + self.lease().saturating_sub(self.hb()).as_millis() as u64;
        let rev = match rev {
            Some(r) => match kv.update("leader", me, r).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(event = "cluster_leader", replica = %self.id, "This replica no longer leads the cluster ({e}).");
                    None
                }
            },
            None => match kv.create("leader", me).await {
                Ok(r) => {
                    tracing::info!(event = "cluster_leader", replica = %self.id, "This replica leads the cluster now: it places the checks.");
                    Some(r)
                }
                Err(_) => {
                    // Taken (its put reaches watch_leader) or NATS did not answer (the
                    // heartbeat's try is the backstop).
                    self.leader_free.store(false, Relaxed);
                    None
                }
            },
        };
        self.proof
            .store(if rev.is_some() { proven } else { 0 }, Relaxed);
        rev
    }

    /// The leader's placement work: new checks placed as if started, those of dead or
    /// draining replicas started elsewhere, refused ones tried again, removed ones
    /// forgotten. Every decision is made first, in memory; the writes then go
    /// [`WRITES_IN_FLIGHT`] at a time, in chunks of [`PLACE_CHUNK`], and stop after the
    /// chunk that passes a deadline of half a heartbeat, so that the loop renews the
    /// lease in time: written one by one, 9000 placements took
    /// 6 s, and a lease of 3 s ran out meanwhile (two replicas led for a moment). What
    /// was not written is decided again at the next pass, which comes at once.
    ///
    /// Whether every decision was written: if not (NATS refused or timed out a
    /// write, or could not tell the drained replicas), the loop looks again after
    /// [`LOOK_RETRY`], not only at its next change.
    async fn reconcile(&self, rr: &mut usize) -> bool {
        let deadline = tokio::time::Instant::now() + self.hb() / 2;
        let floating = lock(&self.floating).clone();
        let places = lock(&self.places).clone();
        // Not known, a drained replica could be given checks: no pass without it.
        let drained = match self.nats.drained().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(event = "cluster", "Reading the drained replicas: {e}");
                return false;
            }
        };
        let mut complete = true;
        let mut placement = self.placement(&places, &drained, *rr);
        let mut decisions = Vec::new();
        for name in floating.keys() {
            let current = places.get(&**name);
            let why = match current {
                None => "new",
                Some((p, _)) if p.stopped => continue,
                Some((p, _)) => match &p.replica {
                    Some(r) if placement.is_live(r) && !drained.contains(r) => continue,
                    Some(r) if drained.contains(r) => "drained",
                    Some(_) => "dead",
                    None => "waiting",
                },
            };
            let from = current.and_then(|(p, _)| p.replica.clone());
            if from.as_deref().is_some_and(|r| placement.is_live(r)) {
                placement.release(from.as_deref().unwrap_or_default());
            }
            let rec = match placement.start() {
                Ok(r) => PlaceRecord {
                    replica: Some(r),
                    stopped: false,
                    refused: None,
                    at: unix_ms(),
                },
                Err(refusal) => {
                    if current
                        .is_some_and(|(p, _)| p.replica.is_none() && p.refused == Some(refusal))
                    {
                        continue;
                    }
                    PlaceRecord {
                        replica: None,
                        stopped: false,
                        refused: Some(refusal),
                        at: unix_ms(),
                    }
                }
            };
            decisions.push(Decision {
                name: name.clone(),
                rec,
                rev: current.map(|(_, rev)| *rev),
                from,
                why,
                rr_after: placement.next_index(),
            });
        }
        if decisions.is_empty() {
            *rr = placement.next_index();
        }
        // Chunk by chunk, each written whole: the round-robin index goes on from the
        // last decision written, so a pass cut at the deadline keeps the balance.
        let mut written = 0;
        let mut rest = decisions.into_iter().peekable();
        while rest.peek().is_some() && tokio::time::Instant::now() < deadline {
            let chunk: Vec<Decision> = rest.by_ref().take(PLACE_CHUNK).collect();
            let next_rr = chunk.last().map_or(*rr, |d| d.rr_after);
            let n = chunk.len();
            let ok = futures::stream::iter(chunk)
                .map(|d: Decision| async move {
                    let ok = self.write_place(&d.name, &d.rec, d.rev).await;
                    if ok {
                        d.log();
                    }
                    ok
                })
                .buffer_unordered(WRITES_IN_FLIGHT)
                .filter(|ok| std::future::ready(*ok))
                .count()
                .await;
            complete &= ok == n;
            written += n;
            *rr = next_rr;
        }
        let removed: Vec<String> = places
            .keys()
            .filter(|name| !floating.contains_key(name.as_str()))
            .cloned()
            .collect();
        let to_delete = removed.len();
        let deleted = futures::stream::iter(removed)
            .map(|name: String| async move { self.nats.place.delete(key_of(&name)).await.is_ok() })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .take_until(tokio::time::sleep_until(deadline))
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        complete &= deleted == to_delete;
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(event = "cluster", written, deleted, "Placement paused at its deadline (the lease is renewed first); the rest comes at the next pass.");
            self.wake.notify_one();
            return false;
        }
        complete
    }

    fn placement(
        &self,
        places: &BTreeMap<String, (PlaceRecord, u64)>,
        drained: &BTreeSet<String>,
        rr: usize,
    ) -> Placement {
        let live = lock(&self.live).clone();
        let replicas = live
            .values()
            .map(|r| Replica {
                id: r.id.clone(),
                capacity: r.capacity,
                draining: drained.contains(&r.id),
            })
            .collect();
        Placement::new(
            replicas,
            places.values().filter_map(|(p, _)| p.replica.as_deref()),
            rr,
        )
    }

    /// Writes a placement: create for a new key, update(revision) for a known one, so
    /// that a leader that lost its lease without knowing it overwrites nothing.
    async fn write_place(&self, name: &str, rec: &PlaceRecord, rev: Option<u64>) -> bool {
        let bytes: bytes::Bytes = serde_json::to_vec(rec).unwrap_or_default().into();
        let key = key_of(name);
        let r = match rev {
            Some(rev) => self
                .nats
                .place
                .update(&key, bytes, rev)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .nats
                .place
                .create(&key, bytes)
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(rev) => {
                lock(&self.places).insert(name.to_string(), (rec.clone(), rev));
                true
            }
            Err(e) => {
                tracing::debug!(
                    event = "cluster",
                    check = name,
                    "Placement not written: {e}"
                );
                false
            }
        }
    }

    /// Takes over the checks placed here that are not yet running here, and lets go
    /// of those placed elsewhere; tells the supervisor when the set changed.
    /// Whether every check placed here runs here now.
    async fn take_assigned(&self) -> bool {
        let floating = lock(&self.floating).clone();
        // This replica's placements, looked up in the config's floating checks: a pass
        // over the placements and a lookup for this replica's third of them, not a
        // lookup for every check of the cluster (9000 of them, every 5 s, were 5 % of
        // a replica's CPU).
        let desired: BTreeSet<Arc<str>> = {
            let places = lock(&self.places);
            places
                .iter()
                .filter(|(_, (p, _))| !p.stopped && p.replica.as_deref() == Some(&self.id))
                .filter_map(|(n, _)| floating.get_key_value(n.as_str()).map(|(k, _)| k.clone()))
                .collect()
        };
        let current = self.assigned.borrow().clone();
        if *current == desired {
            return true;
        }
        let mut next: BTreeSet<Arc<str>> = current.intersection(&desired).cloned().collect();
        // A round trip each: many at a time (a failover hands thousands over at once).
        let wanted: Vec<Arc<str>> = desired.difference(&current).cloned().collect();
        let taken: Vec<Arc<str>> = futures::stream::iter(wanted)
            .map(|name: Arc<str>| async move { self.take_over(&name).await.then_some(name) })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        next.extend(taken);
        // Their states are read now: once the scheduler stops them, the status map
        // forgets them (a release after that had nothing to hand over, and the next
        // owner waited for the stuck-owner rule: 4 s more).
        let gone: Vec<(Arc<str>, Option<CheckState>)> = current
            .difference(&desired)
            .map(|n| (n.clone(), self.book.state(n)))
            .collect();
        {
            // Cut off meanwhile: the heartbeat task dropped every floating check.
            let cut = lock(&self.cut);
            if *cut {
                return false;
            }
            if next != *current {
                self.assigned.send_replace(Arc::new(next.clone()));
            }
        }
        futures::stream::iter(gone)
            .map(|(name, state): (Arc<str>, Option<CheckState>)| async move {
                self.release(&name, state).await
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .count()
            .await;
        next == desired
    }

    /// Becomes the owner of a check's record: its state goes into the status map
    /// before the check's first run here. False while the last owner, alive, has not
    /// let go of it yet (a planned move), or NATS did not answer.
    async fn take_over(&self, name: &Arc<str>) -> bool {
        let key = key_of(name);
        let entry = match self.nats.checks.entry(key.clone()).await {
            Ok(e) => e.filter(|e| e.operation == kv::Operation::Put),
            Err(e) => {
                tracing::debug!(event = "cluster", check = %name, "Reading its state: {e}");
                return false;
            }
        };
        let now = unix_ms();
        let (state, rev, from) = match entry {
            None => (
                self.book
                    .state(name)
                    .unwrap_or_else(|| CheckState::new(now)),
                None,
                None,
            ),
            Some(e) => {
                let Ok(rec) = serde_json::from_slice::<CheckRecord>(&e.value) else {
                    return false;
                };
                let free = match &rec.owner {
                    None => true,
                    Some(o) if *o == self.id => true,
                    Some(o) => {
                        !lock(&self.live).contains_key(o)
                        // A live owner that has not let go within a lease: it is stuck.
                        || now.saturating_sub(rec.at) > 2 * self.lease().as_millis() as u64
                            && lock(&self.places).get(&**name).is_some_and(|(p, _)| now.saturating_sub(p.at) > 2 * self.lease().as_millis() as u64)
                    }
                };
                if !free {
                    return false;
                }
                (CheckState::from(rec.state), Some(e.revision), rec.owner)
            }
        };
        let rec = CheckRecord {
            owner: Some(self.id.clone()),
            state: StoredCheck::from(&state),
            at: now,
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&rec).unwrap_or_default().into();
        let r = match rev {
            Some(rev) => self
                .nats
                .checks
                .update(&key, bytes, rev)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .nats
                .checks
                .create(&key, bytes)
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(rev) => {
                lock(&self.owned).insert(name.clone(), rev);
                self.book.restore(name.clone(), state);
                match from.filter(|f| *f != self.id) {
                    Some(f) => {
                        tracing::info!(event = "cluster_take", check = %name, from = %f, "{name} runs here now (from {f}), going on from its state there.")
                    }
                    None => {
                        tracing::debug!(event = "cluster_take", check = %name, "{name} runs here now.")
                    }
                }
                true
            }
            Err(e) => {
                tracing::debug!(event = "cluster", check = %name, "Taking it over: {e}");
                false
            }
        }
    }

    /// Lets go of a check placed elsewhere: its last state, with no owner, for the next.
    async fn release(&self, name: &Arc<str>, state: Option<CheckState>) {
        let Some(rev) = lock(&self.owned).remove(name) else {
            return;
        };
        let state = match state {
            Some(s) => s,
            // Never ran here: what the record holds.
            None => match self.nats.checks.entry(key_of(name)).await {
                Ok(Some(e)) => match serde_json::from_slice::<CheckRecord>(&e.value) {
                    Ok(r) => CheckState::from(r.state),
                    Err(_) => return,
                },
                _ => return,
            },
        };
        let rec = CheckRecord {
            owner: None,
            state: StoredCheck::from(&state),
            at: unix_ms(),
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&rec).unwrap_or_default().into();
        if let Err(e) = self.nats.checks.update(key_of(name), bytes, rev).await {
            tracing::debug!(event = "cluster", check = %name, "Releasing it: {e}");
        }
    }

    async fn leave(&self, leader_rev: Option<u64>) {
        let owned: Vec<Arc<str>> = lock(&self.owned).keys().cloned().collect();
        for name in &owned {
            self.release(name, self.book.state(name)).await;
        }
        if let Some(rev) = leader_rev {
            let _ = self
                .nats
                .leader
                .delete_expect_revision("leader", Some(rev))
                .await;
        }
        let _ = self.nats.replicas.delete(&self.id).await;
        let _ = self.nats.client.flush().await;
        tracing::info!(event = "cluster_left", replica = %self.id, released = owned.len(), "Left the cluster: {} floating checks released for the others.", owned.len());
    }

    async fn answer_info(&self, m: async_nats::Message) {
        let Some(reply) = m.reply else { return };
        let floating = self.tasks.count_running(|s| !s.pinned);
        let pinned = self.tasks.count_running(|s| s.pinned);
        let body = serde_json::json!({
            "replica": self.id,
            "host": self.host,
            "capacity": self.cfg.capacity,
            "floating": floating,
            "pinned": pinned,
            "labels": self.cfg.labels,
        });
        let _ = self
            .nats
            .client
            .publish(reply, body.to_string().into())
            .await;
    }

    async fn answer_command(&self, m: async_nats::Message, leading: bool, rr: &mut usize) {
        let Some(reply) = m.reply.clone() else { return };
        let answer = match serde_json::from_slice::<ClusterCommand>(&m.payload) {
            Err(e) => Err(format!("not a cluster command: {e}")),
            Ok(_) if !leading => Err(format!("{} does not lead the cluster (ask again)", self.id)),
            Ok(c) => {
                // The replicas as NATS has them now: one that joined a moment ago counts.
                self.refresh_live().await;
                self.command(c, rr).await
            }
        };
        let body = match answer {
            Ok(text) => serde_json::json!({"ok": true, "text": text}),
            Err(text) => serde_json::json!({"ok": false, "text": text}),
        };
        let _ = self
            .nats
            .client
            .publish(reply, body.to_string().into())
            .await;
    }

    /// The checks a selector names, among the floating ones; and names that are none.
    fn select(&self, sel: &Selector) -> (Vec<Arc<str>>, Vec<String>) {
        let floating = lock(&self.floating).clone();
        let mut unknown = Vec::new();
        let mut out: Vec<Arc<str>> = Vec::new();
        for c in &sel.checks {
            match floating.get_key_value(c.as_str()) {
                Some((n, _)) => out.push(n.clone()),
                None => {
                    // A group's name selects its members.
                    let members: Vec<Arc<str>> = floating
                        .iter()
                        .filter(|(_, f)| f.group.as_deref() == Some(c.as_str()))
                        .map(|(n, _)| n.clone())
                        .collect();
                    if members.is_empty() {
                        unknown.push(c.clone());
                    }
                    out.extend(members);
                }
            }
        }
        for (n, f) in floating.iter() {
            let by_label = sel
                .labels
                .iter()
                .all(|(k, v)| f.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
            if sel.all || (!sel.labels.is_empty() && by_label) {
                out.push(n.clone());
            }
        }
        out.sort();
        out.dedup();
        (out, unknown)
    }

    async fn command(&self, c: ClusterCommand, rr: &mut usize) -> Result<String, String> {
        let places = lock(&self.places).clone();
        let drained = self.nats.drained().await?;
        match c {
            ClusterCommand::Start(sel) => {
                let (names, unknown) = self.select(&sel);
                let mut placement = self.placement(&places, &drained, *rr);
                let mut s = StartSummary {
                    asked: names.len() + unknown.len(),
                    unknown,
                    ..Default::default()
                };
                for name in names {
                    let cur = places.get(&*name);
                    if let Some((p, _)) = cur.filter(|(p, _)| {
                        !p.stopped && p.replica.as_deref().is_some_and(|r| placement.is_live(r))
                    }) {
                        let _ = p;
                        s.running += 1;
                        continue;
                    }
                    match placement.start() {
                        Ok(r) => {
                            let rec = PlaceRecord {
                                replica: Some(r.clone()),
                                stopped: false,
                                refused: None,
                                at: unix_ms(),
                            };
                            if self
                                .write_place(&name, &rec, cur.map(|(_, rev)| *rev))
                                .await
                            {
                                s.started.push((name.to_string(), r));
                            }
                        }
                        Err(why) => {
                            let rec = PlaceRecord {
                                replica: None,
                                stopped: false,
                                refused: Some(why),
                                at: unix_ms(),
                            };
                            self.write_place(&name, &rec, cur.map(|(_, rev)| *rev))
                                .await;
                            s.refused.push((name.to_string(), why));
                        }
                    }
                }
                *rr = placement.next_index();
                let mut text = s.to_string();
                for (c, r) in &s.started {
                    text.push_str(&format!("\n  {c} → {r}"));
                }
                Ok(text)
            }
            ClusterCommand::Stop(sel) => {
                let (names, unknown) = self.select(&sel);
                if names.is_empty() && !unknown.is_empty() {
                    return Err(format!(
                        "{}: not a floating check of the config",
                        unknown.join(", ")
                    ));
                }
                let single = names.len() == 1 && sel.checks.len() == 1 && unknown.is_empty();
                let (mut stopped, mut not) = (Vec::new(), 0);
                for name in &names {
                    let cur = places.get(&**name);
                    match cur {
                        Some((p, rev)) if !p.stopped && p.replica.is_some() => {
                            let rec = PlaceRecord {
                                replica: None,
                                stopped: true,
                                refused: None,
                                at: unix_ms(),
                            };
                            if self.write_place(name, &rec, Some(*rev)).await {
                                stopped.push(format!(
                                    "{name} (was on {})",
                                    p.replica.as_deref().unwrap_or("?")
                                ));
                            }
                        }
                        _ => {
                            not += 1;
                            // Kept stopped even if it was only waiting for a place.
                            let rec = PlaceRecord {
                                replica: None,
                                stopped: true,
                                refused: None,
                                at: unix_ms(),
                            };
                            self.write_place(name, &rec, cur.map(|(_, r)| *r)).await;
                        }
                    }
                }
                if single && stopped.is_empty() {
                    return Ok(format!("{}: not monitored", names[0]));
                }
                let mut text = format!(
                    "stopped {} of {}",
                    stopped.len(),
                    names.len() + unknown.len()
                );
                if not > 0 {
                    text.push_str(&format!(": {not} not monitored (skipped)"));
                }
                if !unknown.is_empty() {
                    text.push_str(&format!(
                        "; not floating checks of the config: {}",
                        unknown.join(", ")
                    ));
                }
                for s in stopped {
                    text.push_str(&format!("\n  {s}"));
                }
                Ok(text)
            }
            ClusterCommand::Drain(r) | ClusterCommand::Undrain(r)
                if !lock(&self.live).contains_key(&r) && !drained.contains(&r) =>
            {
                Err(format!(
                    "no replica {r} is alive (see `vigia cluster status`)"
                ))
            }
            ClusterCommand::Drain(r) => {
                self.nats
                    .meta
                    .put(format!("drain.{r}"), "1".into())
                    .await
                    .map_err(|e| e.to_string())?;
                let n = places
                    .values()
                    .filter(|(p, _)| p.replica.as_deref() == Some(&r))
                    .count();
                self.poke();
                Ok(format!("{r} is drained: its {n} floating checks move to the others; it takes no new ones until `vigia cluster undrain {r}`"))
            }
            ClusterCommand::Undrain(r) => {
                self.nats
                    .meta
                    .delete(format!("drain.{r}"))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("{r} takes checks again (new ones now; existing ones with `vigia cluster rebalance`)"))
            }
            ClusterCommand::Rebalance { dry_run } => {
                let assigned: BTreeMap<String, String> = places
                    .iter()
                    .filter(|(_, (p, _))| !p.stopped)
                    .filter_map(|(n, (p, _))| Some((n.clone(), p.replica.clone()?)))
                    .collect();
                let mut placement = self.placement(&places, &drained, *rr);
                let moves = placement.rebalance(&assigned);
                if moves.is_empty() {
                    return Ok("balanced already: nothing moves".into());
                }
                let mut text = format!(
                    "{} {} checks",
                    if dry_run { "would move" } else { "moves" },
                    moves.len()
                );
                for (c, from, to) in &moves {
                    if !dry_run {
                        let rev = places.get(c).map(|(_, r)| *r);
                        let rec = PlaceRecord {
                            replica: Some(to.clone()),
                            stopped: false,
                            refused: None,
                            at: unix_ms(),
                        };
                        self.write_place(c, &rec, rev).await;
                    }
                    text.push_str(&format!("\n  {c}: {from} → {to}"));
                }
                Ok(text)
            }
        }
    }

    /// Writes a floating check's new state with the revision this replica last wrote:
    /// true while it owns the check.
    async fn fence_one(&self, o: &Observation) -> bool {
        let Some(rev) = lock(&self.owned).get(&o.spec.name).copied() else {
            tracing::debug!(event = "cluster_fenced", check = %o.spec.name, "A result of a check this replica no longer runs is dropped.");
            return false;
        };
        let rec = CheckRecord {
            owner: Some(self.id.clone()),
            state: StoredCheck::from(&o.state),
            at: unix_ms(),
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&rec).unwrap_or_default().into();
        match self
            .nats
            .checks
            .update(key_of(&o.spec.name), bytes, rev)
            .await
        {
            Ok(rev) => {
                let mut owned = lock(&self.owned);
                if let Some(r) = owned.get_mut(&o.spec.name) {
                    *r = rev;
                }
                true
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                lock(&self.owned).remove(&o.spec.name);
                tracing::warn!(event = "cluster_fenced", check = %o.spec.name, "{} runs on another replica now: this replica's result is dropped, nothing is alerted for it here.", o.spec.name);
                self.poke();
                false
            }
            // NATS cannot be reached: the check is still ours as far as we know (the
            // heartbeat stops it once the lease is gone).
            Err(e) => {
                tracing::debug!(event = "cluster", check = %o.spec.name, "Its state could not be written to NATS: {e}");
                true
            }
        }
    }
}

impl crate::journal::Fence for Member {
    fn admit(&self, batch: Vec<Observation>) -> futures::future::BoxFuture<'_, Vec<Observation>> {
        Box::pin(async move {
            if batch.iter().all(|o| o.spec.pinned) {
                return batch;
            }
            let verdicts = futures::future::join_all(
                batch
                    .iter()
                    .map(|o| async move { o.spec.pinned || self.fence_one(o).await }),
            )
            .await;
            batch
                .into_iter()
                .zip(verdicts)
                .filter_map(|(o, ok)| ok.then_some(o))
                .collect()
        })
    }
}

async fn next_msg(s: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Follows a watch, opened again (after 1 s when it cannot be) whenever it ends: a KV
/// watch ends when NATS restarts.
async fn follow<W, E>(open: impl Fn() -> W, mut on: impl FnMut(kv::Entry))
where
    W: std::future::Future<Output = Result<kv::Watch, E>>,
{
    loop {
        let Ok(mut w) = open().await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while let Some(Ok(e)) = w.next().await {
            on(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
