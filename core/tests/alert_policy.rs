//! The alert policy as a state machine over plain timestamps: send windows and digests,
//! grouping, flapping, dependencies, silences, reminders, routing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use vigia_core::alert::policy::{
    ChannelPolicy, CheckAlerting, Flapping, Item, Message, Policy, PolicyConfig,
};
use vigia_core::alert::window::{parse_clock, parse_days, Window};
use vigia_core::alert::AlertEvent;
use vigia_core::silence::Silence;
use vigia_core::status::Transition;

/// Unix ms of a UTC time on 2026-11-23 (a Monday): `t("02:10")`.
fn t(hhmm: &str) -> u64 {
    let ts: jiff::Timestamp = format!("2026-11-23T{hhmm}:00Z").parse().unwrap();
    ts.as_millisecond() as u64
}

const MIN: u64 = 60_000;

fn office() -> Arc<Window> {
    Arc::new(Window::new(
        "office",
        parse_days(&["mon-fri".into()]).unwrap(),
        parse_clock("08:00").unwrap(),
        parse_clock("20:00").unwrap(),
        TimeZone::UTC,
    ))
}

struct Sim {
    p: Policy,
    seq: u64,
    down: HashSet<String>,
}

impl Sim {
    fn new(
        channels: &[(&str, Option<Arc<Window>>)],
        group_wait: Duration,
        flap_changes: u32,
    ) -> Sim {
        let mut windows = HashMap::new();
        windows.insert("office".to_string(), office());
        let cfg = PolicyConfig {
            tz: TimeZone::UTC,
            group_wait,
            flapping: Flapping {
                changes: flap_changes,
                within: Duration::from_secs(600),
                stable_for: Duration::from_secs(600),
            },
            channels: channels
                .iter()
                .map(|(n, w)| ChannelPolicy {
                    name: (*n).into(),
                    window: w.clone(),
                })
                .collect(),
            windows,
            checks: HashMap::new(),
        };
        Sim {
            p: Policy::new(cfg, "shop-01".into()),
            seq: 0,
            down: HashSet::new(),
        }
    }

    fn set(&mut self, check: &str, a: CheckAlerting) {
        let mut map: HashMap<Arc<str>, Arc<CheckAlerting>> = HashMap::new();
        map.insert(check.into(), Arc::new(a));
        self.p.set_checks(map);
    }

    fn event(&mut self, check: &str, tr: Transition, at: u64) {
        self.event_with(check, tr, at, "")
    }

    fn event_with(&mut self, check: &str, tr: Transition, at: u64, comment: &str) {
        match tr {
            Transition::Failed => self.down.insert(check.to_string()),
            Transition::Recovered => self.down.remove(check),
        };
        self.seq += 1;
        let group = check.split_once('/').map(|(g, _)| g.into());
        let e = AlertEvent {
            host: "shop-01".into(),
            check: check.into(),
            group,
            transition: tr,
            message: format!("{check} says {}", tr.as_str()),
            value: None,
            failures: 3,
            threshold: 3,
            successes: 0,
            recover_after: 1,
            comment: comment.into(),
            at,
            previous_duration_ms: 30 * MIN,
            failed_message: None,
            transcript: None,
            ack: None,
        };
        self.p.accept(self.seq, Item::Transition(e), at);
    }

    fn due(&mut self, now: u64) -> Vec<Message> {
        let down = self.down.clone();
        let mut n = 5000 + now;
        let (_, msgs) = self.p.due(now, &|c| down.contains(c), &mut || {
            n += 1;
            n
        });
        msgs.into_iter().filter(|m| m.kind != "none").collect()
    }
}

/// A message as the default text template of `channel` writes it.
fn render_text(channel: &str, kind: &str, ctx: &vigia_core::alert::policy::Ctx) -> String {
    vigia_core::alert::template::Templates::new().render(
        channel,
        kind,
        vigia_core::alert::template::Flavor::Text,
        ctx,
    )
}

fn kinds(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| format!("{}:{}:{}", m.channel, m.kind, m.ctx.check))
        .collect()
}

#[test]
fn a_closed_window_holds_alerts_and_sends_one_digest_when_it_opens() {
    let mut s = Sim::new(&[("ops", Some(office()))], Duration::from_secs(2), 0);
    s.event("web", Transition::Failed, t("02:10"));
    s.event("web", Transition::Recovered, t("02:40"));
    s.event("db", Transition::Failed, t("03:00"));
    assert!(s.due(t("03:01")).is_empty());
    assert!(s.due(t("07:59")).is_empty());
    let msgs = s.due(t("08:00"));
    assert_eq!(kinds(&msgs), ["ops:digest:"]);
    assert_eq!(
        msgs[0].ctx.summary,
        [
            "web failed 02:10, recovered 02:40",
            "db failed 03:00, still failing"
        ]
    );
    assert_eq!(msgs[0].seqs.len(), 3, "it carries all three held items");
    assert!(s.due(t("09:00")).is_empty(), "once");
}

#[test]
fn an_open_window_sends_at_once_after_the_group_wait() {
    let mut s = Sim::new(
        &[("ops", Some(office())), ("console", None)],
        Duration::from_secs(2),
        0,
    );
    s.event("web", Transition::Failed, t("10:00"));
    assert!(s.due(t("10:00")).is_empty(), "waits for the group");
    let msgs = s.due(t("10:00") + 2000);
    assert_eq!(kinds(&msgs), ["ops:failed:web", "console:failed:web"]);
    // At night only the console speaks; the ops channel holds it for the morning.
    s.event("db", Transition::Failed, t("21:00"));
    assert_eq!(kinds(&s.due(t("21:00") + 2000)), ["console:failed:db"]);
}

#[test]
fn a_grouped_message_keeps_each_comment_once() {
    let mut s = Sim::new(&[("ops", None)], Duration::from_secs(2), 0);
    s.event_with("web", Transition::Failed, t("10:00"), "call the web team");
    s.event_with(
        "web_api",
        Transition::Failed,
        t("10:00") + 10,
        "call the web team",
    );
    s.event_with("db", Transition::Failed, t("10:00") + 20, "call the DBA");
    s.event("cache", Transition::Failed, t("10:00") + 30);
    let msgs = s.due(t("10:00") + 2000);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].kind, "grouped");
    assert_eq!(msgs[0].ctx.comment, "call the web team · call the DBA");
    let text = render_text("ops", "grouped", &msgs[0].ctx);
    assert!(
        text.ends_with(" | call the web team · call the DBA"),
        "{text}"
    );
}

#[test]
fn thirty_terminals_that_fail_together_are_one_message() {
    let mut s = Sim::new(&[("ops", None)], Duration::from_secs(5), 0);
    for i in 1..=30 {
        s.event(
            &format!("terminals/10.0.0.{i}"),
            Transition::Failed,
            t("10:00") + i * 100,
        );
    }
    assert!(
        s.due(t("10:00") + 5000).is_empty(),
        "the batch started with the first, at +100 ms"
    );
    let msgs = s.due(t("10:00") + 5100);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.kind, "grouped");
    assert_eq!(m.ctx.count, 30);
    assert_eq!(m.ctx.group, "terminals");
    assert_eq!(m.ctx.status, "failed");
    assert_eq!(m.ctx.names.len(), 30);
    assert_eq!(m.ctx.names[0], "10.0.0.1");
    assert_eq!(m.seqs.len(), 30);
    // One that comes after the batch left is a message of its own.
    s.event("terminals/10.0.0.99", Transition::Failed, t("10:01"));
    assert_eq!(
        kinds(&s.due(t("10:01") + 5000)),
        ["ops:failed:terminals/10.0.0.99"]
    );
}

#[test]
fn a_flapping_check_is_reported_once_then_held_until_stable() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 3);
    let mut now = t("10:00");
    let mut sent = Vec::new();
    for i in 0..8 {
        let tr = if i % 2 == 0 {
            Transition::Failed
        } else {
            Transition::Recovered
        };
        s.event("web", tr, now);
        sent.extend(kinds(&s.due(now)));
        now += MIN;
    }
    assert_eq!(
        sent,
        [
            "ops:failed:web",
            "ops:recovered:web",
            "ops:failed:web",
            "ops:flapping:web"
        ],
        "three changes, then one flapping message, then silence"
    );
    // Stable for 10 minutes after the last change: one message says how it ended.
    let last_change = now - MIN;
    assert!(s.due(last_change + 9 * MIN).is_empty());
    let end = s.due(last_change + 10 * MIN);
    assert_eq!(kinds(&end), ["ops:flapping:web"]);
    assert_eq!(end[0].ctx.status, "up", "the last change was a recovery");
    // And it is an ordinary check again.
    s.event("web", Transition::Failed, last_change + 11 * MIN);
    assert_eq!(kinds(&s.due(last_change + 11 * MIN)), ["ops:failed:web"]);
}

#[test]
fn failures_of_dependants_are_suppressed_while_their_uplink_is_down() {
    let mut s = Sim::new(&[("ops", None)], Duration::from_secs(2), 0);
    let mut map: HashMap<Arc<str>, Arc<CheckAlerting>> = HashMap::new();
    for i in 1..=3 {
        map.insert(
            format!("terminals/10.0.0.{i}").into(),
            Arc::new(CheckAlerting {
                depends_on: vec!["uplink".into()],
                ..CheckAlerting::default()
            }),
        );
    }
    s.p.set_checks(map);
    s.event("uplink", Transition::Failed, t("10:00"));
    for i in 1..=3 {
        s.event(
            &format!("terminals/10.0.0.{i}"),
            Transition::Failed,
            t("10:00") + 500,
        );
    }
    let msgs = s.due(t("10:00") + 2000);
    assert_eq!(kinds(&msgs), ["ops:failed:uplink"]);
    assert_eq!(
        msgs[0].ctx.suppressed,
        [
            "terminals/10.0.0.1",
            "terminals/10.0.0.2",
            "terminals/10.0.0.3"
        ]
    );
    s.event("uplink", Transition::Recovered, t("10:30"));
    let msgs = s.due(t("10:30") + 2000);
    assert_eq!(kinds(&msgs), ["ops:recovered:uplink"]);
    assert_eq!(
        msgs[0].ctx.suppressed.len(),
        3,
        "named again when it recovers"
    );
    // With the uplink up, a terminal's failure goes out.
    s.event("terminals/10.0.0.1", Transition::Recovered, t("10:31"));
    s.due(t("10:31") + 2000);
    s.event("terminals/10.0.0.1", Transition::Failed, t("10:40"));
    assert_eq!(
        kinds(&s.due(t("10:40") + 2000)),
        ["ops:failed:terminals/10.0.0.1"]
    );
}

#[test]
fn a_silence_mutes_matching_checks_until_it_expires() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 0);
    s.p.silences.insert(Silence {
        id: 7,
        pattern: "terminals/*".into(),
        until: t("12:00"),
        reason: "switch replaced".into(),
        created_at: t("10:00"),
        by: "cli:ana".into(),
    });
    s.event("terminals/10.0.0.1", Transition::Failed, t("11:00"));
    s.event("web", Transition::Failed, t("11:00"));
    assert_eq!(kinds(&s.due(t("11:00"))), ["ops:failed:web"]);
    s.event("terminals/10.0.0.1", Transition::Recovered, t("12:01"));
    assert_eq!(
        kinds(&s.due(t("12:01"))),
        ["ops:recovered:terminals/10.0.0.1"]
    );
}

#[test]
fn reminders_while_down_with_their_count() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 0);
    s.set(
        "db",
        CheckAlerting {
            remind_every: Some(Duration::from_secs(3600)),
            ..CheckAlerting::default()
        },
    );
    s.event("db", Transition::Failed, t("10:00"));
    assert_eq!(kinds(&s.due(t("10:00"))), ["ops:failed:db"]);
    assert!(s.due(t("10:59")).is_empty());
    let r1 = s.due(t("11:00"));
    assert_eq!(kinds(&r1), ["ops:reminder:db"]);
    assert_eq!(r1[0].ctx.reminders, 1);
    assert_eq!(r1[0].ctx.duration, "1h");
    let r2 = s.due(t("12:00"));
    assert_eq!(r2[0].ctx.reminders, 2);
    s.event("db", Transition::Recovered, t("12:30"));
    assert_eq!(kinds(&s.due(t("12:30"))), ["ops:recovered:db"]);
    assert!(
        s.due(t("13:00")).is_empty(),
        "no reminder after the recovery"
    );
}

#[test]
fn an_acknowledgement_stops_the_reminders_of_that_failure_only() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 0);
    s.set(
        "db",
        CheckAlerting {
            remind_every: Some(Duration::from_secs(3600)),
            ..CheckAlerting::default()
        },
    );
    s.event("db", Transition::Failed, t("10:00"));
    assert_eq!(kinds(&s.due(t("10:00"))), ["ops:failed:db"]);
    let ack =
        s.p.acknowledge("db", "telegram:@ana", t("10:00"), t("10:32"))
            .unwrap();
    assert_eq!(ack.by, "telegram:@ana");
    // A second press changes nothing and says who it was.
    let again =
        s.p.acknowledge("db", "telegram:@rui", t("10:00"), t("10:40"))
            .unwrap_err();
    assert_eq!(again.by, "telegram:@ana");
    assert!(
        s.due(t("11:00")).is_empty(),
        "no reminder once acknowledged"
    );
    assert!(s.due(t("12:00")).is_empty());
    s.event("db", Transition::Recovered, t("12:30"));
    let r = s.due(t("12:30"));
    assert_eq!(kinds(&r), ["ops:recovered:db"]);
    assert_eq!(r[0].ctx.acked_by, "telegram:@ana");
    assert_eq!(r[0].ctx.acked_at, "10:32");
    assert!(
        s.p.ack_of("db").is_none(),
        "the acknowledgement ends with its failure"
    );
    // The next failure is its own: alerted and reminded again.
    s.event("db", Transition::Failed, t("13:00"));
    assert_eq!(kinds(&s.due(t("13:00"))), ["ops:failed:db"]);
    assert_eq!(kinds(&s.due(t("14:00"))), ["ops:reminder:db"]);
}

#[test]
fn an_acknowledgement_from_before_a_restart_keeps_reminders_off() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 0);
    s.set(
        "db",
        CheckAlerting {
            remind_every: Some(Duration::from_secs(3600)),
            ..CheckAlerting::default()
        },
    );
    s.down.insert("db".into());
    let ack = vigia_core::alert::Ack {
        by: "cli:root".into(),
        at: t("10:10"),
        since: t("10:00"),
    };
    s.p.restore_ack("db".into(), ack);
    let mut event = AlertEvent {
        host: "shop-01".into(),
        check: "db".into(),
        group: None,
        transition: Transition::Failed,
        message: "down".into(),
        value: None,
        failures: 3,
        threshold: 3,
        successes: 0,
        recover_after: 1,
        comment: "".into(),
        at: t("10:00"),
        previous_duration_ms: 0,
        failed_message: None,
        transcript: None,
        ack: None,
    };
    s.p.restore_reminder(event.clone(), t("10:30"));
    assert!(s.due(t("11:00")).is_empty());
    // An acknowledgement of an older failure does not cover this one.
    event.at = t("10:20");
    s.p.restore_reminder(event, t("10:30"));
    assert_eq!(kinds(&s.due(t("11:20"))), ["ops:reminder:db"]);
}

#[test]
fn notify_routes_a_check_to_its_channels_only() {
    let mut s = Sim::new(&[("ops", None), ("console", None)], Duration::ZERO, 0);
    s.set(
        "web",
        CheckAlerting {
            notify: Some(vec!["ops".into()]),
            ..CheckAlerting::default()
        },
    );
    s.event("web", Transition::Failed, t("10:00"));
    s.event("db", Transition::Failed, t("10:00"));
    let msgs = s.due(t("10:00"));
    let mut got = kinds(&msgs);
    got.sort();
    assert_eq!(got, ["console:failed:db", "ops:grouped:"]);
    let ops = msgs.iter().find(|m| &*m.channel == "ops").unwrap();
    let checks: Vec<&str> = ops.ctx.events.iter().map(|e| e.check.as_str()).collect();
    assert_eq!(checks, ["web", "db"]);
}

#[test]
fn a_check_with_its_own_send_window() {
    let mut s = Sim::new(&[("ops", None)], Duration::ZERO, 0);
    s.set(
        "backup",
        CheckAlerting {
            window: Some("office".into()),
            ..CheckAlerting::default()
        },
    );
    s.event("backup", Transition::Failed, t("03:00"));
    s.event("web", Transition::Failed, t("03:00"));
    assert_eq!(kinds(&s.due(t("03:00"))), ["ops:failed:web"]);
    let morning = s.due(t("08:00"));
    assert_eq!(kinds(&morning), ["ops:digest:"]);
    assert_eq!(
        morning[0].ctx.summary,
        ["backup failed 03:00, still failing"]
    );
}

#[test]
fn a_replica_s_cluster_notices_go_to_every_channel_and_read_well() {
    let mut s = Sim::new(&[("ops", None), ("console", None)], Duration::ZERO, 0);
    let notice = |reachable: bool, for_ms: u64| Item::Cluster {
        host: "shop-01".into(),
        replica: "mon-b".into(),
        reachable,
        error: if reachable { "" } else { "timed out" }.into(),
        for_ms,
        at: t("10:00"),
    };
    s.p.accept(1, notice(false, 30_000), t("10:00"));
    let msgs = s.due(t("10:00") + 1);
    assert_eq!(kinds(&msgs), ["ops:cluster:mon-b", "console:cluster:mon-b"]);
    let text = render_text("console", "cluster", &msgs[1].ctx);
    assert!(
        text.starts_with(
            "ALERT CLUSTER UNREACHABLE on shop-01 (replica mon-b): NATS cannot be reached for 30s (timed out); pinned checks go on here"
        ),
        "{text}"
    );
    s.p.accept(2, notice(true, 95_000), t("10:02"));
    let msgs = s.due(t("10:02") + 1);
    let text = render_text("console", "cluster", &msgs[1].ctx);
    assert!(
        text.starts_with("CLUSTER REACHABLE AGAIN on shop-01 (replica mon-b) after 1m35s: this replica takes part in the cluster again"),
        "{text}"
    );
}

/// A replica of a cluster that stops leading drops what it holds of the stream's items:
/// those go nowhere from here, the others still go out.
#[test]
fn forgotten_items_are_not_released() {
    let mut s = Sim::new(
        &[("tg", None), ("console", None)],
        Duration::from_secs(30),
        0,
    );
    s.event("web", Transition::Failed, t("10:00"));
    s.event("db", Transition::Failed, t("10:00"));
    // `web` came first: seq 1, held on both channels.
    let gone = s.p.forget(&|seq| seq == 1);
    assert_eq!(gone.len(), 2, "one entry per channel: {gone:?}");
    assert!(gone.iter().all(|(_, seq)| *seq == 1));
    assert_eq!(s.p.held_entries(), 2);
    let out = s.due(t("10:01"));
    assert_eq!(out.len(), 2, "{out:?}");
    for m in &out {
        assert_eq!(m.seqs, vec![2], "only db's entry goes out on {}", m.channel);
        assert_eq!(m.ctx.check, "db");
    }
}
