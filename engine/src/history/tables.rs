//! History's layout in the store (redb), and every read and write of it.
//!
//! - `history_open_blocks` (id, tier) → the check's blocks of that tier still being
//!   filled (usually one; two just after a boundary, until the sweep).
//! - `history_sealed_{minutes,hours,days}` (block, id) → a block whose span is over,
//!   deflated. Keyed by time first, a table a tier: a sweep seals every check's block
//!   of one span in id order, so each B-tree grows at its end with full pages (keyed by
//!   check first, or with the tiers in one table, pages stayed 60 % full: 8 KiB a
//!   check of a simulated year were empty space).
//! - `history_ids`, `history_open` (the open minutes), `history_transitions`.
//!
//! A sweep runs in the first flush after a span ends: it seals the blocks before it,
//! adds each one's total to the next tier's open block, and drops sealed blocks older
//! than the tier keeps, all checks at once.

use std::collections::{BTreeMap, HashSet};

use redb::{ReadableTable, TableDefinition};
use vigia_core::history::{self as codec, Bucket, Tier, TransitionRecord, MINUTE_MS};

use super::{HistoryOp, TRANSITIONS};

/// check name → (id, removed at: unix ms, 0 while configured).
pub(super) const IDS: TableDefinition<&str, (u32, u64)> = TableDefinition::new("history_ids");
const OPEN_BLOCKS: TableDefinition<(u32, u8), &[u8]> = TableDefinition::new("history_open_blocks");
/// Sealed blocks, one table a tier so that each grows at its end: (block, id).
const SEALED: [TableDefinition<(u32, u32), &[u8]>; 3] = [
    TableDefinition::new("history_sealed_minutes"),
    TableDefinition::new("history_sealed_hours"),
    TableDefinition::new("history_sealed_days"),
];
/// "open" → every check's open minute.
pub(super) const OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("history_open");
/// id → the last transitions, deflated JSON.
const TRANSITIONS_T: TableDefinition<u32, &[u8]> = TableDefinition::new("history_transitions");

pub(super) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::Error> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The open blocks of one (check, tier) row: (block number, bytes), in order.
type Row = Vec<(u32, Vec<u8>)>;

fn parse_row(mut b: &[u8]) -> Row {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let block = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let len = len.min(b.len() - 8);
        out.push((block, b[8..8 + len].to_vec()));
        b = &b[8 + len..];
    }
    out
}

fn write_row(blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, bytes) in blocks {
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// The bytes deflated, or `None` when they do not inflate (a damaged row).
fn inflate(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::with_capacity(bytes.len() * 2);
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut raw)
        .ok()
        .map(|_| raw)
}

/// A sealed block: its span is over, so it is written once, deflated.
fn seal(block: &[u8]) -> Vec<u8> {
    deflate(block)
}

/// A stored block's buckets; one that does not decode reads as empty (it costs that
/// span its history, never the engine).
fn unseal(sealed: &[u8]) -> Vec<(u8, Bucket)> {
    inflate(sealed)
        .and_then(|raw| codec::decode(&raw).ok())
        .unwrap_or_default()
}

fn inflate_transitions(b: &[u8]) -> Vec<TransitionRecord> {
    inflate(b)
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

fn deflate_transitions(t: &[TransitionRecord]) -> Vec<u8> {
    deflate(&serde_json::to_vec(t).unwrap_or_default())
}

/// Applies one history write inside the store's write transaction.
pub(super) fn apply(tx: &redb::WriteTransaction, op: &HistoryOp) -> Result<(), redb::Error> {
    match op {
        HistoryOp::Ids(ids) => {
            let mut t = tx.open_table(IDS)?;
            for (name, id, removed_at) in ids {
                t.insert(&**name, (*id, *removed_at))?;
            }
        }
        HistoryOp::Open(bytes) => {
            tx.open_table(OPEN)?.insert("open", bytes.as_slice())?;
        }
        HistoryOp::Minutes(closed) => {
            let mut open = tx.open_table(OPEN_BLOCKS)?;
            let sealed = tx.open_table(SEALED[Tier::Minute as usize])?;
            for (id, minute, runs) in closed {
                let at = *minute as u64 * MINUTE_MS;
                add(&mut open, &sealed, *id, Tier::Minute, at, &runs.bucket())?;
            }
        }
        HistoryOp::Sweep { tier, before, ids } => sweep(tx, *tier, *before, ids.clone())?,
        HistoryOp::Transition(id, record) => {
            let mut t = tx.open_table(TRANSITIONS_T)?;
            let mut list = t
                .get(*id)?
                .map(|v| inflate_transitions(v.value()))
                .unwrap_or_default();
            list.push(record.clone());
            let excess = list.len().saturating_sub(TRANSITIONS);
            list.drain(..excess);
            t.insert(*id, deflate_transitions(&list).as_slice())?;
        }
        HistoryOp::Drop(name, id) => {
            tx.open_table(IDS)?.remove(name.as_str())?;
            tx.open_table(TRANSITIONS_T)?.remove(*id)?;
            let mut open = tx.open_table(OPEN_BLOCKS)?;
            for tier in Tier::ALL {
                open.remove((*id, tier as u8))?;
            }
            // Its sealed blocks are spread over the table: one pass, rare (a check
            // removed 30 days ago).
            for def in SEALED {
                tx.open_table(def)?.retain(|k, _| k.1 != *id)?;
            }
        }
    }
    Ok(())
}

/// Adds a closed bucket to its check's open block of `tier`.
fn add(
    open: &mut redb::Table<(u32, u8), &[u8]>,
    sealed: &redb::Table<(u32, u32), &[u8]>,
    id: u32,
    tier: Tier,
    at: u64,
    bucket: &Bucket,
) -> Result<(), redb::Error> {
    let (block, slot) = tier.locate(at);
    let key = (id, tier as u8);
    let mut row = open
        .get(key)?
        .map(|v| parse_row(v.value()))
        .unwrap_or_default();
    match row.iter().position(|(b, _)| *b >= block) {
        Some(i) if row[i].0 == block => {
            let _ = codec::append(&mut row[i].1, slot, bucket);
        }
        _ if sealed.get((block, id))?.is_some() => {
            return Ok(()); // a late bucket for a span already sealed
        }
        at_index => {
            let mut bytes = codec::new_block();
            let _ = codec::append(&mut bytes, slot, bucket);
            row.insert(at_index.unwrap_or(row.len()), (block, bytes));
        }
    }
    open.insert(key, write_row(&row).as_slice())?;
    Ok(())
}

/// Seals the blocks of `tier` before block `before` of the checks in `ids`, rolls
/// their totals up, and (with the first slice) drops what the tier no longer keeps.
fn sweep(
    tx: &redb::WriteTransaction,
    tier: Tier,
    before: u32,
    ids: std::ops::Range<u32>,
) -> Result<(), redb::Error> {
    let mut open = tx.open_table(OPEN_BLOCKS)?;
    let mut sealed = tx.open_table(SEALED[tier as usize])?;
    let mut done: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let mut keep: Vec<(u32, Row)> = Vec::new();
    for item in open.range((ids.start, 0)..(ids.end, 0))? {
        let (k, v) = item?;
        let (id, t) = k.value();
        if t != tier as u8 {
            continue;
        }
        let row = parse_row(v.value());
        if row.iter().all(|(b, _)| *b >= before) {
            continue;
        }
        let (old, rest): (Vec<_>, Vec<_>) = row.into_iter().partition(|(b, _)| *b < before);
        done.extend(old.into_iter().map(|(b, bytes)| (b, id, bytes)));
        keep.push((id, rest));
    }
    done.sort_by_key(|(b, id, _)| (*b, *id));
    for (block, id, bytes) in &done {
        sealed.insert((*block, *id), seal(bytes).as_slice())?;
    }
    for (id, rest) in keep {
        if rest.is_empty() {
            open.remove((id, tier as u8))?;
        } else {
            open.insert((id, tier as u8), write_row(&rest).as_slice())?;
        }
    }
    if let Some(up) = tier.coarser() {
        let up_sealed = tx.open_table(SEALED[up as usize])?;
        for (block, id, bytes) in &done {
            if let Ok(total) = codec::total(bytes) {
                if !total.is_empty() {
                    add(
                        &mut open,
                        &up_sealed,
                        *id,
                        up,
                        tier.block_start(*block),
                        &total,
                    )?;
                }
            }
        }
    }
    // Blocks that end before the tier's span: all checks' at once, from the front.
    let span = tier.keep_ms() / tier.block_ms() + 1;
    let first = ids.start == 0;
    if let Some(cut) = before.checked_sub(span as u32).filter(|c| *c > 0 && first) {
        sealed.retain_in((0, 0)..(cut, 0), |_, _| false)?;
    }
    Ok(())
}

/// The ids and the saved open minutes.
pub(super) type Loaded = (Vec<(String, (u32, u64))>, Option<Vec<u8>>);

pub(super) fn load(tx: &redb::ReadTransaction) -> Result<Loaded, redb::Error> {
    let mut ids = Vec::new();
    if let Some(t) = open_read(tx, IDS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            ids.push((k.value().to_string(), v.value()));
        }
    }
    let open = match open_read(tx, OPEN)? {
        Some(t) => t.get("open")?.map(|v| v.value().to_vec()),
        None => None,
    };
    Ok((ids, open))
}

/// The slots of `tier` in `[from, to)` of check `id`: its sealed blocks and open
/// block, then slots not rolled up yet filled from the finer tiers' open blocks and
/// the minutes only in memory (`unsaved`).
pub(super) fn slots(
    tx: &redb::ReadTransaction,
    id: u32,
    tier: Tier,
    from: u64,
    to: u64,
    unsaved: &[(u64, Bucket)],
) -> Result<BTreeMap<u64, Bucket>, redb::Error> {
    let slot = tier.slot_ms();
    let mut slots: BTreeMap<u64, Bucket> = BTreeMap::new();
    let put = |slots: &mut BTreeMap<u64, Bucket>, start: u64, s: u8, b: Bucket| {
        let at = start + s as u64 * slot;
        if at >= from && at < to {
            slots.insert(at, b);
        }
    };
    let (first, _) = tier.locate(from);
    let (last, _) = tier.locate(to - 1);
    if let Some(sealed) = open_read(tx, SEALED[tier as usize])? {
        for block in first..=last {
            if let Some(v) = sealed.get((block, id))? {
                for (s, b) in unseal(v.value()) {
                    put(&mut slots, tier.block_start(block), s, b);
                }
            }
        }
    }
    let open = open_read(tx, OPEN_BLOCKS)?;
    let row = |t: Tier| -> Result<Vec<(u32, Vec<u8>)>, redb::Error> {
        Ok(match &open {
            Some(o) => o
                .get((id, t as u8))?
                .map(|v| parse_row(v.value()))
                .unwrap_or_default(),
            None => Vec::new(),
        })
    };
    for (block, bytes) in row(tier)? {
        if block >= first && block <= last {
            for (s, b) in codec::decode(&bytes).unwrap_or_default() {
                put(&mut slots, tier.block_start(block), s, b);
            }
        }
    }
    let written: HashSet<u64> = slots.keys().copied().collect();
    let fill = |slots: &mut BTreeMap<u64, Bucket>, t: u64, b: &Bucket| {
        let at = t / slot * slot;
        if at >= from && at < to && !written.contains(&at) {
            slots.entry(at).or_default().merge(b);
        }
    };
    let mut finer = tier.finer();
    while let Some(f) = finer {
        for (block, bytes) in row(f)? {
            for (s, b) in codec::decode(&bytes).unwrap_or_default() {
                fill(
                    &mut slots,
                    f.block_start(block) + s as u64 * f.slot_ms(),
                    &b,
                );
            }
        }
        finer = f.finer();
    }
    for (t, b) in unsaved {
        fill(&mut slots, *t, b);
    }
    Ok(slots)
}

pub(super) fn transitions(
    tx: &redb::ReadTransaction,
    id: u32,
) -> Result<Vec<TransitionRecord>, redb::Error> {
    Ok(match open_read(tx, TRANSITIONS_T)? {
        Some(t) => t
            .get(id)?
            .map(|v| inflate_transitions(v.value()))
            .unwrap_or_default(),
        None => Vec::new(),
    })
}
