//! History over HTTP: a check's buckets over a span, uptime of every check, and the
//! history part of a check's page. Reads run off the workers that run checks.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use vigia_core::history::{parse_window, Bucket, Tier, DAY_MS};

use super::api::{error, unknown_check};
use super::{AppState, Viewer};
use crate::history::History;

/// The most buckets one answer carries.
const MAX_BUCKETS: u64 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// A time in a query: unix seconds (or ms when it is that large), RFC 3339, or a span
/// back from now (`24h`, `7d`).
fn parse_time(field: &str, v: &str, now: u64) -> Result<u64, String> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Ok(if n > 100_000_000_000 { n } else { n * 1000 });
    }
    if let Some(back) = parse_window(v.trim_start_matches('-')) {
        return Ok(now.saturating_sub(back));
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond().max(0) as u64)
        .map_err(|_| {
            format!("`{field}={v}`: give unix seconds, an RFC 3339 time (2026-12-01T10:00:00Z) or a span back from now (24h, 7d)")
        })
}

/// The tier to read for `step` over `[from, to)`: the coarsest one whose slot fits in
/// the step and that still keeps `from`.
fn tier_for_step(step: u64, from: u64, now: u64) -> Tier {
    let mut tier = Tier::Minute;
    for t in Tier::ALL {
        if t.slot_ms() <= step {
            tier = t;
        }
    }
    while from < now.saturating_sub(tier.keep_ms()) {
        match tier.coarser() {
            Some(c) => tier = c,
            None => break,
        }
    }
    tier
}

fn bucket_json(at: u64, b: &Bucket) -> serde_json::Value {
    json!({
        "at": at,
        "ok": b.ok,
        "failed": b.failed,
        "mean_ms": b.mean_ms().map(round3),
        "min_ms": round3(b.min_ms),
        "max_ms": round3(b.max_ms),
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `GET /api/v1/checks/{name}/history?from=&to=&step=`.
pub async fn series(s: &AppState, name: &str, q: HistoryQuery) -> Response {
    let now = crate::clock::unix_ms();
    let to = match q
        .to
        .as_deref()
        .map(|v| parse_time("to", v, now))
        .transpose()
    {
        Ok(t) => t.unwrap_or(now).min(now + 1),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let from = match q
        .from
        .as_deref()
        .map(|v| parse_time("from", v, now))
        .transpose()
    {
        Ok(f) => f.unwrap_or(to.saturating_sub(DAY_MS)),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if from >= to {
        return error(
            StatusCode::BAD_REQUEST,
            "`from` must come before `to`".into(),
        );
    }
    let asked = match q.step.as_deref() {
        None => crate::history::tier_for(to - from).slot_ms(),
        Some(v) => match parse_window(v) {
            Some(ms) => ms,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`step={v}`: give a span such as 1m, 5m, 1h, 1d"),
                )
            }
        },
    };
    let tier = tier_for_step(asked, from, now);
    let step = asked.max(tier.slot_ms()) / tier.slot_ms() * tier.slot_ms();
    if (to - from) / step > MAX_BUCKETS {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} buckets of {} is more than the {MAX_BUCKETS} one answer carries: ask for a larger step or a shorter span",
                (to - from) / step,
                vigia_core::alert::human_duration(step)
            ),
        );
    }
    let history = s.door.history.clone();
    let n = name.to_string();
    let read = tokio::task::spawn_blocking(move || history.series(&n, tier, from, to)).await;
    let series = match read {
        Ok(Ok(Some(series))) => series,
        Ok(Ok(None)) => return unknown(s, name),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut steps: std::collections::BTreeMap<u64, Bucket> = Default::default();
    let mut total = Bucket::default();
    for (at, b) in &series {
        steps.entry(at / step * step).or_default().merge(b);
        total.merge(b);
    }
    Json(json!({
        "check": name,
        "from": from / step * step,
        "to": to,
        "step_ms": step,
        "resolution": match tier { Tier::Minute => "minute", Tier::Hour => "hour", Tier::Day => "day" },
        "buckets": steps.iter().map(|(at, b)| bucket_json(*at, b)).collect::<Vec<_>>(),
        "total": { "ok": total.ok, "failed": total.failed, "uptime": vigia_core::history::uptime(&total) },
    }))
    .into_response()
}

fn unknown(s: &AppState, name: &str) -> Response {
    match s.door.check(name) {
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            format!("`{name}` has no history yet"),
        ),
        Err(names) => unknown_check(name, names),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UptimeQuery {
    window: Option<String>,
}

/// The query of `uri` as `T`, or what is wrong with it (for a 400), naming the field.
pub fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, String> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        use std::error::Error;
        let why = e
            .source()
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.body_text());
        format!("the query is not what was expected: {why}")
    })
}

/// `GET /api/v1/uptime?window=24h|7d|30d`: every configured check.
pub async fn uptime(State(s): State<AppState>, uri: axum::http::Uri) -> Response {
    let q: UptimeQuery = match query(&uri) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let label = q.window.unwrap_or_else(|| "24h".into());
    let Some(window) = parse_window(&label) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`window={label}`: give a span such as 24h, 7d, 30d"),
        );
    };
    if window > 400 * DAY_MS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`window={label}`: history keeps 400 days"),
        );
    }
    let names = s.door.names();
    let history = s.door.history.clone();
    let now = crate::clock::unix_ms();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let b = history.total(&n, window, now)?.unwrap_or_default();
            out.push(json!({
                "check": n,
                "uptime": vigia_core::history::uptime(&b),
                "ok": b.ok,
                "failed": b.failed,
            }));
        }
        Ok::<_, crate::store::StoreError>(out)
    })
    .await;
    match read {
        Ok(Ok(checks)) => Json(json!({ "window": label, "checks": checks })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The history part of `GET /api/v1/checks/{name}`: uptime and the last transitions.
pub fn summary(history: &History, name: &str, viewer: Viewer, now: u64) -> serde_json::Value {
    let uptime = history
        .uptime(name, None, now)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut transitions = history.transitions(name).ok().flatten().unwrap_or_default();
    let keep_from = transitions.len().saturating_sub(10);
    transitions.drain(..keep_from);
    if viewer == Viewer::Public {
        transitions.iter_mut().for_each(|t| t.message.clear());
    }
    json!({
        "uptime": uptime.iter().map(|u| (u.window.clone(), json!(u.ratio()))).collect::<serde_json::Map<_, _>>(),
        "transitions": transitions,
    })
}
