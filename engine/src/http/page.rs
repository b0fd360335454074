//! The status page (`GET /`): server-rendered from the status snapshot and the result
//! history, with its CSS and a few lines of JS compiled in (no CDN, no build step).
//! Down checks first; groups (terminals lists) folded into one row; at most
//! [`ROWS`] rows of healthy checks unless `?all=1`, so that 10 000 checks render in
//! milliseconds and a phone can scroll it.

use std::sync::OnceLock;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};
use vigia_core::alert::human_duration;
use vigia_core::history::{percent, uptime, Bucket, HOUR_MS};
use vigia_core::snapshot::CheckSnapshot;

use super::api::error;
use super::{AppState, Viewer};
use crate::history::Summary;

/// Rows (checks or groups) shown without `?all=1`; down checks always are, up to
/// [`DOWN_ROWS`].
pub const ROWS: usize = 500;
const DOWN_ROWS: usize = 2000;
/// Members shown inside a folded group.
const MEMBERS: usize = 500;
/// The latest changes listed below the table.
const CHANGES: usize = 20;

const CSS: &str = include_str!("page/vigia.css");
const JS: &str = include_str!("page/vigia.js");

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Both parse at build time of the binary's tests (`templates_parse`); a parse
        // error here would show as a 500 naming it, never a panic.
        let _ = env.add_template("index.html", include_str!("page/index.html"));
        let _ = env.add_template("row.html", include_str!("page/row.html"));
        env
    })
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    all: Option<String>,
}

#[derive(Serialize)]
struct Row {
    name: String,
    down: bool,
    #[serde(rename = "for")]
    for_: String,
    since_iso: String,
    failures: String,
    message: String,
    comment: String,
    bar: Value,
    spark: Value,
    uptime: String,
    /// `acknowledged by telegram:@ana 5m ago` (without the name on a public page).
    ack: String,
}

#[derive(Serialize)]
struct GroupRow {
    name: String,
    /// Members down.
    down: usize,
    count: usize,
    members: Vec<Row>,
    more: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Line {
    Check(Row),
    Group(GroupRow),
}

#[derive(Serialize)]
struct Change {
    when: String,
    iso: String,
    check: String,
    to: String,
    after: String,
    message: String,
    transcript: Option<String>,
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// `2026-12-01 10:32 UTC`, the page's own clock: the server's zone is the operator's.
fn local(ms: u64) -> String {
    let tz = jiff::tz::TimeZone::system();
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S %Z").to_string())
        .unwrap_or_default()
}

/// The first hour of the bar and the local names of its 24 hours (`14:00`): made once
/// a page, not once a cell.
struct BarHours {
    first: u64,
    labels: Vec<String>,
}

impl BarHours {
    fn of(now: u64) -> BarHours {
        let first = (now / HOUR_MS).saturating_sub(23) * HOUR_MS;
        let tz = jiff::tz::TimeZone::system();
        let labels = (0..24u64)
            .map(|i| {
                jiff::Timestamp::from_millisecond((first + i * HOUR_MS) as i64)
                    .map(|t| t.to_zoned(tz.clone()).strftime("%H:00").to_string())
                    .unwrap_or_default()
            })
            .collect();
        BarHours { first, labels }
    }
}

/// 24 cells, one an hour, oldest first: green without failures, red with, grey without
/// runs.
fn bar(hours: &[(u64, Bucket)], bar_hours: &BarHours) -> String {
    let first = bar_hours.first;
    let mut out = String::with_capacity(24 * 70 + 120);
    out.push_str(r#"<svg class="bar" viewBox="0 0 96 14" width="96" height="14" role="img" aria-label="the last 24 hours">"#);
    let mut it = hours.iter().peekable();
    for i in 0..24u64 {
        let start = first + i * HOUR_MS;
        while it.peek().is_some_and(|(at, _)| *at < start) {
            it.next();
        }
        let b = match it.peek() {
            Some((at, b)) if *at == start => Some(*b),
            _ => None,
        };
        let (class, title) = match b {
            None => ("none", "no runs".to_string()),
            Some(b) if b.failed > 0 => ("bad", format!("{} of {} runs failed", b.failed, b.runs())),
            Some(b) => ("ok", format!("{} runs, all ok", b.runs())),
        };
        let hour = &bar_hours.labels[i as usize];
        out.push_str(&format!(
            r#"<rect class="{class}" x="{}" width="3" height="14"><title>{hour}: {title}</title></rect>"#,
            i * 4
        ));
    }
    out.push_str("</svg>");
    out
}

/// The mean duration of each minute of the last hour as a line, scaled to its highest.
fn sparkline(minutes: &[(u64, Bucket)]) -> String {
    let points: Vec<f64> = minutes.iter().filter_map(|(_, b)| b.mean_ms()).collect();
    if points.len() < 2 {
        return String::new();
    }
    let max = points.iter().cloned().fold(f64::MIN, f64::max).max(0.001);
    let step = 96.0 / (points.len() - 1) as f64;
    let coords: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, 13.0 - v / max * 12.0))
        .collect();
    let last = points.last().copied().unwrap_or_default();
    format!(
        r#"<svg class="spark" viewBox="0 0 96 14" width="96" height="14" role="img" aria-label="mean duration by minute, the last hour"><title>the last hour by the minute: highest {}, last {}</title><polyline points="{}"/></svg>"#,
        ms_text(max),
        ms_text(last),
        coords.join(" ")
    )
}

fn ms_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn row(c: &CheckSnapshot, h: Option<&Summary>, now: u64, bar_hours: &BarHours) -> Row {
    let (bar_svg, spark, up) = match h {
        Some(h) => (
            bar(&h.hours, bar_hours),
            sparkline(&h.minutes),
            [&h.day, &h.week, &h.month]
                .map(|b| percent(uptime(b)))
                .join(" · "),
        ),
        None => (bar(&[], bar_hours), String::new(), "—".into()),
    };
    Row {
        name: c.name.clone(),
        down: !c.status,
        for_: human_duration(now.saturating_sub(c.changed_at)),
        since_iso: iso(c.changed_at),
        failures: if !c.status {
            format!("{} in a row", c.failures)
        } else if c.threshold > 0 {
            format!("{}/{}", c.failures, c.threshold)
        } else {
            c.failures.to_string()
        },
        message: c
            .last
            .as_ref()
            .map(|l| l.message.chars().take(300).collect())
            .unwrap_or_default(),
        comment: c.comment.clone(),
        bar: Value::from_safe_string(bar_svg),
        spark: Value::from_safe_string(spark),
        uptime: up,
        ack: match &c.ack {
            Some(a) if a.by.is_empty() => "acknowledged".into(),
            Some(a) => format!(
                "acknowledged by {} {} ago",
                a.by,
                human_duration(now.saturating_sub(a.at))
            ),
            None => String::new(),
        },
    }
}

/// `GET /`.
pub async fn page(
    State(s): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: axum::http::Uri,
) -> Response {
    let q: PageQuery = match super::history::query(&uri) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let door = s.door.clone();
    let refresh = s
        .settings
        .read()
        .map(|st| st.config.refresh.get().as_secs())
        .unwrap_or(30);
    let silences = match s
        .door
        .execute(vigia_core::command::Command::SilenceList)
        .await
    {
        vigia_core::command::Reply::Silences { silences } => silences,
        _ => Vec::new(),
    };
    let body =
        tokio::task::spawn_blocking(move || render(&door, viewer, &q, refresh, silences)).await;
    match body {
        Ok(Ok(html)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the status page failed: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the status page failed: {e}"),
        ),
    }
}

/// One group or check, in the order the page shows them.
enum Entry<'a> {
    Check(&'a CheckSnapshot),
    Group(String, Vec<&'a CheckSnapshot>),
}

fn render(
    door: &crate::control::Door,
    viewer: Viewer,
    q: &PageQuery,
    refresh_s: u64,
    silences: Vec<vigia_core::silence::Silence>,
) -> Result<String, String> {
    let full = viewer == Viewer::Full;
    let mut snap = door.snapshot_of(match full {
        true => crate::control::Texts::All,
        false => crate::control::Texts::None,
    });
    if !full {
        super::api::redact_all(&mut snap);
    }
    let now = snap.now;
    let all = q.all.is_some();
    let filter = q.q.trim().to_lowercase();
    let total = snap.checks.len();
    let mut down_names: Vec<&str> = snap
        .checks
        .iter()
        .filter(|c| !c.status)
        .map(|c| c.name.as_str())
        .collect();
    let down = down_names.len();
    down_names.sort();
    let down_text = match down_names.len() {
        0..=10 => down_names.join(", "),
        n => format!("{} and {} more", down_names[..10].join(", "), n - 10),
    };

    // Groups folded; down first (the newest outage on top), then by name.
    let mut groups: std::collections::BTreeMap<&str, Vec<&CheckSnapshot>> = Default::default();
    let mut entries: Vec<Entry> = Vec::new();
    for c in snap
        .checks
        .iter()
        .filter(|c| filter.is_empty() || c.name.to_lowercase().contains(&filter))
    {
        match &c.group {
            Some(g) => groups.entry(g.as_str()).or_default().push(c),
            None => entries.push(Entry::Check(c)),
        }
    }
    for (g, mut members) in groups {
        members.sort_by(|a, b| {
            a.status
                .cmp(&b.status)
                .then(b.changed_at.cmp(&a.changed_at))
                .then(a.name.cmp(&b.name))
        });
        entries.push(Entry::Group(g.to_string(), members));
    }
    let key = |e: &Entry| -> (bool, std::cmp::Reverse<u64>, String) {
        match e {
            Entry::Check(c) => (
                c.status,
                std::cmp::Reverse(if c.status { 0 } else { c.changed_at }),
                c.name.clone(),
            ),
            Entry::Group(g, m) => {
                let newest_down = m.iter().filter(|c| !c.status).map(|c| c.changed_at).max();
                (
                    newest_down.is_none(),
                    std::cmp::Reverse(newest_down.unwrap_or(0)),
                    g.clone(),
                )
            }
        }
    };
    entries.sort_by_cached_key(key);
    let is_down = |e: &Entry| match e {
        Entry::Check(c) => !c.status,
        Entry::Group(_, m) => m.iter().any(|c| !c.status),
    };
    let (shown, hidden) = if all {
        (entries.len(), 0)
    } else {
        let downs = entries.iter().filter(|e| is_down(e)).count().min(DOWN_ROWS);
        let n = (downs + ROWS.saturating_sub(downs))
            .min(entries.len())
            .max(downs);
        (n, entries.len() - n)
    };
    entries.truncate(shown);

    // History of what is shown, in one read.
    let members_shown = if all { usize::MAX } else { MEMBERS };
    let mut names: Vec<&str> = Vec::new();
    for e in &entries {
        match e {
            Entry::Check(c) => names.push(&c.name),
            Entry::Group(_, m) => {
                names.extend(m.iter().take(members_shown).map(|c| c.name.as_str()))
            }
        }
    }
    let summaries = door
        .history
        .summaries(&names, now)
        .map_err(|e| e.to_string())?;
    let mut summary = summaries.iter();
    let bar_hours = BarHours::of(now);
    let mut lines = Vec::with_capacity(entries.len());
    for e in &entries {
        match e {
            Entry::Check(c) => lines.push(Line::Check(row(
                c,
                summary.next().and_then(|s| s.as_ref()),
                now,
                &bar_hours,
            ))),
            Entry::Group(g, m) => {
                let members: Vec<Row> = m
                    .iter()
                    .take(members_shown)
                    .map(|c| row(c, summary.next().and_then(|s| s.as_ref()), now, &bar_hours))
                    .collect();
                lines.push(Line::Group(GroupRow {
                    name: g.clone(),
                    down: m.iter().filter(|c| !c.status).count(),
                    count: m.len(),
                    more: m.len().saturating_sub(members.len()),
                    members,
                }));
            }
        }
    }

    // The latest changes: from the checks that changed last.
    let mut recent: Vec<&CheckSnapshot> = snap
        .checks
        .iter()
        .filter(|c| c.counts.failed + c.counts.recovered > 0 || !c.status)
        .collect();
    recent.sort_by_key(|c| std::cmp::Reverse(c.changed_at));
    let mut changes: Vec<Change> = Vec::new();
    for c in recent.iter().take(CHANGES) {
        let Ok(Some(ts)) = door.history.transitions(&c.name) else {
            continue;
        };
        let transcript = door.remediation.transcript(&c.name);
        for t in ts.iter().rev().take(CHANGES) {
            changes.push(Change {
                when: local(t.at),
                iso: iso(t.at),
                check: c.name.clone(),
                to: t.to.clone(),
                after: human_duration(t.after_ms),
                message: if full {
                    t.message.clone()
                } else {
                    String::new()
                },
                transcript: match (&transcript, full) {
                    (Some((at, text)), true) if *at == t.at && !text.is_empty() => {
                        Some(text.clone())
                    }
                    _ => None,
                },
            });
        }
    }
    changes.sort_by(|a, b| b.iso.cmp(&a.iso));
    changes.truncate(CHANGES);

    let silences: Vec<_> = silences
        .into_iter()
        .map(|s| context! { pattern => s.pattern, left => human_duration(s.until.saturating_sub(now)), reason => s.reason })
        .collect();
    let targets: Vec<_> = snap
        .channels
        .iter()
        .map(|(name, t)| {
            context! {
                name, pending => t.pending, delivered => t.delivered, failed => t.failed,
                error => t.last_error.clone().unwrap_or_default(),
            }
        })
        .collect();
    let tmpl = env()
        .get_template("index.html")
        .map_err(|e| e.to_string())?;
    tmpl.render(context! {
        host => snap.host,
        version => env!("CARGO_PKG_VERSION"),
        total, down, down_names => down_text,
        now_iso => iso(now), now_text => local(now),
        refresh_s,
        rows => lines, hidden, all, q => q.q, q_url => percent_encoded(&q.q),
        changes, silences, targets, full,
    })
    .map_err(|e| format!("{e:#}"))
}

/// `q` for a link's query string.
fn percent_encoded(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for b in q.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", JS)
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_bars_have_a_cell_an_hour() {
        assert!(env().get_template("index.html").is_ok());
        assert!(env().get_template("row.html").is_ok());
        let now = 100 * HOUR_MS + 5;
        let mut b = Bucket::default();
        b.add(false, 2.0);
        let mut good = Bucket::default();
        good.add(true, 1.0);
        let svg = bar(
            &[(99 * HOUR_MS, b), (100 * HOUR_MS, good)],
            &BarHours::of(now),
        );
        assert_eq!(svg.matches("<rect").count(), 24);
        assert_eq!(svg.matches(r#"class="bad""#).count(), 1);
        assert_eq!(svg.matches(r#"class="ok""#).count(), 1);
        assert!(sparkline(&[(0, b)]).is_empty());
        assert_eq!(percent_encoded("shop 1/ä"), "shop%201%2F%C3%A4");
    }

    /// Every branch of the template renders: hidden rows, a folded group with more
    /// members than shown, changes with a transcript, silences, targets.
    #[test]
    fn the_page_renders_with_every_section() {
        let member = context! { name => "shops/10.0.0.1", down => true, for => "3m", failures => "3 in a row", message => "timeout", comment => "", bar => "", spark => "", uptime => "99 %" };
        let html = env()
            .get_template("index.html")
            .unwrap()
            .render(context! {
                host => "h", version => "0", total => 900, down => 1, down_names => "shops/10.0.0.1",
                now_iso => "", now_text => "", refresh_s => 30,
                rows => vec![context! { name => "shops", down => 1, count => 600, members => vec![member], more => 599 }],
                hidden => 300, all => false, q => "sh op", q_url => percent_encoded("sh op"),
                changes => vec![context! { when => "w", iso => "i", check => "c", to => "failed", after => "1m", message => "m", transcript => "✓ stop_db" }],
                silences => vec![context! { pattern => "web", left => "1h", reason => "deploy" }],
                targets => vec![context! { name => "ops", pending => 1, delivered => 2, failed => 0, error => "" }],
                full => true,
            })
            .unwrap();
        for want in [
            "and 599 more",
            "300 more checks",
            "q=sh%20op",
            "✓ stop_db",
            "deploy",
            "Alert delivery",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
    }
}
