//! The Telegram console: a channel with `commands: true` answers commands in its chats
//! (`/status`, `/check`, `/ack`, `/silence`…) and the buttons under its alerts.
//!
//! ```text
//! getUpdates (long poll) ─▶ poller ─▶ Door: snapshot, run now
//!                                  └─▶ Door::work: the commands (ack, silence), the
//!                                      update offset, the buttons' new state and the
//!                                      replies (answer, edit, message) ─ one commit ─▶
//!                                      outbox ─▶ the chat's sender
//! ```
//!
//! Exactly once: an update's effect, the offset past it and the replies it causes are
//! one transaction, so after a crash the update is either handled (and Telegram is told
//! so by the next poll's offset) or not at all (and comes again). The replies then go
//! out like alerts, from the outbox, in order, with retries.
//!
//! Who may act: only the channel's `chat_ids`, and, when `admins` is set, only those
//! users for what changes something (acknowledge, silence, run). Anything else is
//! logged once per sender (`telegram_denied`) and never answered. A button press acts
//! only through the set stored with its message (see `alerting::buttons`).
//!
//! The poller is one task per console channel, apart from checks and from delivery: a
//! Telegram outage backs it off (1 s doubling to 60 s) and delays nothing else.

pub mod chat;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use teloxide::payloads::GetUpdatesSetters;
use teloxide::prelude::Requester;
use teloxide::types::{AllowedUpdate, BotCommand, CallbackQuery, Message, UpdateKind, User};
use teloxide::{ApiError, RequestError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigia_config::alerting::{AlertingSetup, ChannelKind};
use vigia_core::command::{Command, Reply};

use crate::alerting::buttons::{short, ButtonSet, Press};
use crate::alerting::pipeline::{Action, Stored, Work};
use crate::clock::unix_ms;
use crate::control::Door;
use crate::store::{Op, Store};
use chat::{escape, Asked};

/// How long one `getUpdates` waits for an update (Telegram allows up to 50 s).
const POLL_SECS: u32 = 25;
/// How long the buttons of a message act (a failure older than that is long handled).
pub const BUTTONS_KEPT: Duration = Duration::from_secs(30 * 86400);
/// The longest toast Telegram shows.
const TOAST_CHARS: usize = 200;
/// How long a press may wait for its message's buttons to be stored.
const BUTTONS_WAIT: Duration = Duration::from_secs(3);
/// The longest wait between two polls while Telegram cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One console: a Telegram channel with `commands: true`.
pub struct ConsoleBot {
    channel: Arc<str>,
    chats: Vec<i64>,
    admins: Vec<i64>,
    tz: jiff::tz::TimeZone,
    bot: teloxide::Bot,
    token: String,
}

/// The consoles the config asks for, with their tokens read. Two consoles on one bot
/// would take each other's updates (Telegram answers 409), so that is refused.
pub fn build(setup: &AlertingSetup) -> Result<Vec<ConsoleBot>, String> {
    let mut bots: Vec<ConsoleBot> = Vec::new();
    for ch in &setup.channels {
        let ChannelKind::Telegram {
            token,
            chat_ids,
            api_url,
            console: Some(console),
        } = &ch.kind
        else {
            continue;
        };
        let token = token
            .resolve()
            .map_err(|e| format!("channel {}: {e}", ch.name))?;
        if let Some(other) = bots.iter().find(|b| b.token == token) {
            return Err(format!(
                "channels {} and {} both have `commands: true` with the same bot token: a bot's updates can be read from one place only; keep `commands: true` on one of them",
                other.channel, ch.name
            ));
        }
        let url = reqwest::Url::parse(api_url.trim_end_matches('/'))
            .map_err(|e| format!("channel {}: `{api_url}` is not a URL: {e}", ch.name))?;
        // A long poll holds the request for POLL_SECS: the client waits longer.
        let client = teloxide::net::default_reqwest_settings()
            .timeout(Duration::from_secs(u64::from(POLL_SECS) + 15))
            .build()
            .map_err(|e| format!("channel {}: cannot create an HTTP client: {e}", ch.name))?;
        bots.push(ConsoleBot {
            channel: ch.name.clone(),
            chats: chat_ids.clone(),
            admins: console.admins.clone(),
            tz: setup.policy.tz.clone(),
            bot: teloxide::Bot::with_client(&token, client).set_api_url(url),
            token,
        });
    }
    Ok(bots)
}

/// The running consoles.
pub struct Consoles {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Consoles {
    /// Starts one poller per console.
    pub fn start(bots: Vec<ConsoleBot>, door: Arc<Door>, store: Arc<Store>) -> Consoles {
        let stop = CancellationToken::new();
        let tasks = bots
            .into_iter()
            .map(|bot| {
                let p = Poller {
                    bot,
                    door: door.clone(),
                    store: store.clone(),
                    denied: HashSet::new(),
                    me: None,
                };
                tokio::spawn(p.run(stop.clone()))
            })
            .collect();
        Consoles { stop, tasks }
    }

    /// Stops the pollers; an update being handled is finished first (its commit is one
    /// step), a poll in flight is dropped.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The store key of a console's next update.
pub fn offset_key(channel: &str) -> String {
    format!("telegram_offset.{channel}")
}

struct Poller {
    bot: ConsoleBot,
    door: Arc<Door>,
    store: Arc<Store>,
    /// Senders already logged as denied: (chat, user).
    denied: HashSet<(i64, u64)>,
    /// The bot's username, to tell `/status@vigia_bot` from another bot's command.
    me: Option<String>,
}

impl Poller {
    fn scrub(&self, s: String) -> String {
        s.replace(&self.bot.token, "<token>")
    }

    /// getMe and setMyCommands; false if Telegram could not be reached (tried again
    /// after the next good poll).
    async fn hello(&mut self) -> bool {
        if self.me.is_none() {
            match self.bot.bot.get_me().await {
                Ok(me) => self.me = me.user.username.clone(),
                // Without its name, commands addressed to any bot (`/status@other`) are
                // taken as its own: harmless, and tried again after the next poll.
                Err(e) => {
                    tracing::debug!(event = "telegram_console", channel = %self.bot.channel, "getMe failed: {}", self.scrub(e.to_string()));
                    return false;
                }
            }
        }
        let commands = chat::COMMANDS
            .iter()
            .map(|(c, args, what)| {
                let what = if args.is_empty() {
                    what.to_string()
                } else {
                    format!("{what}: /{c} {args}")
                };
                BotCommand::new(*c, what)
            })
            .collect::<Vec<_>>();
        match self.bot.bot.set_my_commands(commands).await {
            Ok(_) => {
                tracing::info!(event = "telegram_console", channel = %self.bot.channel, bot = self.me.as_deref().unwrap_or(""), "The Telegram console of channel {} answers commands in {} chats.", self.bot.channel, self.bot.chats.len());
                true
            }
            // Refused (not unreachable): said once, not asked again until a restart.
            Err(RequestError::Api(e)) => {
                tracing::warn!(event = "telegram_console", channel = %self.bot.channel, "The Telegram console of channel {} answers commands, but Telegram refused to register them ({e}), so it does not offer them as you type.", self.bot.channel);
                true
            }
            Err(_) => false,
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let key = offset_key(&self.bot.channel);
        let mut offset = match self.store.meta(&key) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(event = "store_error", channel = %self.bot.channel, "The Telegram console cannot read where it left off ({e}); it does not start.");
                return;
            }
        };
        self.prune().await;
        let mut registered = false;
        let first_wait = Duration::from_secs(1);
        let mut backoff = first_wait;
        let mut down_since: Option<u64> = None;
        loop {
            if !registered {
                registered = tokio::select! {
                    r = self.hello() => r,
                    _ = stop.cancelled() => return,
                };
            }
            let poll = self
                .bot
                .bot
                .get_updates()
                .offset(i32::try_from(offset).unwrap_or(i32::MAX))
                .timeout(POLL_SECS)
                .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
            let polled = tokio::select! {
                r = poll => r,
                _ = stop.cancelled() => return,
            };
            let updates = match polled {
                Ok(u) => u,
                Err(e) => {
                    let why = match &e {
                        RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => "another program reads this bot's updates (409 Conflict): only one may, stop the other one or give Vigia a bot of its own".to_string(),
                        RequestError::Api(ApiError::InvalidToken) => "Telegram refused the bot token (401)".to_string(),
                        _ => self.scrub(e.to_string()),
                    };
                    if down_since.is_none() {
                        tracing::warn!(event = "telegram_poll", channel = %self.bot.channel, "The Telegram console of channel {} cannot read its updates ({why}); it tries again, waiting up to {}. Alerts are not held up by it.", self.bot.channel, vigia_api::Dur(MAX_BACKOFF));
                        down_since = Some(unix_ms());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if let Some(since) = down_since.take() {
                tracing::info!(event = "telegram_poll", channel = %self.bot.channel, "The Telegram console of channel {} reads its updates again (after {}).", self.bot.channel, vigia_core::alert::human_duration(unix_ms().saturating_sub(since)));
            }
            backoff = first_wait;
            for u in updates {
                let next = u64::from(u.id.0) + 1;
                if next <= offset {
                    continue;
                }
                let offset_op = Op::Meta(key.clone(), next);
                let kept = match u.kind {
                    UpdateKind::Message(m) => self.message(m, offset_op).await,
                    UpdateKind::CallbackQuery(q) => self.press(q, offset_op).await,
                    _ => self.keep(vec![offset_op], Vec::new()).await,
                };
                if !kept {
                    // Not stored: the update comes again with the next poll.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
                offset = next;
            }
        }
    }

    /// Forgets the buttons of this channel's messages older than [`BUTTONS_KEPT`]: a
    /// press on one is then refused like any unknown data.
    async fn prune(&self) {
        let store = self.store.clone();
        let channel = self.bot.channel.to_string();
        let oldest = unix_ms().saturating_sub(BUTTONS_KEPT.as_millis() as u64);
        let pruned = tokio::task::spawn_blocking(move || {
            let old: Vec<Op> = store
                .all_buttons()?
                .into_iter()
                .filter(|(_, _, b)| {
                    serde_json::from_slice::<ButtonSet>(b)
                        .map(|s| s.channel == channel && s.created_at < oldest)
                        .unwrap_or(true)
                })
                .map(|(chat, id, _)| Op::Buttons(chat, id, None))
                .collect();
            let n = old.len();
            store.apply(&old).map(|_| n)
        })
        .await;
        match pruned {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(event = "telegram_console", channel = %self.bot.channel, "The buttons of {n} messages older than {} were forgotten.", vigia_api::Dur(BUTTONS_KEPT))
            }
            Ok(Err(e)) => {
                tracing::warn!(event = "store_error", channel = %self.bot.channel, "Old buttons could not be forgotten ({e}); they are tried again at the next start.")
            }
            _ => {}
        }
    }

    /// The buttons stored with a message. The sender stores them in the commit right
    /// after Telegram gave the message its id, so a press that looks like one of ours
    /// (a token of 16 hex digits) may come a moment before: it waits for that commit,
    /// up to [`BUTTONS_WAIT`].
    async fn buttons_of(&self, chat: i64, message_id: i64, data: &str) -> Option<ButtonSet> {
        let ours = data
            .split_once(':')
            .is_some_and(|(t, _)| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let deadline = tokio::time::Instant::now() + BUTTONS_WAIT;
        loop {
            let store = self.store.clone();
            let found = tokio::task::spawn_blocking(move || store.buttons(chat, message_id))
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<ButtonSet>(&b).ok());
            if found.is_some() || !ours || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores writes and messages without commands (the offset past an update that
    /// changes nothing, a reply to a question).
    async fn keep(&self, ops: Vec<Op>, messages: Vec<(String, Stored)>) -> bool {
        self.door
            .work(Work {
                commands: Vec::new(),
                ops,
                then: Box::new(move |_| (Vec::new(), messages)),
            })
            .await
            .is_ok()
    }

    fn target(&self, chat: i64) -> String {
        format!("{}#{chat}", self.bot.channel)
    }

    /// `telegram:@ana` (or the user id when there is no username).
    fn by(user: &User) -> String {
        match &user.username {
            Some(u) => format!("telegram:@{u}"),
            None => format!("telegram:{}", user.id.0),
        }
    }

    /// `@ana`, or the first name: how a person is named in the chat.
    fn shown(user: &User) -> String {
        match &user.username {
            Some(u) => format!("@{u}"),
            None => user.first_name.clone(),
        }
    }

    fn clock(&self, ms: u64) -> String {
        clock_in(&self.bot.tz, ms)
    }

    /// Whether `user` in `chat` may do it; if not, says so in the log once per sender.
    fn allowed(&mut self, chat: i64, user: &User, acts: bool, what: &str) -> bool {
        let why = if !self.bot.chats.contains(&chat) {
            "the chat is not in the channel's chat_ids"
        } else if acts
            && !self.bot.admins.is_empty()
            && !self.bot.admins.contains(&(user.id.0 as i64))
        {
            "the user is not in the channel's admins"
        } else {
            return true;
        };
        if self.denied.insert((chat, user.id.0)) {
            tracing::warn!(event = "telegram_denied", channel = %self.bot.channel, chat, user = user.id.0, username = user.username.as_deref().unwrap_or(""), "Telegram: {what} from user {} in chat {chat} is ignored: {why}. Further ones from this sender are ignored without a log line.", user.id.0);
        }
        false
    }

    async fn message(&mut self, m: Message, offset: Op) -> bool {
        let chat = m.chat.id.0;
        let (Some(user), Some(text)) = (m.from.clone(), m.text()) else {
            return self.keep(vec![offset], Vec::new()).await;
        };
        let Some((word, args)) = chat::command_word(text, self.me.as_deref()) else {
            // People talk in a group: only commands are for the bot.
            return self.keep(vec![offset], Vec::new()).await;
        };
        let names = self.door.names();
        let by = Self::by(&user);
        let asked = chat::parse(word, args, &names, &by);
        if !self.allowed(chat, &user, asked.acts(), &format!("/{word}")) {
            return self.keep(vec![offset], Vec::new()).await;
        }
        tracing::info!(event = "telegram_command", channel = %self.bot.channel, chat, user = user.id.0, by = %by, command = %word, "Telegram: /{word} from {by} in chat {chat}.");
        let target = self.target(chat);
        let to = i64::from(m.id.0);
        let reply =
            move |text: String| (target, Stored::console("reply", text, Action::Reply { to }));
        let now = unix_ms();
        let text = match asked {
            Asked::Status => chat::status(&self.door.snapshot()),
            Asked::Help => chat::help(),
            Asked::Wrong(e) => e,
            Asked::Silences => match self.door.execute(Command::SilenceList).await {
                Reply::Silences { silences } => chat::silences(&silences, now),
                other => said(&other, &self.bot.tz),
            },
            Asked::Run(name) => match self.door.execute(Command::RunNow { name }).await {
                Reply::Ran { check } => chat::ran(&check, unix_ms()),
                other => said(&other, &self.bot.tz),
            },
            Asked::Act(cmd) => {
                let tz = self.bot.tz.clone();
                let then = self.door.noted_in_history_and(move |replies| {
                    let text = replies.first().map(|r| said(r, &tz)).unwrap_or_default();
                    (Vec::new(), vec![reply(text)])
                });
                return self
                    .door
                    .work(Work {
                        commands: vec![cmd],
                        ops: vec![offset],
                        then,
                    })
                    .await
                    .is_ok();
            }
        };
        self.keep(vec![offset], vec![reply(text)]).await
    }

    async fn press(&mut self, q: CallbackQuery, offset: Op) -> bool {
        let user = q.from.clone();
        let Some(msg) = q.message.as_ref() else {
            return self.keep(vec![offset], Vec::new()).await;
        };
        let chat = msg.chat().id.0;
        let message_id = i64::from(msg.id().0);
        if !self.allowed(chat, &user, true, "a button press") {
            return self.keep(vec![offset], Vec::new()).await;
        }
        let by = Self::by(&user);
        let target = self.target(chat);
        let callback_id = q.id.0.clone();
        let answer = {
            let target = target.clone();
            move |text: String| {
                // Telegram shows at most 200 characters of a toast.
                let text: String = text.chars().take(TOAST_CHARS).collect();
                (
                    target,
                    Stored::console("answer", text, Action::Answer { callback_id }),
                )
            }
        };
        let data = q.data.clone().unwrap_or_default();
        let set = self.buttons_of(chat, message_id, &data).await;
        if let Some(set) = set
            .as_ref()
            .filter(|s| s.press(&data).is_none() && s.done_before(&data))
        {
            let toast = match set.done.last() {
                Some(line) => format!("Already done: {}", unescape(line)),
                None => "Already done.".into(),
            };
            return self.keep(vec![offset], vec![answer(toast)]).await;
        }
        let Some((mut set, press)) = set.and_then(|s| s.press(&data).map(|p| (s, p))) else {
            tracing::warn!(event = "telegram_refused", channel = %self.bot.channel, chat, message_id, user = user.id.0, by = %by, "Telegram: a button press by {by} on message {message_id} in chat {chat} is refused: its data does not belong to that message's buttons. Nothing was done.");
            let toast =
                answer("This button does not belong to this message: nothing was done.".into());
            return self.keep(vec![offset], vec![toast]).await;
        };
        // Only failures still under way: a button of a recovered check is stale.
        let live: Vec<String> = set
            .checks
            .iter()
            .filter(|(name, since)| {
                self.door
                    .check(name)
                    .is_ok_and(|c| !c.status && c.changed_at == *since)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let now = unix_ms();
        if live.is_empty() {
            let names: Vec<&str> = set.checks.iter().map(|(n, _)| n.as_str()).collect();
            let toast = match names.as_slice() {
                [one] => format!("{one} has recovered since this alert: nothing was done."),
                _ => "These checks have recovered since this alert: nothing was done.".into(),
            };
            tracing::info!(event = "telegram_stale", channel = %self.bot.channel, chat, message_id, by = %by, "Telegram: a button press by {by} on message {message_id} is refused: {} recovered since.", names.join(", "));
            set.buttons.clear();
            set.done
                .push(format!("✅ recovered by {}", self.clock(now)));
            let edit = (
                target.clone(),
                Stored::console(
                    "edit",
                    set.shown_text(),
                    Action::Edit {
                        message_id,
                        buttons: Vec::new(),
                    },
                ),
            );
            let ops = vec![
                offset,
                Op::Buttons(chat, message_id, serde_json::to_vec(&set).ok()),
            ];
            return self.keep(ops, vec![answer(toast), edit]).await;
        }
        let commands: Vec<Command> = match press {
            Press::Ack => live
                .iter()
                .map(|name| Command::Ack {
                    name: name.clone(),
                    by: by.clone(),
                })
                .collect(),
            Press::Silence(d) => silence_patterns(&live)
                .into_iter()
                .map(|pattern| Command::SilenceAdd {
                    pattern,
                    for_ms: d.as_millis() as u64,
                    reason: "from a Telegram button".into(),
                    by: by.clone(),
                })
                .collect(),
        };
        tracing::info!(event = "telegram_press", channel = %self.bot.channel, chat, message_id, by = %by, "Telegram: {by} pressed {} on message {message_id} ({}).", match press { Press::Ack => "Acknowledge".to_string(), Press::Silence(d) => format!("Silence {}", short(d)) }, live.join(", "));
        let who = Self::shown(&user);
        let at = self.clock(now);
        let tz = self.bot.tz.clone();
        let then = self.door.noted_in_history_and(move |replies| {
            let errors: Vec<&str> = replies
                .iter()
                .filter_map(|r| match r {
                    Reply::Error { error } => Some(error.as_str()),
                    _ => None,
                })
                .collect();
            if errors.len() == replies.len() {
                let toast = errors
                    .first()
                    .copied()
                    .unwrap_or("nothing was done")
                    .to_string();
                return (Vec::new(), vec![answer(toast)]);
            }
            let (toast, line) = match press {
                Press::Ack => {
                    let earlier = replies.iter().find_map(|r| match r {
                        Reply::Acked {
                            ack, already: true, ..
                        } => Some(ack.clone()),
                        _ => None,
                    });
                    match earlier {
                        Some(a) if replies.len() == 1 => {
                            let when = clock_in(&tz, a.at);
                            let whom = a.by.trim_start_matches("telegram:").to_string();
                            (
                                format!("Already acknowledged by {whom} at {when}."),
                                format!("✔ acknowledged by {whom} at {when}"),
                            )
                        }
                        _ => (
                            "Acknowledged: reminders stop until it recovers.".to_string(),
                            format!("✔ acknowledged by {who} at {at}"),
                        ),
                    }
                }
                Press::Silence(d) => {
                    let until = replies
                        .iter()
                        .find_map(|r| match r {
                            Reply::Silence(s) => Some(clock_in(&tz, s.until)),
                            _ => None,
                        })
                        .unwrap_or_default();
                    (
                        format!("Silenced for {} (until {until}).", short(d)),
                        format!(
                            "🔕 silenced for {} by {who} at {at} (until {until})",
                            short(d)
                        ),
                    )
                }
            };
            set.done.push(escape(&line));
            set.remove(press);
            let edit = (
                target,
                Stored::console(
                    "edit",
                    set.shown_text(),
                    Action::Edit {
                        message_id,
                        buttons: set.buttons.clone(),
                    },
                ),
            );
            let ops = vec![Op::Buttons(chat, message_id, serde_json::to_vec(&set).ok())];
            (ops, vec![answer(toast), edit])
        });
        self.door
            .work(Work {
                commands,
                ops: vec![offset],
                then,
            })
            .await
            .is_ok()
    }
}

/// What to silence for a press under a message of several checks: a group's members as
/// the group (`terminals/*`), anything else by name.
fn silence_patterns(live: &[String]) -> Vec<String> {
    let group = |n: &str| n.split_once('/').map(|(g, _)| g.to_string());
    if live.len() > 1 {
        if let Some(g) = group(&live[0]) {
            if live.iter().all(|n| group(n).as_deref() == Some(g.as_str())) {
                return vec![format!("{g}/*")];
            }
        }
    }
    live.to_vec()
}

/// A done line as plain text, for a toast.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn clock_in(tz: &jiff::tz::TimeZone, ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_zoned(tz.clone()).strftime("%H:%M").to_string())
        .unwrap_or_default()
}

/// A command's answer, for the chat.
fn said(r: &Reply, tz: &jiff::tz::TimeZone) -> String {
    match r {
        Reply::Silence(s) => format!(
            "🔕 Silence #{}: alerts of <b>{}</b> are not sent until {} ({}). /unsilence {} ends it.",
            s.id,
            escape(&s.pattern),
            clock_in(tz, s.until),
            chat::length(Duration::from_millis(s.until.saturating_sub(s.created_at))),
            s.id
        ),
        Reply::Removed { id } => format!("Silence #{id} ended: its alerts are sent again."),
        Reply::Acked {
            check,
            ack,
            already: true,
        } => format!(
            "<b>{}</b> was already acknowledged by {} at {}.",
            escape(check),
            escape(ack.by.trim_start_matches("telegram:")),
            clock_in(tz, ack.at)
        ),
        Reply::Acked { check, .. } => format!(
            "✔ <b>{}</b> acknowledged: its reminders stop until it recovers.",
            escape(check)
        ),
        Reply::Error { error } => format!("⚠️ {}", escape(error)),
        other => escape(&format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_members_are_silenced_as_the_group() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            silence_patterns(&v(&["terminals/10.0.0.1", "terminals/10.0.0.2"])),
            ["terminals/*"]
        );
        assert_eq!(
            silence_patterns(&v(&["terminals/10.0.0.1"])),
            ["terminals/10.0.0.1"]
        );
        assert_eq!(silence_patterns(&v(&["web", "db"])), ["web", "db"]);
    }
}
