//! The HTTP server inside `vigia run`: the REST API, `/metrics`, badges and the live
//! event stream. Another adapter over [`Door`], like the control socket: it reads the
//! status snapshot and acts through the typed command, nothing else.
//!
//! Hardening, all here rather than in handlers:
//! - at most [`MAX_CONNECTIONS`] connections; headers must arrive within
//!   [`HEADER_TIMEOUT`] (no slow-loris), a request is answered within
//!   [`REQUEST_TIMEOUT`] (the event stream aside), bodies are at most [`MAX_BODY`];
//! - writes need `Authorization: Bearer <token>` (the token of `http.token_file`), and
//!   reads too when the listener is not loopback and the page is not `public`; the
//!   token is compared in constant time and never logged or echoed;
//! - no CORS; `Content-Security-Policy` with `frame-ancestors` from the config, no
//!   sniffing, no referrer, no caching of API answers.

mod api;
mod history;
pub mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigia_config::http::HttpConfig;

use crate::control::Door;

pub const MAX_CONNECTIONS: usize = 256;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const MAX_BODY: usize = 64 * 1024;
/// How often a listener that could not bind tries again.
const REBIND_EVERY: Duration = Duration::from_secs(10);

/// What requests are checked against; replaced as a whole on reload.
pub struct Settings {
    pub config: HttpConfig,
    /// The token of `token_file`, if there is one.
    token: Option<String>,
}

impl Settings {
    /// Reads the token file (its first line).
    pub fn load(config: &HttpConfig) -> Result<Settings, String> {
        let token = match &config.token_file {
            Some(f) => Some(vigia_config::http::read_token(f)?),
            None => None,
        };
        Ok(Settings {
            config: config.clone(),
            token,
        })
    }
}

/// Who is asking, as far as the token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// Showed the token, or is on loopback with `public: false`: sees everything.
    Full,
    /// `public: true` without a token: no messages, targets or comments.
    Public,
}

#[derive(Clone)]
pub struct AppState {
    pub door: Arc<Door>,
    pub settings: Arc<RwLock<Arc<Settings>>>,
    /// The server is stopping: event streams end.
    pub stop: CancellationToken,
}

impl AppState {
    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The running server: its listener task and its settings.
pub struct HttpServer {
    settings: Arc<RwLock<Arc<Settings>>>,
    listen: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    door: Arc<Door>,
}

impl HttpServer {
    /// Starts serving `config.listen`. A port that cannot be bound (taken by another
    /// program) is said once and tried again every 10 s: checks and alerts never wait
    /// for the web view.
    pub fn start(config: &HttpConfig, door: Arc<Door>) -> Result<HttpServer, String> {
        let settings = Settings::load(config)?;
        Ok(Self::spawn(config.listen, None, settings, door))
    }

    /// Serves `listen` on `listener` if it is bound already, else binds it (retrying).
    fn spawn(
        listen: SocketAddr,
        listener: Option<TcpListener>,
        settings: Settings,
        door: Arc<Door>,
    ) -> HttpServer {
        let settings = Arc::new(RwLock::new(Arc::new(settings)));
        let stop = CancellationToken::new();
        let app = router(AppState {
            door: door.clone(),
            settings: settings.clone(),
            stop: stop.clone(),
        });
        let task = match listener {
            Some(l) => tokio::spawn(serve_on(l, app, stop.clone())),
            None => tokio::spawn(serve(listen, app, stop.clone())),
        };
        HttpServer {
            settings,
            listen,
            stop,
            task,
            door,
        }
    }

    /// Takes a reloaded `http:` section: the token file is read again; a new `listen`
    /// is bound (the old listener closes once the new one is up, or stays if the new
    /// one cannot bind).
    pub async fn update(self, config: &HttpConfig) -> Result<HttpServer, (HttpServer, String)> {
        let new = match Settings::load(config) {
            Ok(s) => s,
            Err(e) => return Err((self, e)),
        };
        if config.listen == self.listen {
            *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
            return Ok(self);
        }
        let listener = match bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {}: {e}", config.listen);
                return Err((self, msg));
            }
        };
        let next = Self::spawn(config.listen, Some(listener), new, self.door.clone());
        self.stop().await;
        Ok(next)
    }

    /// Stops accepting, lets open requests end (an event stream is closed).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn serve(listen: SocketAddr, app: Router, stop: CancellationToken) {
    let mut said = false;
    let listener = loop {
        match bind(listen).await {
            Ok(l) => break l,
            Err(e) => {
                if !said {
                    said = true;
                    tracing::error!(event = "http_error", listen = %listen, "The HTTP API cannot listen on {listen}: {e}. Checks and alerts go on; trying again every {}. Set `http.listen` to a free port, or `http.enabled: false`.", vigia_api::Dur(REBIND_EVERY));
                }
                tokio::select! {
                    _ = tokio::time::sleep(REBIND_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    serve_on(listener, app, stop).await
}

async fn serve_on(listener: TcpListener, app: Router, stop: CancellationToken) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(event = "http_listening", addr = %addr, "The HTTP API and /metrics are on http://{addr}/.");
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let mut errors = crate::control::AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                let say = |e: &std::io::Error| {
                    tracing::warn!(
                        event = "http_error",
                        "The HTTP API could not accept a connection: {e}."
                    )
                };
                if !errors.wait(&e, &stop, say).await {
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: closed at once rather than queued.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BODY.max(16 * 1024))
                .serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
}

/// Every route, with the limits and the token check around them.
pub fn router(state: AppState) -> Router {
    let timed = api::routes()
        .layer(axum::middleware::from_fn(request_timeout))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .merge(timed)
        .merge(api::streams())
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        // Added after the guard, so outside it.
        .merge(api::open())
        .with_state(state)
}

async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => api::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {}",
                vigia_api::Dur(REQUEST_TIMEOUT)
            ),
        ),
    }
}

/// The token check, then the headers every answer carries.
async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let settings = state.settings();
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let verdict = match (&settings.token, &presented) {
        (_, None) => None,
        (Some(t), Some(p)) => Some(same(t.as_bytes(), p.as_bytes())),
        (None, Some(_)) => Some(false),
    };
    let viewer = if write {
        match (&settings.token, verdict) {
            (None, _) => {
                return api::error(
                    StatusCode::FORBIDDEN,
                    "changes over HTTP need a token: set `http.token_file` in the config (or use the vigia command line on this machine)".into(),
                )
            }
            (_, None) => return unauthorized(),
            (_, Some(false)) => return forbidden(),
            (_, Some(true)) => Viewer::Full,
        }
    } else {
        match verdict {
            Some(true) => Viewer::Full,
            Some(false) => return forbidden(),
            None if settings.config.reads_need_token() => return unauthorized(),
            None if settings.config.public => Viewer::Public,
            None => Viewer::Full,
        }
    };
    req.extensions_mut().insert(viewer);
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let ancestors = match settings.config.frame_ancestors.is_empty() {
        true => "'none'".to_string(),
        false => settings.config.frame_ancestors.join(" "),
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors {ancestors}"
    )) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn unauthorized() -> Response {
    let mut r = api::error(
        StatusCode::UNAUTHORIZED,
        "this needs `Authorization: Bearer <token>`, with the token of `http.token_file`".into(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vigia\""),
    );
    r
}

fn forbidden() -> Response {
    api::error(
        StatusCode::FORBIDDEN,
        "the token is not the one of `http.token_file`".into(),
    )
}

/// Equal, in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert!(!super::same(b"", b"a"));
        assert!(super::same(b"", b""));
    }
}
