//! Buttons under Telegram alerts (`commands: true`): what a message's buttons act on,
//! kept in the store with the message they were sent with.
//!
//! A button's callback data is `<token>:<action>` (`9f3c…:ack`, `9f3c…:s3600`). The
//! token is random per message and the set is stored under (chat, message id) once
//! Telegram has given the message its id, so a press counts only on the message it was
//! sent with: data copied to another message, or made up, names no set there and is
//! refused. What a press acts on (the checks and the failure each one had) is read from
//! the store, never from the data.

use std::io::Read;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigia_core::alert::human_duration;
use vigia_core::alert::policy::{Item, Message};
use vigia_core::status::Transition;

/// One inline button.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub label: String,
    pub data: String,
}

/// What a press asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Press {
    Ack,
    Silence(Duration),
}

/// The buttons of one message and what they act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ButtonSet {
    pub token: String,
    /// The channel the message went to.
    pub channel: String,
    /// The failures it reported: (check, unix ms its failure started).
    pub checks: Vec<(String, u64)>,
    /// The message's text as sent (HTML), to edit it.
    pub text: String,
    /// The buttons still shown.
    pub buttons: Vec<Button>,
    /// What was done, one line each, shown under the text: `✔ acknowledged by @ana at
    /// 10:32`.
    #[serde(default)]
    pub done: Vec<String>,
    /// Unix ms.
    pub created_at: u64,
}

impl ButtonSet {
    /// The buttons a message gets, if it reports failures: Acknowledge, then one
    /// Silence button per duration.
    pub fn for_message(
        m: &Message,
        channel: &str,
        silences: &[Duration],
        now: u64,
    ) -> Option<ButtonSet> {
        let checks: Vec<(String, u64)> = m
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Transition(e) if e.transition == Transition::Failed => {
                    Some((e.check.to_string(), e.at))
                }
                Item::Reminder { event, .. } => Some((event.check.to_string(), event.at)),
                _ => None,
            })
            .collect();
        if checks.is_empty() || !matches!(m.kind, "failed" | "grouped" | "reminder") {
            return None;
        }
        let token = random_token();
        let mut buttons = vec![Button {
            label: "Acknowledge".into(),
            data: format!("{token}:ack"),
        }];
        for d in silences {
            buttons.push(Button {
                label: format!("Silence {}", short(*d)),
                data: format!("{token}:s{}", d.as_secs()),
            });
        }
        Some(ButtonSet {
            token,
            channel: channel.to_string(),
            checks,
            text: String::new(),
            buttons,
            done: Vec::new(),
            created_at: now,
        })
    }

    /// The message's text with what was done under it.
    pub fn shown_text(&self) -> String {
        if self.done.is_empty() {
            return self.text.clone();
        }
        format!("{}\n\n{}", self.text, self.done.join("\n"))
    }

    /// Takes a press's data apart: `None` unless it carries this set's token and an
    /// action one of its buttons still offers.
    pub fn press(&self, data: &str) -> Option<Press> {
        let (token, action) = data.split_once(':')?;
        if token != self.token || !self.buttons.iter().any(|b| b.data == data) {
            return None;
        }
        parse_action(action)
    }

    /// A press of one of this message's buttons that is no longer shown (pressed by
    /// someone else a moment before, or twice): it acts on nothing.
    pub fn done_before(&self, data: &str) -> bool {
        data.split_once(':')
            .is_some_and(|(token, action)| token == self.token && parse_action(action).is_some())
    }

    /// After a press: the buttons of that kind go (both silences after a silence).
    pub fn remove(&mut self, press: Press) {
        self.buttons.retain(|b| {
            let action = b.data.split_once(':').map(|(_, a)| a).unwrap_or_default();
            !matches!(
                (press, parse_action(action)),
                (Press::Ack, Some(Press::Ack)) | (Press::Silence(_), Some(Press::Silence(_)))
            )
        });
    }
}

/// `1h`, `24h`, `7d`: a button's length as people say it.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    if s.checked_rem(3600) == Some(0) && s <= 48 * 3600 {
        format!("{}h", s / 3600)
    } else {
        human_duration(d.as_millis() as u64)
    }
}

fn parse_action(action: &str) -> Option<Press> {
    if action == "ack" {
        return Some(Press::Ack);
    }
    let secs: u64 = action.strip_prefix('s')?.parse().ok()?;
    (secs > 0).then(|| Press::Silence(Duration::from_secs(secs)))
}

/// 16 hex digits from the kernel's random source (a press's data must carry them).
fn random_token() -> String {
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // No /dev/urandom (a very odd sandbox): the std hasher's random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        b = h.finish().to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ButtonSet {
        ButtonSet {
            token: "00ff".into(),
            channel: "ops".into(),
            checks: vec![("web".into(), 5)],
            text: "web failed".into(),
            buttons: vec![
                Button {
                    label: "Acknowledge".into(),
                    data: "00ff:ack".into(),
                },
                Button {
                    label: "Silence 1h".into(),
                    data: "00ff:s3600".into(),
                },
                Button {
                    label: "Silence 1d".into(),
                    data: "00ff:s86400".into(),
                },
            ],
            done: Vec::new(),
            created_at: 0,
        }
    }

    #[test]
    fn a_press_counts_only_with_the_sets_token_and_a_button_it_shows() {
        let s = set();
        assert_eq!(s.press("00ff:ack"), Some(Press::Ack));
        assert_eq!(
            s.press("00ff:s3600"),
            Some(Press::Silence(Duration::from_secs(3600)))
        );
        assert_eq!(s.press("abcd:ack"), None, "another message's token");
        assert_eq!(s.press("00ff:s60"), None, "a duration no button offers");
        assert_eq!(s.press("00ff:ack:db"), None);
        assert_eq!(s.press("ack"), None);
    }

    #[test]
    fn pressed_kinds_go() {
        let mut s = set();
        s.remove(Press::Silence(Duration::from_secs(3600)));
        assert_eq!(s.buttons.len(), 1);
        assert_eq!(s.press("00ff:s86400"), None);
        assert!(s.done_before("00ff:s86400"));
        assert!(!s.done_before("abcd:s86400"));
        s.remove(Press::Ack);
        assert!(s.buttons.is_empty());
        s.done.push("✔ acknowledged".into());
        assert_eq!(s.shown_text(), "web failed\n\n✔ acknowledged");
    }

    #[test]
    fn labels() {
        assert_eq!(short(Duration::from_secs(3600)), "1h");
        assert_eq!(short(Duration::from_secs(86400)), "24h");
        assert_eq!(short(Duration::from_secs(7 * 86400)), "7d");
        assert_eq!(short(Duration::from_secs(1800)), "30m");
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 16);
    }
}
