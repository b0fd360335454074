//! Result history: per check, buckets of runs per minute (24 h), hour (30 days) and day
//! (400 days), and the last 100 transitions with their messages, in the state store.
//!
//! The journal hands every observation to [`History::record`], which only adds it to
//! the check's open minute in memory. Every [`FLUSH_MS`] the journal asks for
//! [`History::flush_ops`]: the minutes that closed are appended to their blocks, and
//! the open minutes of all checks are saved as one row, so `kill -9` loses at most that
//! interval. A block is appended to in place; the first minute of a new hour seals the
//! previous hour's block and adds its total to the hour tier (and so on to days), and
//! drops what is older than the tier keeps. A reader fills a coarser slot not written
//! yet from the finer tiers and the open minute, so the current hour and day are there.
//!
//! Memory: one open bucket per check. The store: ~4 bytes a minute of a check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use vigia_core::history::TransitionRecord;
use vigia_core::history::{self as codec, Bucket, Tier, MINUTE_MS};

use crate::store::{Op, Store, StoreError};

/// How often the open minutes are saved: what `kill -9` may lose.
pub const FLUSH_MS: u64 = 5_000;
/// Closed minutes written by one flush; more wait for the next (every check's minute
/// closes at the same moment).
pub const MINUTES_PER_FLUSH: usize = 2000;
/// The history of a check that left the config is dropped this long after.
pub const KEEP_REMOVED_MS: u64 = 30 * codec::DAY_MS;
/// Transitions kept per check.
pub const TRANSITIONS: usize = 100;

mod tables;

impl crate::store::TableWrite for HistoryOp {
    fn apply(&self, tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
        tables::apply(tx, self)
    }
}

/// A write to the history tables, applied inside the store's transaction.
#[derive(Clone, Debug)]
pub enum HistoryOp {
    /// Check name → (id, removed at: unix ms, 0 while configured).
    Ids(Vec<(Arc<str>, u32, u64)>),
    /// Closed minutes: (check id, unix minute, its runs), in id order.
    Minutes(Vec<(u32, u32, Open)>),
    Open(Vec<u8>),
    /// Seal the blocks of `tier` before block `before` of the checks with ids in
    /// `ids`, and roll them up.
    Sweep {
        tier: Tier,
        before: u32,
        ids: std::ops::Range<u32>,
    },
    Transition(u32, TransitionRecord),
    /// Everything of a check removed long ago.
    Drop(String, u32),
}

#[derive(Default)]
struct Entry {
    id: u32,
    /// The minute (unix minutes) the open bucket belongs to.
    minute: u32,
    removed_at: u64,
    open: Open,
}

/// An open minute's runs, kept small: one per configured check lives in memory
/// (32 bytes with its entry's other fields, against 64 with a [`Bucket`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Open {
    ok: u16,
    failed: u16,
    sum_ms: f32,
    min_ms: f32,
    max_ms: f32,
}

impl Open {
    fn is_empty(&self) -> bool {
        self.ok == 0 && self.failed == 0
    }

    fn add(&mut self, ok: bool, duration_ms: f64) {
        let mut b = self.bucket();
        b.add(ok, duration_ms);
        *self = Open::of(&b);
    }

    pub fn bucket(&self) -> Bucket {
        Bucket {
            ok: self.ok as u32,
            failed: self.failed as u32,
            sum_ms: self.sum_ms as f64,
            min_ms: self.min_ms as f64,
            max_ms: self.max_ms as f64,
        }
    }

    fn of(b: &Bucket) -> Open {
        Open {
            ok: b.ok.min(u16::MAX as u32) as u16,
            failed: b.failed.min(u16::MAX as u32) as u16,
            sum_ms: b.sum_ms as f32,
            min_ms: b.min_ms as f32,
            max_ms: b.max_ms as f32,
        }
    }
}

#[derive(Default)]
struct Inner {
    checks: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    next_id: u32,
    /// Minutes that closed since the last flush.
    closed: Vec<(u32, u32, Open)>,
    pending_ids: Vec<(Arc<str>, u32, u64)>,
    pending_drops: Vec<HistoryOp>,
    last_flush: u64,
    last_sweep: u64,
    /// Per tier, the block before which every block is sealed (0 after a start: the
    /// first flush sweeps whatever an earlier run left).
    swept: [u32; 3],
    /// Sweeps under way, a slice of checks a flush: (tier, before, next id).
    sweeps: std::collections::VecDeque<(Tier, u32, u32)>,
}

pub struct History {
    store: Arc<Store>,
    inner: Mutex<Inner>,
}

/// A check's history as the status page shows it.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The last 24 hours, by the hour (the current one partly).
    pub hours: Series,
    /// The last hour, by the minute.
    pub minutes: Series,
    /// Runs of the last 24 hours, 7 days and 30 days (whole days for these two).
    pub day: Bucket,
    pub week: Bucket,
    pub month: Bucket,
}

/// Buckets of one tier over a span: (start of the slot in unix ms, its bucket); slots
/// without runs are left out.
pub type Series = Vec<(u64, Bucket)>;

impl History {
    /// Loads the ids and the open minutes saved by the last run.
    pub fn load(store: Arc<Store>) -> Result<History, StoreError> {
        let mut inner = Inner::default();
        let (ids, open) = store.read("reading the result history", tables::load)?;
        let mut by_id = HashMap::new();
        for (name, (id, removed_at)) in ids {
            inner.next_id = inner.next_id.max(id + 1);
            let name: Arc<str> = name.into();
            by_id.insert(id, name.clone());
            inner.checks.insert(
                name,
                Entry {
                    id,
                    removed_at,
                    ..Default::default()
                },
            );
        }
        for (id, minute, bucket) in decode_open(open.as_deref().unwrap_or(&[])) {
            if let Some(e) = by_id.get(&id).and_then(|n| inner.checks.get_mut(n)) {
                // A check's latest minute is its open one; earlier ones were waiting
                // for their turn to be written.
                let (m, o) = (minute.min(u32::MAX as u64) as u32, Open::of(&bucket));
                if e.open.is_empty() {
                    (e.minute, e.open) = (m, o);
                } else if m > e.minute {
                    inner.closed.push((e.id, e.minute, e.open));
                    (e.minute, e.open) = (m, o);
                } else {
                    inner.closed.push((e.id, m, o));
                }
            }
        }
        inner.next_id = inner.next_id.max(1);
        Ok(History {
            store,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks in the config now: new ones get an id, removed ones start their
    /// 30 days. Returns the writes (ids), which the next flush also carries.
    pub fn configure<'a>(&self, names: impl IntoIterator<Item = &'a Arc<str>>, now: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut live = std::collections::HashSet::new();
        for name in names {
            live.insert(name.clone());
            // Keyed by the plan's own name: the store's copy is freed.
            if let Some((key, e)) = inner.checks.remove_entry(name) {
                let key = if Arc::ptr_eq(&key, name) {
                    key
                } else {
                    name.clone()
                };
                inner.checks.insert(key, e);
            }
            match inner.checks.get_mut(name) {
                Some(e) if e.removed_at != 0 => {
                    e.removed_at = 0;
                    inner.pending_ids.push((name.clone(), e.id, 0));
                }
                Some(_) => {}
                None => {
                    let id = inner.next_id;
                    inner.next_id += 1;
                    inner.checks.insert(
                        name.clone(),
                        Entry {
                            id,
                            ..Default::default()
                        },
                    );
                    inner.pending_ids.push((name.clone(), id, 0));
                }
            }
        }
        for (name, e) in inner.checks.iter_mut() {
            if e.removed_at == 0 && !live.contains(name) {
                e.removed_at = now.max(1);
                inner.pending_ids.push((name.clone(), e.id, e.removed_at));
            }
        }
        Self::sweep(inner, now);
    }

    /// Drops the history of checks removed more than 30 days ago.
    fn sweep(inner: &mut Inner, now: u64) {
        let old: Vec<Arc<str>> = inner
            .checks
            .iter()
            .filter(|(_, e)| {
                e.removed_at != 0 && now.saturating_sub(e.removed_at) > KEEP_REMOVED_MS
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in old {
            if let Some(e) = inner.checks.remove(&name) {
                inner
                    .pending_drops
                    .push(HistoryOp::Drop(name.to_string(), e.id));
            }
        }
    }

    /// Counts a run (the scheduler, as each run ends).
    pub fn record(&self, name: &Arc<str>, ok: bool, duration_ms: f64, at: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(e) = inner.checks.get_mut(name) else {
            return;
        };
        let minute = (at / MINUTE_MS).min(u32::MAX as u64) as u32;
        if minute != e.minute && !e.open.is_empty() {
            if minute < e.minute {
                // The clock went back: count it in the open minute.
                e.open.add(ok, duration_ms);
                return;
            }
            inner.closed.push((e.id, e.minute, e.open));
            e.open = Open::default();
        }
        e.minute = minute;
        e.open.add(ok, duration_ms);
    }

    /// Whether a flush is due.
    pub fn due(&self, now: u64) -> bool {
        let g = self.lock();
        now.saturating_sub(g.last_flush) >= FLUSH_MS
            || !g.pending_ids.is_empty()
            || !g.pending_drops.is_empty()
    }

    /// The writes of a flush: ids, the minutes closed by `now`, and every open minute.
    pub fn flush_ops(&self, now: u64) -> Vec<Op> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.last_flush = now;
        let this_minute = (now / MINUTE_MS).min(u32::MAX as u64) as u32;
        let mut ops: Vec<Op> = inner
            .pending_drops
            .drain(..)
            .map(|op| Op::Tables(Arc::new(op)))
            .collect();
        if !inner.pending_ids.is_empty() {
            let ids = std::mem::take(&mut inner.pending_ids);
            ops.push(Op::Tables(Arc::new(HistoryOp::Ids(ids))));
        }
        let mut closed = std::mem::take(&mut inner.closed);
        let mut open = Vec::new();
        for e in inner.checks.values_mut() {
            if e.open.is_empty() {
                continue;
            }
            if e.minute < this_minute {
                closed.push((e.id, e.minute, e.open));
                e.open = Open::default();
            } else {
                encode_open(&mut open, e.id, e.minute as u64, &e.open.bucket());
            }
        }
        if now.saturating_sub(inner.last_sweep) >= codec::HOUR_MS {
            inner.last_sweep = now;
            Self::sweep(inner, now);
        }
        // In check order: the appends then walk the open blocks' table in its order. At
        // most MINUTES_PER_FLUSH of them: a transaction that rewrites every check's row
        // at once holds all those pages (measured: +0.3 KiB of RSS a check at 10 000);
        // the rest wait for the next flushes, saved with the open minutes meanwhile.
        closed.sort_by_key(|(id, minute, _)| (*id, *minute));
        let later = match closed.len() > MINUTES_PER_FLUSH {
            true => closed.split_off(MINUTES_PER_FLUSH),
            false => Vec::new(),
        };
        for (id, minute, runs) in &later {
            encode_open(&mut open, *id, *minute as u64, &runs.bucket());
        }
        if !closed.is_empty() {
            ops.push(Op::Tables(Arc::new(HistoryOp::Minutes(closed))));
        }
        // A span is sealed once all its minutes are in.
        let waiting = !later.is_empty();
        inner.closed = later;
        for tier in Tier::ALL.into_iter().filter(|_| !waiting) {
            let (current, _) = tier.locate(now);
            if current > inner.swept[tier as usize] {
                inner.swept[tier as usize] = current;
                inner.sweeps.push_back((tier, current, 0));
            }
        }
        // One slice of checks a flush, for the same reason as the minutes.
        if let Some((tier, before, lo)) = inner.sweeps.front().copied().filter(|_| !waiting) {
            let hi = lo.saturating_add(MINUTES_PER_FLUSH as u32);
            ops.push(Op::Tables(Arc::new(HistoryOp::Sweep {
                tier,
                before,
                ids: lo..hi,
            })));
            match hi >= inner.next_id {
                true => {
                    inner.sweeps.pop_front();
                }
                false => {
                    if let Some(f) = inner.sweeps.front_mut() {
                        f.2 = hi;
                    }
                }
            }
        }
        ops.push(Op::Tables(Arc::new(HistoryOp::Open(open))));
        ops
    }

    /// The write that keeps a transition.
    pub fn transition_op(&self, name: &str, record: TransitionRecord) -> Option<Op> {
        let g = self.lock();
        let id = g.checks.get(name)?.id;
        Some(Op::Tables(Arc::new(HistoryOp::Transition(id, record))))
    }

    fn id_and_open(&self, name: &str) -> Option<(u32, Vec<(u64, Bucket)>)> {
        let g = self.lock();
        let e = g.checks.get(name)?;
        let mut open: Vec<(u64, Bucket)> = g
            .closed
            .iter()
            .filter(|(id, _, _)| *id == e.id)
            .map(|(_, m, b)| (*m as u64 * MINUTE_MS, b.bucket()))
            .collect();
        if !e.open.is_empty() {
            open.push((e.minute as u64 * MINUTE_MS, e.open.bucket()));
        }
        Some((e.id, open))
    }

    /// What the status page shows of many checks, with one lock and one read: per
    /// check the last 24 hours by the hour, and the runs of 24 h, 7 and 30 days.
    pub fn summaries(&self, names: &[&str], now: u64) -> Result<Vec<Option<Summary>>, StoreError> {
        let wanted: Vec<Option<(u32, Series)>> = {
            let g = self.lock();
            let mut unsaved: HashMap<u32, Vec<(u64, Bucket)>> = HashMap::new();
            for (id, m, b) in &g.closed {
                unsaved
                    .entry(*id)
                    .or_default()
                    .push((*m as u64 * MINUTE_MS, b.bucket()));
            }
            names
                .iter()
                .map(|n| {
                    let e = g.checks.get(*n)?;
                    let mut open = unsaved.remove(&e.id).unwrap_or_default();
                    if !e.open.is_empty() {
                        open.push((e.minute as u64 * MINUTE_MS, e.open.bucket()));
                    }
                    Some((e.id, open))
                })
                .collect()
        };
        let day_from = now.saturating_sub(30 * codec::DAY_MS);
        let hour_from = now.saturating_sub(codec::DAY_MS - codec::HOUR_MS);
        let week_from = now.saturating_sub(7 * codec::DAY_MS) / codec::DAY_MS * codec::DAY_MS;
        self.store.read("reading the result history", |tx| {
            let mut out = Vec::with_capacity(wanted.len());
            for w in wanted {
                let Some((id, open)) = w else {
                    out.push(None);
                    continue;
                };
                let hours: Series = tables::slots(tx, id, Tier::Hour, hour_from, now + 1, &open)?
                    .into_iter()
                    .collect();
                let days = tables::slots(tx, id, Tier::Day, day_from, now + 1, &open)?;
                let minutes: Series = tables::slots(
                    tx,
                    id,
                    Tier::Minute,
                    now.saturating_sub(codec::HOUR_MS),
                    now + 1,
                    &open,
                )?
                .into_iter()
                .collect();
                let mut s = Summary {
                    hours,
                    minutes,
                    ..Default::default()
                };
                for (_, b) in &s.hours {
                    s.day.merge(b);
                }
                for (at, b) in &days {
                    s.month.merge(b);
                    if *at >= week_from {
                        s.week.merge(b);
                    }
                }
                out.push(Some(s));
            }
            Ok(out)
        })
    }

    /// Whether history knows the check (configured now, or removed less than 30 days
    /// ago).
    pub fn knows(&self, name: &str) -> bool {
        self.lock().checks.contains_key(name)
    }

    /// The buckets of `tier` whose slots start in `[from, to)`. `None` for a check
    /// history does not know.
    pub fn series(
        &self,
        name: &str,
        tier: Tier,
        from: u64,
        to: u64,
    ) -> Result<Option<Series>, StoreError> {
        let Some((id, open)) = self.id_and_open(name) else {
            return Ok(None);
        };
        let slot = tier.slot_ms();
        let from = from / slot * slot;
        if to <= from {
            return Ok(Some(Vec::new()));
        }
        let slots = self.store.read("reading the result history", |tx| {
            tables::slots(tx, id, tier, from, to, &open)
        })?;
        Ok(Some(slots.into_iter().collect()))
    }

    /// The runs of the last `window` ms up to `now` as one bucket, from the coarsest
    /// tier that still has a slot per 1/24th of it (hours for 24 h and 7 days, days
    /// for 30 days): the window's first slot counts whole.
    pub fn total(&self, name: &str, window: u64, now: u64) -> Result<Option<Bucket>, StoreError> {
        let tier = tier_for(window);
        Ok(self
            .series(name, tier, now.saturating_sub(window), now + 1)?
            .map(|s| {
                let mut t = Bucket::default();
                for (_, b) in &s {
                    t.merge(b);
                }
                t
            }))
    }

    /// The last transitions, oldest first.
    pub fn transitions(&self, name: &str) -> Result<Option<Vec<TransitionRecord>>, StoreError> {
        let Some((id, _)) = self.id_and_open(name) else {
            return Ok(None);
        };
        self.store
            .read("reading the result history", |tx| {
                tables::transitions(tx, id)
            })
            .map(Some)
    }
}

impl crate::scheduler::RunTally for History {
    fn count(&self, check: &Arc<str>, ok: bool, duration_ms: f64, at: u64) {
        self.record(check, ok, duration_ms, at);
    }
}

/// The windows uptime is shown for.
pub const WINDOWS: [(&str, u64); 3] = [
    ("24h", codec::DAY_MS),
    ("7d", 7 * codec::DAY_MS),
    ("30d", 30 * codec::DAY_MS),
];

impl History {
    /// Uptime over 24 h, 7 d and 30 d (and `extra`, when it is another window).
    pub fn uptime(
        &self,
        name: &str,
        extra: Option<(&str, u64)>,
        now: u64,
    ) -> Result<Option<Vec<vigia_core::history::UptimeFigure>>, StoreError> {
        if !self.knows(name) {
            return Ok(None);
        }
        let mut windows: Vec<(&str, u64)> = WINDOWS.to_vec();
        if let Some(x) = extra.filter(|x| !WINDOWS.iter().any(|w| w.1 == x.1)) {
            windows.push(x);
        }
        let mut out = Vec::new();
        for (label, ms) in windows {
            let b = self.total(name, ms, now)?.unwrap_or_default();
            out.push(vigia_core::history::UptimeFigure::of(label, &b));
        }
        Ok(Some(out))
    }

    /// What `vigia history` prints.
    pub fn report(
        &self,
        name: &str,
        since: u64,
        now: u64,
    ) -> Result<Option<vigia_core::history::HistoryReport>, StoreError> {
        let Some(transitions) = self.transitions(name)? else {
            return Ok(None);
        };
        let label = vigia_core::alert::human_duration(now.saturating_sub(since));
        let uptime = self
            .uptime(name, Some((&label, now.saturating_sub(since))), now)?
            .unwrap_or_default();
        Ok(Some(vigia_core::history::HistoryReport {
            check: name.to_string(),
            since,
            now,
            transitions: transitions.into_iter().filter(|t| t.at >= since).collect(),
            uptime,
        }))
    }
}

/// `vigia history` while no engine runs: the store is free then. What the engine's
/// last seconds had not written yet is not there.
pub fn offline(state_dir: &std::path::Path, name: &str, since: u64) -> vigia_core::command::Reply {
    use vigia_core::command::Reply;
    let read = Store::open(state_dir)
        .map(Arc::new)
        .and_then(History::load)
        .and_then(|h| h.report(name, since, crate::clock::unix_ms()));
    match read {
        Ok(Some(r)) => Reply::History(r),
        Ok(None) => Reply::error(format!(
            "the store in {} has no history of a check named `{name}`",
            state_dir.display()
        )),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// The tier a window is summed from.
pub fn tier_for(window: u64) -> Tier {
    if window >= 2 * codec::DAY_MS {
        Tier::Day
    } else if window >= 6 * codec::HOUR_MS {
        Tier::Hour
    } else {
        Tier::Minute
    }
}

fn encode_open(out: &mut Vec<u8>, id: u32, minute: u64, b: &Bucket) {
    let mut block = codec::new_block();
    let _ = codec::append(&mut block, 0, b);
    for v in [id as u64, minute, block.len() as u64] {
        codec::put_varint(out, v);
    }
    out.extend_from_slice(&block);
}

fn decode_open(b: &[u8]) -> Vec<(u32, u64, Bucket)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let mut next = || codec::get_varint(b, &mut at);
        let (Ok(id), Ok(minute), Ok(len)) = (next(), next(), next()) else {
            break;
        };
        let end = at.saturating_add(len as usize).min(b.len());
        if let Some((_, bucket)) = codec::decode(&b[at..end])
            .ok()
            .and_then(|v| v.into_iter().next())
        {
            out.push((id as u32, minute, bucket));
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigia_core::history::{DAY_MS, HOUR_MS};

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(dir.path()).unwrap());
        (dir, s)
    }

    fn flush(h: &History, s: &Store, now: u64) {
        s.apply(&h.flush_ops(now)).unwrap();
    }

    #[test]
    fn minutes_roll_up_into_hours_and_days_and_reads_see_the_open_minute() {
        let (_d, s) = store();
        let h = History::load(s.clone()).unwrap();
        let web: Arc<str> = "web".into();
        h.configure([&web], 0);
        let t0 = 10 * DAY_MS;
        // Two days and an hour of runs every 10 s; the first failing hour is hour 3.
        let mut t = t0;
        let mut runs = 0u32;
        while t < t0 + 2 * DAY_MS + HOUR_MS {
            let ok = !(t >= t0 + 3 * HOUR_MS && t < t0 + 4 * HOUR_MS);
            h.record(&web, ok, 20.0, t);
            t += 10_000;
            runs += 1;
            if runs == 60 {
                runs = 0;
                flush(&h, &s, t); // every 10 minutes
            }
        }
        let now = t;
        let hours = h.series("web", Tier::Hour, t0, now).unwrap().unwrap();
        assert_eq!(hours.len(), 49, "{hours:?}");
        assert_eq!(hours[3].1.failed, 360);
        assert_eq!(hours[3].1.ok, 0);
        assert_eq!(hours[4].1.ok, 360);
        let days = h.series("web", Tier::Day, t0, now).unwrap().unwrap();
        assert_eq!(days.len(), 3);
        assert_eq!((days[0].1.ok, days[0].1.failed), (8640 - 360, 360));
        assert_eq!(days[2].1.ok, 360, "today, from the unsealed hour");
        // The last 10 s are in memory only, and still read.
        h.record(&web, false, 5.0, now);
        let last = h
            .series("web", Tier::Minute, now, now + 1)
            .unwrap()
            .unwrap();
        assert_eq!(last[0].1.failed, 1);
        // Minutes older than a day are gone.
        let old = h
            .series("web", Tier::Minute, t0, t0 + HOUR_MS)
            .unwrap()
            .unwrap();
        assert!(old.is_empty(), "{old:?}");
        let total = h.total("web", DAY_MS, now).unwrap().unwrap();
        assert!(total.ok >= 8640 && total.failed == 1, "{total:?}");
    }

    #[test]
    fn a_restart_keeps_the_open_minute_and_transitions_and_removal_drops_after_30_days() {
        let (_d, s) = store();
        let web: Arc<str> = "web".into();
        let db: Arc<str> = "db".into();
        {
            let h = History::load(s.clone()).unwrap();
            h.configure([&web, &db], 0);
            h.record(&web, true, 3.0, 1_000);
            h.record(&db, false, 3.0, 1_000);
            let mut ops = h.flush_ops(2_000);
            ops.push(
                h.transition_op(
                    "db",
                    TransitionRecord {
                        at: 1_000,
                        to: "failed".into(),
                        message: "refused".into(),
                        after_ms: 0,
                    },
                )
                .unwrap(),
            );
            s.apply(&ops).unwrap();
        }
        let h = History::load(s.clone()).unwrap();
        let m = h.series("web", Tier::Minute, 0, 60_000).unwrap().unwrap();
        assert_eq!(m[0].1.ok, 1);
        let t = h.transitions("db").unwrap().unwrap();
        assert_eq!(t[0].message, "refused");
        h.configure([&web], 5_000);
        flush(&h, &s, 6_000);
        assert!(h.knows("db"));
        h.configure([&web], 5_000 + KEEP_REMOVED_MS + 1);
        flush(&h, &s, 5_000 + KEEP_REMOVED_MS + 2);
        assert!(!h.knows("db"));
        let h = History::load(s.clone()).unwrap();
        assert!(!h.knows("db") && h.knows("web"));
    }

    #[test]
    fn transitions_keep_the_last_hundred() {
        let (_d, s) = store();
        let h = History::load(s.clone()).unwrap();
        let web: Arc<str> = "web".into();
        h.configure([&web], 0);
        for i in 0..130u64 {
            let op = h
                .transition_op(
                    "web",
                    TransitionRecord {
                        at: i,
                        to: "failed".into(),
                        message: format!("m{i}"),
                        after_ms: 0,
                    },
                )
                .unwrap();
            s.apply(&[op]).unwrap();
        }
        let t = h.transitions("web").unwrap().unwrap();
        assert_eq!(t.len(), TRANSITIONS);
        assert_eq!(t[0].message, "m30");
        assert_eq!(t[99].message, "m129");
    }
}
