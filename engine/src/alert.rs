//! The alert pipeline: transitions in, alert events and console lines out.
//!
//! It runs in its own task and receives transitions only after the recorder has made
//! them durable, so a check never waits on it and a crash cannot produce a second
//! `failed`. Each transition is logged as one `{"event":"alert",...}` JSON line (by
//! [`log_event`], called by the recorder so that it precedes the status line). The
//! console channel prints one human line per alert; transitions of the members of one
//! group (the terminals of an ips.txt) that arrive within the group's wait are printed
//! as one grouped line.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::status::Transition;

/// One transition of one check, as alerting sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub host: Arc<str>,
    pub check: Arc<str>,
    pub group: Option<Arc<str>>,
    #[serde(rename = "state")]
    pub transition: Transition,
    /// The message of the run that caused the transition.
    pub message: String,
    pub failures: u32,
    pub threshold: u32,
    pub successes: u32,
    pub recover_after: u32,
    pub comment: Arc<str>,
    /// Unix ms of the transition.
    pub at: u64,
    /// How long the check had been in its previous state, in ms.
    pub previous_duration_ms: u64,
    /// For a recovery: the message of the failure it recovers from.
    pub failed_message: Option<String>,
    /// How long to wait for other members of the group before printing.
    #[serde(skip)]
    pub group_wait: Duration,
}

/// Where console alerts go: stderr in production, a buffer in tests.
#[derive(Clone)]
pub struct Console {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Console {
    pub fn stderr() -> Self {
        Console::to(Box::new(std::io::stderr()))
    }

    pub fn to(w: Box<dyn Write + Send>) -> Self {
        Console {
            out: Arc::new(Mutex::new(w)),
        }
    }

    fn print(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// "3m12s" for a duration in ms.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 1 {
        return format!("{ms}ms");
    }
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    let parts = [(d, "d"), (h, "h"), (m, "m"), (sec, "s")];
    parts
        .iter()
        .skip_while(|(v, _)| *v == 0)
        .take(2)
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect()
}

/// The console line for one alert.
pub fn console_line(e: &AlertEvent) -> String {
    let comment = if e.comment.is_empty() {
        String::new()
    } else {
        format!(" | {}", e.comment)
    };
    match e.transition {
        Transition::Failed => format!(
            "ALERT FAILED {} on {}: {} ({} consecutive failures){comment}",
            e.check, e.host, e.message, e.failures
        ),
        Transition::Recovered => format!(
            "ALERT RECOVERED {} on {} after {} down: {}{comment}",
            e.check,
            e.host,
            human_duration(e.previous_duration_ms),
            e.message
        ),
    }
}

/// The console line for several members of one group that changed together.
pub fn grouped_line(group: &str, transition: Transition, members: &[AlertEvent]) -> String {
    let first = &members[0];
    let verb = match transition {
        Transition::Failed => "FAILED",
        Transition::Recovered => "RECOVERED",
    };
    let mut names: Vec<&str> = members
        .iter()
        .map(|m| {
            m.check
                .strip_prefix(group)
                .and_then(|s| s.strip_prefix('/'))
                .unwrap_or(&m.check)
        })
        .collect();
    names.sort_unstable();
    let comment = if first.comment.is_empty() {
        String::new()
    } else {
        format!(" | {}", first.comment)
    };
    format!(
        "ALERT {verb} {} of {group} on {}: {}{comment}",
        members.len(),
        first.host,
        names.join(", ")
    )
}

/// Starts the pipeline. It ends, after printing what it holds, when every sender of
/// `rx` is dropped.
pub fn spawn(mut rx: mpsc::Receiver<AlertEvent>, console: Option<Console>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // (group, transition) -> (deadline, members)
        let mut pending: BTreeMap<(Arc<str>, Transition), (Instant, Vec<AlertEvent>)> =
            BTreeMap::new();
        loop {
            let next_deadline = pending.values().map(|(d, _)| *d).min();
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = async {
                    match next_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    let due: Vec<_> = pending
                        .iter()
                        .filter(|(_, (d, _))| *d <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        if let Some((_, members)) = pending.remove(&key) {
                            flush(&console, &key.0, key.1, &members);
                        }
                    }
                    continue;
                }
            };
            let Some(e) = event else { break };
            let Some(console) = &console else { continue };
            match &e.group {
                None => console.print(&console_line(&e)),
                Some(g) => {
                    let deadline = Instant::now() + e.group_wait;
                    pending
                        .entry((g.clone(), e.transition))
                        .or_insert_with(|| (deadline, Vec::new()))
                        .1
                        .push(e);
                }
            }
        }
        for ((group, transition), (_, members)) in pending {
            flush(&console, &group, transition, &members);
        }
    })
}

fn flush(console: &Option<Console>, group: &str, transition: Transition, members: &[AlertEvent]) {
    let Some(console) = console else { return };
    match members {
        [] => {}
        [one] => console.print(&console_line(one)),
        many => console.print(&grouped_line(group, transition, many)),
    }
}

/// Logs the `{"event":"alert",...}` line: the record of a transition, written by the
/// recorder once the transition is durable (delivering it is this module's task).
/// A script that does not load: one `{"event":"alert","state":"script_error"}` line and
/// one console line, once per distinct error (the engine remembers what it reported).
pub fn script_error(console: Option<&Console>, host: &str, file: &str, error: &str, kept: bool) {
    let what = if kept {
        "the last good version keeps running"
    } else {
        "it is not running"
    };
    tracing::warn!(
        event = "alert",
        state = "script_error",
        host = %host,
        file = %file,
        kept_previous = kept,
        "{error} ({what})"
    );
    if let Some(c) = console {
        c.print(&format!("ALERT SCRIPT ERROR on {host}: {error} ({what})"));
    }
}

pub fn log_event(e: &AlertEvent) {
    tracing::info!(
        event = "alert",
        check = %e.check,
        state = e.transition.as_str(),
        host = %e.host,
        failures = e.failures,
        threshold = e.threshold,
        successes = e.successes,
        recover_after = e.recover_after,
        comment = %e.comment,
        group = e.group.as_deref(),
        previous_duration_ms = e.previous_duration_ms,
        "{}",
        e.message
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(check: &str, group: Option<&str>, t: Transition) -> AlertEvent {
        AlertEvent {
            host: "shop-01".into(),
            check: check.into(),
            group: group.map(Into::into),
            transition: t,
            message: format!("{check} is unhappy"),
            failures: 3,
            threshold: 3,
            successes: 0,
            recover_after: 1,
            comment: "call the web team".into(),
            at: 0,
            previous_duration_ms: 192_000,
            failed_message: None,
            group_wait: Duration::from_secs(2),
        }
    }

    #[test]
    fn lines_read_well() {
        assert_eq!(
            console_line(&event("web", None, Transition::Failed)),
            "ALERT FAILED web on shop-01: web is unhappy (3 consecutive failures) | call the web team"
        );
        let mut r = event("web", None, Transition::Recovered);
        r.message = "HTTP 200".into();
        assert_eq!(
            console_line(&r),
            "ALERT RECOVERED web on shop-01 after 3m12s down: HTTP 200 | call the web team"
        );
        assert_eq!(human_duration(3_725_000), "1h2m");
        assert_eq!(human_duration(90_061_000), "1d1h");
        assert_eq!(human_duration(500), "500ms");
    }

    #[tokio::test(start_paused = true)]
    async fn group_members_in_one_wait_are_one_line() {
        let buf = Buf::default();
        let (tx, rx) = mpsc::channel(100);
        let handle = spawn(rx, Some(Console::to(Box::new(buf.clone()))));
        for i in 1..=3 {
            tx.send(event(
                &format!("shops/10.0.0.{i}"),
                Some("shops"),
                Transition::Failed,
            ))
            .await
            .unwrap();
        }
        tx.send(event("web", None, Transition::Failed))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A lone member later is printed on its own.
        tx.send(event("shops/10.0.0.9", Some("shops"), Transition::Failed))
            .await
            .unwrap();
        drop(tx);
        handle.await.unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ALERT FAILED web on shop-01: web is unhappy (3 consecutive failures) | call the web team",
                "ALERT FAILED 3 of shops on shop-01: 10.0.0.1, 10.0.0.2, 10.0.0.3 | call the web team",
                "ALERT FAILED shops/10.0.0.9 on shop-01: shops/10.0.0.9 is unhappy (3 consecutive failures) | call the web team",
            ]
        );
    }
}
