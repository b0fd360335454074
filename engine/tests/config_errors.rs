//! Config errors: exact messages, file:line:col, every problem of a file at once.

use std::path::Path;

use vigia_engine::config::{Config, Registry};

/// Writes `text` as config.yaml in a temp dir and returns every error, one per line.
fn errors_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let err = Config::load_and_build(&file, &Registry::builtin())
        .err()
        .expect("the config should be rejected")
        .to_string();
    // The temp dir's name differs each run: show it as `config.yaml`.
    err.replace(&format!("{}/", dir.path().display()), "")
}

#[test]
fn semantic_problems_are_all_reported_at_once() {
    let text = r#"
engine:
  state_dir: /tmp/vigia-test-unused
checks:
  - name: web
    type: http
    url: http://127.0.0.1:1/
    interval: 10s
    timeout: 20s
    threshold: 0
  - name: web
    type: htp
  - name: db
    type: tcp
    host: 127.0.0.1
    port: 70000
  - name: "bad name"
    type: ping
    host: 127.0.0.1
    recover_after: 0
"#;
    assert_eq!(
        errors_of(text),
        "\
config.yaml:9:14: checks[0].timeout: 20s is longer than the interval 10s: a check must finish before its next run
config.yaml:10:16: checks[0].threshold: must be at least 1 (the number of consecutive failures before the check is down)
config.yaml:11:11: checks[1].name: duplicate check name `web` (also used by checks[0])
config.yaml:12:11: checks[1].type: unknown check type `htp` (did you mean `http`?)
config.yaml:16:11: checks[2].port: 70000 is not a valid port (1-65535)
config.yaml:17:11: checks[3].name: `bad name` is not a valid check name: use letters, digits, `_`, `-` and `.`
config.yaml:20:20: checks[3].recover_after: must be at least 1 (the number of consecutive successes before the check is up again)"
    );
}

#[test]
fn type_errors_keep_line_and_column_and_do_not_hide_other_entries() {
    let text = "\
checks:
  - name: web
    type: http
    url: http://127.0.0.1:1/
    interval: 10
  - name: atto
    type: tcp
    host: 127.0.0.1
    port: 17000
    expect: OK
    read_timeout: soon
";
    assert_eq!(
        errors_of(text),
        "\
config.yaml:5:15: checks[0].interval: `10` has no unit: write 10s for seconds or 10ms for milliseconds
config.yaml:11:19: checks[1].read_timeout: `soon` is not a duration: a number must come before each unit (write it like 250ms, 10s, 5m, 1h or 1h30m)"
    );
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    let text = "\
engine:
  max_concurent_checks: 5
checks:
  - name: web
    type: http
    url: http://127.0.0.1:1/
    intervl: 10s
  - name: atto
    type: tcp
    host: 127.0.0.1
    prot: 1
";
    assert_eq!(
        errors_of(text),
        "\
config.yaml:2:3: engine.max_concurent_checks: unknown key `max_concurent_checks` (did you mean `max_concurrent_checks`?)
config.yaml:7:5: checks[0].intervl: unknown key `intervl` (did you mean `interval`?)
config.yaml:11:5: checks[1].prot: unknown key `prot` (did you mean `port`?)"
    );
}

#[test]
fn unknown_section_and_wrong_shapes() {
    assert_eq!(
        errors_of("engin:\n  hostname: x\nchecks: {}\n"),
        "\
config.yaml:1:1: engin: unknown section `engin` (did you mean `engine`?)
config.yaml:3:9: checks: `checks` must be a list, not a mapping"
    );
    assert_eq!(
        errors_of("- just\n- a list\n"),
        "config.yaml:1:1: the config must be a mapping with `engine:` and `checks:`, not a list"
    );
}

#[test]
fn yaml_syntax_error_has_a_position() {
    assert_eq!(
        errors_of("checks:\n  - name: web\n    type: [http\n"),
        "config.yaml:4:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'"
    );
}

#[test]
fn missing_required_keys() {
    assert_eq!(
        errors_of("checks:\n  - type: tcp\n    host: 127.0.0.1\n"),
        "config.yaml:2:5: checks[0]: missing field `name`"
    );
    assert_eq!(
        errors_of("checks:\n  - name: a\n    type: tcp\n    host: 127.0.0.1\n"),
        "config.yaml:2:5: checks[0]: missing field `port`"
    );
}

#[test]
fn a_missing_file_says_so() {
    let err = Config::load(Path::new("/nonexistent/config.yaml"))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "/nonexistent/config.yaml: cannot read the config file: No such file or directory (os error 2)"
    );
}

#[test]
fn bad_lines_of_ips_txt_are_warnings_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ips.txt"),
        "127.0.0.11 Till 1\n127.0.0.300 typo\n",
    )
    .unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "engine:\n  state_dir: st\nchecks:\n  - name: shops\n    type: terminals\n    file: ips.txt\n",
    )
    .unwrap();
    let (_, plan, warnings) = Config::load_and_build(&file, &Registry::builtin()).unwrap();
    assert_eq!(plan.checks.len(), 1);
    assert_eq!(&*plan.checks[0].name, "shops/127.0.0.11");
    let w: Vec<String> = warnings
        .iter()
        .map(|w| {
            w.to_string()
                .replace(&format!("{}/", dir.path().display()), "")
        })
        .collect();
    assert_eq!(
        w,
        ["ips.txt:2:1: `127.0.0.300` is not a valid IPv4 address; line skipped"]
    );
}

#[test]
fn the_shipped_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (_, plan, warnings) =
        Config::load_and_build(&root.join("config.yaml"), &Registry::builtin()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(plan.checks.len() >= 5);
}

#[test]
fn alerting_sections_are_checked_with_positions() {
    let text = r#"alerting:
  timezone: Mars/Olympus
windows:
  office: { days: [mon-fry], from: "08:00", to: "25:00" }
channels:
  ops:
    type: telegram
    token: "123:abc"
    chat_ids: []
    send_window: ofice
  hooks:
    type: webhok
    url: http://x/
  out:
    type: console
    templates:
      failed: "{% if check %}never closed"
      faild: "x"
checks:
  - name: web
    type: tcp
    host: 127.0.0.1
    port: 80
    notify: [opps]
    send_window: nights
    remind_every: 10s
    depends_on: [web, uplink]
"#;
    assert_eq!(
        errors_of(text),
        "\
config.yaml:2:13: alerting.timezone: `Mars/Olympus` is not a known time zone (write e.g. Europe/Lisbon or UTC)
config.yaml:4:19: windows.office.days: `mon-fry` is not a day or a range of days (mon, tue, ..., sun; mon-fri)
config.yaml:4:49: windows.office.to: `25:00` is not a time of day (write 08:00 or 17:30)
config.yaml:7:5: channels.ops: a telegram channel needs `chat_ids: [...]`: the chats to send to
config.yaml:8:12: channels.ops.token: never put the bot token in config.yaml: use `token_env: VIGIA_TELEGRAM_TOKEN` (an environment variable) or `token_file: /etc/vigia/telegram.token`
config.yaml:10:18: channels.ops.send_window: unknown window `ofice`: none are accepted here
config.yaml:12:11: channels.hooks.type: unknown channel type `webhok` (did you mean `webhook`?)
config.yaml:17:15: channels.out.templates.failed: the template does not compile: line 1: unexpected end of input, expected end of block
config.yaml:18:14: channels.out.templates.faild: unknown kind of message `faild` (did you mean `failed`?)
config.yaml:24:14: checks[0].notify[0]: unknown channel `opps` (did you mean `ops`?)
config.yaml:25:18: checks[0].send_window: unknown window `nights`: none are accepted here
config.yaml:26:19: checks[0].remind_every: 10s is too short (at least 1m)
config.yaml:27:17: checks[0].depends_on: a check cannot depend on itself
config.yaml:27:23: checks[0].depends_on[1]: unknown check `uplink`; expected one of: web"
    );
}

/// A duplicate key, two unknown keys of one mapping, value errors and a script that
/// does not load: all in one run, top to bottom.
#[test]
fn every_problem_of_a_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("checks")).unwrap();
    std::fs::write(
        dir.path().join("checks/bad.lua"),
        "return { check = function(ctx) return { ok = true } end, intervl = '10s' }\n",
    )
    .unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "engine:\n  state_dir: st\n  bogus: 1\n  bogus2: 2\nchecks:\n  - name: a\n    type: tcp\n    host: 127.0.0.1\n    port: \"80\"\n    prot: 1\n  - name: b\n    type: tcp\n    host: 127.0.0.1\n    port: 80\n    threshold: 1099511627776\n  - name: c\n    type: lua\n    script: checks/missing.lua\n  - name: d\n    type: lua\n    script: checks/bad.lua\n  - name: e\n    type: tcp\n    host: 127.0.0.1\n    port: 80\n    port: 81\n",
    )
    .unwrap();
    let err = Config::load_and_build(&file, &Registry::builtin())
        .err()
        .unwrap()
        .to_string()
        .replace(&format!("{}/", dir.path().display()), "");
    assert_eq!(
        err,
        "config.yaml:3:3: engine.bogus: unknown key `bogus`; expected one of: hostname, state_dir, status_log_interval, max_concurrent_checks, shutdown_grace, worker_threads, checks_dir, watch, history, record, record_size\n\
         config.yaml:4:3: engine.bogus2: unknown key `bogus2`; expected one of: hostname, state_dir, status_log_interval, max_concurrent_checks, shutdown_grace, worker_threads, checks_dir, watch, history, record, record_size\n\
         config.yaml:9:11: checks[0].port: \"80\" is quoted text; a port number (1-65535) is expected here (write it without quotes)\n\
         config.yaml:10:5: checks[0].prot: unknown key `prot` (did you mean `port`?)\n\
         config.yaml:15:16: checks[1].threshold: 1099511627776 is out of range; a whole number from 0 to 4294967295 is expected\n\
         config.yaml:26:5: duplicate key `port` (first given at line 25)\n\
         config.yaml:18:13: checks[2].script: checks/missing.lua: cannot read the script: No such file or directory (os error 2)\n\
         checks/bad.lua:1: unknown field `intervl` in the returned table (did you mean `interval`?)"
    );
}

#[test]
fn a_token_pasted_as_the_name_of_token_env_is_never_echoed() {
    let token = "123456789:AAH-secret-token-value_xyz";
    let err = errors_of(&format!(
        "channels:\n  ops:\n    type: telegram\n    token_env: \"{token}\"\n    chat_ids: [1]\n"
    ));
    assert!(!err.contains(token) && !err.contains("secret"), "{err}");
    assert!(
        err.starts_with(
            "config.yaml:4:16: channels.ops.token_env: is not the name of an environment variable"
        ),
        "{err}"
    );
}

#[test]
fn console_keys_need_commands_and_sane_buttons() {
    let err = errors_of(
        "channels:\n  ops:\n    type: telegram\n    token_env: T\n    chat_ids: [1]\n    admins: [7]\n    silence_buttons: [1h]\n  hook:\n    type: webhook\n    url: http://x\n    commands: true\n  chat:\n    type: telegram\n    token_env: T\n    chat_ids: [1]\n    commands: true\n    silence_buttons: [1h, 0s, 2h, 3h, 4h]\n",
    );
    assert_eq!(
        err,
        "config.yaml:6:13: channels.ops.admins: `admins` needs `commands: true` (the chat console it configures is off)\n\
config.yaml:7:22: channels.ops.silence_buttons: `silence_buttons` needs `commands: true` (the chat console it configures is off)\n\
config.yaml:11:15: channels.hook.commands: `commands` does not apply to a webhook channel\n\
config.yaml:17:22: channels.chat.silence_buttons: at most 4 silence buttons fit under a message\n\
config.yaml:17:22: channels.chat.silence_buttons.1: a silence lasts more than 0s and at most 366d"
    );
}

#[test]
fn an_alias_bomb_is_refused_with_its_position() {
    let mut text = String::from("x: &a [y, y, y, y, y, y, y, y, y]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"]
        .windows(2)
        .map(|w| (w[0], w[1]))
    {
        text.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(", ")
        ));
    }
    let err = errors_of(&text);
    assert!(
        err.starts_with("config.yaml:6:")
            && err.contains("aliases here would copy more than 100000 values"),
        "{err}"
    );
}

#[test]
fn a_name_with_a_newline_or_nul_is_shown_escaped() {
    let err = errors_of(
        "checks:\n  - name: \"a\\nb\\u0000c\"\n    type: tcp\n    host: 127.0.0.1\n    port: 80\n",
    );
    assert_eq!(
        err,
        "config.yaml:2:11: checks[0].name: `a\\nb\\0c` is not a valid check name: use letters, digits, `_`, `-` and `.`"
    );
}

#[test]
fn cluster_section_problems_are_all_reported_with_positions() {
    let text = r#"
engine:
  state_dir: /tmp/vigia-test-unused
cluster:
  nats: http://127.0.0.1:4222, nats://127.0.0.1:4223
  replica_id: "mon a"
  capacity: 0
  heartbeat: 100ms
  lease: 2500ms
  unreachable_after: 500ms
  labels: { "site x": fra, zone: "" }
  token_file: t
  user: u
  tls_cert: c.pem
  prefix: "a.b"
checks: []
"#;
    assert_eq!(
        errors_of(text),
        "\
config.yaml:5:9: cluster.nats: `http://127.0.0.1:4222` is not a NATS URL such as nats://10.0.0.5:4222
config.yaml:6:15: cluster.replica_id: `mon a`: use letters, digits, `-` and `_` (at most 64)
config.yaml:7:13: cluster.capacity: must be at least 1
config.yaml:8:14: cluster.heartbeat: 100ms is out of range (200ms-60s)
config.yaml:9:10: cluster.lease: 2.5s: NATS keeps whole seconds, say e.g. 3s
config.yaml:10:22: cluster.unreachable_after: 500ms is too short: at least 1s
config.yaml:11:11: cluster.labels: label `site x`: use letters, digits, `-` and `_`
config.yaml:11:11: cluster.labels: label `zone` has the value ``: give a word
config.yaml:13:9: cluster.user: token_file and user are both given: give one of credentials, token_file, or user + password_file
config.yaml:13:9: cluster.user: user and password_file go together
config.yaml:14:13: cluster.tls_cert: tls_cert and tls_key go together
config.yaml:15:11: cluster.prefix: `a.b`: use letters, digits, `-` and `_`"
    );
}

#[test]
fn cluster_keys_are_checked_by_name_and_nats_is_required() {
    assert_eq!(
        errors_of("cluster:\n  nats: nats://127.0.0.1:4222\n  leese: 3s\nchecks: []\n"),
        "config.yaml:3:3: cluster.leese: unknown key `leese` (did you mean `lease`?)"
    );
    assert_eq!(
        errors_of("cluster:\n  capacity: 10\nchecks: []\n"),
        "config.yaml:2:3: cluster: missing field `nats`"
    );
    assert_eq!(
        errors_of("cluster:\n  nats: nats://127.0.0.1:4222\n  heartbeat: 2s\n  lease: 3s\nchecks: []\n"),
        "config.yaml:4:10: cluster.lease: 3s is too short: at least 2s and two heartbeats (2s each)"
    );
}
