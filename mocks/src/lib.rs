//! Mock servers for demos and tests.
//!
//! - an HTTP API: `GET /health` answers `{"status":"ok"}`;
//! - an atto-like TCP line service: every request line gets one reply line, `OK <line>`;
//! - a control endpoint (HTTP) that switches each of them at run time between
//!   `healthy`, `failing` (HTTP 500 / `ERR <line>`), `slow` (answers after a delay) and
//!   `refusing` (the port is closed: connections are refused).
//!
//! - a Telegram Bot API (`telegram.rs`) that records messages and can fail on demand;
//! - a latency wire (`wire.rs`) between two network namespaces, for kernels without netem.
//!
//! Control API: `POST /mode/http/failing`, `POST /mode/tcp/healthy`, `GET /mode`;
//! `POST /telegram/mode/{ok|error|ratelimit|unauthorized|chat_not_found|hang}`,
//! `POST /telegram/rate/{per_second}`, `POST /telegram/retry_after/{seconds}`, `GET /telegram/messages`,
//! `DELETE /telegram/messages`, `GET /telegram/calls` (answers, edits, commands set),
//! `POST /telegram/updates` (queue a user's message or button press: a JSON
//! [`telegram::NewUpdate`]), `GET /telegram/updates` (those not confirmed yet).

pub mod http;
pub mod telegram;
pub mod wire;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::http::{read_request, write_response, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Healthy,
    Failing,
    Slow,
    Refusing,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "healthy" => Ok(Mode::Healthy),
            "failing" => Ok(Mode::Failing),
            "slow" => Ok(Mode::Slow),
            "refusing" => Ok(Mode::Refusing),
            _ => Err(format!(
                "unknown mode `{s}`: use healthy, failing, slow or refusing"
            )),
        }
    }
}

/// The running mock servers and their addresses.
pub struct Mocks {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub control: SocketAddr,
    pub telegram: SocketAddr,
    pub tg: Arc<telegram::Telegram>,
    http_mode: watch::Sender<Mode>,
    tcp_mode: watch::Sender<Mode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ports {
    pub http: u16,
    pub tcp: u16,
    pub control: u16,
    pub telegram: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Modes {
    pub http: Mode,
    pub tcp: Mode,
}

impl Mocks {
    pub fn ports(&self) -> Ports {
        Ports {
            http: self.http.port(),
            tcp: self.tcp.port(),
            control: self.control.port(),
            telegram: self.telegram.port(),
        }
    }

    pub fn set(&self, service: &str, mode: Mode) -> Result<Modes, String> {
        match service {
            "http" => self.http_mode.send_replace(mode),
            "tcp" => self.tcp_mode.send_replace(mode),
            other => return Err(format!("unknown service `{other}`: use http or tcp")),
        };
        Ok(self.modes())
    }

    pub fn modes(&self) -> Modes {
        Modes {
            http: *self.http_mode.borrow(),
            tcp: *self.tcp_mode.borrow(),
        }
    }
}

/// Where to listen; port 0 picks a free port.
pub struct Options {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub control: SocketAddr,
    pub slow_delay: Duration,
    /// The Telegram Bot API mock.
    pub telegram: SocketAddr,
    /// Messages per second it accepts (0: no limit).
    pub telegram_rate: u64,
}

/// Binds all three listeners and serves them until the runtime ends.
pub async fn start(opts: Options) -> std::io::Result<Arc<Mocks>> {
    let http_listener = TcpListener::bind(opts.http).await?;
    let tcp_listener = TcpListener::bind(opts.tcp).await?;
    let control_listener = TcpListener::bind(opts.control).await?;
    let telegram_listener = TcpListener::bind(opts.telegram).await?;
    let tg = telegram::Telegram::new(opts.telegram_rate);
    let (http_mode, http_rx) = watch::channel(Mode::Healthy);
    let (tcp_mode, tcp_rx) = watch::channel(Mode::Healthy);
    let mocks = Arc::new(Mocks {
        http: http_listener.local_addr()?,
        tcp: tcp_listener.local_addr()?,
        control: control_listener.local_addr()?,
        telegram: telegram_listener.local_addr()?,
        tg: tg.clone(),
        http_mode,
        tcp_mode,
    });
    tokio::spawn(telegram::serve(telegram_listener, tg));
    let delay = opts.slow_delay;
    tokio::spawn(serve_switchable(http_listener, http_rx, move |s, m| {
        tokio::spawn(http_conn(s, m, delay));
    }));
    tokio::spawn(serve_switchable(tcp_listener, tcp_rx, move |s, m| {
        tokio::spawn(tcp_conn(s, m, delay));
    }));
    let m = mocks.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = control_listener.accept().await {
            let m = m.clone();
            tokio::spawn(async move { control_conn(s, &m).await });
        }
    });
    Ok(mocks)
}

/// Accepts while the mode is not `refusing`; in `refusing` the listener is closed, so
/// connections are refused by the kernel, and it is bound again when the mode changes.
async fn serve_switchable(
    listener: TcpListener,
    mut mode: watch::Receiver<Mode>,
    on_conn: impl Fn(TcpStream, watch::Receiver<Mode>) + Send + 'static,
) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut listener = Some(listener);
    loop {
        if *mode.borrow() == Mode::Refusing {
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("vigia-mock: cannot listen again on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            r = l.accept() => {
                if let Ok((s, _)) = r {
                    on_conn(s, mode.clone());
                }
                listener = Some(l);
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                listener = Some(l);
            }
        }
    }
}

async fn http_conn(mut s: TcpStream, mode: watch::Receiver<Mode>, delay: Duration) {
    let Ok(Some(req)) = read_request(&mut s).await else {
        return;
    };
    let m = *mode.borrow();
    let (status, body) = match m {
        Mode::Healthy | Mode::Refusing => (200, r#"{"status":"ok"}"#.to_string()),
        Mode::Slow => {
            tokio::time::sleep(delay).await;
            (200, r#"{"status":"ok"}"#.to_string())
        }
        Mode::Failing => (
            500,
            r#"{"status":"error","reason":"mock set to failing"}"#.to_string(),
        ),
    };
    let _ = req;
    let _ = write_response(&mut s, status, "application/json", body.as_bytes()).await;
}

async fn tcp_conn(s: TcpStream, mode: watch::Receiver<Mode>, delay: Duration) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let m = *mode.borrow();
        let reply = match m {
            Mode::Healthy | Mode::Refusing => format!("OK {line}\n"),
            Mode::Slow => {
                tokio::time::sleep(delay).await;
                format!("OK {line}\n")
            }
            Mode::Failing => format!("ERR {line}\n"),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn control_conn(mut s: TcpStream, mocks: &Mocks) {
    let Ok(Some(Request {
        method, path, body, ..
    })) = read_request(&mut s).await
    else {
        return;
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, body) = match (method.as_str(), parts.as_slice()) {
        ("GET", ["mode"]) | ("GET", [""]) => (200, serde_json::to_string(&mocks.modes()).unwrap_or_default()),
        ("POST", ["telegram", "mode", mode]) => match mode.parse::<telegram::TgMode>() {
            Ok(m) => {
                mocks.tg.set_mode(m);
                (200, serde_json::json!({ "telegram": m }).to_string())
            }
            Err(e) => (400, serde_json::json!({ "error": e }).to_string()),
        },
        ("POST", ["telegram", "rate", n]) => match n.parse::<u64>() {
            Ok(n) => {
                mocks.tg.rate.store(n, std::sync::atomic::Ordering::Relaxed);
                (200, serde_json::json!({ "rate": n }).to_string())
            }
            Err(_) => (400, serde_json::json!({ "error": "the rate is a number of messages per second" }).to_string()),
        },
        ("POST", ["telegram", "retry_after", n]) => match n.parse::<u64>() {
            Ok(n) => {
                mocks.tg.retry_after.store(n, std::sync::atomic::Ordering::Relaxed);
                (200, serde_json::json!({ "retry_after": n }).to_string())
            }
            Err(_) => (400, serde_json::json!({ "error": "retry_after is a number of seconds" }).to_string()),
        },
        ("GET", ["telegram", "messages"]) => (200, serde_json::to_string(&mocks.tg.messages()).unwrap_or_default()),
        ("GET", ["telegram", "calls"]) => (200, serde_json::to_string(&mocks.tg.calls()).unwrap_or_default()),
        ("GET", ["telegram", "updates"]) => (200, serde_json::to_string(&mocks.tg.pending_updates()).unwrap_or_default()),
        ("POST", ["telegram", "updates"]) => match serde_json::from_slice::<telegram::NewUpdate>(&body)
            .map_err(|e| format!("the body is not an update: {e}"))
            .and_then(|u| mocks.tg.queue(&u))
        {
            Ok(id) => (200, serde_json::json!({ "update_id": id }).to_string()),
            Err(e) => (400, serde_json::json!({ "error": e }).to_string()),
        },
        ("DELETE", ["telegram", "messages"]) => {
            mocks.tg.clear();
            (200, "[]".to_string())
        }
        ("POST", ["mode", service, mode]) | ("PUT", ["mode", service, mode]) => {
            match mode.parse::<Mode>().and_then(|m| mocks.set(service, m)) {
                Ok(modes) => (200, serde_json::to_string(&modes).unwrap_or_default()),
                Err(e) => (400, serde_json::json!({ "error": e }).to_string()),
            }
        }
        _ => (
            404,
            serde_json::json!({"error": "use GET /mode or POST /mode/{http|tcp}/{healthy|failing|slow|refusing}"})
                .to_string(),
        ),
    };
    let _ = write_response(&mut s, status, "application/json", body.as_bytes()).await;
}
