//! `channels:`, `windows:` and `alerting:` of config.yaml.
//!
//! ```yaml
//! alerting:
//!   timezone: Europe/Lisbon     # times in messages, and windows without their own
//!   group_wait: 2s              # what changes within this goes out as one message
//!   flapping: { changes: 6, within: 10m, stable_for: 10m }
//! windows:
//!   office_hours: { days: [mon-fri], from: "08:00", to: "20:00" }
//! channels:
//!   console: { type: console }
//!   ops:
//!     type: telegram
//!     token_env: VIGIA_TELEGRAM_TOKEN     # or token_file: /etc/vigia/telegram.token
//!     chat_ids: [123456789]
//!     send_window: office_hours
//!     commands: true                      # buttons on alerts, /status, /ack… in the chat
//!     admins: [111222333]                 # who may act (everyone in chat_ids may read)
//!     silence_buttons: [1h, 24h]
//!   hooks: { type: webhook, url: "https://…", headers: { Authorization: "Bearer …" } }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Deserialize;
use vigia_api::yaml::{join_path, unknown_with_hint, Value};
use vigia_api::{ConfigError, ConfigErrors, Dur, Node};

use vigia_core::alert::policy::{ChannelPolicy, Flapping, PolicyConfig};
use vigia_core::alert::template::{Flavor, Templates, KINDS};
use vigia_core::alert::window::{parse_clock, parse_days, Window};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertingSection {
    /// Time zone of the times in messages (default: the system's).
    #[serde(default)]
    timezone: Option<String>,
    /// Changes within this wait go out as one message per channel (default 2s).
    #[serde(default = "default_group_wait")]
    group_wait: Dur,
    #[serde(default)]
    flapping: FlappingSection,
    /// The longest wait between two delivery attempts (default 60s; the wait doubles
    /// from 1s up to it, unless Telegram says how long).
    #[serde(default = "default_max_retry_wait")]
    max_retry_wait: Dur,
}

fn default_max_retry_wait() -> Dur {
    Dur::secs(60)
}

fn default_group_wait() -> Dur {
    Dur::secs(2)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlappingSection {
    /// More status changes than this within `within` is flapping; 0 turns it off.
    #[serde(default = "default_changes")]
    changes: u32,
    #[serde(default = "default_ten_minutes")]
    within: Dur,
    /// Quiet time after which a flapping check is stable again.
    #[serde(default = "default_ten_minutes")]
    stable_for: Dur,
}

fn default_changes() -> u32 {
    6
}
fn default_ten_minutes() -> Dur {
    Dur::secs(600)
}

impl Default for FlappingSection {
    fn default() -> Self {
        FlappingSection {
            changes: default_changes(),
            within: default_ten_minutes(),
            stable_for: default_ten_minutes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    /// `[mon-fri]`, `[sat, sun]`.
    days: Vec<String>,
    /// `"08:00"`.
    from: String,
    /// `"20:00"`; earlier than `from` spans midnight.
    to: String,
    #[serde(default)]
    timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelSection {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    send_window: Option<String>,
    #[serde(default)]
    templates: BTreeMap<String, String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    chat_ids: Vec<i64>,
    #[serde(default)]
    api_url: Option<String>,
    /// Telegram: answer commands and buttons in the chats of `chat_ids`.
    #[serde(default)]
    commands: bool,
    /// Telegram: the user ids that may act (acknowledge, silence, run); empty: every
    /// member of the chats.
    #[serde(default)]
    admins: Vec<i64>,
    /// Telegram: the silence buttons under a failure (default 1h and 24h).
    #[serde(default)]
    silence_buttons: Option<Vec<Dur>>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

const CHANNEL_TYPES: &[&str] = &["console", "telegram", "webhook"];

/// Where a bot token comes from (never config.yaml itself).
#[derive(Clone, PartialEq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Env(v) => write!(f, "env {v}"),
            TokenSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// An environment variable's name as a shell would take it: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A webhook's URL as logs and `vigia status` show it: `https://hooks.example.com/…`
/// (its path and query are often the secret).
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(x) => x,
        None => return "(a URL that does not parse)".into(),
    };
    // user:password@ never shown either.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let more = if authority_end < rest.len() && rest[authority_end..] != *"/" {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{more}")
}

impl TokenSource {
    /// Reads the token. Its value is never part of an error.
    pub fn resolve(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("the environment variable {var} (token_env) is not set"))?,
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the token file {}: {e}", p.display()))?,
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("the bot token from {self:?} is empty"));
        }
        Ok(token)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChannelKind {
    Console,
    Telegram {
        token: TokenSource,
        chat_ids: Vec<i64>,
        api_url: String,
        /// `commands: true`: the two-way console.
        console: Option<ChatConsole>,
    },
    Webhook {
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// A Telegram channel's console (`commands: true`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChatConsole {
    /// Who may act; empty: anyone in the channel's chats.
    pub admins: Vec<i64>,
    /// The silence buttons under a failure.
    pub silence_buttons: Vec<Duration>,
}

/// The most silence buttons a message carries (a phone shows them on one row).
pub const MAX_SILENCE_BUTTONS: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelDef {
    pub name: Arc<str>,
    pub kind: ChannelKind,
    pub window: Option<String>,
}

impl ChannelDef {
    pub fn flavor(&self) -> Flavor {
        match self.kind {
            ChannelKind::Telegram { .. } => Flavor::Html,
            _ => Flavor::Text,
        }
    }
}

/// Everything alerting needs from the config.
pub struct AlertingSetup {
    pub policy: PolicyConfig,
    pub max_retry_wait: Duration,
    pub channels: Vec<ChannelDef>,
    pub templates: Arc<Templates>,
    /// Of the three sections' text, to tell whether a reload changed them.
    pub fingerprint: u64,
    /// Every channel name in the file, broken ones included (for `notify:` checks).
    pub declared: Vec<String>,
}

impl std::fmt::Debug for AlertingSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertingSetup")
            .field("channels", &self.channels)
            .finish()
    }
}

impl Clone for AlertingSetup {
    fn clone(&self) -> Self {
        AlertingSetup {
            policy: self.policy.clone(),
            max_retry_wait: self.max_retry_wait,
            channels: self.channels.clone(),
            templates: self.templates.clone(),
            fingerprint: self.fingerprint,
            declared: self.declared.clone(),
        }
    }
}

fn tz(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name)
        .map_err(|_| format!("`{name}` is not a known time zone (write e.g. Europe/Lisbon or UTC)"))
}

/// Parses the three sections; problems go to `errors`, each with its position.
pub fn parse(root: &Node, config_dir: &Path, errors: &mut ConfigErrors) -> AlertingSetup {
    let errs: std::cell::RefCell<Vec<ConfigError>> = Default::default();
    let setup = parse_inner(root, config_dir, &errs);
    errors.extend(ConfigErrors(errs.into_inner()));
    setup
}

fn parse_inner(
    root: &Node,
    config_dir: &Path,
    errs: &std::cell::RefCell<Vec<ConfigError>>,
) -> AlertingSetup {
    let err = |pos: vigia_api::Pos, path: &str, msg: String| {
        errs.borrow_mut().push(ConfigError::at(pos, path, msg))
    };
    let section: AlertingSection = match root.get("alerting") {
        Some(n) if !matches!(n.value, Value::Null) => match n.deserialize("alerting") {
            Ok(s) => s,
            Err(e) => {
                errs.borrow_mut().extend(e.0);
                AlertingSection {
                    timezone: None,
                    group_wait: default_group_wait(),
                    flapping: FlappingSection::default(),
                    max_retry_wait: default_max_retry_wait(),
                }
            }
        },
        _ => AlertingSection {
            timezone: None,
            group_wait: default_group_wait(),
            flapping: FlappingSection::default(),
            max_retry_wait: default_max_retry_wait(),
        },
    };
    let zone = match &section.timezone {
        Some(name) => tz(name).unwrap_or_else(|m| {
            err(root.pos_of("alerting.timezone"), "alerting.timezone", m);
            TimeZone::UTC
        }),
        None => TimeZone::system(),
    };
    if section.group_wait.get() > Duration::from_secs(600) {
        err(
            root.pos_of("alerting.group_wait"),
            "alerting.group_wait",
            format!(
                "{} is too long (at most 10m): alerts would wait that long",
                section.group_wait
            ),
        );
    }
    let mut windows: HashMap<String, Arc<Window>> = HashMap::new();
    if let Some(n) = root.get("windows") {
        match n.as_map() {
            Some(map) => {
                for (k, v) in map {
                    let name = k.as_str().unwrap_or_default().to_string();
                    let path = format!("windows.{name}");
                    let w: WindowSection = match v.deserialize(&path) {
                        Ok(w) => w,
                        Err(e) => {
                            errs.borrow_mut().extend(e.0);
                            continue;
                        }
                    };
                    let days = parse_days(&w.days).map_err(|m| {
                        err(
                            root.pos_of(&join_path(&path, "days")),
                            &join_path(&path, "days"),
                            m,
                        )
                    });
                    let from = parse_clock(&w.from).map_err(|m| {
                        err(
                            root.pos_of(&join_path(&path, "from")),
                            &join_path(&path, "from"),
                            m,
                        )
                    });
                    let to = parse_clock(&w.to).map_err(|m| {
                        err(
                            root.pos_of(&join_path(&path, "to")),
                            &join_path(&path, "to"),
                            m,
                        )
                    });
                    let zone = match &w.timezone {
                        Some(t) => tz(t).map_err(|m| {
                            err(
                                root.pos_of(&join_path(&path, "timezone")),
                                &join_path(&path, "timezone"),
                                m,
                            )
                        }),
                        None => Ok(zone.clone()),
                    };
                    if let (Ok(days), Ok(from), Ok(to), Ok(zone)) = (days, from, to, zone) {
                        if from == to {
                            err(
                                root.pos_of(&path),
                                &path,
                                "`from` and `to` are the same time: the window would never open"
                                    .into(),
                            );
                            continue;
                        }
                        windows.insert(
                            name.clone(),
                            Arc::new(Window::new(&name, days, from, to, zone)),
                        );
                    }
                }
            }
            None if matches!(n.value, Value::Null) => {}
            None => err(
                n.pos,
                "windows",
                format!("`windows` must map names to windows, not {}", n.kind()),
            ),
        }
    }
    let mut channels = Vec::new();
    let mut declared = Vec::new();
    let mut templates = Templates::new();
    let fingerprint = ["alerting", "windows", "channels"]
        .iter()
        .filter_map(|k| root.get(k))
        .fold(0u64, |h, n| h.rotate_left(7) ^ n.fingerprint());
    match root.get("channels") {
        None => {
            channels.push(ChannelDef {
                name: "console".into(),
                kind: ChannelKind::Console,
                window: None,
            });
            declared.push("console".into());
            let _ = templates.add_channel("console", Flavor::Text, &BTreeMap::new());
        }
        Some(n) => match n.as_map() {
            Some(map) => {
                for (k, v) in map {
                    let name = k.as_str().unwrap_or_default().to_string();
                    let path = format!("channels.{name}");
                    declared.push(name.clone());
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    {
                        err(k.pos, &path, format!("`{name}` is not a valid channel name: use letters, digits, `_`, `-` and `.`"));
                        continue;
                    }
                    let c: ChannelSection = match v.deserialize(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            errs.borrow_mut().extend(e.0);
                            continue;
                        }
                    };
                    let at =
                        |key: &str| (root.pos_of(&join_path(&path, key)), join_path(&path, key));
                    if let Some(w) = &c.send_window {
                        if !windows.contains_key(w) {
                            let (pos, p) = at("send_window");
                            err(
                                pos,
                                &p,
                                unknown_with_hint(
                                    "window",
                                    w,
                                    &windows.keys().map(String::as_str).collect::<Vec<_>>(),
                                ),
                            );
                        }
                    }
                    for kind in c.templates.keys() {
                        if !KINDS.contains(&kind.as_str()) {
                            let (pos, p) = at(&format!("templates.{kind}"));
                            err(pos, &p, unknown_with_hint("kind of message", kind, KINDS));
                        }
                    }
                    let unused =
                        |keys: &[(&str, bool)], errors: &dyn Fn(vigia_api::Pos, &str, String)| {
                            for (key, set) in keys {
                                if *set {
                                    let (pos, p) = at(key);
                                    errors(
                                        pos,
                                        &p,
                                        format!("`{key}` does not apply to a {} channel", c.kind),
                                    );
                                }
                            }
                        };
                    let kind = match c.kind.as_str() {
                        "console" => {
                            unused(
                                &[
                                    ("token_env", c.token_env.is_some()),
                                    ("token_file", c.token_file.is_some()),
                                    ("chat_ids", !c.chat_ids.is_empty()),
                                    ("api_url", c.api_url.is_some()),
                                    ("url", c.url.is_some()),
                                    ("headers", !c.headers.is_empty()),
                                    ("commands", c.commands),
                                    ("admins", !c.admins.is_empty()),
                                    ("silence_buttons", c.silence_buttons.is_some()),
                                ],
                                &err,
                            );
                            Some(ChannelKind::Console)
                        }
                        "telegram" => {
                            unused(
                                &[("url", c.url.is_some()), ("headers", !c.headers.is_empty())],
                                &err,
                            );
                            if c.token.is_some() {
                                let (pos, p) = at("token");
                                err(pos, &p, "never put the bot token in config.yaml: use `token_env: VIGIA_TELEGRAM_TOKEN` (an environment variable) or `token_file: /etc/vigia/telegram.token`".into());
                            }
                            let token = match (&c.token_env, &c.token_file) {
                                (Some(name), None) if !is_env_name(name) => {
                                    // Never echoed: a value here is often the token itself.
                                    let p = join_path(&path, "token_env");
                                    let pos = v.get("token_env").map_or(v.pos, |n| n.pos);
                                    err(pos, &p, "is not the name of an environment variable (letters, digits and `_`, such as VIGIA_TELEGRAM_TOKEN); if you pasted the bot token itself here, move it into that variable and revoke it with @BotFather, as it is now in the config file (the value is not shown)".into());
                                    None
                                }
                                (Some(v), None) => Some(TokenSource::Env(v.clone())),
                                (None, Some(f)) => Some(TokenSource::File(if f.is_absolute() {
                                    f.clone()
                                } else {
                                    config_dir.join(f)
                                })),
                                (Some(_), Some(_)) => {
                                    err(
                                        v.pos,
                                        &path,
                                        "set `token_env` or `token_file`, not both".into(),
                                    );
                                    None
                                }
                                (None, None) => {
                                    if c.token.is_none() {
                                        err(v.pos, &path, "a telegram channel needs `token_env` (an environment variable with the bot token) or `token_file`".into());
                                    }
                                    None
                                }
                            };
                            if c.chat_ids.is_empty() {
                                err(v.pos, &path, "a telegram channel needs `chat_ids: [...]`: the chats to send to".into());
                            }
                            let api_url = c
                                .api_url
                                .clone()
                                .unwrap_or_else(|| "https://api.telegram.org".into());
                            if url::Url::parse(&api_url)
                                .map(|u| !matches!(u.scheme(), "http" | "https"))
                                .unwrap_or(true)
                            {
                                let (pos, p) = at("api_url");
                                err(pos, &p, format!("`{api_url}` is not an http(s) URL"));
                            }
                            if !c.commands {
                                for (key, set) in [
                                    ("admins", !c.admins.is_empty()),
                                    ("silence_buttons", c.silence_buttons.is_some()),
                                ] {
                                    if set {
                                        let (pos, p) = at(key);
                                        err(pos, &p, format!("`{key}` needs `commands: true` (the chat console it configures is off)"));
                                    }
                                }
                            }
                            let buttons: Vec<Duration> = c
                                .silence_buttons
                                .clone()
                                .unwrap_or_else(|| vec![Dur::secs(3600), Dur::secs(86400)])
                                .iter()
                                .map(|d| d.get())
                                .collect();
                            if buttons.len() > MAX_SILENCE_BUTTONS {
                                let (pos, p) = at("silence_buttons");
                                err(pos, &p, format!("at most {MAX_SILENCE_BUTTONS} silence buttons fit under a message"));
                            }
                            if let Some(i) = buttons
                                .iter()
                                .position(|d| d.is_zero() || *d > vigia_core::silence::MAX_SILENCE)
                            {
                                let (pos, p) = at(&format!("silence_buttons.{i}"));
                                err(
                                    pos,
                                    &p,
                                    "a silence lasts more than 0s and at most 366d".into(),
                                );
                            }
                            let console = c.commands.then(|| ChatConsole {
                                admins: c.admins.clone(),
                                silence_buttons: buttons,
                            });
                            token.map(|token| ChannelKind::Telegram {
                                token,
                                chat_ids: c.chat_ids.clone(),
                                api_url,
                                console,
                            })
                        }
                        "webhook" => {
                            unused(
                                &[
                                    ("token_env", c.token_env.is_some()),
                                    ("token_file", c.token_file.is_some()),
                                    ("chat_ids", !c.chat_ids.is_empty()),
                                    ("api_url", c.api_url.is_some()),
                                    ("commands", c.commands),
                                    ("admins", !c.admins.is_empty()),
                                    ("silence_buttons", c.silence_buttons.is_some()),
                                ],
                                &err,
                            );
                            match &c.url {
                                Some(u)
                                    if url::Url::parse(u)
                                        .is_ok_and(|x| matches!(x.scheme(), "http" | "https")) =>
                                {
                                    Some(ChannelKind::Webhook {
                                        url: u.clone(),
                                        headers: c.headers.clone().into_iter().collect(),
                                    })
                                }
                                Some(u) => {
                                    let (pos, p) = at("url");
                                    err(pos, &p, format!("`{u}` is not an http(s) URL"));
                                    None
                                }
                                None => {
                                    err(v.pos, &path, "a webhook channel needs `url`".into());
                                    None
                                }
                            }
                        }
                        other => {
                            let (pos, p) = at("type");
                            err(
                                pos,
                                &p,
                                unknown_with_hint("channel type", other, CHANNEL_TYPES),
                            );
                            None
                        }
                    };
                    let Some(kind) = kind else { continue };
                    let def = ChannelDef {
                        name: name.as_str().into(),
                        kind,
                        window: c.send_window.clone(),
                    };
                    if let Err(es) = templates.add_channel(&name, def.flavor(), &c.templates) {
                        for e in es {
                            let (pos, p) = at(&format!("templates.{}", e.kind));
                            err(pos, &p, e.message);
                        }
                    }
                    channels.push(def);
                }
            }
            None if matches!(n.value, Value::Null) => {}
            None => err(
                n.pos,
                "channels",
                format!("`channels` must map names to channels, not {}", n.kind()),
            ),
        },
    }
    let policy = PolicyConfig {
        tz: zone,
        group_wait: section.group_wait.get(),
        flapping: Flapping {
            changes: section.flapping.changes,
            within: section.flapping.within.get(),
            stable_for: section.flapping.stable_for.get(),
        },
        channels: channels
            .iter()
            .map(|c| ChannelPolicy {
                name: c.name.clone(),
                window: c.window.as_ref().and_then(|w| windows.get(w).cloned()),
            })
            .collect(),
        windows,
        checks: HashMap::new(),
    };
    AlertingSetup {
        policy,
        max_retry_wait: section.max_retry_wait.get().max(Duration::from_millis(100)),
        channels,
        templates: Arc::new(templates),
        fingerprint,
        declared,
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn a_webhook_shows_only_scheme_and_host() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T00/B00/XXXXSECRET",
                "https://hooks.slack.com/…",
            ),
            (
                "http://user:pass@127.0.0.1:8080/hook?token=abc",
                "http://127.0.0.1:8080/…",
            ),
            ("https://example.com/", "https://example.com"),
            ("https://example.com", "https://example.com"),
            ("not a url", "(a URL that does not parse)"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("VIGIA_TELEGRAM_TOKEN"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("123456:ABC-DEF"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("1ABC"));
    }
}
