//! Failpoints for the crash tests: `VIGIA_FAILPOINT=<name>` makes the engine abort
//! (as `kill -9` would: no clean-up, no flush) the first time it reaches the point of
//! that name, so a test can crash it inside one window of a protocol. Unset, a point
//! costs one comparison with a string read once.
//!
//! The points:
//! - `cluster_after_publish` — a transition is in the cluster's stream, its inbox entry
//!   not yet deleted (the restart publishes it again; the stream drops the repeat).

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            std::env::var("VIGIA_FAILPOINT")
                .ok()
                .filter(|p| !p.is_empty())
        })
        .as_deref()
}

/// Aborts the process if `VIGIA_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("vigia: failpoint {name} reached: aborting (VIGIA_FAILPOINT)");
        std::process::abort();
    }
}
