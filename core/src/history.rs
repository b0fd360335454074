//! A check's result history as numbers: buckets of runs (ok and failed counts, the
//! sum, min and max of durations) per minute, hour and day, and the compact encoding of
//! a block of them that the store keeps. Pure data: the runtime decides when a bucket
//! closes and where blocks live.
//!
//! A **block** holds the buckets of one tier over one span: a minute block is an hour
//! of minutes (60 slots), an hour block a day of hours (24), a day block 32 days. It is
//! appended to as buckets close, slot by slot, in order. Durations are kept on a log
//! scale of 64 steps an octave (within 0.6 % of the measured value), as deltas from the
//! previous bucket's mean: a minute of a healthy check costs 2 to 4 bytes.

use serde::{Deserialize, Serialize};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// What runs did within one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub ok: u32,
    pub failed: u32,
    /// Sum, min and max of the runs' durations, in ms (0 when there were no runs).
    pub sum_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Bucket {
    pub fn runs(&self) -> u32 {
        self.ok + self.failed
    }

    pub fn is_empty(&self) -> bool {
        self.runs() == 0
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.sum_ms / self.runs() as f64)
    }

    /// Counts one run.
    pub fn add(&mut self, ok: bool, duration_ms: f64) {
        let d = if duration_ms.is_finite() {
            duration_ms.max(0.0)
        } else {
            0.0
        };
        if self.is_empty() {
            self.min_ms = d;
            self.max_ms = d;
        } else {
            self.min_ms = self.min_ms.min(d);
            self.max_ms = self.max_ms.max(d);
        }
        self.sum_ms += d;
        if ok {
            self.ok = self.ok.saturating_add(1);
        } else {
            self.failed = self.failed.saturating_add(1);
        }
    }

    /// Adds another bucket's runs (an hour from its minutes).
    pub fn merge(&mut self, other: &Bucket) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = *other;
            return;
        }
        self.ok = self.ok.saturating_add(other.ok);
        self.failed = self.failed.saturating_add(other.failed);
        self.sum_ms += other.sum_ms;
        self.min_ms = self.min_ms.min(other.min_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
    }
}

/// A change of status as history keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Unix ms.
    pub at: u64,
    /// `failed` or `recovered`.
    pub to: String,
    pub message: String,
    /// How long the previous status lasted, in ms.
    #[serde(default)]
    pub after_ms: u64,
}

/// The runs of a window, for uptime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UptimeFigure {
    /// `24h`, `7d`, `30d`.
    pub window: String,
    pub ok: u64,
    pub failed: u64,
}

impl UptimeFigure {
    pub fn of(window: &str, b: &Bucket) -> UptimeFigure {
        UptimeFigure {
            window: window.to_string(),
            ok: b.ok as u64,
            failed: b.failed as u64,
        }
    }

    /// The share of successful runs, `None` without runs.
    pub fn ratio(&self) -> Option<f64> {
        let n = self.ok + self.failed;
        (n > 0).then(|| self.ok as f64 / n as f64)
    }
}

/// What `vigia history NAME` shows: a check's transitions since a time, and uptime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    pub check: String,
    /// Unix ms: transitions from here on.
    pub since: u64,
    pub now: u64,
    pub transitions: Vec<TransitionRecord>,
    /// Over 24 h, 7 d, 30 d, and the asked window.
    pub uptime: Vec<UptimeFigure>,
}

/// Formats a ratio as uptime is shown: `99.95 %`, `100 %`, `—` without runs.
pub fn percent(ratio: Option<f64>) -> String {
    match ratio {
        None => "—".into(),
        Some(r) if r >= 1.0 => "100 %".into(),
        Some(r) => {
            // Never round a failure up to 100 %.
            let p = (r * 10_000.0).floor() / 100.0;
            format!("{p:.2} %")
        }
    }
}

/// The three resolutions history is kept at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Minute = 0,
    Hour = 1,
    Day = 2,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Minute, Tier::Hour, Tier::Day];

    /// The span of one bucket.
    pub fn slot_ms(self) -> u64 {
        match self {
            Tier::Minute => MINUTE_MS,
            Tier::Hour => HOUR_MS,
            Tier::Day => DAY_MS,
        }
    }

    /// Buckets per block.
    pub fn slots(self) -> u64 {
        match self {
            Tier::Minute => 60,
            Tier::Hour => 24,
            Tier::Day => 32,
        }
    }

    pub fn block_ms(self) -> u64 {
        self.slot_ms() * self.slots()
    }

    /// How long its buckets are kept: 24 hours of minutes, 30 days of hours, 400 days
    /// of days.
    pub fn keep_ms(self) -> u64 {
        match self {
            Tier::Minute => DAY_MS,
            Tier::Hour => 30 * DAY_MS,
            Tier::Day => 400 * DAY_MS,
        }
    }

    /// The next coarser tier, which a closed block of this one rolls up into.
    pub fn coarser(self) -> Option<Tier> {
        match self {
            Tier::Minute => Some(Tier::Hour),
            Tier::Hour => Some(Tier::Day),
            Tier::Day => None,
        }
    }

    pub fn finer(self) -> Option<Tier> {
        match self {
            Tier::Minute => None,
            Tier::Hour => Some(Tier::Minute),
            Tier::Day => Some(Tier::Hour),
        }
    }

    pub fn from_u8(v: u8) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// The block (its number since the epoch) and the slot within it of a time.
    pub fn locate(self, at_ms: u64) -> (u32, u8) {
        let slot = at_ms / self.slot_ms();
        ((slot / self.slots()) as u32, (slot % self.slots()) as u8)
    }

    /// When a block's first slot starts.
    pub fn block_start(self, block: u32) -> u64 {
        block as u64 * self.block_ms()
    }
}

/// A block's bytes did not decode (a damaged store, or a newer release's format).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockError(pub &'static str);

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a history block cannot be read: {}", self.0)
    }
}

impl std::error::Error for BlockError {}

const VERSION: u8 = 1;
/// version, next slot (0 = empty), previous mean (u16 LE).
const HEADER: usize = 4;

/// Quantizes a duration: 64 steps an octave of (1 + µs).
fn quantize(ms: f64) -> u16 {
    let us = (ms * 1000.0).clamp(0.0, 4.0e12);
    ((1.0 + us).log2() * 64.0).round().min(u16::MAX as f64) as u16
}

fn dequantize(q: u16) -> f64 {
    ((q as f64 / 64.0).exp2() - 1.0) / 1000.0
}

/// Appends `v` as a LEB128 varint (7 bits a byte).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `at`, moving it past.
pub fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, BlockError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or(BlockError("it ends inside a number"))?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(BlockError("a number is too long"))
}

/// An empty block.
pub fn new_block() -> Vec<u8> {
    vec![VERSION, 0, 0, 0]
}

/// The slot after the last one written (0 for an empty block).
pub fn next_slot(block: &[u8]) -> Result<u8, BlockError> {
    check_header(block)?;
    Ok(block[1])
}

fn check_header(block: &[u8]) -> Result<(), BlockError> {
    if block.len() < HEADER {
        return Err(BlockError("it is shorter than its header"));
    }
    if block[0] != VERSION {
        return Err(BlockError("it was written in an unknown format"));
    }
    Ok(())
}

/// Appends the bucket of `slot`, which must come after every slot already in the block.
/// An empty bucket is not written (a slot without runs reads as no data).
pub fn append(block: &mut Vec<u8>, slot: u8, b: &Bucket) -> Result<(), BlockError> {
    check_header(block)?;
    if b.is_empty() {
        return Ok(());
    }
    let next = block[1];
    if slot < next || slot == u8::MAX {
        return Err(BlockError("a slot is written out of order"));
    }
    let prev = u16::from_le_bytes([block[2], block[3]]);
    let n = b.runs();
    let mean = quantize(b.sum_ms / n as f64);
    let gap = slot - next;
    put_varint(
        block,
        ((n as u64) << 2) | ((b.failed > 0) as u64) << 1 | (gap > 0) as u64,
    );
    if gap > 0 {
        put_varint(block, gap as u64);
    }
    if b.failed > 0 {
        put_varint(block, b.failed as u64);
    }
    let delta = mean as i64 - prev as i64;
    put_varint(block, ((delta << 1) ^ (delta >> 63)) as u64);
    if n > 1 {
        put_varint(block, mean.saturating_sub(quantize(b.min_ms)) as u64);
        put_varint(block, quantize(b.max_ms).saturating_sub(mean) as u64);
    }
    block[1] = slot + 1;
    block[2..4].copy_from_slice(&mean.to_le_bytes());
    Ok(())
}

/// The buckets of a block with their slots, in order.
pub fn decode(block: &[u8]) -> Result<Vec<(u8, Bucket)>, BlockError> {
    check_header(block)?;
    let mut out = Vec::new();
    let mut at = HEADER;
    let mut next: u64 = 0;
    let mut prev: i64 = 0;
    while at < block.len() {
        let head = get_varint(block, &mut at)?;
        let slot = if head & 1 == 1 {
            next.saturating_add(get_varint(block, &mut at)?)
        } else {
            next
        };
        let n = (head >> 2).min(u32::MAX as u64) as u32;
        let failed = if head & 2 == 2 {
            get_varint(block, &mut at)?.min(n as u64) as u32
        } else {
            0
        };
        let z = get_varint(block, &mut at)?;
        let mean = prev.saturating_add((z >> 1) as i64 ^ -((z & 1) as i64));
        let mean_q = mean.clamp(0, u16::MAX as i64) as u16;
        let (min_q, max_q) = if n > 1 {
            let lo = get_varint(block, &mut at)?.min(mean_q as u64) as u16;
            let hi = get_varint(block, &mut at)?.min((u16::MAX - mean_q) as u64) as u16;
            (mean_q - lo, mean_q + hi)
        } else {
            (mean_q, mean_q)
        };
        if slot > u8::MAX as u64 || n == 0 {
            return Err(BlockError("a slot is out of range"));
        }
        let mean_ms = dequantize(mean_q);
        out.push((
            slot as u8,
            Bucket {
                ok: n - failed,
                failed,
                sum_ms: mean_ms * n as f64,
                min_ms: dequantize(min_q),
                max_ms: dequantize(max_q),
            },
        ));
        prev = mean;
        next = slot + 1;
    }
    Ok(out)
}

/// The sum of a block's buckets (an hour from its minutes).
pub fn total(block: &[u8]) -> Result<Bucket, BlockError> {
    let mut t = Bucket::default();
    for (_, b) in decode(block)? {
        t.merge(&b);
    }
    Ok(t)
}

/// The share of successful runs, or `None` without runs.
pub fn uptime(b: &Bucket) -> Option<f64> {
    (!b.is_empty()).then(|| b.ok as f64 / b.runs() as f64)
}

/// Parses a window such as `24h`, `7d`, `30d`, `90m` (what the API and badges take).
pub fn parse_window(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return None,
    };
    (n > 0).then(|| n.saturating_mul(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(runs: &[(bool, f64)]) -> Bucket {
        let mut b = Bucket::default();
        for (ok, d) in runs {
            b.add(*ok, *d);
        }
        b
    }

    #[test]
    fn a_block_gives_back_its_buckets_within_the_quantum() {
        let mut block = new_block();
        let a = bucket(&[(true, 12.0), (true, 14.0), (false, 3000.0)]);
        let b = bucket(&[(true, 0.05)]);
        append(&mut block, 3, &a).unwrap();
        append(&mut block, 3, &Bucket::default()).unwrap();
        append(&mut block, 59, &b).unwrap();
        let got = decode(&block).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1.ok, got[0].1.failed), (3, 2, 1));
        assert_eq!((got[1].0, got[1].1.ok, got[1].1.failed), (59, 1, 0));
        let close = |x: f64, y: f64| (x - y).abs() <= y * 0.006 + 0.001;
        assert!(close(got[0].1.sum_ms, a.sum_ms), "{got:?}");
        assert!(close(got[0].1.min_ms, 12.0) && close(got[0].1.max_ms, 3000.0));
        assert!(close(got[1].1.sum_ms, 0.05));
        assert_eq!(next_slot(&block).unwrap(), 60);
        assert_eq!(
            append(&mut block, 10, &b),
            Err(BlockError("a slot is written out of order"))
        );
        let t = total(&block).unwrap();
        assert_eq!((t.ok, t.failed), (3, 1));
    }

    #[test]
    fn a_healthy_minute_costs_a_few_bytes() {
        let mut block = new_block();
        for slot in 0..60u8 {
            let d = 40.0 + (slot % 7) as f64;
            let runs: Vec<(bool, f64)> = (0..6).map(|i| (true, d + i as f64 * 0.3)).collect();
            append(&mut block, slot, &bucket(&runs)).unwrap();
        }
        assert!(block.len() <= HEADER + 1 + 60 * 4, "{} bytes", block.len());
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0, 0, 0]).is_err());
        assert!(decode(&[VERSION, 1, 0, 0, 0x80]).is_err());
        // A gap or a delta at the edge of u64 is an error or a value, never an overflow.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let mut b = vec![VERSION, 1, 0, 0, 0x05];
        b.extend_from_slice(&huge);
        assert!(decode(&b).is_err());
        let mut b = vec![VERSION, 1, 0, 0, 0x04];
        b.extend_from_slice(&huge);
        let _ = decode(&b);
        assert!(decode(&[
            VERSION, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_err());
        // Arbitrary bytes after a good header never panic.
        for seed in 0u32..2000 {
            let mut b = new_block();
            let mut x = seed.wrapping_mul(2654435761);
            for _ in 0..(seed % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b.push(x as u8);
            }
            let _ = decode(&b);
        }
    }

    #[test]
    fn tiers_locate_times() {
        let t = 3 * DAY_MS + 5 * HOUR_MS + 7 * MINUTE_MS + 1;
        assert_eq!(Tier::Minute.locate(t), ((3 * 24 + 5) as u32, 7));
        assert_eq!(Tier::Hour.locate(t), (3, 5));
        assert_eq!(Tier::Day.locate(t), (0, 3));
        assert_eq!(Tier::Hour.block_start(3), 3 * DAY_MS);
        assert_eq!(parse_window("7d"), Some(7 * DAY_MS));
        assert_eq!(parse_window("24h"), Some(DAY_MS));
        assert_eq!(parse_window("0d"), None);
        assert_eq!(parse_window("7w"), None);
        assert_eq!(parse_window("d"), None);
    }
}
