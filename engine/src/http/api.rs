//! The JSON endpoints, the badge and the event stream. Every answer is built from the
//! status snapshot, every change is a typed [`Command`] through the door.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use vigia_core::command::{Command, Reply};
use vigia_core::snapshot::{CheckSnapshot, StatusSnapshot};

use super::{AppState, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(super::page::page))
        .route("/api/v1", get(index))
        .route("/static/vigia.css", get(super::page::css))
        .route("/static/vigia.js", get(super::page::js))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/checks", get(status))
        .route("/api/v1/checks/{*name}", get(check).post(check_action))
        .route("/api/v1/uptime", get(super::history::uptime))
        .route(
            "/api/v1/silences",
            get(silences).post(silence_add).delete(silence_remove_query),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(silence_remove),
        )
        .route("/badge/{*file}", get(badge))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/replicas", get(cluster_info))
        .route("/api/v1/cluster/replicas/{id}", get(cluster_info_of))
        .route(
            "/api/v1/cluster/{action}",
            axum::routing::post(cluster_action),
        )
        .route(
            "/api/v1/cluster/{action}/{replica}",
            axum::routing::post(cluster_replica_action),
        )
}

/// Routes that need no token anywhere (a load balancer's health check).
pub fn open() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// Routes that answer for as long as the client listens: outside the request timeout.
pub fn streams() -> Router<AppState> {
    Router::new().route("/api/v1/events", get(events))
}

/// `{"error": "..."}` with `status`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}; see GET / for the list", uri.path()),
    )
}

/// The endpoints, for a person or a script that starts at the root.
async fn index() -> Response {
    Json(json!({
        "endpoints": [
            "GET / (the status page)",
            "GET /healthz",
            "GET /metrics",
            "GET /api/v1/status",
            "GET /api/v1/checks/{name}",
            "GET /api/v1/checks/{name}/history?from=24h&to=&step=1h",
            "POST /api/v1/checks/{name}/run",
            "GET /api/v1/uptime?window=24h|7d|30d",
            "GET /api/v1/silences",
            "POST /api/v1/silences {\"pattern\": \"web\", \"for\": \"2h\", \"reason\": \"...\"}",
            "DELETE /api/v1/silences/{id}",
            "GET /api/v1/events (Server-Sent Events)",
            "GET /badge/{name}.svg (?uptime=7d)",
            "GET /api/v1/cluster (in a cluster: replicas, leader, where each floating check runs)",
            "GET /api/v1/cluster/replicas[/{id}] (each replica's live count)",
            "POST /api/v1/cluster/start|stop {\"checks\": [\"web\"], \"labels\": {\"company\": \"acme\"}, \"all\": false}",
            "POST /api/v1/cluster/drain/{replica}, /undrain/{replica}, /rebalance (?dry_run=true)",
        ]
    }))
    .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.door.unhealthy() {
        None => Json(json!({
            "status": "ok",
            "checks": s.door.checks.read().map(|c| c.len()).unwrap_or(0),
        }))
        .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": why })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    // Prometheus asks for gzip: 10 000 checks are ~3 MB of text, ~15 times less zipped.
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    // Off the worker that runs checks: 10 000 checks are ~15 ms of rendering, which
    // would make that many runs late.
    let door = s.door.clone();
    let body = tokio::task::spawn_blocking(move || {
        let snapshot = door.snapshot_of(crate::control::Texts::None);
        let text =
            super::metrics::render(&snapshot, &door.tasks.stats, &door.remediation.run_counts());
        match gzip {
            true => gzipped(text.as_bytes()).ok_or(text),
            false => Err(text),
        }
    })
    .await;
    let kind = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    match body {
        Ok(Ok(zipped)) => (
            [
                kind,
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                (header::VARY, HeaderValue::from_static("Accept-Encoding")),
            ],
            zipped,
        )
            .into_response(),
        Ok(Err(text)) => ([kind], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the metrics failed: {e}"),
        ),
    }
}

fn gzipped(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 8),
        flate2::Compression::fast(),
    );
    z.write_all(bytes).ok()?;
    z.finish().ok()
}

/// What a reader without the token may see of a check: its name, status and counts.
fn redact(c: &mut CheckSnapshot) {
    c.target.clear();
    c.comment.clear();
    c.failed_message = None;
    if let Some(l) = &mut c.last {
        l.message.clear();
        l.value = None;
    }
    // That someone is on it shows; who does not.
    if let Some(a) = &mut c.ack {
        a.by.clear();
    }
}

pub(super) fn redact_all(s: &mut StatusSnapshot) {
    s.config.clear();
    s.channels.clear();
    s.pid = 0;
    s.checks.iter_mut().for_each(redact);
}

async fn status(State(s): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    // Off the worker that runs checks, like /metrics.
    let door = s.door.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut snapshot = door.snapshot();
        if viewer == Viewer::Public {
            redact_all(&mut snapshot);
        }
        serde_json::to_vec(&snapshot)
    })
    .await;
    match body {
        Ok(Ok(bytes)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub fn unknown_check(name: &str, names: Vec<String>) -> Response {
    error(
        StatusCode::NOT_FOUND,
        crate::control::no_such_check(name, &names),
    )
}

async fn check(
    State(s): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let found = s.door.check(&name);
    if let (Err(_), Some(of)) = (&found, name.strip_suffix("/history")) {
        return match super::history::query(&uri) {
            Ok(q) => super::history::series(&s, of, q).await,
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        };
    }
    match found {
        Ok(mut c) => {
            if viewer == Viewer::Public {
                redact(&mut c);
            }
            let next_run = c
                .last
                .as_ref()
                .map(|l| l.at.saturating_sub(l.duration_ms as u64) + c.interval_ms);
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            let history = s.door.history.clone();
            let n = name.clone();
            let now = crate::clock::unix_ms();
            let summary = tokio::task::spawn_blocking(move || {
                super::history::summary(&history, &n, viewer, now)
            })
            .await
            .unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                if let Some(n) = next_run {
                    m.insert("next_run_about".into(), json!(n));
                }
                m.insert("history".into(), summary);
            }
            Json(v).into_response()
        }
        Err(names) => unknown_check(&name, names),
    }
}

/// `POST /api/v1/checks/{name}/run`.
async fn check_action(State(s): State<AppState>, Path(rest): Path<String>) -> Response {
    let (name, cmd) = if let Some(name) = rest.strip_suffix("/run") {
        (
            name,
            Command::RunNow {
                name: name.to_string(),
            },
        )
    } else if let Some(name) = rest.strip_suffix("/ack") {
        (
            name,
            Command::Ack {
                name: name.to_string(),
                by: "http".into(),
            },
        )
    } else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such action: POST /api/v1/checks/{rest}; the actions are POST /api/v1/checks/{{name}}/run and /ack"),
        );
    };
    if let Err(names) = s.door.check(name) {
        return unknown_check(name, names);
    }
    reply(s.door.execute(cmd).await)
}

async fn silences(State(s): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    let r = s.door.execute(Command::SilenceList).await;
    match (viewer, r) {
        (Viewer::Public, Reply::Silences { mut silences }) => {
            silences.iter_mut().for_each(|s| s.reason.clear());
            Json(json!({ "silences": silences })).into_response()
        }
        (_, r) => reply(r),
    }
}

/// The body of `POST /api/v1/silences`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    /// A check name or a pattern with `*`.
    pattern: String,
    /// `2h`, `30m`.
    #[serde(rename = "for")]
    duration: vigia_api::Dur,
    #[serde(default)]
    reason: String,
    /// Who asks (kept with the silence); default `http`.
    #[serde(default)]
    by: Option<String>,
}

async fn silence_add(State(s): State<AppState>, body: Bytes) -> Response {
    let new: NewSilence = match parse_body(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let r = s
        .door
        .execute(Command::SilenceAdd {
            pattern: new.pattern,
            for_ms: new.duration.get().as_millis() as u64,
            reason: new.reason,
            by: new
                .by
                .map(|b| format!("http:{b}"))
                .unwrap_or_else(|| "http".into()),
        })
        .await;
    match r {
        Reply::Silence(silence) => (StatusCode::CREATED, Json(silence)).into_response(),
        r => reply(r),
    }
}

#[derive(Deserialize)]
struct IdQuery {
    id: Option<String>,
}

async fn silence_remove_query(State(s): State<AppState>, Query(q): Query<IdQuery>) -> Response {
    match q.id {
        Some(id) => remove(&s, &id).await,
        None => error(
            StatusCode::BAD_REQUEST,
            "say which silence: DELETE /api/v1/silences/{id} (or ?id=), ids as in GET /api/v1/silences".into(),
        ),
    }
}

async fn silence_remove(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    remove(&s, &id).await
}

async fn remove(s: &AppState, id: &str) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a silence id (a number, as in GET /api/v1/silences)"),
        );
    };
    reply(s.door.execute(Command::SilenceRemove { id }).await)
}

/// A reply as an answer: refusals are 4xx with the engine's own sentence.
fn reply(r: Reply) -> Response {
    match r {
        Reply::Error { error: e } => {
            let status = if e.contains("no silence")
                || e.contains("no check")
                || e == crate::control::STANDALONE
            {
                StatusCode::NOT_FOUND
            } else if e.contains("did not answer")
                || e.contains("no replica leads")
                || e.contains("stopped")
            {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            error(status, e)
        }
        r => Json(r).into_response(),
    }
}

/// The cluster's map and its replicas' hosts are for those who may see everything.
fn cluster_hidden(viewer: Viewer) -> Option<Response> {
    (viewer == Viewer::Public).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "the cluster's map needs `Authorization: Bearer <token>` (the token of `http.token_file`)".into(),
        )
    })
}

/// `GET /api/v1/cluster`: the document of `vigia cluster status --json`.
async fn cluster_status(
    State(s): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    if let Some(r) = cluster_hidden(viewer) {
        return r;
    }
    match s.door.execute(Command::ClusterStatus).await {
        Reply::ClusterStatus { status } => Json(status).into_response(),
        r => reply(r),
    }
}

async fn cluster_info(State(s): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    cluster_info_for(&s, viewer, None).await
}

async fn cluster_info_of(
    State(s): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    cluster_info_for(&s, viewer, Some(id)).await
}

/// `GET /api/v1/cluster/replicas[/{id}]`: `{"replicas": [...]}`, each asked now.
async fn cluster_info_for(s: &AppState, viewer: Viewer, replica: Option<String>) -> Response {
    if let Some(r) = cluster_hidden(viewer) {
        return r;
    }
    match s.door.execute(Command::ClusterInfo { replica }).await {
        Reply::ClusterInfo { replicas } => Json(json!({ "replicas": replicas })).into_response(),
        r => reply(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/v1/cluster/start|stop` (a JSON selector) and `/rebalance`.
async fn cluster_action(
    State(s): State<AppState>,
    Path(action): Path<String>,
    Query(q): Query<DryRun>,
    body: Bytes,
) -> Response {
    use vigia_core::command::{ClusterCommand, Selector};
    let selector = || -> Result<Selector, (StatusCode, String)> {
        let sel: Selector = parse_body(&body).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        if sel.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                "say which checks: {\"checks\": [names or groups]}, {\"labels\": {\"k\": \"v\"}} or {\"all\": true}".into(),
            ));
        }
        Ok(sel)
    };
    let command = match action.as_str() {
        "start" => selector().map(ClusterCommand::Start),
        "stop" => selector().map(ClusterCommand::Stop),
        "rebalance" => Ok(ClusterCommand::Rebalance { dry_run: q.dry_run }),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no such cluster action: POST /api/v1/cluster/{action}; the actions are start, stop, rebalance, drain/{{replica}} and undrain/{{replica}}"),
        )),
    };
    match command {
        Ok(command) => cluster_answer(&s, command).await,
        Err((status, why)) => error(status, why),
    }
}

/// `POST /api/v1/cluster/drain/{replica}` and `/undrain/{replica}`.
async fn cluster_replica_action(
    State(s): State<AppState>,
    Path((action, replica)): Path<(String, String)>,
) -> Response {
    use vigia_core::command::ClusterCommand;
    let command = match action.as_str() {
        "drain" => ClusterCommand::Drain(replica),
        "undrain" => ClusterCommand::Undrain(replica),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such cluster action: POST /api/v1/cluster/{action}/{replica}; the actions on a replica are drain and undrain"),
            )
        }
    };
    cluster_answer(&s, command).await
}

/// `{"answer": "started 3 of 5: 2 refused (all replicas at capacity)"}`.
async fn cluster_answer(s: &AppState, command: vigia_core::command::ClusterCommand) -> Response {
    match s.door.execute(Command::Cluster { command }).await {
        Reply::ClusterAnswer { text } => Json(json!({ "answer": text })).into_response(),
        r => reply(r),
    }
}

/// JSON with the field that is wrong named: `for: invalid duration "2x"...`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("the request has no body: send a JSON object".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        match field.as_str() {
            "." | "" => format!("the body is not what was expected: {inner}"),
            f => format!("field `{f}`: {inner}"),
        }
    })
}

/// `GET /badge/{name}.svg`: the check's status as a small SVG.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BadgeQuery {
    /// `7d`: the uptime over that window instead of the status.
    uptime: Option<String>,
}

async fn badge(
    State(s): State<AppState>,
    Path(file): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let name = file.strip_suffix(".svg").unwrap_or(&file).to_string();
    let q: BadgeQuery = match super::history::query(&uri) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let status = match s.door.check(&name) {
        Ok(c) => c.status,
        Err(names) => return unknown_check(&name, names),
    };
    let svg = match q.uptime {
        None if status => badge_svg(&name, "up", "#2e7d32"),
        None => badge_svg(&name, "down", "#c62828"),
        Some(w) => {
            let Some(window) = vigia_core::history::parse_window(&w) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`uptime={w}`: give a span such as 24h, 7d, 30d"),
                );
            };
            let history = s.door.history.clone();
            let n = name.clone();
            let now = crate::clock::unix_ms();
            let total = tokio::task::spawn_blocking(move || history.total(&n, window, now))
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten()
                .unwrap_or_default();
            let ratio = vigia_core::history::uptime(&total);
            let color = match ratio {
                None => "#9e9e9e",
                Some(r) if r >= 0.999 => "#2e7d32",
                Some(r) if r >= 0.99 => "#9e9d24",
                Some(r) if r >= 0.95 => "#ef6c00",
                Some(_) => "#c62828",
            };
            let text = vigia_core::history::percent(ratio).replace(" %", "%");
            badge_svg(&format!("{name} {w}"), &text, color)
        }
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, max-age=0"),
            ),
        ],
        svg,
    )
        .into_response()
}

/// A two-part badge, sized by the text (about 7 px a character in 11 px Verdana).
pub fn badge_svg(left: &str, right: &str, color: &str) -> String {
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let w = |t: &str| 10 + 7 * t.chars().count();
    let (lw, rw) = (w(left), w(right));
    let total = lw + rw;
    let (l, r) = (esc(left), esc(right));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{l}: {r}"><title>{l}: {r}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{color}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{l}</text><text x="{rx}" y="14">{r}</text></g></svg>"##,
        lx = lw / 2,
        rx = lw + rw / 2,
    )
}

/// Clients following the event stream now.
pub static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a stream for as long as it lives.
struct Following;

impl Following {
    fn new() -> Following {
        STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Following
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /api/v1/events`: every feed event as `event: <kind>`, `data: <the log's JSON>`.
async fn events(State(s): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    let rx = crate::feed::subscribe();
    let stop = s.stop.clone();
    let stream = futures::stream::unfold((rx, Following::new()), move |(mut rx, following)| {
        let stop = stop.clone();
        async move {
            let next = tokio::select! {
                r = rx.recv() => r,
                // The engine stops: the stream ends, so the connection can close.
                _ = stop.cancelled() => return None,
            };
            let ev = match next {
                Ok(ev) => {
                    let data = match viewer {
                        Viewer::Full => ev.line.clone(),
                        Viewer::Public => public_event(&ev.line),
                    };
                    Event::default().event(&ev.kind).data(data)
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(json!({ "missed": n }).to_string()),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok::<_, Infallible>(ev), (rx, following)))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// An event without what an anonymous reader may not see.
fn public_event(line: &str) -> String {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(line) else {
        return "{}".into();
    };
    for k in [
        "message",
        "comment",
        "target",
        "output",
        "argv",
        "reason",
        "errors",
        "files",
        "config",
        "state_dir",
        "transcript",
    ] {
        m.remove(k);
    }
    serde_json::Value::Object(m).to_string()
}
