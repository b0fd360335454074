//! `type: http` — request a URL; check the status, the body and the response time.
//!
//! ```yaml
//! - name: web
//!   type: http
//!   url: http://127.0.0.1:18080/health
//!   expect_status: [200, "300-399"]
//!   body_contains: '"status":"ok"'
//!   max_response_time: 500ms
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use regex::Regex;
use serde::de::{self, Visitor};
use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Dur, Node,
    RunContext,
};

use crate::net::{fmt_ms, ms_since};

/// How much of a body is read at most for `body_contains` / `body_regex`.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The URL to request (http:// or https://).
    pub url: String,
    /// HTTP method (default GET).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default)]
    pub body: Option<String>,
    /// Accepted status codes: `200`, `[200, 204]`, `"200-299"` (default 200-399).
    #[serde(default)]
    pub expect_status: Option<StatusSpec>,
    /// The body must contain this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// The body must match this regular expression.
    #[serde(default)]
    pub body_regex: Option<String>,
    /// Fail if the whole response takes longer than this.
    #[serde(default)]
    pub max_response_time: Option<Dur>,
    /// Follow up to 5 redirects (default false: a redirect is checked as a status).
    #[serde(default)]
    pub follow_redirects: bool,
    /// Verify TLS certificates (default true).
    #[serde(default = "yes")]
    pub tls_verify: bool,
}

fn default_method() -> String {
    "GET".into()
}

fn yes() -> bool {
    true
}

impl HttpConfig {
    pub fn validate(&self, path: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => errors.push(ConfigError::new(
                &join_path(path, "url"),
                format!("`{}` must be an http:// or https:// URL with a host", u),
            )),
            Err(e) => errors.push(ConfigError::new(
                &join_path(path, "url"),
                format!("`{}` is not a URL: {e}", self.url),
            )),
        }
        if reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes()).is_err() {
            errors.push(ConfigError::new(
                &join_path(path, "method"),
                format!("`{}` is not an HTTP method", self.method),
            ));
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                errors.push(ConfigError::new(
                    &join_path(&join_path(path, "headers"), k),
                    "not a valid HTTP header",
                ));
            }
        }
        if let Some(re) = &self.body_regex {
            if let Err(e) = Regex::new(re) {
                errors.push(ConfigError::new(
                    &join_path(path, "body_regex"),
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
        errors
    }
}

/// Accepted status codes as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSpec(pub Vec<(u16, u16)>);

impl StatusSpec {
    pub fn accepts(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

impl fmt::Display for StatusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

fn parse_status_part(s: &str) -> Result<(u16, u16), String> {
    let code = |t: &str| -> Result<u16, String> {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("`{t}` is not an HTTP status code (100-599)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (code(a)?, code(b)?);
            if lo > hi {
                return Err(format!("the range `{s}` is empty"));
            }
            Ok((lo, hi))
        }
        None => code(s).map(|c| (c, c)),
    }
}

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StatusSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code, a range like \"200-299\", or a list of them")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<StatusSpec, E> {
                parse_status_part(&n.to_string())
                    .map(|r| StatusSpec(vec![r]))
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<StatusSpec, E> {
                self.visit_i64(n as i64)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StatusSpec, E> {
                let parts: Result<Vec<_>, _> = s.split(',').map(parse_status_part).collect();
                parts.map(StatusSpec).map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StatusSpec, A::Error> {
                let mut all = Vec::new();
                while let Some(part) = seq.next_element::<StatusSpec>()? {
                    all.extend(part.0);
                }
                if all.is_empty() {
                    return Err(de::Error::custom("the list of status codes is empty"));
                }
                Ok(StatusSpec(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// What only the reqwest path needs (boxed: most checks take the direct path, and
/// 10 000 of them should not carry an empty header map each).
struct ViaReqwest {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body: Option<String>,
}

/// The direct path's destination: an address parsed once, or a name resolved per run.
enum Target {
    Addr(std::net::SocketAddr),
    Name(Box<str>, u16),
    /// Not used (the reqwest path).
    None,
}

pub struct HttpCheck {
    /// Plain `http://` without redirects goes through the minimal client in `http1.rs`
    /// (measured: reqwest 62, inline hyper 38 µs of CPU per check at 10 000/s; see
    /// BENCHMARKS.md); TLS and redirects go through reqwest (`via`).
    via: Option<Box<ViaReqwest>>,
    /// The whole request for the direct path, rendered once at build.
    request: Box<[u8]>,
    /// Where the direct path connects.
    target: Target,
    method: reqwest::Method,
    /// The URL as messages show it (`Url`'s own text, normalised).
    url: Box<str>,
    expect_status: StatusSpec,
    body_contains: Option<String>,
    body_regex: Option<Regex>,
    max_response_time: Option<Duration>,
}

impl HttpCheck {
    async fn probe(&self, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        let wants_body = self.body_contains.is_some() || self.body_regex.is_some();
        let (status, body) = match &self.via {
            Some(via) => self.fetch_reqwest(via, timeout, wants_body).await?,
            None => {
                let seen = std::sync::atomic::AtomicU16::new(0);
                tokio::time::timeout(timeout, self.fetch_direct(wants_body, &seen))
                    .await
                    .map_err(|_| match seen.load(std::sync::atomic::Ordering::Relaxed) {
                        0 => format!("{} {}: timed out", self.method, self.url),
                        status => self.slow_body(status, timeout),
                    })??
            }
        };
        let ms = ms_since(start);
        if !self.expect_status.accepts(status) {
            return Err(format!(
                "HTTP {status} from {} (expected {})",
                self.url, self.expect_status
            ));
        }
        let text = String::from_utf8_lossy(&body);
        if let Some(needle) = &self.body_contains {
            if !text.contains(needle.as_str()) {
                return Err(format!(
                    "HTTP {status} from {} but the body does not contain {:?}",
                    self.url, needle
                ));
            }
        }
        if let Some(re) = &self.body_regex {
            if !re.is_match(&text) {
                return Err(format!(
                    "HTTP {status} from {} but the body does not match /{}/",
                    self.url,
                    re.as_str()
                ));
            }
        }
        if let Some(max) = self.max_response_time {
            if ms > max.as_secs_f64() * 1000.0 {
                return Err(format!(
                    "HTTP {status} from {} took {} (limit {})",
                    self.url,
                    fmt_ms(ms),
                    Dur(max)
                ));
            }
        }
        Ok(format!("HTTP {status} from {} in {}", self.url, fmt_ms(ms)))
    }

    async fn fetch_reqwest(
        &self,
        via: &ViaReqwest,
        timeout: Duration,
        wants_body: bool,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = via
            .client
            .request(self.method.clone(), via.url.clone())
            .headers(via.headers.clone())
            .timeout(timeout);
        if let Some(b) = &via.body {
            req = req.body(b.clone());
        }
        let mut resp = req.send().await.map_err(|e| self.describe_error(&e))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        if wants_body {
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| self.body_error(&e, status, timeout))?
            {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_BODY {
                    break;
                }
            }
        }
        Ok((status, body))
    }

    async fn fetch_direct(
        &self,
        wants_body: bool,
        seen: &std::sync::atomic::AtomicU16,
    ) -> Result<(u16, Vec<u8>), String> {
        let fail = |what: String| format!("{} {}: {what}", self.method, self.url);
        let addr = match &self.target {
            Target::Addr(addr) => *addr,
            Target::Name(host, port) => crate::net::resolve(host, *port).await.map_err(fail)?,
            Target::None => return Err(fail("the URL has no host".into())),
        };
        let (stream, sent) = crate::net::tcp_connect_send(addr, &self.request)
            .await
            .map_err(|e| fail(crate::tcp::io_reason(&e)))?;
        let is_head = self.method == reqwest::Method::HEAD;
        crate::http1::exchange(
            stream,
            &self.request[sent..],
            wants_body,
            is_head,
            MAX_BODY,
            seen,
        )
        .await
        .map_err(fail)
    }

    /// The headers came, the body did not (in time, or whole).
    fn body_error(&self, e: &reqwest::Error, status: u16, timeout: Duration) -> String {
        let root = root_cause(e).unwrap_or_else(|| e.to_string());
        if e.is_timeout() || root.contains("timed out") {
            self.slow_body(status, timeout)
        } else {
            format!(
                "HTTP {status} from {}, but the body broke off: {root}",
                self.url
            )
        }
    }

    /// The headers came in time, the whole body did not.
    fn slow_body(&self, status: u16, timeout: Duration) -> String {
        format!(
            "HTTP {status} from {}, but its body was still arriving after {} (a slow body)",
            self.url,
            Dur(timeout)
        )
    }

    fn describe_error(&self, e: &reqwest::Error) -> String {
        let root = root_cause(e);
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            match root {
                Some(r) if r.contains("refused") => "connection refused".into(),
                Some(r) => format!("cannot connect: {r}"),
                None => "cannot connect".into(),
            }
        } else {
            root.unwrap_or_else(|| e.to_string())
        };
        format!("{} {}: {what}", self.method, self.url)
    }
}

/// The innermost error of a chain (hyper's, the OS's): what actually went wrong.
fn root_cause(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    root
}

impl Check for HttpCheck {
    fn run<'a>(&'a self, ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            let start = Instant::now();
            let result = self.probe(ctx.timeout).await;
            let ms = ms_since(start);
            match result {
                Ok(msg) => CheckOutcome::ok(msg).with_value(ms),
                Err(msg) => CheckOutcome::critical(msg).with_value(ms),
            }
        })
    }

    fn target(&self) -> String {
        format!("http {} {}", self.method, self.url)
    }
}

/// Shares one HTTP client per combination of TLS and redirect settings: a client holds
/// the TLS root store, too big to have one per check when there are thousands.
#[derive(Default)]
pub struct HttpFactory {
    clients: Mutex<BTreeMap<(bool, bool), reqwest::Client>>,
}

impl HttpFactory {
    fn client(&self, tls_verify: bool, follow: bool) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(tls_verify, follow)) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("vigia/", env!("CARGO_PKG_VERSION")))
            // A monitor should see a dead listener: every check opens a new connection.
            .pool_max_idle_per_host(0)
            .redirect(if follow {
                reqwest::redirect::Policy::limited(5)
            } else {
                reqwest::redirect::Policy::none()
            })
            .danger_accept_invalid_certs(!tls_verify)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        clients.insert((tls_verify, follow), client.clone());
        Ok(client)
    }
}

impl CheckFactory for HttpFactory {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn summary(&self) -> &'static str {
        "request a URL; check status, body and response time"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        _ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: HttpConfig = params.deserialize(path)?;
        let errors = cfg.validate(path);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let bad = |m: String| ConfigErrors::from(ConfigError::new(path, m));
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let k = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let v = reqwest::header::HeaderValue::from_str(v).map_err(|e| bad(e.to_string()))?;
            headers.insert(k, v);
        }
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| bad(e.to_string()))?;
        let direct = url.scheme() == "http" && !cfg.follow_redirects;
        let client = if direct {
            None
        } else {
            Some(
                self.client(cfg.tls_verify, cfg.follow_redirects)
                    .map_err(bad)?,
            )
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let header_list: Vec<(String, String)> = cfg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let request = crate::http1::render_request(
            &cfg.method.to_ascii_uppercase(),
            &host,
            &target,
            &header_list,
            cfg.body.as_deref(),
        );
        let port = url.port_or_known_default().unwrap_or(80);
        let target = match url.host() {
            _ if !direct => Target::None,
            Some(url::Host::Ipv4(ip)) => Target::Addr(std::net::SocketAddr::new(ip.into(), port)),
            Some(url::Host::Ipv6(ip)) => Target::Addr(std::net::SocketAddr::new(ip.into(), port)),
            Some(url::Host::Domain(d)) => Target::Name(d.into(), port),
            None => Target::None,
        };
        let shown: Box<str> = url.as_str().into();
        let check = HttpCheck {
            via: client.map(|client| {
                Box::new(ViaReqwest {
                    client,
                    url: url.clone(),
                    headers,
                    body: cfg.body,
                })
            }),
            request: if direct {
                request.into_boxed_slice()
            } else {
                Box::default()
            },
            target,
            method: reqwest::Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes())
                .map_err(|e| bad(e.to_string()))?,
            url: shown,
            expect_status: cfg.expect_status.unwrap_or(StatusSpec(vec![(200, 399)])),
            body_contains: cfg.body_contains,
            body_regex: cfg
                .body_regex
                .map(|r| Regex::new(&r))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            max_response_time: cfg.max_response_time.map(Dur::get),
        };
        Ok(Built::one(name, check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use vigia_api::check::testing::{build_one, ctx};

    fn build(yaml: &str) -> Result<Arc<dyn Check>, ConfigErrors> {
        build_one(&HttpFactory::default(), yaml)
    }

    /// A real HTTP/1.1 server on 127.0.0.1:0: reads each request's head and answers
    /// with what `respond` makes of it, after its delay.
    async fn serve(respond: fn(&str) -> (Duration, String)) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (delay, resp) = respond(&String::from_utf8_lossy(&got));
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        port
    }

    /// Answers every request with `status` and `body`, after `delay`.
    macro_rules! server {
        ($status:expr, $body:expr, $delay:expr) => {
            serve(|_| {
                let body: &str = $body;
                (
                    $delay,
                    format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        $status,
                        body.len()
                    ),
                )
            })
        };
    }

    #[tokio::test]
    async fn healthy_endpoint() {
        let port = server!(200, "{\"status\":\"ok\"}", Duration::ZERO).await;
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/health\nbody_contains: '\"status\":\"ok\"'"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(o.is_ok(), "{o:?}");
        assert!(o
            .message
            .starts_with(&format!("HTTP 200 from http://127.0.0.1:{port}/health in ")));
    }

    #[tokio::test]
    async fn status_500_fails_with_the_status_in_the_message() {
        let port = server!(500, "boom", Duration::ZERO).await;
        let c = build(&format!("url: http://127.0.0.1:{port}/health")).unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert_eq!(
            o.message,
            format!("HTTP 500 from http://127.0.0.1:{port}/health (expected 200-399)")
        );
    }

    #[tokio::test]
    async fn expected_status_list_and_range() {
        let port = server!(404, "", Duration::ZERO).await;
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/\nexpect_status: [200, \"400-404\"]"
        ))
        .unwrap();
        assert!(c.run(ctx()).await.is_ok());
    }

    #[tokio::test]
    async fn body_mismatch_and_regex() {
        let port = server!(200, "{\"status\":\"degraded\"}", Duration::ZERO).await;
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/\nbody_regex: '\"status\":\"(ok|fine)\"'"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert!(o.message.contains("body does not match"), "{}", o.message);
    }

    #[tokio::test]
    async fn slow_response_over_the_limit() {
        let port = server!(200, "ok", Duration::from_millis(150)).await;
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/\nmax_response_time: 50ms"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(!o.is_ok());
        assert!(o.message.contains("(limit 50ms)"), "{}", o.message);
    }

    #[tokio::test]
    async fn refused_and_timed_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = build(&format!("url: http://127.0.0.1:{port}/")).unwrap();
        let o = c.run(ctx()).await;
        assert_eq!(
            o.message,
            format!("GET http://127.0.0.1:{port}/: connection refused")
        );

        let port = server!(200, "ok", Duration::from_secs(5)).await;
        let c = build(&format!("url: http://127.0.0.1:{port}/")).unwrap();
        let o = c
            .run(RunContext {
                check: "web",
                timeout: Duration::from_millis(200),
            })
            .await;
        assert_eq!(
            o.message,
            format!("GET http://127.0.0.1:{port}/: timed out")
        );
    }

    #[tokio::test]
    async fn a_slow_body_is_called_slow() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        for extra in ["", "follow_redirects: true\n"] {
            let c = build(&format!(
                "url: http://127.0.0.1:{port}/\nbody_contains: hello\n{extra}"
            ))
            .unwrap();
            let o = c
                .run(RunContext {
                    check: "web",
                    timeout: Duration::from_millis(300),
                })
                .await;
            assert!(!o.is_ok());
            assert!(
                o.message.contains("body was still arriving after")
                    || o.message.contains("slow body"),
                "{extra}: {}",
                o.message
            );
        }
    }

    /// Answers with a chunked body, or a redirect to /ok for any other path.
    async fn chunked_and_redirect_server() -> u16 {
        serve(|head| {
            let resp = if head.starts_with("GET /ok ") {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                 7\r\n{\"statu\r\n8\r\ns\":\"ok\"}\r\n0\r\n\r\n"
            } else {
                "HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            (Duration::ZERO, resp.to_string())
        })
        .await
    }

    #[tokio::test]
    async fn chunked_bodies_and_redirects() {
        let port = chunked_and_redirect_server().await;
        let ok = "body_contains: '\"status\":\"ok\"'";
        // Direct path, chunked body.
        let c = build(&format!("url: http://127.0.0.1:{port}/ok\n{ok}")).unwrap();
        let o = c.run(ctx()).await;
        assert!(o.is_ok(), "{o:?}");
        // Without following, a redirect is a status like any other.
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/\nexpect_status: 200"
        ))
        .unwrap();
        assert_eq!(
            c.run(ctx()).await.message,
            format!("HTTP 302 from http://127.0.0.1:{port}/ (expected 200)")
        );
        // Following goes through reqwest and lands on the chunked /ok.
        let c = build(&format!(
            "url: http://127.0.0.1:{port}/\nfollow_redirects: true\nexpect_status: 200\n{ok}"
        ))
        .unwrap();
        let o = c.run(ctx()).await;
        assert!(o.is_ok(), "{o:?}");
    }

    #[test]
    fn config_errors() {
        let e = build("url: ftp://x/\nmethod: 'G T'\nexpect_status: 700\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "3:16: checks[0].expect_status: `700` is not an HTTP status code (100-599)"
        );
        let e = build("url: ftp://x/\nmethod: 'G T'\n")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "checks[0].url: `ftp://x/` must be an http:// or https:// URL with a host\n\
             checks[0].method: `G T` is not an HTTP method"
        );
    }
}
