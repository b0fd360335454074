//! `vigia replay DIR`: a recording (`record.rs`) read back and fed through the core's
//! [`Replay`] — the same state machine and alert policy as the running engine — under
//! one config, or under two for "what if". This file reads the files (every problem is
//! said with its file and line, and the replay goes on), builds each config's checks,
//! and writes the report; the rules are all in `vigia_core`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use vigia_core::alert::human_duration;
use vigia_core::alert::policy::Item;
use vigia_core::replay::{CheckSpec, Replay, ReplayMessage};
use vigia_core::silence::Silence;
use vigia_core::status::Transition;

use crate::config::{Config, Registry};

/// One config's side of a replay.
pub struct Side {
    pub config: PathBuf,
    pub replay: Replay,
    pub tz: jiff::tz::TimeZone,
    /// Alert-relevant settings of each check, for the what-if summary.
    settings: BTreeMap<Arc<str>, Settings>,
    /// Entries still held at the end (a closed window).
    pub held_at_end: usize,
}

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    threshold: u32,
    recover_after: u32,
    notify: String,
    window: String,
    remind_every: String,
    depends_on: String,
}

impl Side {
    /// Builds a config's checks (Lua scripts load, nothing runs) and a replay over them.
    pub fn load(config: &Path, host: Option<&str>) -> Result<Side, String> {
        let (cfg, plan, _warnings) =
            Config::load_and_build(config, &Registry::builtin()).map_err(|e| e.to_string())?;
        let host: Arc<str> = host
            .map(str::to_string)
            .or(cfg.engine.hostname.clone())
            .unwrap_or_else(crate::config::system_hostname)
            .into();
        let mut policy = cfg.alerting.policy.clone();
        policy.checks = plan.alerting();
        let tz = policy.tz.clone();
        let channels = cfg
            .alerting
            .channels
            .iter()
            .map(|c| (c.name.clone(), c.flavor()))
            .collect();
        let specs: Vec<CheckSpec> = plan
            .checks
            .iter()
            .map(|c| CheckSpec {
                name: c.name.clone(),
                group: c.group.clone(),
                threshold: c.threshold,
                recover_after: c.recover_after,
                comment: c.comment.clone(),
            })
            .collect();
        let settings = plan
            .checks
            .iter()
            .map(|c| {
                let a = c.alerting.clone().unwrap_or_default();
                let list = |v: &[Arc<str>]| v.join(", ");
                (
                    c.name.clone(),
                    Settings {
                        threshold: c.threshold,
                        recover_after: c.recover_after,
                        notify: a.notify.as_deref().map(list).unwrap_or("all".into()),
                        window: a.window.clone().unwrap_or("none".into()),
                        remind_every: a
                            .remind_every
                            .map(|d| vigia_api::Dur(d).to_string())
                            .unwrap_or("never".into()),
                        depends_on: list(&a.depends_on),
                    },
                )
            })
            .collect();
        let replay = Replay::new(
            host,
            policy,
            cfg.alerting.templates.clone(),
            channels,
            specs,
        );
        Ok(Side {
            config: config.to_path_buf(),
            replay,
            tz,
            settings,
            held_at_end: 0,
        })
    }
}

/// A problem with the recording, said once with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub text: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.text)
    }
}

/// A line of the recording: a run, or (since the engine records them) a silence, the
/// end of one, or an acknowledgement.
#[derive(Deserialize)]
struct Line<'a> {
    t: u64,
    #[serde(borrow, default)]
    c: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    v: Option<f64>,
    #[serde(borrow, default)]
    m: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    silence: Option<Silence>,
    #[serde(default)]
    unsilence: Option<u64>,
    #[serde(borrow, default)]
    ack: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    by: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Header {
    vigia_record: u64,
    #[serde(default)]
    version: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    config: Option<PathBuf>,
}

/// What the recording's first header says: where it came from.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    pub host: Option<String>,
    pub config: Option<PathBuf>,
    pub files: usize,
}

/// Reads the first header of a recording (the host and the config it was made with).
pub fn origin(dir: &Path) -> Result<Origin, String> {
    let files = crate::record::files(dir)
        .map_err(|e| format!("cannot read the recording {}: {e}", dir.display()))?;
    if files.is_empty() {
        return Err(format!(
            "{} holds no recording (no record-*.jsonl files): record with `vigia run --record {}` or `engine.record`",
            dir.display(),
            dir.display()
        ));
    }
    let mut o = Origin {
        files: files.len(),
        ..Origin::default()
    };
    for (path, _) in &files {
        let Ok(f) = std::fs::File::open(path) else {
            continue;
        };
        let mut first = Vec::new();
        let _ = std::io::BufReader::new(f).read_until(b'\n', &mut first);
        if let Ok(h) = serde_json::from_slice::<Header>(&first) {
            o.host = h.host;
            o.config = h.config;
            break;
        }
    }
    Ok(o)
}

/// Feeds the recording in `dir` into each side, between `from` and `to` (unix ms; the
/// runs before `from` set the state, and only what is released after it is kept).
/// Returns the problems found, in the order met.
pub fn feed(dir: &Path, sides: &mut [Side], from: Option<u64>, to: Option<u64>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let files = match crate::record::files(dir) {
        Ok(f) => f,
        Err(e) => {
            problems.push(Problem {
                file: dir.to_path_buf(),
                line: 0,
                text: format!("cannot read the directory: {e}"),
            });
            return problems;
        }
    };
    for s in sides.iter_mut() {
        s.replay.keep_from(from.unwrap_or(0));
    }
    // Unknown checks, per side: said once, with the first line and a count.
    let mut unknown: Vec<BTreeMap<String, (PathBuf, u64, u64)>> =
        vec![BTreeMap::new(); sides.len()];
    let mut last = 0u64;
    let mut buf = Vec::with_capacity(512);
    'files: for (path, _) in &files {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(Problem {
                    file: path.clone(),
                    line: 0,
                    text: format!("cannot be read ({e}); skipped"),
                });
                continue;
            }
        };
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        let mut n = 0u64;
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    problems.push(Problem {
                        file: path.clone(),
                        line: n + 1,
                        text: format!(
                            "cannot be read further ({e}); the rest of the file is skipped"
                        ),
                    });
                    break;
                }
            }
            n += 1;
            let complete = buf.last() == Some(&b'\n');
            if n == 1 {
                match serde_json::from_slice::<Header>(&buf) {
                    Ok(h) if h.vigia_record == crate::record::FORMAT => continue,
                    Ok(h) => {
                        problems.push(Problem {
                            file: path.clone(),
                            line: 1,
                            text: format!(
                                "recorded in format {} (by vigia {}); this vigia {} reads format {}: the file is skipped",
                                h.vigia_record,
                                if h.version.is_empty() { "?" } else { &h.version },
                                env!("CARGO_PKG_VERSION"),
                                crate::record::FORMAT
                            ),
                        });
                        continue 'files;
                    }
                    Err(_) => {
                        problems.push(Problem {
                            file: path.clone(),
                            line: 1,
                            text: "no recording header (`{\"vigia_record\":1,…}`): not a Vigia recording, or its start was cut off; the file is skipped".into(),
                        });
                        continue 'files;
                    }
                }
            }
            let line = match serde_json::from_slice::<Line>(&buf) {
                Ok(l) => l,
                Err(e) => {
                    let text = if !complete {
                        "a truncated line (the engine stopped while writing it); skipped"
                            .to_string()
                    } else {
                        format!("not a recorded run ({e}); skipped")
                    };
                    problems.push(Problem {
                        file: path.clone(),
                        line: n,
                        text,
                    });
                    continue;
                }
            };
            if to.is_some_and(|to| line.t > to) {
                continue;
            }
            last = last.max(line.t);
            for (i, side) in sides.iter_mut().enumerate() {
                let r = &mut side.replay;
                if let Some(s) = &line.silence {
                    r.silence(s.clone(), line.t);
                } else if let Some(id) = line.unsilence {
                    r.unsilence(id, line.t);
                } else if let Some(c) = &line.ack {
                    if let Some(idx) = r.index_of(c) {
                        r.ack(idx, line.by.as_deref().unwrap_or(""), line.t);
                    }
                } else if let (Some(c), Some(ok)) = (&line.c, line.ok) {
                    match r.index_of(c) {
                        Some(idx) => {
                            r.run(idx, ok, line.m.as_deref().unwrap_or(""), line.v, line.t)
                        }
                        None => {
                            unknown[i]
                                .entry(c.to_string())
                                .or_insert_with(|| (path.clone(), n, 0))
                                .2 += 1
                        }
                    }
                } else {
                    problems.push(Problem {
                        file: path.clone(),
                        line: n,
                        text: "a line with neither a run (`c`, `ok`) nor a silence or acknowledgement; skipped".into(),
                    });
                }
            }
        }
    }
    let end = to.unwrap_or(last);
    for (i, side) in sides.iter_mut().enumerate() {
        side.held_at_end = side.replay.finish(end);
        for (check, (file, line, count)) in std::mem::take(&mut unknown[i]) {
            problems.push(Problem {
                file,
                line,
                text: format!(
                    "check `{check}` is not in {}: its {count} recorded run{} skipped",
                    side.config.display(),
                    if count == 1 { " is" } else { "s are" }
                ),
            });
        }
    }
    problems
}

/// `2026-12-01 03:00` in the config's time zone, `2026-12-01` (its start), an RFC 3339
/// time, or unix ms.
pub fn parse_time(s: &str, tz: &jiff::tz::TimeZone) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond().max(0) as u64);
    }
    let civil = s.parse::<jiff::civil::DateTime>().or_else(|_| {
        s.parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    match civil.map(|c| c.to_zoned(tz.clone())) {
        Ok(Ok(z)) => Ok(z.timestamp().as_millisecond().max(0) as u64),
        _ => Err(format!(
            "`{s}` is not a time: write 2026-12-01 03:00 (in the config's time zone), 2026-12-01, or 2026-12-01T03:00:00Z"
        )),
    }
}

fn clock(ms: u64, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| ms.to_string())
}

/// Telegram's HTML as a terminal shows it.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for ch in text.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// An outage: a check down from `start` to `end` (None: still down at the end).
#[derive(Debug, Clone)]
struct Outage {
    check: Arc<str>,
    start: u64,
    end: Option<u64>,
    /// When the first message about it went out.
    alerted: Option<u64>,
}

fn outages(side: &Side) -> Vec<Outage> {
    let r = &side.replay;
    let mut out = Vec::new();
    for (i, changes) in r.timeline.iter().enumerate() {
        let name = &r.specs()[i].name;
        let mut open: Option<u64> = None;
        for c in changes {
            match (c.status, open) {
                (false, None) => open = Some(c.at),
                (true, Some(s)) => {
                    out.push(Outage {
                        check: name.clone(),
                        start: s,
                        end: Some(c.at),
                        alerted: None,
                    });
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(s) = open {
            out.push(Outage {
                check: name.clone(),
                start: s,
                end: None,
                alerted: None,
            });
        }
    }
    for o in &mut out {
        o.alerted = r
            .messages
            .iter()
            .find(|m| {
                m.items.iter().any(|it| match it {
                    Item::Transition(e) | Item::Flapping { event: e, .. } => {
                        e.check == o.check
                            && e.transition == Transition::Failed
                            && e.at >= o.start
                            && o.end.is_none_or(|end| e.at < end)
                    }
                    _ => false,
                })
            })
            .map(|m| m.at);
    }
    out
}

fn count_by_channel(messages: &[ReplayMessage]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for msg in messages {
        *m.entry(&*msg.channel).or_insert(0) += 1;
    }
    m
}

/// The human report of one side.
pub fn report(side: &Side, problems: &[Problem]) -> String {
    use std::fmt::Write;
    let r = &side.replay;
    let tz = &side.tz;
    let mut out = String::new();
    let changed = r.timeline.iter().filter(|t| !t.is_empty()).count();
    let seen = r.runs_of.iter().filter(|&&n| n > 0).count();
    let _ = writeln!(
        out,
        "Replay under {}: {} run{} of {} check{}{}.",
        side.config.display(),
        r.runs,
        plural(r.runs as usize),
        seen,
        plural(seen),
        r.first
            .map(|f| format!(", from {}", clock(f, tz)))
            .unwrap_or_default()
    );
    let by = count_by_channel(&r.messages);
    let _ = writeln!(
        out,
        "\nMessages that would have gone out: {}{}",
        r.messages.len(),
        if by.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                by.iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if r.earlier_messages > 0 {
        let _ = writeln!(
            out,
            "  ({} more before --from, not shown)",
            r.earlier_messages
        );
    }
    for m in &r.messages {
        let _ = writeln!(out, "\n  {}  {}  [{}]", clock(m.at, tz), m.channel, m.kind);
        for l in plain(&m.text).lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
    if side.held_at_end > 0 {
        let _ = writeln!(
            out,
            "\n  {} still held at the end of the recording (a closed send window or a group still waiting): they would go out later.",
            side.held_at_end
        );
    }
    let _ = writeln!(
        out,
        "\nTimeline ({changed} of {seen} check{} changed status):",
        plural(seen)
    );
    for (i, changes) in r.timeline.iter().enumerate() {
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {}", r.specs()[i].name);
        for c in changes {
            let _ = writeln!(
                out,
                "    {}  {:<4}  {}  ({} for {})",
                clock(c.at, tz),
                if c.status { "up" } else { "down" },
                c.message,
                if c.status { "down" } else { "up" },
                human_duration(c.after_ms)
            );
        }
    }
    if changed < seen {
        let n = seen - changed;
        let _ = writeln!(
            out,
            "  ({n} check{} up all along)",
            if n == 1 { " was" } else { "s were" }
        );
    }
    if !problems.is_empty() {
        let _ = writeln!(out, "\nProblems with the recording ({}):", problems.len());
        for p in problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

/// What differs between the two configs' settings, in a few words:
/// `threshold 3 → 5 (web, db)`.
fn setting_changes(base: &Side, other: &Side) -> Vec<String> {
    let mut by_change: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, a) in &base.settings {
        let Some(b) = other.settings.get(name) else {
            continue;
        };
        let mut add = |what: &str, x: String, y: String| {
            if x != y {
                by_change
                    .entry(format!("{what} {x} → {y}"))
                    .or_default()
                    .push(name);
            }
        };
        add(
            "threshold",
            a.threshold.to_string(),
            b.threshold.to_string(),
        );
        add(
            "recover_after",
            a.recover_after.to_string(),
            b.recover_after.to_string(),
        );
        add("notify", a.notify.clone(), b.notify.clone());
        add("window", a.window.clone(), b.window.clone());
        add(
            "remind_every",
            a.remind_every.clone(),
            b.remind_every.clone(),
        );
        add("depends_on", a.depends_on.clone(), b.depends_on.clone());
    }
    let all = base.settings.len();
    let mut out: Vec<String> = by_change
        .into_iter()
        .map(|(change, names)| {
            if names.len() == all {
                change
            } else {
                let shown: Vec<&str> = names.iter().take(5).copied().collect();
                let more = names.len() - shown.len();
                format!(
                    "{change} ({}{})",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            }
        })
        .collect();
    let only = |a: &Side, b: &Side| -> Vec<Arc<str>> {
        a.settings
            .keys()
            .filter(|k| !b.settings.contains_key(*k))
            .cloned()
            .collect()
    };
    let gone = only(base, other);
    if !gone.is_empty() {
        out.push(format!("{} checks not in the other config", gone.len()));
    }
    let added = only(other, base);
    if !added.is_empty() {
        out.push(format!("{} checks only in the other config", added.len()));
    }
    out
}

fn span(o: &Outage, tz: &jiff::tz::TimeZone) -> String {
    match o.end {
        Some(e) => format!(
            "{} {}–{} ({})",
            o.check,
            clock(o.start, tz),
            &clock(e, tz)[11..],
            human_duration(e - o.start)
        ),
        None => format!(
            "{} from {} (still down at the end)",
            o.check,
            clock(o.start, tz)
        ),
    }
}

fn list(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(10).map(String::as_str).collect();
    let more = items.len() - shown.len();
    let mut s = shown.join("; ");
    if more > 0 {
        s.push_str(&format!("; and {more} more"));
    }
    s
}

/// The what-if summary: `threshold 3 → 5: 41 → 12 messages; 2 outages would no longer
/// be alerted: …`.
pub fn what_if(base: &Side, other: &Side) -> String {
    use std::fmt::Write;
    let tz = &base.tz;
    let mut out = String::new();
    let changes = setting_changes(base, other);
    let (a, b) = (&base.replay.messages, &other.replay.messages);
    let _ = writeln!(
        out,
        "What if {} instead of {}:",
        other.config.display(),
        base.config.display()
    );
    let head = if changes.is_empty() {
        "the checks' settings are the same (the difference is in channels, windows or the policy)"
            .to_string()
    } else {
        changes.join(", ")
    };
    let _ = writeln!(out, "  {head}: {} → {} messages", a.len(), b.len());
    let (ca, cb) = (count_by_channel(a), count_by_channel(b));
    let mut channels: Vec<&str> = ca.keys().chain(cb.keys()).copied().collect();
    channels.sort();
    channels.dedup();
    for ch in channels {
        let _ = writeln!(
            out,
            "    {ch}: {} → {}",
            ca.get(ch).copied().unwrap_or(0),
            cb.get(ch).copied().unwrap_or(0)
        );
    }
    let (oa, ob) = (outages(base), outages(other));
    let overlaps = |x: &Outage, y: &Outage| {
        x.check == y.check
            && x.start < y.end.unwrap_or(u64::MAX)
            && y.start < x.end.unwrap_or(u64::MAX)
    };
    let mut lost = Vec::new();
    let mut later = Vec::new();
    let mut sooner = Vec::new();
    for x in oa.iter().filter(|o| o.alerted.is_some()) {
        let y = ob.iter().find(|y| overlaps(x, y) && y.alerted.is_some());
        match y {
            None => lost.push(span(x, tz)),
            Some(y) => {
                let (ta, tb) = (x.alerted.unwrap_or(0), y.alerted.unwrap_or(0));
                if tb > ta {
                    later.push(format!("{} (+{})", span(x, tz), human_duration(tb - ta)));
                } else if tb < ta {
                    sooner.push(format!("{} (−{})", span(x, tz), human_duration(ta - tb)));
                }
            }
        }
    }
    let new: Vec<String> = ob
        .iter()
        .filter(|y| y.alerted.is_some())
        .filter(|y| !oa.iter().any(|x| overlaps(x, y) && x.alerted.is_some()))
        .map(|y| span(y, tz))
        .collect();
    let mut said = false;
    let mut say = |n: usize, what: &str, items: &[String]| {
        if n > 0 {
            said = true;
            let _ = writeln!(
                out,
                "  {n} outage{} {what}: {}",
                if n == 1 { "" } else { "s" },
                list(items)
            );
        }
    };
    say(lost.len(), "would no longer be alerted", &lost);
    say(new.len(), "would now be alerted", &new);
    say(later.len(), "would be alerted later", &later);
    say(sooner.len(), "would be alerted sooner", &sooner);
    if !said {
        let _ = writeln!(
            out,
            "  the same outages would be alerted, at the same times"
        );
    }
    out
}

/// The replay as one JSON document (`--json`).
pub fn json(sides: &[Side], problems: &[Problem]) -> serde_json::Value {
    let side = |s: &Side| {
        let r = &s.replay;
        let timeline: serde_json::Map<String, serde_json::Value> = r
            .timeline
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, t)| {
                (
                    r.specs()[i].name.to_string(),
                    t.iter()
                        .map(|c| serde_json::json!({"at": c.at, "status": if c.status {"up"} else {"down"}, "message": c.message, "after_ms": c.after_ms}))
                        .collect(),
                )
            })
            .collect();
        serde_json::json!({
            "config": s.config,
            "runs": r.runs,
            "checks": r.runs_of.iter().filter(|&&n| n > 0).count(),
            "messages": r.messages.iter().map(|m| serde_json::json!({
                "at": m.at, "channel": &*m.channel, "kind": m.kind, "text": m.text,
                "checks": m.items.iter().filter_map(Item::check).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "earlier_messages": r.earlier_messages,
            "held_at_end": s.held_at_end,
            "timeline": timeline,
        })
    };
    serde_json::json!({
        "replays": sides.iter().map(side).collect::<Vec<_>>(),
        "what_if": (sides.len() == 2).then(|| what_if(&sides[0], &sides[1])),
        "problems": problems.iter().map(|p| serde_json::json!({"file": p.file, "line": p.line, "problem": p.text})).collect::<Vec<_>>(),
    })
}
