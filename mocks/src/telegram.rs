//! A Telegram Bot API mock: `getMe` and `sendMessage` at `/bot<TOKEN>/<method>`, method
//! names matched case-insensitively (teloxide sends `SendMessage`). It records every
//! accepted message, can be switched to fail (500, 429 with `retry_after`, 401, 400 chat
//! not found) or to hang, and can limit how many messages per second it accepts (the
//! rest get 429, as the real API does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use crate::http::{read_request, write_response};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TgMode {
    Ok,
    /// HTTP 500.
    Error,
    /// HTTP 429 with `retry_after`.
    Ratelimit,
    /// HTTP 401, as for a bad token.
    Unauthorized,
    /// HTTP 400 "chat not found".
    ChatNotFound,
    /// Accepts the connection and never answers.
    Hang,
}

impl std::str::FromStr for TgMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("unknown telegram mode `{s}`: use ok, error, ratelimit, unauthorized, chat_not_found or hang")
        })
    }
}

/// One accepted message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TgMessage {
    pub id: u64,
    pub chat_id: serde_json::Value,
    pub text: String,
    pub parse_mode: Option<String>,
    /// Unix ms when it was accepted.
    pub at: u64,
}

pub struct Telegram {
    pub mode: Mutex<TgMode>,
    /// Seconds a 429 asks to wait.
    pub retry_after: AtomicU64,
    /// At most this many messages per second (0: no limit).
    pub rate: AtomicU64,
    window: Mutex<(u64, u64)>,
    pub messages: Mutex<Vec<TgMessage>>,
    next_id: AtomicU64,
    /// Requests answered with an error, by any mode.
    pub refused: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Telegram {
    pub fn new(rate: u64) -> Arc<Telegram> {
        Arc::new(Telegram {
            mode: Mutex::new(TgMode::Ok),
            retry_after: AtomicU64::new(1),
            rate: AtomicU64::new(rate),
            window: Mutex::new((0, 0)),
            messages: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            refused: AtomicU64::new(0),
        })
    }

    pub fn set_mode(&self, m: TgMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = m;
    }

    pub fn messages(&self) -> Vec<TgMessage> {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn clear(&self) {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether the rate limit lets one more message through now.
    fn admit(&self) -> bool {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return true;
        }
        let second = now_ms() / 1000;
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 >= rate {
            return false;
        }
        w.1 += 1;
        true
    }
}

pub async fn serve(listener: TcpListener, tg: Arc<Telegram>) {
    while let Ok((s, _)) = listener.accept().await {
        let tg = tg.clone();
        tokio::spawn(async move { conn(s, &tg).await });
    }
}

fn bot_user() -> serde_json::Value {
    serde_json::json!({
        "id": 4242, "is_bot": true, "first_name": "Vigia mock", "username": "vigia_mock_bot",
        "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false
    })
}

async fn conn(mut s: TcpStream, tg: &Telegram) {
    let Ok(Some(req)) = read_request(&mut s).await else {
        return;
    };
    // /bot<TOKEN>/<method>
    let method = req
        .path
        .trim_start_matches('/')
        .split_once('/')
        .filter(|(bot, _)| bot.starts_with("bot"))
        .map(|(_, m)| m.split('?').next().unwrap_or_default().to_ascii_lowercase());
    let Some(method) = method else {
        let body = serde_json::json!({"ok": false, "error_code": 404, "description": "Not Found"});
        let _ = write_response(&mut s, 404, "application/json", body.to_string().as_bytes()).await;
        return;
    };
    let mode = *tg.mode.lock().unwrap_or_else(|p| p.into_inner());
    let fail = |code: u16, description: &str, extra: Option<serde_json::Value>| {
        let mut v =
            serde_json::json!({"ok": false, "error_code": code, "description": description});
        if let Some(p) = extra {
            v["parameters"] = p;
        }
        (code, v)
    };
    let retry_after = tg.retry_after.load(Ordering::Relaxed);
    let (code, body) = match mode {
        TgMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        TgMode::Error => fail(500, "Internal Server Error", None),
        TgMode::Unauthorized => fail(401, "Unauthorized", None),
        TgMode::ChatNotFound if method == "sendmessage" => {
            fail(400, "Bad Request: chat not found", None)
        }
        TgMode::Ratelimit => fail(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
            Some(serde_json::json!({ "retry_after": retry_after })),
        ),
        _ => match method.as_str() {
            "getme" => (200, serde_json::json!({"ok": true, "result": bot_user()})),
            "sendmessage" => {
                let args: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let text = args["text"].as_str().unwrap_or_default().to_string();
                if text.is_empty() {
                    fail(400, "Bad Request: message text is empty", None)
                } else if !tg.admit() {
                    fail(
                        429,
                        "Too Many Requests: retry after 1",
                        Some(serde_json::json!({ "retry_after": 1 })),
                    )
                } else {
                    let id = tg.next_id.fetch_add(1, Ordering::Relaxed);
                    let chat_id = args["chat_id"].clone();
                    tg.messages
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(TgMessage {
                            id,
                            chat_id: chat_id.clone(),
                            text: text.clone(),
                            parse_mode: args["parse_mode"].as_str().map(str::to_string),
                            at: now_ms(),
                        });
                    let chat =
                        serde_json::json!({"id": chat_id, "type": "private", "first_name": "ops"});
                    (
                        200,
                        serde_json::json!({"ok": true, "result": {
                            "message_id": id, "date": now_ms() / 1000, "chat": chat,
                            "from": bot_user(), "text": text
                        }}),
                    )
                }
            }
            other => fail(404, &format!("Not Found: method {other}"), None),
        },
    };
    if code != 200 {
        tg.refused.fetch_add(1, Ordering::Relaxed);
    }
    let _ = write_response(
        &mut s,
        code,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
}
