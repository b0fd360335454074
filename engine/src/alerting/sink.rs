//! Where messages go: the console, Telegram (teloxide), a webhook. A sink sends one
//! stored message and says whether a failure is worth retrying.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use teloxide::payloads::{AnswerCallbackQuerySetters, EditMessageTextSetters, SendMessageSetters};
use teloxide::prelude::Requester;
use teloxide::types::{
    CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ParseMode,
    ReplyParameters,
};
use teloxide::{ApiError, RequestError};

use super::buttons::Button;
use super::pipeline::{Action, Stored};
use super::Console;
use vigia_config::alerting::shown_url;

#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Worth retrying: the network, a 5xx, a 429 (with the wait it asked for).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: a refused token, an unknown chat, a 4xx.
    Permanent { reason: String },
}

/// What a target said of a message it took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sent {
    /// Telegram: (chat, message id) of the message sent.
    pub message: Option<(i64, i64)>,
}

pub trait Sink: Send + Sync {
    fn send<'a>(&'a self, msg: &'a Stored) -> BoxFuture<'a, Result<Sent, SendError>>;
    /// `telegram chat 12345`, `webhook https://…`, `console`: for logs (never a secret).
    fn describe(&self) -> String;
}

/// `None`: `vigia run --no-console` (the message is delivered to nowhere).
pub struct ConsoleSink(pub Option<Console>);

impl Sink for ConsoleSink {
    fn send<'a>(&'a self, msg: &'a Stored) -> BoxFuture<'a, Result<Sent, SendError>> {
        if let Some(c) = &self.0 {
            c.print(&msg.text);
        }
        Box::pin(async { Ok(Sent::default()) })
    }

    fn describe(&self) -> String {
        "console".into()
    }
}

/// Telegram's limit on a message, in UTF-16 code units of its text.
pub const TELEGRAM_LIMIT: usize = 4096;

pub struct TelegramSink {
    bot: teloxide::Bot,
    chat: i64,
    /// Only to scrub it out of error texts (a request error may carry the URL).
    token: Arc<str>,
}

impl TelegramSink {
    pub fn new(token: &str, api_url: &str, chat: i64) -> Result<Self, String> {
        let url = reqwest::Url::parse(api_url.trim_end_matches('/'))
            .map_err(|e| format!("`{api_url}` is not a URL: {e}"))?;
        let client = teloxide::net::default_reqwest_settings()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {e}"))?;
        Ok(TelegramSink {
            bot: teloxide::Bot::with_client(token, client).set_api_url(url),
            chat,
            token: token.into(),
        })
    }

    fn scrub(&self, s: String) -> String {
        if self.token.is_empty() {
            s
        } else {
            s.replace(&*self.token, "<token>")
        }
    }

    fn classify(&self, e: RequestError) -> SendError {
        let reason = self.scrub(e.to_string());
        match e {
            RequestError::RetryAfter(secs) => SendError::Transient {
                reason: format!("rate limited by Telegram (retry after {}s)", secs.seconds()),
                retry_after: Some(secs.duration()),
            },
            RequestError::Network(_) | RequestError::Io(_) | RequestError::InvalidJson { .. } => {
                SendError::Transient {
                    reason,
                    retry_after: None,
                }
            }
            RequestError::Api(ApiError::InvalidToken) => SendError::Permanent {
                reason: "Telegram refused the bot token (401 Unauthorized): check token_env/token_file".into(),
            },
            RequestError::Api(ApiError::ChatNotFound) => SendError::Permanent {
                reason: format!("Telegram says chat {} does not exist (400 chat not found): check chat_ids, and that the bot was added to the chat", self.chat),
            },
            RequestError::Api(ApiError::Unknown(desc)) => {
                let d = desc.to_ascii_lowercase();
                let transient = ["internal server error", "bad gateway", "service unavailable", "gateway timeout", "too many requests"]
                    .iter()
                    .any(|t| d.contains(t));
                if transient {
                    SendError::Transient {
                        reason: self.scrub(format!("Telegram answered: {desc}")),
                        retry_after: None,
                    }
                } else {
                    SendError::Permanent {
                        reason: self.scrub(format!("Telegram refused the message: {desc}")),
                    }
                }
            }
            RequestError::Api(api) => SendError::Permanent {
                reason: self.scrub(format!("Telegram refused the message: {api}")),
            },
            other => SendError::Permanent {
                reason: self.scrub(other.to_string()),
            },
        }
    }
}

/// An inline keyboard of one row.
fn keyboard(buttons: &[Button]) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new([buttons
        .iter()
        .map(|b| InlineKeyboardButton::callback(b.label.clone(), b.data.clone()))
        .collect::<Vec<_>>()])
}

impl Sink for TelegramSink {
    fn send<'a>(&'a self, msg: &'a Stored) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let chat = ChatId(self.chat);
            let sent = |m: teloxide::types::Message| Sent {
                message: Some((m.chat.id.0, i64::from(m.id.0))),
            };
            match &msg.action {
                Action::Send => self
                    .bot
                    .send_message(chat, msg.text.clone())
                    .parse_mode(ParseMode::Html)
                    .await
                    .map(sent),
                Action::SendWithButtons { set } => self
                    .bot
                    .send_message(chat, msg.text.clone())
                    .parse_mode(ParseMode::Html)
                    .reply_markup(keyboard(&set.buttons))
                    .await
                    .map(sent),
                Action::Reply { to } => self
                    .bot
                    .send_message(chat, msg.text.clone())
                    .parse_mode(ParseMode::Html)
                    .reply_parameters(
                        ReplyParameters::new(MessageId(*to as i32)).allow_sending_without_reply(),
                    )
                    .await
                    .map(sent),
                Action::Edit {
                    message_id,
                    buttons,
                } => {
                    let edit = self
                        .bot
                        .edit_message_text(chat, MessageId(*message_id as i32), msg.text.clone())
                        .parse_mode(ParseMode::Html);
                    let edit = if buttons.is_empty() {
                        edit.reply_markup(InlineKeyboardMarkup::default())
                    } else {
                        edit.reply_markup(keyboard(buttons))
                    };
                    match edit.await {
                        Ok(_) => Ok(Sent::default()),
                        // Pressed twice, or sent again after a restart: already so.
                        Err(RequestError::Api(ApiError::MessageNotModified)) => Ok(Sent::default()),
                        Err(e) => Err(e),
                    }
                }
                Action::Answer { callback_id } => self
                    .bot
                    .answer_callback_query(CallbackQueryId(callback_id.clone()))
                    .text(msg.text.clone())
                    .await
                    .map(|_| Sent::default()),
            }
            .map_err(|e| self.classify(e))
        })
    }

    fn describe(&self) -> String {
        format!("telegram chat {}", self.chat)
    }
}

pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
}

impl WebhookSink {
    pub fn new(url: &str, headers: Vec<(String, String)>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("vigia/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {e}"))?;
        Ok(WebhookSink {
            client,
            url: url.to_string(),
            headers,
        })
    }
}

impl Sink for WebhookSink {
    fn send<'a>(&'a self, msg: &'a Stored) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(msg.document.clone());
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.map_err(|e| SendError::Transient {
                reason: format!("POST {}: {}", shown_url(&self.url), e.without_url()),
                retry_after: None,
            })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(Sent::default());
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let reason = format!("POST {}: HTTP {}", shown_url(&self.url), status.as_u16());
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(SendError::Transient {
                    reason,
                    retry_after,
                })
            } else {
                Err(SendError::Permanent { reason })
            }
        })
    }

    fn describe(&self) -> String {
        format!("webhook {}", shown_url(&self.url))
    }
}

/// Splits Telegram HTML into messages of at most `limit` UTF-16 units, never inside a
/// tag or an entity; tags open at a cut are closed at its end and opened again at the
/// start of the next part. Cuts are made at a line break where there is one.
pub fn split_html(text: &str, limit: usize) -> Vec<String> {
    #[derive(Clone)]
    struct Tok<'a> {
        s: &'a str,
        /// Tags open after this token: (name, full opening tag).
        open: Vec<(String, String)>,
    }
    // Tokenize: tags and entities are atomic; everything else is one char.
    let mut toks: Vec<Tok> = Vec::new();
    let mut open: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let rest = &text[i..];
        let len = if bytes[i] == b'<' {
            rest.find('>').map(|e| e + 1).unwrap_or(1)
        } else if bytes[i] == b'&' {
            match rest.find(';') {
                Some(e)
                    if e <= 10
                        && rest[1..e]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '#') =>
                {
                    e + 1
                }
                _ => 1,
            }
        } else {
            rest.chars().next().map(char::len_utf8).unwrap_or(1)
        };
        let s = &text[i..i + len];
        if s.len() > 2 && s.starts_with('<') && s.ends_with('>') {
            let inner = &s[1..s.len() - 1];
            if let Some(name) = inner.strip_prefix('/') {
                let name = name.trim().to_ascii_lowercase();
                if let Some(pos) = open.iter().rposition(|(n, _)| *n == name) {
                    open.truncate(pos);
                }
            } else {
                let name: String = inner
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
                    .to_ascii_lowercase();
                if !name.is_empty() && !inner.ends_with('/') {
                    open.push((name, s.to_string()));
                }
            }
        }
        toks.push(Tok {
            s,
            open: open.clone(),
        });
        i += len;
    }
    let units = |s: &str| s.encode_utf16().count();
    let closing = |open: &[(String, String)]| -> String {
        open.iter().rev().map(|(n, _)| format!("</{n}>")).collect()
    };
    let mut parts = Vec::new();
    let mut start = 0;
    let mut prefix = String::new();
    while start < toks.len() {
        let mut len = units(&prefix);
        let mut end = start;
        let mut last_newline = None;
        while end < toks.len() {
            let t = &toks[end];
            let next = len + units(t.s);
            if next + units(&closing(&t.open)) > limit {
                break;
            }
            len = next;
            if t.s == "\n" {
                last_newline = Some(end);
            }
            end += 1;
        }
        if end == start {
            end = start + 1; // a token alone over the limit: cannot do better
        } else if end < toks.len() {
            if let Some(nl) = last_newline {
                if nl > start {
                    end = nl + 1;
                }
            }
        }
        let body: String = toks[start..end].iter().map(|t| t.s).collect();
        let open_at_end = &toks[end - 1].open;
        parts.push(format!("{prefix}{body}{}", closing(open_at_end)));
        prefix = open_at_end.iter().map(|(_, tag)| tag.as_str()).collect();
        start = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_not_split() {
        assert_eq!(
            split_html("<b>web</b> failed", 4096),
            vec!["<b>web</b> failed"]
        );
    }

    #[test]
    fn a_long_message_is_cut_at_lines_and_keeps_tags_and_entities_whole() {
        let line = "<b>web</b> failed: a &amp; b &lt;c&gt; and some more words\n";
        let text: String = std::iter::repeat_n(line, 200).collect();
        let text = format!("<pre>{text}</pre>");
        assert!(text.len() > 10_000);
        let parts = split_html(&text, 4096);
        assert!(parts.len() >= 3);
        for p in &parts {
            assert!(p.encode_utf16().count() <= 4096, "{}", p.len());
            assert!(p.starts_with("<pre>"), "{}", &p[..20]);
            assert!(p.ends_with("</pre>"), "{}", &p[p.len() - 20..]);
            // Every entity whole, every tag balanced.
            assert_eq!(p.matches("<b>").count(), p.matches("</b>").count());
            for (i, _) in p.match_indices('&') {
                let rest = &p[i..];
                assert!(
                    rest.starts_with("&amp;")
                        || rest.starts_with("&lt;")
                        || rest.starts_with("&gt;"),
                    "{}",
                    &rest[..10.min(rest.len())]
                );
            }
        }
        // Nothing lost: the parts joined (without the added tags) give the text back.
        let joined: String = parts
            .iter()
            .map(|p| {
                p.strip_prefix("<pre>")
                    .unwrap()
                    .strip_suffix("</pre>")
                    .unwrap()
            })
            .collect();
        assert_eq!(format!("<pre>{joined}</pre>"), text);
    }

    #[test]
    fn ten_thousand_characters_without_line_breaks() {
        let text = format!("<i>{}</i>", "x&amp;".repeat(2000));
        let parts = split_html(&text, 4096);
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert!(p.encode_utf16().count() <= 4096);
            assert!(p.starts_with("<i>") && p.ends_with("</i>"));
            assert!(!p.ends_with("&</i>") && !p.contains("&am</i>"));
        }
    }
}
