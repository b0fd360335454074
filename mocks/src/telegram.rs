//! A Telegram Bot API mock at `/bot<TOKEN>/<method>`, method names matched
//! case-insensitively (teloxide sends `SendMessage`): `getMe`, `sendMessage` (with
//! inline keyboards), `getUpdates` (long polling, `offset` confirms what came before),
//! `answerCallbackQuery`, `editMessageText`, `editMessageReplyMarkup` and
//! `setMyCommands`. It records every accepted message and every call; edits change the
//! recorded message as they change a real chat. Updates — a user's message, a press of
//! one of a message's buttons — are queued through the control endpoint. It can be
//! switched to fail (500, 429 with `retry_after`, 401, 400 chat not found) or to hang,
//! and can limit how many messages per second it accepts (the rest get 429, as the real
//! API does).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

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

/// One accepted message, as it reads now (after its edits).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TgMessage {
    pub id: u64,
    pub chat_id: serde_json::Value,
    pub text: String,
    pub parse_mode: Option<String>,
    /// Unix ms when it was accepted.
    pub at: u64,
    /// Its inline keyboard (`{"inline_keyboard": [[{"text":…,"callback_data":…}]]}`).
    #[serde(default)]
    pub reply_markup: Option<Value>,
    /// The message it answers.
    #[serde(default)]
    pub reply_to: Option<i64>,
    /// How many times it was edited.
    #[serde(default)]
    pub edits: u32,
}

/// A call of a method other than `sendMessage`, `getMe` and `getUpdates`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TgCall {
    /// As Telegram names it: `answerCallbackQuery`, `editMessageText`…
    pub method: String,
    pub args: Value,
    pub at: u64,
}

/// What `POST /telegram/updates` queues: a message from a user, or a press of a button.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUpdate {
    pub chat: i64,
    pub user: i64,
    #[serde(default)]
    pub username: Option<String>,
    /// A message (`/status`).
    #[serde(default)]
    pub text: Option<String>,
    /// The label of the button pressed (`Silence 1h`), on `message_id` (default: the
    /// chat's last message with buttons).
    #[serde(default)]
    pub press: Option<String>,
    #[serde(default)]
    pub message_id: Option<u64>,
    /// The callback data sent, instead of the button's own: a forged press.
    #[serde(default)]
    pub data: Option<String>,
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
    pub calls: Mutex<Vec<TgCall>>,
    /// Updates not confirmed yet (a `getUpdates` offset past them confirms them).
    updates: Mutex<VecDeque<Value>>,
    next_update: AtomicU64,
    /// The offset of the last `getUpdates`: updates below it were confirmed.
    pub confirmed: AtomicU64,
    /// `getUpdates` calls answered.
    pub polls: AtomicU64,
    queued: Notify,
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
            calls: Mutex::new(Vec::new()),
            updates: Mutex::new(VecDeque::new()),
            next_update: AtomicU64::new(1),
            confirmed: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            queued: Notify::new(),
        })
    }

    pub fn calls(&self) -> Vec<TgCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, method: &str, args: &Value) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TgCall {
                method: method.to_string(),
                args: args.clone(),
                at: now_ms(),
            });
    }

    /// Queues an update; returns its `update_id`.
    pub fn queue(&self, u: &NewUpdate) -> Result<u64, String> {
        let chat = chat_json(u.chat);
        let name = u
            .username
            .clone()
            .unwrap_or_else(|| format!("user{}", u.user));
        let mut from = json!({"id": u.user, "is_bot": false, "first_name": name});
        if let Some(n) = &u.username {
            from["username"] = json!(n);
        }
        let date = now_ms() / 1000;
        let body = match (&u.text, &u.press, &u.data) {
            (Some(text), None, None) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let mut m = json!({"message_id": id, "date": date, "chat": chat, "from": from, "text": text});
                if text.starts_with('/') {
                    let len = text
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .encode_utf16()
                        .count();
                    m["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
                }
                json!({ "message": m })
            }
            (None, press, data) if press.is_some() || data.is_some() => {
                let messages = self.messages();
                let msg = match u.message_id {
                    Some(id) => messages.iter().find(|m| m.id == id),
                    None => messages
                        .iter()
                        .rev()
                        .find(|m| m.chat_id == json!(u.chat) && m.reply_markup.is_some()),
                }
                .ok_or("no such message (give message_id, or send one with buttons first)")?;
                let data = match (data, press) {
                    (Some(d), _) => d.clone(),
                    (None, Some(label)) => msg
                        .reply_markup
                        .as_ref()
                        .and_then(|k| k["inline_keyboard"].as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|row| row.as_array())
                        .flatten()
                        .find(|b| b["text"] == json!(label))
                        .and_then(|b| b["callback_data"].as_str())
                        .map(str::to_string)
                        .ok_or_else(|| format!("message {} has no button `{label}`", msg.id))?,
                    (None, None) => return Err("give `press` or `data`".into()),
                };
                let update_id = self.next_update.load(Ordering::Relaxed);
                json!({ "callback_query": {
                    "id": format!("cbq-{update_id}"),
                    "from": from,
                    "message": {
                        "message_id": msg.id, "date": msg.at / 1000, "chat": chat_json(msg.chat_id.as_i64().unwrap_or(u.chat)),
                        "from": bot_user(), "text": msg.text,
                    },
                    "chat_instance": format!("ci{}", u.chat),
                    "data": data,
                }})
            }
            _ => return Err("give `text` (a message) or `press` / `data` (a button press)".into()),
        };
        let mut q = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let id = self.next_update.fetch_add(1, Ordering::Relaxed);
        let mut update = body;
        update["update_id"] = json!(id);
        q.push_back(update);
        drop(q);
        self.queued.notify_waiters();
        Ok(id)
    }

    /// `getUpdates`: confirms what is below `offset`, then answers what is left, at once
    /// or within `timeout` seconds.
    async fn get_updates(&self, args: &Value) -> Value {
        let offset = args["offset"].as_u64().unwrap_or(0);
        let timeout = args["timeout"].as_u64().unwrap_or(0).min(50);
        let limit = args["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
        self.confirmed.fetch_max(offset, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let waiting = self.queued.notified();
            if self.mode() != TgMode::Ok {
                return json!([]);
            }
            {
                let mut q = self.updates.lock().unwrap_or_else(|p| p.into_inner());
                q.retain(|u| u["update_id"].as_u64().unwrap_or(0) >= offset);
                if !q.is_empty() {
                    return Value::Array(q.iter().take(limit).cloned().collect());
                }
            }
            if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return json!([]);
            }
        }
    }

    /// Updates queued and not confirmed yet.
    pub fn pending_updates(&self) -> Vec<Value> {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        self.updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|u| u["update_id"].as_u64().unwrap_or(0) >= confirmed)
            .cloned()
            .collect()
    }

    /// editMessageText / editMessageReplyMarkup on a recorded message.
    fn edit(&self, args: &Value, text: bool) -> Result<Value, (u16, String)> {
        let id = args["message_id"].as_u64().unwrap_or(0);
        let mut ms = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        let m = ms
            .iter_mut()
            .find(|m| m.id == id && m.chat_id == args["chat_id"])
            .ok_or((400, "Bad Request: message to edit not found".to_string()))?;
        let markup = args.get("reply_markup").cloned().filter(|k| {
            k["inline_keyboard"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r.as_array().is_some_and(|r| !r.is_empty()))
            })
        });
        let new_text = if text {
            args["text"].as_str().unwrap_or_default().to_string()
        } else {
            m.text.clone()
        };
        if new_text == m.text && markup == m.reply_markup {
            return Err((400, "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message".into()));
        }
        m.text = new_text;
        m.reply_markup = markup;
        m.edits += 1;
        Ok(json!({
            "message_id": m.id, "date": m.at / 1000, "chat": chat_json(m.chat_id.as_i64().unwrap_or(0)),
            "from": bot_user(), "text": m.text, "edit_date": now_ms() / 1000,
        }))
    }

    pub fn set_mode(&self, m: TgMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = m;
        // Long polls in flight end now, as a real outage ends them.
        self.queued.notify_waiters();
    }

    fn mode(&self) -> TgMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
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

fn chat_json(id: i64) -> Value {
    if id < 0 {
        json!({"id": id, "type": "group", "title": "ops"})
    } else {
        json!({"id": id, "type": "private", "first_name": "ops"})
    }
}

fn bot_user() -> serde_json::Value {
    serde_json::json!({
        "id": 4242, "is_bot": true, "first_name": "Vigia mock", "username": "vigia_mock_bot",
        "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
        "can_connect_to_business": false, "has_main_web_app": false
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
                            reply_markup: args.get("reply_markup").cloned(),
                            reply_to: args["reply_parameters"]["message_id"].as_i64(),
                            edits: 0,
                        });
                    let chat = chat_json(chat_id.as_i64().unwrap_or(0));
                    (
                        200,
                        serde_json::json!({"ok": true, "result": {
                            "message_id": id, "date": now_ms() / 1000, "chat": chat,
                            "from": bot_user(), "text": text
                        }}),
                    )
                }
            }
            "getupdates" => {
                let args: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let updates = tg.get_updates(&args).await;
                tg.polls.fetch_add(1, Ordering::Relaxed);
                match tg.mode() {
                    TgMode::Ok | TgMode::ChatNotFound => {
                        (200, json!({"ok": true, "result": updates}))
                    }
                    // The API failed while the poll waited.
                    _ => fail(500, "Internal Server Error", None),
                }
            }
            "answercallbackquery" | "setmycommands" => {
                let args: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let name = if method == "setmycommands" {
                    "setMyCommands"
                } else {
                    "answerCallbackQuery"
                };
                tg.record(name, &args);
                (200, json!({"ok": true, "result": true}))
            }
            "editmessagetext" | "editmessagereplymarkup" => {
                let args: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let text = method == "editmessagetext";
                tg.record(
                    if text {
                        "editMessageText"
                    } else {
                        "editMessageReplyMarkup"
                    },
                    &args,
                );
                match tg.edit(&args, text) {
                    Ok(m) => (200, json!({"ok": true, "result": m})),
                    Err((code, d)) => fail(code, &d, None),
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
