//! The wall clock, read in one place: the core takes time as unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
