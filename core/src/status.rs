//! The state machine of one check: failure counting, status flips, transitions.
//!
//! A failure adds 1 to `failures`, a success resets it to 0. While the status is true,
//! reaching `threshold` failures flips it to false: one `Failed` transition. While it is
//! false, `recover_after` consecutive successes flip it back: one `Recovered`. Nothing
//! else produces a transition, so nothing else produces an alert.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vigia_api::Severity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Failed,
    Recovered,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Failed => "failed",
            Transition::Recovered => "recovered",
        }
    }
}

/// A check as its state machine and its alert events see it: its name and settings
/// (the alert settings are in the policy's config).
#[derive(Clone, Debug)]
pub struct CheckSpec {
    pub name: Arc<str>,
    pub group: Option<Arc<str>>,
    pub threshold: u32,
    pub recover_after: u32,
    pub comment: Arc<str>,
}

/// The last run of a check.
#[derive(Clone, Debug, PartialEq)]
pub struct LastRun {
    pub ok: bool,
    pub severity: Severity,
    pub value: Option<f64>,
    pub message: String,
    pub duration_ms: f64,
    /// Unix time in ms.
    pub at: u64,
}

/// One entry of the status map, in memory. The store (`vigia::store::StoredCheck`) and
/// the wire (`snapshot::CheckSnapshot`) have their own types.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckState {
    /// true = OK.
    pub status: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// Consecutive successes since the last failure.
    pub successes: u32,
    /// When the status last changed (unix ms); the engine's first sight of the check
    /// before that.
    pub changed_at: u64,
    /// The message of the run that flipped the status to false, for the recovery alert.
    pub failed_message: Option<String>,
    pub last: Option<LastRun>,
    /// State the check keeps between runs (a Lua script's `ctx.state`), as JSON.
    pub state: Option<String>,
    /// Runs and transitions since the engine started (for `/metrics`; not stored).
    pub counts: RunCounts,
}

/// What a check did since the engine started: Prometheus counters, so they start at 0
/// with the process and are never stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Runs by severity: ok, warning, critical, unknown (u32: 136 years of runs a
    /// second; it saturates rather than wraps).
    pub runs: [u32; 4],
    pub failed: u32,
    pub recovered: u32,
}

impl RunCounts {
    /// The label of each `runs` slot, in order.
    pub const OUTCOMES: [&'static str; 4] = ["ok", "warning", "critical", "unknown"];

    pub fn count(&mut self, severity: Severity) {
        let i = match severity {
            Severity::Ok => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
            Severity::Unknown => 3,
        };
        self.runs[i] = self.runs[i].saturating_add(1);
    }
}

impl CheckState {
    pub fn new(now_ms: u64) -> Self {
        CheckState {
            status: true,
            failures: 0,
            successes: 0,
            changed_at: now_ms,
            failed_message: None,
            last: None,
            state: None,
            counts: RunCounts::default(),
        }
    }

    /// Applies one run's result; returns the transition it caused, if any.
    pub fn record(
        &mut self,
        ok: bool,
        threshold: u32,
        recover_after: u32,
        now_ms: u64,
    ) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.status && self.successes >= recover_after {
                self.status = true;
                self.changed_at = now_ms;
                self.counts.recovered = self.counts.recovered.saturating_add(1);
                return Some(Transition::Recovered);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.status && self.failures >= threshold {
                self.status = false;
                self.changed_at = now_ms;
                self.counts.failed = self.counts.failed.saturating_add(1);
                return Some(Transition::Failed);
            }
        }
        None
    }

    /// The counters that must survive a crash. `last` changes on every run and is not
    /// worth a disk write; neither is the success streak of a check that is up (a
    /// failure resets it and nothing else reads it), so a healthy engine writes nothing.
    pub fn durable_part(&self) -> (bool, u32, u32, u64) {
        let streak = if self.status { 0 } else { self.successes };
        (self.status, self.failures, streak, self.changed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transition::*;

    /// Feeds `runs` ('.' success, 'x' failure) and returns the transitions per run
    /// ('-' none, 'F' failed, 'R' recovered).
    fn play(threshold: u32, recover_after: u32, runs: &str) -> String {
        let mut s = CheckState::new(0);
        runs.chars()
            .enumerate()
            .map(
                |(i, c)| match s.record(c == '.', threshold, recover_after, i as u64) {
                    None => '-',
                    Some(Failed) => 'F',
                    Some(Recovered) => 'R',
                },
            )
            .collect()
    }

    #[test]
    fn table() {
        let cases = [
            // (threshold, recover_after, runs, expected transitions)
            (1, 1, "x", "F"),
            (1, 1, "xxx.", "F--R"),
            (1, 1, "x.x.", "FRFR"),
            (3, 1, "xx", "--"),
            (3, 1, "xxx", "--F"),
            (3, 1, "xxxxxx", "--F---"),
            (3, 1, "xx.xx.xx.", "---------"),
            (3, 1, "xxx.", "--FR"),
            (3, 3, "xxx...", "--F--R"),
            (3, 3, "xxx..x...", "--F-----R"),
            (1, 3, "x..x...", "F-----R"),
            (3, 3, "x.x.x.x.", "--------"),
            (2, 2, "xx.x.xx..", "-F------R"),
        ];
        for (threshold, recover_after, runs, expected) in cases {
            assert_eq!(
                play(threshold, recover_after, runs),
                expected,
                "threshold={threshold} recover_after={recover_after} runs={runs}"
            );
        }
    }

    #[test]
    fn alternating_results_with_threshold_3_never_alert() {
        assert_eq!(play(3, 1, &"x.".repeat(50)), "-".repeat(100));
    }

    #[test]
    fn counters_follow_the_definition() {
        let mut s = CheckState::new(0);
        s.record(false, 3, 2, 1);
        s.record(false, 3, 2, 2);
        assert_eq!((s.failures, s.successes, s.status), (2, 0, true));
        s.record(true, 3, 2, 3);
        assert_eq!((s.failures, s.successes, s.status), (0, 1, true));
    }

    #[test]
    fn a_healthy_check_has_nothing_new_to_persist() {
        let mut s = CheckState::new(0);
        s.record(true, 3, 2, 1);
        let before = s.durable_part();
        s.record(true, 3, 2, 2);
        assert_eq!(s.durable_part(), before);
        // While down, the success streak counts toward recovery: it is durable.
        s.status = false;
        let before = s.durable_part();
        s.record(true, 3, 5, 3);
        assert_ne!(s.durable_part(), before);
    }

    #[test]
    fn restart_in_the_middle_keeps_the_story() {
        // Down after 3 failures, then the process restarts from the persisted state.
        let mut s = CheckState::new(0);
        for t in 0..3 {
            s.record(false, 3, 2, t);
        }
        assert!(!s.status);
        let mut restored = s.clone();
        // More failures after the restart: no second Failed.
        assert_eq!(restored.record(false, 3, 2, 10), None);
        assert_eq!(restored.record(true, 3, 2, 11), None);
        assert_eq!(restored.record(true, 3, 2, 12), Some(Recovered));
        assert_eq!(restored.changed_at, 12);
    }
}
