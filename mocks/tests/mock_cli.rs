//! The `vigia-mock` binary as a process: ports line, mode switches, refusing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use vigia_mocks::Ports;

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn set(control: u16, service: &str, mode: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "set",
            service,
            mode,
            "--control",
            &format!("127.0.0.1:{control}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `vigia-mock serve` on free ports (`slow` answers after 300 ms), killed on drop.
fn serve() -> (Child, Ports) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "serve",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--control-port",
            "0",
            "--telegram-port",
            "0",
            "--slow-delay",
            "300ms",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Child(child), serde_json::from_str(&line).unwrap())
}

#[test]
fn serve_switch_and_refuse() {
    let (_guard, ports) = serve();

    let r = http_get(ports.http, "/health").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with(r#"{"status":"ok"}"#), "{r}");

    set(ports.control, "http", "failing");
    assert!(http_get(ports.http, "/health")
        .unwrap()
        .starts_with("HTTP/1.1 500"));

    // The TCP line service.
    let mut s = TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
    s.write_all(b"PING\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert_eq!(reply, "OK PING\n");
    set(ports.control, "tcp", "failing");
    s.write_all(b"PING\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    assert_eq!(reply, "ERR PING\n");

    set(ports.control, "http", "refusing");
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", ports.http)).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "the HTTP port should refuse connections");
    set(ports.control, "http", "healthy");
    let mut back = false;
    for _ in 0..50 {
        if let Ok(r) = http_get(ports.http, "/health") {
            back = r.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(back, "the HTTP port should answer again");

    set(ports.control, "http", "slow");
    let t = std::time::Instant::now();
    assert!(http_get(ports.http, "/health")
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() >= Duration::from_millis(300));

    let bad = Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args([
            "set",
            "ftp",
            "healthy",
            "--control",
            &format!("127.0.0.1:{}", ports.control),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown service `ftp`"));
}

fn bot_call(port: u16, method: &str, body: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /bot1:x/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

fn mock_cli(control: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigia-mock"))
        .args(args)
        .args(["--control", &format!("127.0.0.1:{control}")])
        .output()
        .unwrap()
}

/// The Telegram side a user has: `telegram say` and `telegram press` queue updates that
/// `getUpdates` hands out (a press carries the button's own data, found by its label),
/// an offset confirms them, edits change the recorded message, and `telegram calls`
/// lists what the bot did.
#[test]
fn telegram_users_say_and_press() {
    let (_guard, ports) = serve();
    let (tg, control) = (ports.telegram, ports.control);

    let sent = bot_call(
        tg,
        "sendMessage",
        r#"{"chat_id":5,"text":"web failed","reply_markup":{"inline_keyboard":[[{"text":"Acknowledge","callback_data":"t1:ack"},{"text":"Silence 1h","callback_data":"t1:s3600"}]]}}"#,
    );
    let id = sent["result"]["message_id"].as_u64().unwrap();

    let out = mock_cli(
        control,
        &[
            "telegram",
            "say",
            "--chat",
            "5",
            "--user",
            "7",
            "--username",
            "ana",
            "/status now",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mock_cli(
        control,
        &[
            "telegram",
            "press",
            "--chat",
            "5",
            "--user",
            "7",
            "Silence 1h",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mock_cli(
        control,
        &["telegram", "press", "--chat", "5", "--user", "7", "Reboot"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no button `Reboot`"));

    let updates = bot_call(tg, "getUpdates", r#"{"offset":0,"timeout":0}"#)["result"].clone();
    let updates = updates.as_array().unwrap();
    assert_eq!(updates.len(), 2, "{updates:?}");
    let m = &updates[0]["message"];
    assert_eq!(m["text"], "/status now");
    assert_eq!(m["from"]["username"], "ana");
    assert_eq!(m["entities"][0]["type"], "bot_command");
    assert_eq!(m["entities"][0]["length"], 7);
    let q = &updates[1]["callback_query"];
    assert_eq!(q["data"], "t1:s3600");
    assert_eq!(q["message"]["message_id"].as_u64(), Some(id));
    assert_eq!(q["message"]["chat"]["id"], 5);

    // An offset past the first confirms it; a long poll with nothing new waits, then
    // answers empty.
    let next = updates[1]["update_id"].as_u64().unwrap() + 1;
    let t = std::time::Instant::now();
    let none = bot_call(
        tg,
        "getUpdates",
        &format!(r#"{{"offset":{next},"timeout":1}}"#),
    );
    assert_eq!(none["result"], serde_json::json!([]));
    assert!(t.elapsed() >= Duration::from_millis(900));

    // An edit changes the message; the same edit again is "not modified", as Telegram says.
    let edit = format!(
        r#"{{"chat_id":5,"message_id":{id},"text":"web failed\n\nsilenced","reply_markup":{{"inline_keyboard":[]}}}}"#
    );
    assert_eq!(bot_call(tg, "editMessageText", &edit)["ok"], true);
    let again = bot_call(tg, "editMessageText", &edit);
    assert_eq!(again["ok"], false);
    assert!(again["description"]
        .as_str()
        .unwrap()
        .contains("message is not modified"));
    bot_call(
        tg,
        "answerCallbackQuery",
        r#"{"callback_query_id":"cbq-2","text":"Silenced"}"#,
    );
    let out = mock_cli(control, &["messages"]);
    let messages: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(messages[0]["text"], "web failed\n\nsilenced");
    assert_eq!(messages[0]["edits"], 1);
    assert!(messages[0]["reply_markup"].is_null(), "the keyboard went");
    let out = mock_cli(control, &["telegram", "calls"]);
    let calls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let methods: Vec<&str> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["editMessageText", "editMessageText", "answerCallbackQuery"]
    );
}
