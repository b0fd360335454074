//! What a year of result history costs in the store, and how fast it is read.
//!
//! `cargo bench -p vigia --bench history [-- --checks 20 --days 365]`
//! `cargo bench -p vigia --bench history -- --memory 10000` (RSS per check, 2 h)
//!
//! Runs every 10 s for each check, through the engine's own path (the scheduler's
//! `record`, the journal's flush every simulated minute, one transaction a simulated
//! day), with a failure of 5–30 minutes every ~7 days (100 transitions a year) and
//! durations that wander ±20 %. Then the store is compacted and its size compared with
//! an empty store of the same checks.

use std::sync::Arc;
use std::time::Instant;

use vigia_core::history::{Tier, DAY_MS, MINUTE_MS};
use vigia_engine::history::{History, TransitionRecord};
use vigia_engine::store::{Op, Store};

fn compacted_size(dir: &std::path::Path) -> u64 {
    let path = dir.join(vigia_engine::store::STORE_FILE);
    let mut db = redb::Database::open(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    std::fs::metadata(&path).unwrap().len()
}

/// Stored, metadata and fragmented bytes of each history table.
fn table_stats(dir: &std::path::Path, n: usize) {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
    let db = redb::Database::open(dir.join(vigia_engine::store::STORE_FILE)).unwrap();
    let tx = db.begin_read().unwrap();
    for t in tx.list_tables().unwrap() {
        let name = t.name().to_string();
        if !name.starts_with("history") {
            continue;
        }
        let table = tx.open_untyped_table(t).unwrap();
        let s = table.stats().unwrap();
        println!(
            "  {:22} {:6.2} KiB stored, {:5.2} KiB tree, {:5.2} KiB fragmented per check",
            name,
            s.stored_bytes() as f64 / n as f64 / 1024.0,
            s.metadata_bytes() as f64 / n as f64 / 1024.0,
            s.fragmented_bytes() as f64 / n as f64 / 1024.0
        );
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory history adds per configured check in steady state: `checks` checks run every
/// 10 s for `hours` simulated hours (the minute blocks fill over an hour), flushed
/// every simulated 10 s through a real store; RSS after minus RSS before history existed.
fn memory(checks: usize, hours: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let names: Vec<Arc<str>> = (0..checks).map(|i| format!("shop-{i:05}").into()).collect();
    // As in the engine: the check states are in the store (and its cache) already.
    let states: Vec<_> = names
        .iter()
        .map(|n| (n.to_string(), Some(vigia_core::status::CheckState::new(0))))
        .collect();
    store.write(&states).unwrap();
    drop(states);
    let before = rss_kib();
    let history = History::load(store.clone()).unwrap();
    let start = vigia_engine::clock::unix_ms() / DAY_MS * DAY_MS;
    history.configure(names.iter(), start);
    store.apply(&history.flush_ops(start)).unwrap();
    let configured = rss_kib();
    let t0 = Instant::now();
    let mut t = start;
    let mut flushes = 0u32;
    while t < start + hours * vigia_core::history::HOUR_MS {
        for (i, name) in names.iter().enumerate() {
            history.record(
                name,
                true,
                2.0 + (i % 7) as f64 * 0.1,
                t + (i as u64 * 7) % 10_000,
            );
        }
        // The journal flushes every 5 s; here every simulated 10 s.
        t += 10_000;
        flushes += 1;
        store.apply(&history.flush_ops(t)).unwrap();
        vigia_engine::alloc::trim(); // as the journal does
        if flushes == 90 {
            flushes = 0;
            if std::env::var("VIGIA_BENCH_TRACE").is_ok() {
                eprintln!("  {} min: RSS {} KiB", (t - start) / 60_000, rss_kib());
            }
        }
    }
    let after = rss_kib();
    println!(
        "memory: {checks} checks, {hours} h simulated in {:.1} s: RSS {before} → {configured} (ids) → {after} KiB, {:.3} KiB per check (store cache {} KiB; an op is {} bytes)",
        t0.elapsed().as_secs_f64(),
        (after.saturating_sub(before)) as f64 / checks as f64,
        vigia_engine::store::CACHE_BYTES / 1024,
        std::mem::size_of::<Op>()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--memory") {
        let checks = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        memory(checks, 2);
        return;
    }
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = arg("--checks", 20) as usize;
    let days = arg("--days", 365);
    let names: Vec<Arc<str>> = (0..n).map(|i| format!("shop-{i:05}").into()).collect();

    // The same checks without history: the baseline.
    let empty = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(Store::open(empty.path()).unwrap());
        let h = History::load(store.clone()).unwrap();
        h.configure(names.iter(), 0);
        store.apply(&h.flush_ops(0)).unwrap();
    }
    let base = compacted_size(empty.path());

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let history = History::load(store.clone()).unwrap();
    let now = vigia_engine::clock::unix_ms() / DAY_MS * DAY_MS;
    let start = now - days * DAY_MS;
    history.configure(names.iter(), start);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut down_until = vec![0u64; n];
    let mut wander = vec![2.0f64; n];
    let mut runs = 0u64;
    let mut transitions = 0u64;
    let t0 = Instant::now();
    let mut ops: Vec<Op> = Vec::new();
    let mut t = start;
    let (mut step, mut minutes) = (0u32, 0u32);
    while t < now {
        for (i, name) in names.iter().enumerate() {
            let at = t + (i as u64 * 397) % 10_000;
            let was_down = at < down_until[i];
            // (to, message, how long the previous status lasted) of a change now.
            let change = if !was_down && rand() % (7 * 8640) == 0 {
                down_until[i] = at + (5 + rand() % 26) * MINUTE_MS;
                let refused = format!(
                    "cannot connect to 10.1.{}.{}:8080: connection refused",
                    i / 250,
                    i % 250
                );
                Some(("failed", refused, 0))
            } else if was_down && at + 10_000 >= down_until[i] {
                let after = down_until[i].saturating_sub(at);
                Some(("recovered", "connected in 2.1 ms".to_string(), after))
            } else {
                None
            };
            if let Some((to, message, after_ms)) = change {
                transitions += 1;
                let record = TransitionRecord {
                    at,
                    to: to.into(),
                    message,
                    after_ms,
                };
                ops.extend(history.transition_op(name, record));
            }
            let down = at < down_until[i];
            wander[i] = (wander[i] * (0.9 + (rand() % 200) as f64 / 1000.0)).clamp(1.0, 4.0);
            history.record(name, !down, if down { 500.0 } else { wander[i] }, at);
            runs += 1;
        }
        t += 10_000;
        // The journal's flush every minute (t starts on a day), a transaction a day.
        step += 1;
        if step == 6 || step == 12 {
            ops.extend(history.flush_ops(t));
        }
        if step == 12 {
            step = 0;
            minutes += 2;
        }
        if minutes == 1440 {
            minutes = 0;
            store.apply(&std::mem::take(&mut ops)).unwrap();
        }
    }
    ops.extend(history.flush_ops(now));
    store.apply(&ops).unwrap();
    let fill = t0.elapsed();

    // Reads, as the status page makes them: 7 days of hours and 30 days of days.
    let r0 = Instant::now();
    let mut buckets = 0;
    for name in &names {
        buckets += history
            .series(name, Tier::Hour, now - 7 * DAY_MS, now)
            .unwrap()
            .unwrap()
            .len();
        buckets += history
            .series(name, Tier::Day, now - 30 * DAY_MS, now)
            .unwrap()
            .unwrap()
            .len();
    }
    let read_us = r0.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(history);
    drop(store);
    let size = compacted_size(dir.path());
    table_stats(dir.path(), n);
    let per_check = (size.saturating_sub(base)) as f64 / n as f64 / 1024.0;
    println!(
        "history: {n} checks, {days} days, {runs} runs, {transitions} transitions, filled in {:.1} s",
        fill.as_secs_f64()
    );
    println!(
        "store: {:.1} KiB per check (compacted {:.1} MiB, empty store of the same checks {:.1} KiB)",
        per_check,
        size as f64 / 1048576.0,
        base as f64 / 1024.0
    );
    println!(
        "read: {read_us:.0} µs per check for 7 days of hours and 30 days of days ({} buckets)",
        buckets / n
    );
}
