//! Remediation admission: whether a run of a check's actions (or of a runbook) may start
//! now, by `cooldown` and `max_runs` per hour. Pure: time is passed in; the runtime runs
//! the actions.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::status::Transition;

/// A check's actions, or its runbook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckRemedy {
    pub on_failed: Vec<String>,
    pub on_recovered: Vec<String>,
    pub runbook: Option<String>,
}

impl CheckRemedy {
    /// Whether a transition has anything to run.
    pub fn has(&self, t: Transition) -> bool {
        self.runbook.is_some() || !self.for_transition(t).is_empty()
    }

    pub fn for_transition(&self, t: Transition) -> &[String] {
        match t {
            Transition::Failed => &self.on_failed,
            Transition::Recovered => &self.on_recovered,
        }
    }
}

/// The limits of `remediation:`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// After a run, no new run for a failure of the same key within this.
    pub cooldown: Duration,
    /// At most this many counted runs per key per hour.
    pub max_runs: u32,
}

#[derive(Debug, Default)]
struct Runs {
    running: bool,
    /// Start times (unix ms) of counted runs within the last hour.
    started: VecDeque<u64>,
    suspended_said: bool,
}

/// Run counts per key: a check (its actions) or `runbook NAME`.
#[derive(Debug, Default)]
pub struct Admission {
    runs: HashMap<String, Runs>,
}

const HOUR_MS: u64 = 3_600_000;

impl Admission {
    /// Whether a run may start at `now`: `Err` says why not. `wait_running`: the caller
    /// already waited for a running one (runbooks), so a run under way does not refuse.
    pub fn admit(
        &mut self,
        key: &str,
        transition: Transition,
        wait_running: bool,
        limits: Limits,
        now: u64,
    ) -> Result<(), String> {
        let cooldown = limits.cooldown.as_millis() as u64;
        let runs = self.runs.entry(key.to_string()).or_default();
        runs.started.retain(|t| now.saturating_sub(*t) < HOUR_MS);
        if runs.running && !wait_running {
            Err("a remediation of this check is still running; this one is skipped".to_string())
        } else if runs.started.len() as u32 >= limits.max_runs {
            let first = !runs.suspended_said;
            runs.suspended_said = true;
            Err(format!(
                "remediation suspended: it already ran {} times in the last hour (max_runs){}",
                runs.started.len(),
                if first { "" } else { " (said before)" }
            ))
        } else if runs
            .started
            .back()
            .is_some_and(|t| now.saturating_sub(*t) < cooldown)
            && transition == Transition::Failed
        {
            Err(format!(
                "remediation skipped: the last run was less than {} ago (cooldown)",
                vigia_api::Dur(limits.cooldown)
            ))
        } else {
            runs.running = true;
            runs.suspended_said = false;
            Ok(())
        }
    }

    /// Ends a run that started at `started`; `counted`: whether it goes against
    /// cooldown and max_runs (a runbook run that started no action does not).
    pub fn done(&mut self, key: &str, started: u64, counted: bool) {
        let runs = self.runs.entry(key.to_string()).or_default();
        runs.running = false;
        if counted {
            runs.started.push_back(started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transition::*;

    const L: Limits = Limits {
        cooldown: Duration::from_secs(600),
        max_runs: 3,
    };
    const MIN: u64 = 60_000;

    #[test]
    fn one_at_a_time_then_cooldown_then_max_runs() {
        let mut a = Admission::default();
        assert!(a.admit("web", Failed, false, L, 0).is_ok());
        let e = a.admit("web", Failed, false, L, 1).unwrap_err();
        assert!(e.contains("still running"), "{e}");
        a.done("web", 0, true);
        let e = a.admit("web", Failed, false, L, 5 * MIN).unwrap_err();
        assert!(e.contains("cooldown"), "{e}");
        // A recovery is not held by the cooldown.
        assert!(a.admit("web", Recovered, false, L, 5 * MIN).is_ok());
        a.done("web", 5 * MIN, true);
        assert!(a.admit("web", Failed, false, L, 16 * MIN).is_ok());
        a.done("web", 16 * MIN, true);
        let e = a.admit("web", Failed, false, L, 30 * MIN).unwrap_err();
        assert!(e.contains("suspended") && !e.contains("said before"), "{e}");
        let e = a.admit("web", Failed, false, L, 31 * MIN).unwrap_err();
        assert!(e.contains("said before"), "{e}");
        // An hour after the first run, one slot is free again.
        assert!(a.admit("web", Failed, false, L, 61 * MIN).is_ok());
    }

    #[test]
    fn uncounted_runs_do_not_count() {
        let mut a = Admission::default();
        for t in 0..10 {
            assert!(a.admit("runbook x", Failed, true, L, t * MIN).is_ok());
            a.done("runbook x", t * MIN, false);
        }
    }
}
