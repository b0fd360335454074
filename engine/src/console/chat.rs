//! What people type to the bot, and what it answers: commands parsed into the engine's
//! typed [`Command`]s, and the answers written for a phone (Telegram HTML). No I/O: the
//! poller (`mod.rs`) reads the snapshot and carries the commands out.

use std::time::Duration;

use vigia_api::yaml::did_you_mean;
use vigia_api::Dur;
use vigia_core::alert::human_duration;
use vigia_core::command::Command;
use vigia_core::silence::Silence;
use vigia_core::snapshot::{CheckSnapshot, StatusSnapshot};

/// The commands, as `setMyCommands` registers them and `/help` lists them.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("status", "", "What is down, and for how long"),
    ("check", "NAME", "Run a check now and show its outcome"),
    ("ack", "NAME", "Acknowledge a failure: its reminders stop"),
    (
        "silence",
        "PATTERN 2h [reason]",
        "Silence a check or a pattern (terminals/*)",
    ),
    ("silences", "", "The silences in force"),
    ("unsilence", "ID", "End a silence"),
    ("help", "", "These commands"),
];

/// What a message asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Status,
    Help,
    Silences,
    /// A command of the engine that changes something: who may act is checked first.
    Act(Command),
    /// A question of the engine that runs a check.
    Run(String),
    /// A command that could not be understood: the answer says why.
    Wrong(String),
}

impl Asked {
    /// Whether it changes something (acknowledge, silence, run): only `admins` may.
    pub fn acts(&self) -> bool {
        matches!(self, Asked::Act(_) | Asked::Run(_))
    }
}

/// `/silence@vigia_bot web 2h deploy` → its command word (`silence`) and the rest;
/// `None` for a message that is not a command, or a command for another bot.
pub fn command_word<'a>(text: &'a str, bot: Option<&str>) -> Option<(&'a str, &'a str)> {
    let text = text.trim();
    let rest = text.strip_prefix('/')?;
    let (word, args) = rest
        .split_once(char::is_whitespace)
        .map(|(w, a)| (w, a.trim()))
        .unwrap_or((rest, ""));
    let word = match word.split_once('@') {
        Some((w, to)) => match bot {
            Some(me) if !to.eq_ignore_ascii_case(me) => return None,
            _ => w,
        },
        None => word,
    };
    Some((word, args))
}

/// Parses a command; `names` are the checks, for did-you-mean; `by` who asks.
pub fn parse(word: &str, args: &str, names: &[String], by: &str) -> Asked {
    let word = word.to_ascii_lowercase();
    let mut parts = args.split_whitespace();
    let known = |name: &str| -> Result<String, String> {
        if names.iter().any(|n| n == name) {
            Ok(name.to_string())
        } else {
            Err(unknown_check(name, names))
        }
    };
    let usage = |cmd: &str| {
        let (_, args, _) = COMMANDS
            .iter()
            .find(|(c, _, _)| *c == cmd)
            .copied()
            .unwrap_or_default();
        Asked::Wrong(format!("Usage: /{cmd} {}", escape(args)))
    };
    match word.as_str() {
        "status" | "start" => Asked::Status,
        "help" => Asked::Help,
        "silences" => Asked::Silences,
        "check" | "ack" => {
            let Some(name) = parts.next() else {
                return usage(&word);
            };
            match known(name) {
                Ok(name) if word == "check" => Asked::Run(name),
                Ok(name) => Asked::Act(Command::Ack {
                    name,
                    by: by.to_string(),
                }),
                Err(e) => Asked::Wrong(e),
            }
        }
        "silence" => {
            let (Some(pattern), Some(length)) = (parts.next(), parts.next()) else {
                return usage("silence");
            };
            let length: Dur = match length.parse() {
                Ok(d) => d,
                Err(e) => {
                    return Asked::Wrong(format!(
                        "{}. Usage: /silence PATTERN 2h [reason]",
                        escape(&e.to_string())
                    ))
                }
            };
            if !pattern.contains('*') {
                if let Err(e) = known(pattern) {
                    return Asked::Wrong(format!("{e} A pattern with <code>*</code> silences several: <code>terminals/*</code>."));
                }
            }
            let reason: Vec<&str> = parts.collect();
            Asked::Act(Command::SilenceAdd {
                pattern: pattern.to_string(),
                for_ms: u64::try_from(length.get().as_millis()).unwrap_or(u64::MAX),
                reason: if reason.is_empty() {
                    "from Telegram".into()
                } else {
                    reason.join(" ")
                },
                by: by.to_string(),
            })
        }
        "unsilence" => match parts
            .next()
            .map(|id| id.trim_start_matches('#').parse::<u64>())
        {
            Some(Ok(id)) => Asked::Act(Command::SilenceRemove { id }),
            _ => usage("unsilence"),
        },
        other => {
            let hint = did_you_mean(other, COMMANDS.iter().map(|(c, _, _)| *c))
                .map(|c| format!(" Did you mean /{c}?"))
                .unwrap_or_default();
            Asked::Wrong(format!(
                "I do not know /{}.{hint} /help lists what I do.",
                escape(other)
            ))
        }
    }
}

/// `No check is named <b>wbe</b>. Did you mean <b>web</b>?`
pub fn unknown_check(name: &str, names: &[String]) -> String {
    let hint = did_you_mean(name, names.iter().map(String::as_str))
        .map(|b| format!(" Did you mean <b>{}</b>?", escape(b)))
        .unwrap_or_default();
    format!("No check is named <b>{}</b>.{hint}", escape(name))
}

/// Telegram's HTML needs `<`, `>` and `&` escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The most down checks `/status` lists one by one (and silences `/silences`): a
/// reply stays well under Telegram's 4096 characters.
pub const STATUS_LINES: usize = 25;

/// `/status`: down checks first (newest outage on top), then how many are up.
pub fn status(snap: &StatusSnapshot) -> String {
    let mut down: Vec<&CheckSnapshot> = snap.checks.iter().filter(|c| !c.status).collect();
    down.sort_by_key(|c| std::cmp::Reverse(c.changed_at));
    let up = snap.checks.len() - down.len();
    let mut out = if down.is_empty() {
        format!(
            "✅ <b>{}</b>: all {} checks are up.",
            escape(&snap.host),
            snap.checks.len()
        )
    } else {
        format!(
            "🔴 <b>{}</b>: {} of {} checks down",
            escape(&snap.host),
            down.len(),
            snap.checks.len()
        )
    };
    for c in down.iter().take(STATUS_LINES) {
        let message = c
            .last
            .as_ref()
            .map(|l| l.message.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let message: String = message.chars().take(100).collect();
        let ack = c
            .ack
            .as_ref()
            .map(|a| format!(" · ack {}", escape(a.by.trim_start_matches("telegram:"))))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n• <b>{}</b> down {}{ack}: {}",
            escape(&c.name),
            human_duration(snap.now.saturating_sub(c.changed_at)),
            escape(&message)
        ));
    }
    if down.len() > STATUS_LINES {
        out.push_str(&format!("\n… and {} more", down.len() - STATUS_LINES));
    }
    if !down.is_empty() {
        out.push_str(&format!("\n✅ {up} up"));
    }
    out
}

/// `/check NAME`: the outcome of the run.
pub fn ran(c: &CheckSnapshot, now: u64) -> String {
    let (icon, outcome, message, ms) = match &c.last {
        Some(l) => (
            if l.ok { "✅" } else { "🔴" },
            format!("{:?}", l.severity).to_uppercase(),
            l.message.clone(),
            l.duration_ms,
        ),
        None => ("❔", "no outcome".into(), String::new(), 0.0),
    };
    let state = if c.status {
        "up".to_string()
    } else {
        format!(
            "down {}, {} failures in a row",
            human_duration(now.saturating_sub(c.changed_at)),
            c.failures
        )
    };
    format!(
        "{icon} <b>{}</b>: {} in {:.0} ms — {}\n<i>{state}</i>",
        escape(&c.name),
        outcome,
        ms,
        escape(&message)
    )
}

/// `/silences`.
pub fn silences(list: &[Silence], now: u64) -> String {
    if list.is_empty() {
        return "No silences.".into();
    }
    let mut out = String::from("🔕 <b>Silences</b>");
    for s in list.iter().take(STATUS_LINES) {
        let by = if s.by.is_empty() {
            String::new()
        } else {
            format!(", by {}", escape(&s.by))
        };
        out.push_str(&format!(
            "\n#{} <b>{}</b>: {} left{by} — {}",
            s.id,
            escape(&s.pattern),
            human_duration(s.until.saturating_sub(now)),
            escape(&s.reason)
        ));
    }
    if list.len() > STATUS_LINES {
        out.push_str(&format!(
            "\n… and {} more (vigia silence list shows them all)",
            list.len() - STATUS_LINES
        ));
    }
    out.push_str("\n/unsilence ID ends one.");
    out
}

/// `/help`.
pub fn help() -> String {
    let mut out = String::from("<b>What I do</b>");
    for (c, args, what) in COMMANDS {
        let args = if args.is_empty() {
            String::new()
        } else {
            format!(" {}", escape(args))
        };
        out.push_str(&format!("\n/{c}{args} — {what}"));
    }
    out.push_str("\nThe buttons under an alert acknowledge or silence it.");
    out
}

/// `1h`, `2h30m` for a reply.
pub fn length(d: Duration) -> String {
    human_duration(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["web".into(), "db".into(), "terminals/10.0.0.1".into()]
    }

    #[test]
    fn command_words_and_bot_mentions() {
        assert_eq!(command_word("/status", None), Some(("status", "")));
        assert_eq!(
            command_word(" /silence@vigia_bot web 2h deploy ", Some("vigia_bot")),
            Some(("silence", "web 2h deploy"))
        );
        assert_eq!(command_word("/status@other_bot", Some("vigia_bot")), None);
        assert_eq!(command_word("status", None), None);
    }

    #[test]
    fn commands_become_typed_commands() {
        let n = names();
        assert_eq!(
            parse("silence", "web 2h deploy of 1.4", &n, "telegram:@ana"),
            Asked::Act(Command::SilenceAdd {
                pattern: "web".into(),
                for_ms: 7_200_000,
                reason: "deploy of 1.4".into(),
                by: "telegram:@ana".into(),
            })
        );
        assert_eq!(
            parse("ack", "db", &n, "telegram:@ana"),
            Asked::Act(Command::Ack {
                name: "db".into(),
                by: "telegram:@ana".into()
            })
        );
        assert_eq!(
            parse("unsilence", "#12", &n, ""),
            Asked::Act(Command::SilenceRemove { id: 12 })
        );
        assert_eq!(parse("check", "web", &n, ""), Asked::Run("web".into()));
        assert!(matches!(
            parse("silence", "terminals/* 1h", &n, ""),
            Asked::Act(_)
        ));
        assert!(!parse("status", "", &n, "").acts());
        assert!(parse("check", "web", &n, "").acts());
    }

    #[test]
    fn unknown_commands_and_names_get_a_did_you_mean() {
        let n = names();
        let Asked::Wrong(e) = parse("stauts", "", &n, "") else {
            panic!()
        };
        assert!(e.contains("Did you mean /status?"), "{e}");
        let Asked::Wrong(e) = parse("ack", "wbe", &n, "") else {
            panic!()
        };
        assert!(e.contains("Did you mean <b>web</b>?"), "{e}");
        let Asked::Wrong(e) = parse("silence", "web", &n, "") else {
            panic!()
        };
        assert!(e.starts_with("Usage: /silence"), "{e}");
        let Asked::Wrong(e) = parse("silence", "web 2x", &n, "") else {
            panic!()
        };
        assert!(e.contains("Usage"), "{e}");
        let Asked::Wrong(e) = parse("silence", "<b> 1h", &n, "") else {
            panic!()
        };
        assert!(e.contains("&lt;b&gt;"), "escaped: {e}");
    }

    #[test]
    fn status_lists_down_checks_first_newest_on_top() {
        let check = |name: &str, status: bool, changed_at: u64| CheckSnapshot {
            name: name.into(),
            status,
            changed_at,
            ..Default::default()
        };
        let snap = StatusSnapshot {
            host: "shop-01".into(),
            now: 10 * 60_000,
            checks: vec![
                check("a", true, 0),
                check("old", false, 60_000),
                check("new", false, 9 * 60_000),
            ],
            ..Default::default()
        };
        let s = status(&snap);
        assert!(
            s.starts_with("🔴 <b>shop-01</b>: 2 of 3 checks down"),
            "{s}"
        );
        let new = s.find("<b>new</b> down 1m").unwrap();
        let old = s.find("<b>old</b> down 9m").unwrap();
        assert!(new < old, "{s}");
        assert!(s.ends_with("✅ 1 up"), "{s}");
    }
}
