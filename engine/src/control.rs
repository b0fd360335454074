//! The control socket: `state_dir/vigia.sock`, one JSON request line, one JSON answer.
//!
//! `vigia status` reads the status map of a running engine through it (the state store
//! is locked by the engine while it runs). Requests: `{"cmd":"status"}`,
//! `{"cmd":"stats"}`, `{"cmd":"stats_reset"}`, `{"cmd":"silence_add","pattern":"web",
//! "for_ms":7200000,"reason":"..."}`, `{"cmd":"silence_list"}`,
//! `{"cmd":"silence_remove","id":12}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::PlannedCheck;
use crate::scheduler::{Shared, StatsSnapshot};
use crate::status::CheckState;

pub const SOCKET_FILE: &str = "vigia.sock";

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckView {
    pub name: String,
    pub group: Option<String>,
    pub target: String,
    pub interval_ms: u64,
    pub threshold: u32,
    pub recover_after: u32,
    pub comment: String,
    #[serde(flatten)]
    pub state: CheckState,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub host: String,
    pub pid: u32,
    pub started_at: u64,
    pub now: u64,
    pub config: String,
    pub checks: Vec<CheckView>,
    pub stats: Option<serde_json::Value>,
    /// Per delivery target: pending, delivered, failed, last error.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, crate::alert::pipeline::TargetStats>,
}

/// What the control server needs to answer; refreshed on reload.
pub struct ControlState {
    pub host: String,
    pub started_at: u64,
    pub config: PathBuf,
    pub shared: Arc<Shared>,
    /// The scheduled checks (the scheduler's own `Arc`s: no copy per check).
    pub checks: std::sync::RwLock<Vec<Arc<PlannedCheck>>>,
    pub alerts: Arc<crate::alert::pipeline::AlertStatus>,
    pub alert_tx: tokio::sync::mpsc::Sender<crate::alert::pipeline::Input>,
}

impl ControlState {
    pub fn status(&self) -> StatusView {
        let now = crate::scheduler::unix_ms();
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| CheckView {
                name: c.name.to_string(),
                group: c.group.as_deref().map(str::to_string),
                target: c.check.target(),
                interval_ms: c.interval.as_millis() as u64,
                threshold: c.threshold,
                recover_after: c.recover_after,
                comment: c.comment.to_string(),
                state: self
                    .shared
                    .status
                    .get(&*c.name)
                    .map(|s| s.clone())
                    .unwrap_or_else(|| CheckState::new(now)),
            })
            .collect();
        StatusView {
            host: self.host.clone(),
            pid: std::process::id(),
            started_at: self.started_at,
            now,
            config: self.config.display().to_string(),
            checks,
            stats: serde_json::to_value(self.shared.stats.snapshot()).ok(),
            channels: self.alerts.snapshot(),
        }
    }

    async fn silence(
        &self,
        cmd: crate::alert::pipeline::SilenceCmd,
    ) -> Result<serde_json::Value, serde_json::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .alert_tx
            .send(crate::alert::pipeline::Input::Silence(cmd, tx))
            .await;
        let answer = match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("the alert pipeline stopped".into())),
            Err(_) => Err("the alert pipeline stopped".into()),
        };
        Ok(match answer {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e }),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Request {
    cmd: String,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    for_ms: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

/// Binds the socket (replacing a stale one left by a crash) and serves it.
pub fn serve(
    path: &Path,
    state: Arc<ControlState>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        // A socket nobody answers on is a leftover of a crash; a live one means another
        // engine, which the state store's lock has already refused, so this is stale.
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &state)).await;
            });
        }
    }))
}

async fn answer(stream: UnixStream, state: &ControlState) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match req.cmd.as_str() {
            "status" => serde_json::to_value(state.status()),
            "stats" => serde_json::to_value(state.shared.stats.snapshot()),
            "stats_reset" => {
                state.shared.stats.reset();
                serde_json::to_value(state.shared.stats.snapshot())
            }
            "silence_add" => match (req.pattern, req.for_ms) {
                (Some(pattern), Some(ms)) => {
                    state
                        .silence(crate::alert::pipeline::SilenceCmd::Add {
                            pattern,
                            duration: Duration::from_millis(ms),
                            reason: req.reason.unwrap_or_default(),
                        })
                        .await
                }
                _ => Ok(serde_json::json!({"error": "silence_add needs `pattern` and `for_ms`"})),
            },
            "silence_list" => {
                state
                    .silence(crate::alert::pipeline::SilenceCmd::List)
                    .await
            }
            "silence_remove" => match req.id {
                Some(id) => {
                    state
                        .silence(crate::alert::pipeline::SilenceCmd::Remove { id })
                        .await
                }
                None => Ok(serde_json::json!({"error": "silence_remove needs `id`"})),
            },
            other => Ok(serde_json::json!({"error": format!("unknown command `{other}`")})),
        },
        Err(e) => Ok(serde_json::json!({"error": format!("bad request: {e}")})),
    }
    .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.shutdown().await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the engine at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("the engine at {path} gave an answer that is not JSON: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// Sends one request to a running engine.
pub async fn request(path: &Path, cmd: &str) -> Result<serde_json::Value, ClientError> {
    request_json(path, serde_json::json!({ "cmd": cmd })).await
}

/// Sends a request with arguments: `{"cmd": ..., ...}`.
pub async fn request_json(
    path: &Path,
    req: serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    let unreachable = |e: std::io::Error| ClientError::Unreachable {
        path: path.to_path_buf(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no socket there (is vigia running with this config?)".into()
            }
            std::io::ErrorKind::ConnectionRefused => "nobody listens (vigia is not running)".into(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as root or as the vigia user)".into()
            }
            _ => e.to_string(),
        },
    };
    let mut stream = UnixStream::connect(path).await.map_err(unreachable)?;
    let req = req.to_string() + "\n";
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(unreachable)?;
    serde_json::from_str(&line).map_err(|e| ClientError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads the stats of a running engine (for the benchmark).
pub async fn stats(path: &Path) -> Result<StatsSnapshot, ClientError> {
    let v = request(path, "stats").await?;
    serde_json::from_value(v).map_err(|e| ClientError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
