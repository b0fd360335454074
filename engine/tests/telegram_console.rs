//! The Telegram console end to end, as processes: `vigia run` against the Bot API mock
//! of `vigia-mock`, with users that press buttons and type commands through the mock.
//! Buttons that silence and acknowledge (and edit their message), `/status`, who may
//! act, forged and stale presses, and exactly-once handling of updates across kill -9.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "4242:SECRET-console-token";
const CHAT: i64 = 100;
const ADMIN: i64 = 7;
const OTHER: i64 = 8;
const WAIT: Duration = Duration::from_secs(20);

/// `web` fails (and may come back on `web_port`), `db` fails on the console channel only,
/// `api` is up. The Telegram channel answers commands, and only user 7 may act.
fn config(dir: &Path, mock: &Mock, web_port: u16, extra_web: &str) -> PathBuf {
    let (_closed, db_port) = listen();
    let (api, api_port) = listen();
    // Up for as long as the test runs: every connection accepted (and closed).
    std::thread::spawn(move || {
        for conn in api.incoming() {
            drop(conn);
        }
    });
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            r#"engine:
  hostname: e2e-host
  state_dir: state
  status_log_interval: 1h
  shutdown_grace: 2s
alerting:
  group_wait: 0s
  max_retry_wait: 1s
channels:
  console: {{ type: console }}
  ops:
    type: telegram
    token_env: VIGIA_E2E_TOKEN
    chat_ids: [{CHAT}]
    api_url: http://127.0.0.1:{tg}
    commands: true
    admins: [{ADMIN}]
checks:
  - name: web
    type: tcp
    host: 127.0.0.1
    port: {web_port}
    interval: 200ms
    timeout: 150ms
    threshold: 1
    comment: "restart the web service"
{extra_web}  - name: db
    type: tcp
    host: 127.0.0.1
    port: {db_port}
    interval: 200ms
    timeout: 150ms
    threshold: 4
    notify: [console]
    remind_every: 1m
  - name: api
    type: tcp
    host: 127.0.0.1
    port: {api_port}
    interval: 200ms
    timeout: 150ms
"#,
            tg = mock.telegram
        ),
    )
    .unwrap();
    file
}

struct Setup {
    _dir: tempfile::TempDir,
    mock: Mock,
    /// `web`'s port: closed (so it fails) until a test listens on it.
    web_port: u16,
    config: PathBuf,
}

fn setup(extra_web: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (web, web_port) = listen();
    drop(web);
    let config = config(dir.path(), &mock, web_port, extra_web);
    Setup {
        _dir: dir,
        mock,
        web_port,
        config,
    }
}

/// `web`'s failure, once the mock has it with its buttons.
fn first_alert(engine: &Proc, mock: &Mock) -> Value {
    wait_on(engine, "the failure with buttons", WAIT, || {
        message_with(mock, "<b>web</b> failed").filter(|m| !buttons(m).is_empty())
    })
}

/// One check as `vigia status --json` shows it.
fn check_json(config: &Path, name: &str) -> Value {
    let json: Value = serde_json::from_slice(&vigia(&["status", "--json"], config).stdout).unwrap();
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap()
}

fn start(config: &Path) -> Proc {
    start_engine_with(config, &[("VIGIA_E2E_TOKEN", TOKEN)])
}

/// The first Telegram message whose text contains `text`.
fn message_with(mock: &Mock, text: &str) -> Option<Value> {
    mock.telegram_messages()
        .into_iter()
        .find(|m| m["text"].as_str().is_some_and(|t| t.contains(text)))
}

/// The labels of a recorded message's buttons.
fn buttons(m: &Value) -> Vec<String> {
    m["reply_markup"]["inline_keyboard"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_array())
        .flatten()
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect()
}

fn press(mock: &Mock, user: i64, username: &str, message: u64, button: &str) -> u64 {
    mock.telegram_update(json!({
        "chat": CHAT, "user": user, "username": username, "message_id": message, "press": button
    }))
}

fn say(mock: &Mock, chat: i64, user: i64, text: &str) -> u64 {
    mock.telegram_update(json!({ "chat": chat, "user": user, "username": "ana", "text": text }))
}

/// Polls `f` until it gives `Some`; on a timeout, the engine's log is in the panic.
fn wait_on<T>(engine: &Proc, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(x) = f() {
            return x;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                engine.stdout.lock().unwrap().join("\n"),
                engine.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the engine has taken update `id` (it polled past it: handled and stored).
fn wait_taken(engine: &Proc, mock: &Mock, id: u64) {
    wait_on(engine, &format!("update {id} to be taken"), WAIT, || {
        let pending = mock.telegram_pending();
        (!pending.iter().any(|u| u["update_id"] == json!(id))).then_some(())
    });
}

fn answers(mock: &Mock) -> Vec<String> {
    mock.telegram_calls()
        .into_iter()
        .filter(|c| c["method"] == "answerCallbackQuery")
        .map(|c| c["args"]["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The failure's message comes with buttons; Silence 1h silences `web` (kept with
/// who did it, shown by `vigia silence list` and in its history), answers the press and
/// edits the message; no reminder of `web` comes while `db`'s does.
#[test]
fn a_press_on_silence_silences_the_check_and_edits_the_message() {
    let Setup {
        _dir,
        mock,
        web_port: _,
        config,
    } = setup("    remind_every: 1m\n");
    let engine = start(&config);
    let alert = first_alert(&engine, &mock);
    assert_eq!(
        buttons(&alert),
        ["Acknowledge", "Silence 1h", "Silence 24h"]
    );
    // The bot registered its commands, so Telegram offers them.
    wait_on(&engine, "setMyCommands", WAIT, || {
        mock.telegram_calls()
            .into_iter()
            .find(|c| c["method"] == "setMyCommands")
    });
    let id = alert["id"].as_u64().unwrap();
    press(&mock, ADMIN, "ana", id, "Silence 1h");
    let edited = wait_on(&engine, "the edited message", WAIT, || {
        message_with(&mock, "<b>web</b> failed").filter(|m| m["edits"].as_u64() >= Some(1))
    });
    let text = edited["text"].as_str().unwrap();
    assert!(text.contains("🔕 silenced for 1h by @ana at "), "{text}");
    assert_eq!(
        buttons(&edited),
        ["Acknowledge"],
        "the silence buttons went"
    );
    wait_on(&engine, "the toast", WAIT, || {
        answers(&mock)
            .into_iter()
            .find(|a| a.starts_with("Silenced for 1h"))
    });
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert!(
        list.contains("web") && list.contains("(by telegram:@ana)"),
        "{list}"
    );
    let events = engine.events();
    let added = events
        .iter()
        .find(|e| e["event"] == "silence_added")
        .unwrap();
    assert_eq!(added["by"], "telegram:@ana");
    let history = String::from_utf8_lossy(&vigia(&["history", "web"], &config).stdout).to_string();
    assert!(
        history.contains("SILENCED") && history.contains("by telegram:@ana"),
        "{history}"
    );

    // No reminder of web: db failed after it with the same reminder period, so once
    // db's reminder is out, web's would have been too.
    engine.wait_for_stderr("REMINDER db", Duration::from_secs(90));
    assert!(
        !engine.stderr_text().contains("REMINDER web"),
        "{}",
        engine.stderr_text()
    );
    assert!(message_with(&mock, "still failing").is_none());
}

/// Acknowledge: `vigia status` shows who, `/status` (asked by someone who may read but
/// not act) lists the down checks first, and the recovery names who acknowledged it.
#[test]
fn acknowledge_status_and_the_recovery_that_names_who_acknowledged() {
    let Setup {
        _dir,
        mock,
        web_port,
        config,
    } = setup("");
    let engine = start(&config);
    let alert = first_alert(&engine, &mock);
    press(
        &mock,
        ADMIN,
        "ana",
        alert["id"].as_u64().unwrap(),
        "Acknowledge",
    );
    let edited = wait_on(&engine, "the edited message", WAIT, || {
        message_with(&mock, "<b>web</b> failed").filter(|m| m["edits"].as_u64() >= Some(1))
    });
    assert!(
        edited["text"]
            .as_str()
            .unwrap()
            .contains("✔ acknowledged by @ana at "),
        "{edited}"
    );
    assert_eq!(buttons(&edited), ["Silence 1h", "Silence 24h"]);
    let status = String::from_utf8_lossy(&vigia(&["status"], &config).stdout).to_string();
    let line = status.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(
        line.contains("ACKED") && line.contains("acknowledged by telegram:@ana"),
        "{status}"
    );
    let web_json = check_json(&config, "web");
    assert_eq!(web_json["ack"]["by"], "telegram:@ana");
    assert!(engine
        .events()
        .iter()
        .any(|e| e["event"] == "ack" && e["check"] == "web" && e["by"] == "telegram:@ana"));
    // It survives a kill -9: the acknowledgement is in the store with the failure.
    let mut engine = engine;
    engine.signal(libc::SIGKILL);
    engine.wait_exit(WAIT);
    let engine = start(&config);
    let status = String::from_utf8_lossy(&vigia(&["status"], &config).stdout).to_string();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("ACKED")),
        "{status}"
    );
    // A second press of Acknowledge (from a phone that still shows it): nothing more.
    let data = alert["reply_markup"]["inline_keyboard"][0][0]["callback_data"].clone();
    mock.telegram_update(json!({
        "chat": CHAT, "user": ADMIN, "username": "ana", "message_id": alert["id"], "data": data
    }));
    wait_on(&engine, "the already-done toast", WAIT, || {
        answers(&mock)
            .into_iter()
            .find(|a| a.starts_with("Already done: ✔ acknowledged by @ana"))
    });

    // /status from a member who is not an admin: reading is allowed.
    engine.wait_for("db down", WAIT, |e| alerts(e, "db", "failed") == 1);
    // `vigia ack` does the same from a terminal.
    let out = vigia(&["ack", "db"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "db acknowledged: its reminders stop until it recovers.\n"
    );
    let out = vigia(&["ack", "api"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("api is up: there is no failure to acknowledge"));
    let out = vigia(&["ack", "wbe"], &config);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `web`?"));
    let asked = say(&mock, CHAT, OTHER, "/status");
    let reply = wait_on(&engine, "the /status reply", WAIT, || {
        mock.telegram_messages()
            .into_iter()
            .find(|m| m["reply_to"].is_i64() && m["text"].as_str().unwrap().contains("checks down"))
    });
    wait_taken(&engine, &mock, asked);
    let text = reply["text"].as_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("🔴 <b>e2e-host</b>: 2 of 3 checks down"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("• <b>db</b> down"),
        "newest outage first: {text}"
    );
    assert!(lines[1].contains("ack cli:"), "{text}");
    assert!(
        lines[2].starts_with("• <b>web</b> down") && lines[2].contains("ack @ana"),
        "{text}"
    );
    assert_eq!(lines.last(), Some(&"✅ 1 up"));

    // web comes back: the recovery says who acknowledged it and how long it was down.
    let _web = std::net::TcpListener::bind(("127.0.0.1", web_port)).unwrap();
    let recovered = wait_on(&engine, "the recovery", WAIT, || {
        message_with(&mock, "<b>web</b> recovered")
    });
    let text = recovered["text"].as_str().unwrap();
    assert!(text.contains("recovered on e2e-host after "), "{text}");
    assert!(text.contains("Acknowledged by telegram:@ana at "), "{text}");
    assert!(buttons(&recovered).is_empty());
    // The acknowledgement ended with the failure.
    let web_json = check_json(&config, "web");
    assert!(web_json["ack"].is_null(), "{web_json}");
    // A press on the old failure's message now is stale, and says so.
    press(
        &mock,
        ADMIN,
        "ana",
        alert["id"].as_u64().unwrap(),
        "Silence 1h",
    );
    wait_on(&engine, "the stale toast", WAIT, || {
        answers(&mock)
            .into_iter()
            .find(|a| a == "web has recovered since this alert: nothing was done.")
    });
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert!(list.contains("No silences."), "{list}");
}

/// Someone outside `admins` presses: nothing changes and nothing is answered, and the
/// log says so once per sender. A chat outside `chat_ids` gets no answer. A forged
/// press (another check's name in the data, a made-up token) is refused with a toast.
#[test]
fn who_may_act_and_forged_presses() {
    let Setup {
        _dir,
        mock,
        web_port: _,
        config,
    } = setup("");
    let engine = start(&config);
    let alert = first_alert(&engine, &mock);
    let id = alert["id"].as_u64().unwrap();
    let first = press(&mock, OTHER, "rui", id, "Silence 1h");
    let second = press(&mock, OTHER, "rui", id, "Acknowledge");
    let outsider = say(&mock, 999, ADMIN, "/status");
    wait_taken(&engine, &mock, first);
    wait_taken(&engine, &mock, second);
    wait_taken(&engine, &mock, outsider);
    assert!(answers(&mock).is_empty(), "{:?}", mock.telegram_calls());
    assert!(
        message_with(&mock, "checks down").is_none(),
        "no reply to chat 999"
    );
    let events = engine.events();
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "telegram_denied")
        .collect();
    assert_eq!(denied.len(), 2, "once per sender: {denied:?}");
    assert!(denied
        .iter()
        .any(|e| e["user"] == OTHER && e["chat"] == CHAT));
    assert!(denied.iter().any(|e| e["chat"] == 999));
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert!(list.contains("No silences."), "{list}");

    // Forged: another check's name in the data, then a made-up token.
    let token = alert["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    for data in [
        "db:ack".to_string(),
        format!("{token}:ack:db"),
        "00000000deadbeef:ack".into(),
    ] {
        let u = mock.telegram_update(json!({
            "chat": CHAT, "user": ADMIN, "username": "ana", "message_id": id, "data": data
        }));
        wait_taken(&engine, &mock, u);
    }
    wait_on(&engine, "three refusals", WAIT, || {
        (answers(&mock)
            .iter()
            .filter(|a| a.starts_with("This button does not belong to this message"))
            .count()
            == 3)
            .then_some(())
    });
    let json: Value =
        serde_json::from_slice(&vigia(&["status", "--json"], &config).stdout).unwrap();
    assert!(json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ack"].is_null()));
    assert_eq!(
        engine
            .events()
            .iter()
            .filter(|e| e["event"] == "telegram_refused")
            .count(),
        3
    );

    // Commands: an unknown one and an unknown name get a did-you-mean.
    say(&mock, CHAT, ADMIN, "/stauts");
    say(&mock, CHAT, ADMIN, "/ack wbe");
    wait_on(&engine, "did-you-means", WAIT, || {
        let texts: Vec<String> = mock
            .telegram_messages()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_string())
            .collect();
        (texts.iter().any(|t| t.contains("Did you mean /status?"))
            && texts.iter().any(|t| t.contains("Did you mean <b>web</b>?")))
        .then_some(())
    });

    // A Telegram outage backs the console off; checks run on.
    mock.set("telegram", "error");
    engine.wait_for("the poll warning", WAIT, |e| {
        e.iter().any(|x| x["event"] == "telegram_poll")
    });
    wait_rounds(&config, 3, WAIT);
    mock.set("telegram", "ok");
    engine.wait_for("polling again", Duration::from_secs(90), |e| {
        e.iter().filter(|x| x["event"] == "telegram_poll").count() == 2
    });
}

/// An update whose effect was stored is not handled again after kill -9; one that
/// came while the engine was down is handled once after the restart.
#[test]
fn an_update_is_handled_exactly_once_across_kill_9() {
    let Setup {
        _dir,
        mock,
        web_port: _,
        config,
    } = setup("");
    let mut engine = start(&config);
    wait_on(&engine, "the console to poll", WAIT, || {
        mock.telegram_calls()
            .into_iter()
            .find(|c| c["method"] == "setMyCommands")
    });
    let asked = say(&mock, CHAT, ADMIN, "/silence web 1h deploy");
    wait_on(&engine, "the reply", WAIT, || {
        message_with(&mock, "Silence #")
    });
    // Handled: its silence, its reply and the offset past it are one commit. The kill
    // waits for the engine to have stored the reply's delivery too: the mock has the
    // message a moment before that, and a kill inside that moment repeats it after the
    // restart — the one in-flight repeat the outbox allows, not a second handling.
    engine.wait_for("the reply's delivery to be stored", WAIT, |e| {
        e.iter()
            .any(|x| x["event"] == "delivered" && x["kind"] == "reply")
    });
    engine.signal(libc::SIGKILL);
    engine.wait_exit(WAIT);
    let engine = start(&config);
    wait_taken(&engine, &mock, asked);
    // Then a second command, while the engine runs: once it is answered, everything
    // before it was handled (in order) and the first was not handled again.
    let second = say(&mock, CHAT, ADMIN, "/silences");
    wait_on(&engine, "the /silences reply", WAIT, || {
        message_with(&mock, "<b>Silences</b>")
    });
    wait_taken(&engine, &mock, second);
    let replies: Vec<Value> = mock
        .telegram_messages()
        .into_iter()
        .filter(|m| m["text"].as_str().unwrap().contains("Silence #"))
        .collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains("deploy (by telegram:@ana)"), "{list}");

    // Killed before an update came: it is handled once after the restart.
    let mut engine = engine;
    engine.signal(libc::SIGKILL);
    engine.wait_exit(WAIT);
    let late = say(&mock, CHAT, ADMIN, "/silence api 2h");
    let engine = start(&config);
    wait_on(&engine, "the late reply", WAIT, || {
        message_with(&mock, "<b>api</b> are not sent")
    });
    wait_taken(&engine, &mock, late);
    let list = String::from_utf8_lossy(&vigia(&["silence", "list"], &config).stdout).to_string();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(
        engine
            .events()
            .iter()
            .filter(|e| e["event"] == "silence_added")
            .count(),
        1
    );
}
