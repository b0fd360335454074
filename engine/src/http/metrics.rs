//! `GET /metrics`: the Prometheus text exposition format 0.0.4, rendered at scrape time
//! from the status snapshot, so a check removed by a reload has no series any more.
//!
//! Base units (seconds), `_total` on counters, `# HELP` and `# TYPE` on every family.
//! Labels hold names from the config and fixed words only (`check`, `type`,
//! `outcome`, `to`, `target`, `result`, `action`): no URL, message or other unbounded
//! value. A run counter of an outcome appears with the check's first run of it, and a
//! transition counter with its first transition, which keeps 10 000 checks within a
//! couple of MB (BENCHMARKS.md).

use std::fmt::Write;

use vigia_core::snapshot::{CheckSnapshot, StatusSnapshot};

use crate::scheduler::Stats;

/// The lateness histogram's upper bounds, in seconds.
const LATENESS_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The whole exposition.
pub fn render(
    s: &StatusSnapshot,
    stats: &Stats,
    remediation: &[(String, &'static str, u64)],
) -> String {
    let mut out = String::with_capacity(256 + s.checks.len() * 300);
    let o = &mut out;
    family(
        o,
        "vigia_build_info",
        "gauge",
        "The running Vigia's version and the git commit it was built from; always 1.",
    );
    let _ = writeln!(
        o,
        "vigia_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("VIGIA_COMMIT")
    );
    family(
        o,
        "vigia_http_event_streams",
        "gauge",
        "Clients following /api/v1/events now (status pages included).",
    );
    let _ = writeln!(
        o,
        "vigia_http_event_streams {}",
        super::api::STREAMS.load(std::sync::atomic::Ordering::Relaxed)
    );
    family(
        o,
        "vigia_start_time_seconds",
        "gauge",
        "When the engine started, in seconds since the epoch.",
    );
    let _ = writeln!(o, "vigia_start_time_seconds {}", secs(s.started_at));
    family(o, "vigia_checks", "gauge", "Checks scheduled.");
    let _ = writeln!(o, "vigia_checks {}", s.checks.len());

    family(
        o,
        "vigia_check_up",
        "gauge",
        "1 while the check is up, 0 once it is down (after `threshold` failures).",
    );
    for c in &s.checks {
        series(o, "vigia_check_up", &c.name);
        let _ = writeln!(o, ",type=\"{}\"}} {}", c.kind, u8::from(c.status));
    }
    family(
        o,
        "vigia_check_runs_total",
        "counter",
        "Runs since the engine started, by outcome (ok, warning, critical, unknown).",
    );
    for c in &s.checks {
        for (outcome, n) in c.counts.runs() {
            if n > 0 || outcome == "ok" {
                series(o, "vigia_check_runs_total", &c.name);
                let _ = writeln!(o, ",outcome=\"{outcome}\"}} {n}");
            }
        }
    }
    // The gauges of one value a check: (name, help, the value if there is one).
    type Gauge = (
        &'static str,
        &'static str,
        fn(&CheckSnapshot) -> Option<f64>,
    );
    let gauges: [Gauge; 3] = [
        ("vigia_check_duration_seconds", "How long the check's last run took.", |c| {
            c.last.as_ref().map(|l| l.duration_ms / 1000.0)
        }),
        ("vigia_check_consecutive_failures", "Failed runs in a row (0 after a success).", |c| {
            Some(f64::from(c.failures))
        }),
        (
            "vigia_check_status_changed_timestamp_seconds",
            "When the check's status last changed (or it was first seen), in seconds since the epoch.",
            |c| Some(c.changed_at as f64 / 1000.0),
        ),
    ];
    for (name, help, value) in gauges {
        family(o, name, "gauge", help);
        for c in &s.checks {
            if let Some(v) = value(c) {
                series(o, name, &c.name);
                let _ = writeln!(o, "}} {v}");
            }
        }
    }
    family(
        o,
        "vigia_transitions_total",
        "counter",
        "Changes of status since the engine started, by the status changed to (failed, recovered).",
    );
    for c in &s.checks {
        for (to, n) in [
            ("failed", c.counts.failed),
            ("recovered", c.counts.recovered),
        ] {
            if n > 0 {
                series(o, "vigia_transitions_total", &c.name);
                let _ = writeln!(o, ",to=\"{to}\"}} {n}");
            }
        }
    }

    family(
        o,
        "vigia_alert_outbox_pending",
        "gauge",
        "Alert messages waiting to be delivered, by target.",
    );
    for (key, t) in &s.channels {
        target(o, "vigia_alert_outbox_pending", key);
        let _ = writeln!(o, "}} {}", t.pending);
    }
    family(o, "vigia_alert_deliveries_total", "counter", "Delivery attempts since the engine started, by target and result (delivered, failed: dropped for good, retried).");
    for (key, t) in &s.channels {
        for (result, n) in [
            ("delivered", t.delivered),
            ("failed", t.failed),
            ("retried", t.retries),
        ] {
            target(o, "vigia_alert_deliveries_total", key);
            let _ = writeln!(o, ",result=\"{result}\"}} {n}");
        }
    }

    family(o, "vigia_remediation_runs_total", "counter", "Remediation actions and runbooks (`runbook:NAME`) run since the engine started, by result (ok, failed, dry_run).");
    for (action, result, n) in remediation {
        labeled(o, "vigia_remediation_runs_total", "action", action);
        let _ = writeln!(o, ",result=\"{result}\"}} {n}");
    }

    family(
        o,
        "vigia_scheduler_lateness_seconds",
        "histogram",
        "How late check runs started versus their schedule.",
    );
    let bounds_us: Vec<u64> = LATENESS_BOUNDS.iter().map(|b| (b * 1e6) as u64).collect();
    let (cumulative, count, sum_us) = stats.lateness.cumulative(&bounds_us);
    for (b, n) in LATENESS_BOUNDS.iter().zip(&cumulative) {
        let _ = writeln!(
            o,
            "vigia_scheduler_lateness_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "vigia_scheduler_lateness_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        o,
        "vigia_scheduler_lateness_seconds_sum {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(o, "vigia_scheduler_lateness_seconds_count {count}");
    if let Some(st) = &s.stats {
        for (name, help, v) in [
            (
                "vigia_scheduler_runs_total",
                "Check runs since the engine started.",
                st.executed,
            ),
            (
                "vigia_scheduler_wakeups_total",
                "Wakeups of the scheduler that started check runs (runs per wakeup: how well runs are batched).",
                st.wakeups,
            ),
            (
                "vigia_scheduler_skipped_total",
                "Ticks skipped because the check's previous run had not ended.",
                st.skipped,
            ),
            (
                "vigia_scheduler_timeouts_total",
                "Runs cut at their timeout.",
                st.timeouts,
            ),
            (
                "vigia_scheduler_panics_total",
                "Runs whose check crashed (caught; the run is UNKNOWN).",
                st.panics,
            ),
            (
                "vigia_scheduler_out_of_fds_total",
                "Runs that failed for lack of file descriptors.",
                st.out_of_fds,
            ),
        ] {
            family(o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
    }
    out
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `name{check="…"` (the caller closes the braces).
fn series(o: &mut String, name: &str, check: &str) {
    labeled(o, name, "check", check);
}

fn target(o: &mut String, name: &str, target: &str) {
    labeled(o, name, "target", target);
}

/// `name{label="value"` (the caller closes the braces).
fn labeled(o: &mut String, name: &str, label: &str, value: &str) {
    o.push_str(name);
    o.push('{');
    o.push_str(label);
    o.push_str("=\"");
    escape(o, value);
    o.push('"');
}

/// A label value: `\`, `"` and newlines escaped.
fn escape(o: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigia_core::snapshot::CountsSnapshot;

    #[test]
    fn a_snapshot_renders() {
        let s = StatusSnapshot {
            started_at: 1_700_000_000_123,
            checks: vec![CheckSnapshot {
                name: "we\"b".into(),
                kind: "http".into(),
                status: false,
                failures: 3,
                changed_at: 1_700_000_001_500,
                counts: CountsSnapshot {
                    ok: 5,
                    critical: 3,
                    failed: 1,
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        };
        let runs = vec![("restart".to_string(), "ok", 2)];
        let text = render(&s, &Stats::default(), &runs);
        assert!(
            text.contains("vigia_check_up{check=\"we\\\"b\",type=\"http\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("vigia_check_runs_total{check=\"we\\\"b\",outcome=\"critical\"} 3\n"));
        assert!(!text.contains("outcome=\"warning\""));
        assert!(text.contains("vigia_transitions_total{check=\"we\\\"b\",to=\"failed\"} 1\n"));
        assert!(text.contains(
            "vigia_check_status_changed_timestamp_seconds{check=\"we\\\"b\"} 1700000001.5\n"
        ));
        assert!(text.contains("vigia_check_consecutive_failures{check=\"we\\\"b\"} 3\n"));
        assert!(text.contains("vigia_start_time_seconds 1700000000.123\n"));
        assert!(text.contains("vigia_scheduler_lateness_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("vigia_remediation_runs_total{action=\"restart\",result=\"ok\"} 2\n"));
    }
}
