//! Send windows: the days and hours in which a channel (or a check) may send. Outside
//! them alerts are held, and go out as one digest when the window opens.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed window: `days: [mon-fri, sat]`, `from: "08:00"`, `to: "20:00"`, a time zone.
/// `from` later than `to` spans midnight (`22:00`-`06:00`).
#[derive(Clone, Debug)]
pub struct Window {
    pub name: String,
    days: [bool; 7],
    from: Time,
    to: Time,
    tz: TimeZone,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter().position(|d| s.starts_with(d) && s.len() >= 3)
}

/// `mon`, `monday`, `mon-fri`, `sat-sun`, `fri-mon` (wraps).
pub fn parse_days(items: &[String]) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in items {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item.as_str(), item.as_str()),
        };
        let (Some(a), Some(b)) = (day_index(a), day_index(b)) else {
            return Err(format!(
                "`{item}` is not a day or a range of days (mon, tue, ..., sun; mon-fri)"
            ));
        };
        let mut d = a;
        loop {
            days[d] = true;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

/// `08:00`, `8:30`, `24:00` (end of day).
pub fn parse_clock(s: &str) -> Result<Time, String> {
    let bad = || format!("`{s}` is not a time of day (write 08:00 or 17:30)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if h == 24 && m == 0 {
        return Ok(Time::MAX);
    }
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Window {
    pub fn new(name: &str, days: [bool; 7], from: Time, to: Time, tz: TimeZone) -> Self {
        Window {
            name: name.to_string(),
            days,
            from,
            to,
            tz,
        }
    }

    fn weekday_index(w: Weekday) -> usize {
        w.to_monday_zero_offset() as usize
    }

    /// Whether the window is open at `t`.
    pub fn is_open(&self, t: Timestamp) -> bool {
        let z = t.to_zoned(self.tz.clone());
        let day = Self::weekday_index(z.weekday());
        let time = z.time();
        if self.from <= self.to {
            self.days[day] && time >= self.from && time < self.to
        } else {
            // Spans midnight: the evening belongs to `day`, the morning to the day before.
            let yesterday = (day + 6) % 7;
            (self.days[day] && time >= self.from) || (self.days[yesterday] && time < self.to)
        }
    }
}

/// The first moment at or after `from` at which every window is open (minute
/// resolution), or `None` if they never are together within 8 days.
pub fn next_open(windows: &[&Window], from: Timestamp) -> Option<Timestamp> {
    if windows.iter().all(|w| w.is_open(from)) {
        return Some(from);
    }
    let minute = 60;
    let start = from.as_second() - from.as_second().rem_euclid(minute) + minute;
    (0..8 * 24 * 60)
        .map(|i| start + i * minute)
        .filter_map(|s| Timestamp::from_second(s).ok())
        .find(|t| windows.iter().all(|w| w.is_open(*t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn office() -> Window {
        Window::new(
            "office",
            parse_days(&["mon-fri".into()]).unwrap(),
            parse_clock("08:00").unwrap(),
            parse_clock("20:00").unwrap(),
            TimeZone::UTC,
        )
    }

    #[test]
    fn open_and_closed() {
        let w = office();
        // 2026-11-23 is a Monday.
        assert!(w.is_open(utc("2026-11-23T08:00:00Z")));
        assert!(w.is_open(utc("2026-11-23T19:59:59Z")));
        assert!(!w.is_open(utc("2026-11-23T20:00:00Z")));
        assert!(!w.is_open(utc("2026-11-23T02:10:00Z")));
        assert!(!w.is_open(utc("2026-11-28T10:00:00Z")), "Saturday");
    }

    #[test]
    fn next_opening() {
        let w = office();
        assert_eq!(
            next_open(&[&w], utc("2026-11-23T02:10:30Z")),
            Some(utc("2026-11-23T08:00:00Z"))
        );
        assert_eq!(
            next_open(&[&w], utc("2026-11-27T21:00:00Z")),
            Some(utc("2026-11-30T08:00:00Z")),
            "Friday night waits for Monday"
        );
        let t = utc("2026-11-23T09:00:00Z");
        assert_eq!(next_open(&[&w], t), Some(t));
    }

    #[test]
    fn overnight_window_and_time_zones() {
        let night = Window::new(
            "night",
            parse_days(&["fri-mon".into()]).unwrap(),
            parse_clock("22:00").unwrap(),
            parse_clock("06:00").unwrap(),
            TimeZone::get("Europe/Lisbon").unwrap(),
        );
        // Monday 23:00 Lisbon (= UTC in winter): open; Tuesday 05:00: still Monday's night.
        assert!(night.is_open(utc("2026-11-23T23:00:00Z")));
        assert!(night.is_open(utc("2026-11-24T05:00:00Z")));
        assert!(!night.is_open(utc("2026-11-24T23:00:00Z")), "Tuesday night");
        assert!(parse_days(&["funday".into()]).is_err());
        assert!(parse_clock("25:00").is_err());
    }
}
