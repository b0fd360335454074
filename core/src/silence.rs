//! Silences: while one covers a check, that check's alerts are not sent. The checks still
//! run and their transitions are still logged. The one implementation, used by the alert
//! pipeline of a running engine and by `vigia silence` when no engine runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest silence: a year. Longer ones are refused rather than overflowing.
pub const MAX_SILENCE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A silence: alerts of matching checks are not sent until it expires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: u64,
    /// A check name, or a pattern with `*` (`terminals/*`).
    pub pattern: String,
    /// Unix ms.
    pub until: u64,
    pub reason: String,
    pub created_at: u64,
    /// Who added it: `telegram:@ana`, `cli:root`, `http` (empty in silences of older
    /// releases).
    #[serde(default)]
    pub by: String,
}

impl Silence {
    pub fn matches(&self, check: &str) -> bool {
        glob(&self.pattern, check)
    }
}

/// The silences in force, as a pure book: the caller gives the time and ids, and makes
/// each change durable.
#[derive(Clone, Debug, Default)]
pub struct SilenceBook {
    list: Vec<Silence>,
}

impl SilenceBook {
    /// Puts back a silence (from the store).
    pub fn insert(&mut self, s: Silence) {
        self.list.retain(|x| x.id != s.id);
        self.list.push(s);
    }

    /// A new silence of `pattern` for `duration` from `now`, added by `by`.
    pub fn add(
        &mut self,
        id: u64,
        pattern: &str,
        duration: Duration,
        reason: &str,
        by: &str,
        now: u64,
    ) -> Result<Silence, String> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err("a silence needs a check name or a pattern such as `terminals/*`".into());
        }
        if duration.is_zero() {
            return Err("a silence must last longer than 0s".into());
        }
        if duration > MAX_SILENCE {
            return Err(format!(
                "{} is longer than the longest silence, 366d",
                vigia_api::Dur(duration)
            ));
        }
        let until = now.saturating_add(duration.as_millis() as u64);
        let s = Silence {
            id,
            pattern: pattern.to_string(),
            until,
            reason: reason.to_string(),
            created_at: now,
            by: by.to_string(),
        };
        self.insert(s.clone());
        Ok(s)
    }

    /// Ends silence `id` now.
    pub fn remove(&mut self, id: u64) -> Result<Silence, String> {
        match self.list.iter().position(|s| s.id == id) {
            Some(i) => Ok(self.list.remove(i)),
            None => Err(format!("there is no silence {id}")),
        }
    }

    /// Takes out the silences that ended at `now`, for the caller to log and forget.
    pub fn expire(&mut self, now: u64) -> Vec<Silence> {
        let (expired, kept) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|s| s.until <= now);
        self.list = kept;
        expired
    }

    /// The silence covering `check` at `now`, if any.
    pub fn covering(&self, check: &str, now: u64) -> Option<&Silence> {
        self.list.iter().find(|s| s.until > now && s.matches(check))
    }

    /// The silences in force at `now`, oldest first.
    pub fn active(&self, now: u64) -> Vec<Silence> {
        let mut v: Vec<Silence> = self
            .list
            .iter()
            .filter(|s| s.until > now)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

/// `*` matches any run of characters.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_expire_remove() {
        let mut b = SilenceBook::default();
        let s = b
            .add(1, "web", Duration::from_secs(60), "deploy", "cli:ana", 1000)
            .unwrap();
        assert_eq!(s.until, 61_000);
        assert_eq!(b.covering("web", 60_999).map(|s| s.id), Some(1));
        assert!(b.covering("web", 61_000).is_none());
        assert_eq!(b.expire(61_000).len(), 1);
        assert!(b.active(0).is_empty());
        assert!(b.remove(1).is_err());
    }

    #[test]
    fn too_long_or_empty_is_refused_not_overflowed() {
        let mut b = SilenceBook::default();
        let e = b
            .add(1, "web", Duration::from_secs(u64::MAX / 2), "", "", 5)
            .unwrap_err();
        assert!(e.contains("longest silence"), "{e}");
        assert!(b.add(2, " ", Duration::from_secs(1), "", "", 5).is_err());
        assert!(b.add(3, "web", Duration::ZERO, "", "", 5).is_err());
    }

    #[test]
    fn patterns() {
        assert!(glob("terminals/*", "terminals/10.0.0.1"));
        assert!(glob("*db*", "galera_db_2"));
        assert!(!glob("web", "web2"));
        assert!(glob("a*c", "abc"));
        assert!(!glob("a*c", "abd"));
    }
}
