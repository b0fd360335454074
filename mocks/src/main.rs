//! `vigia-mock`: mock servers for Vigia's demo and tests.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigia_api::Dur;
use vigia_mocks::{start, Mode, Options};

#[derive(Parser)]
#[command(
    name = "vigia-mock",
    version,
    about = "Mock servers for Vigia's demo and tests: an HTTP API (GET /health), an \
             atto-like TCP line service (answers `OK <line>`), each switchable at run time \
             to healthy, failing, slow or refusing, and a Telegram Bot API that records \
             messages and fails on demand."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the servers. Prints one JSON line with the ports, e.g.
    /// {"http":18080,"tcp":17000,"control":18099,"telegram":18081}, then serves until
    /// SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// HTTP API port (0 = any free port).
        #[arg(long, default_value_t = 18080)]
        http_port: u16,
        /// TCP line service port (0 = any free port).
        #[arg(long, default_value_t = 17000)]
        tcp_port: u16,
        /// Control endpoint port (0 = any free port).
        #[arg(long, default_value_t = 18099)]
        control_port: u16,
        /// How long `slow` waits before answering.
        #[arg(long, default_value = "5s")]
        slow_delay: Dur,
        /// Telegram Bot API port (0 = any free port); point a channel's api_url at it.
        #[arg(long, default_value_t = 18081)]
        telegram_port: u16,
        /// Messages per second the Telegram mock accepts; more get 429 (0 = no limit).
        #[arg(long, default_value_t = 0)]
        telegram_rate: u64,
    },
    /// Switch a running mock: `vigia-mock set http failing`, `vigia-mock set telegram error`.
    Set {
        /// http, tcp or telegram
        service: String,
        /// http/tcp: healthy, failing, slow or refusing; telegram: ok, error, ratelimit,
        /// unauthorized, chat_not_found or hang
        mode: String,
        /// The control endpoint of the running mock.
        #[arg(long, default_value = "127.0.0.1:18099")]
        control: SocketAddr,
    },
    /// Print the man page vigia-mock(1), in roff.
    #[command(hide = true)]
    Man,
    /// Print the current modes of a running mock.
    Get {
        #[arg(long, default_value = "127.0.0.1:18099")]
        control: SocketAddr,
    },
    /// Print the messages the Telegram mock accepted, as JSON (as they read now, after
    /// edits, with their buttons).
    Messages {
        #[arg(long, default_value = "127.0.0.1:18099")]
        control: SocketAddr,
    },
    /// Act as a Telegram user towards the bot: send a message, press a button, or list
    /// what the bot did (answers, edits).
    Telegram {
        #[command(subcommand)]
        cmd: TelegramCommand,
        #[arg(long, default_value = "127.0.0.1:18099", global = true)]
        control: SocketAddr,
    },
    /// A cable with latency between two network namespaces (as root): creates a TAP
    /// device in each and copies frames between them after a one-way delay read from
    /// DELAY_FILE ("100" = 100 ms each way), re-read every 100 ms. Prints "ready" on
    /// stdout once both devices exist; give them addresses and bring them up with
    /// `ip -n NS addr add ... dev IF; ip -n NS link set IF up`. For kernels without
    /// `tc netem`.
    Wire {
        /// Namespace of the first end (`ip netns add` name).
        netns_a: String,
        /// TAP device to create there.
        if_a: String,
        netns_b: String,
        if_b: String,
        /// File holding the one-way delay in milliseconds.
        #[arg(long)]
        delay_file: std::path::PathBuf,
    },
}

/// Who writes or presses, and where.
#[derive(clap::Args)]
struct Who {
    #[arg(long)]
    chat: i64,
    #[arg(long)]
    user: i64,
    #[arg(long)]
    username: Option<String>,
}

impl Who {
    fn update(self) -> vigia_mocks::telegram::NewUpdate {
        vigia_mocks::telegram::NewUpdate {
            chat: self.chat,
            user: self.user,
            username: self.username,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum TelegramCommand {
    /// A user writes in a chat: `vigia-mock telegram say --chat 1 --user 7 /status`.
    Say {
        #[command(flatten)]
        who: Who,
        /// The message.
        text: String,
    },
    /// A user presses a button of a message the bot sent:
    /// `vigia-mock telegram press --chat 1 --user 7 "Silence 1h"`.
    Press {
        #[command(flatten)]
        who: Who,
        /// The message (default: the chat's last message with buttons).
        #[arg(long)]
        message: Option<u64>,
        /// Send this callback data instead of the button's (a forged press).
        #[arg(long)]
        data: Option<String>,
        /// The button's label.
        button: Option<String>,
    },
    /// What the bot called besides sending: answerCallbackQuery, editMessageText,
    /// setMyCommands…, as JSON.
    Calls,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            bind,
            http_port,
            tcp_port,
            control_port,
            slow_delay,
            telegram_port,
            telegram_rate,
        } => {
            serve(Options {
                http: SocketAddr::new(bind, http_port),
                tcp: SocketAddr::new(bind, tcp_port),
                control: SocketAddr::new(bind, control_port),
                slow_delay: slow_delay.get(),
                telegram: SocketAddr::new(bind, telegram_port),
                telegram_rate,
            })
            .await
        }
        Command::Set {
            service,
            mode,
            control,
        } => {
            if service == "telegram" {
                match mode.parse::<vigia_mocks::telegram::TgMode>() {
                    Ok(_) => call(control, "POST", &format!("/telegram/mode/{mode}")).await,
                    Err(e) => Err(anyhow::anyhow!(e)),
                }
            } else {
                match mode.parse::<Mode>() {
                    Ok(_) => call(control, "POST", &format!("/mode/{service}/{mode}")).await,
                    Err(e) => Err(anyhow::anyhow!(e)),
                }
            }
        }
        Command::Get { control } => call(control, "GET", "/mode").await,
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(|e| anyhow::anyhow!("cannot write the man page: {e}")),
        Command::Wire {
            netns_a,
            if_a,
            netns_b,
            if_b,
            delay_file,
        } => vigia_mocks::wire::run(
            vigia_mocks::wire::End {
                netns: netns_a,
                ifname: if_a,
            },
            vigia_mocks::wire::End {
                netns: netns_b,
                ifname: if_b,
            },
            delay_file,
            || {
                println!("ready");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            },
        )
        .map_err(|e| anyhow::anyhow!("wire: {e}")),
        Command::Messages { control } => call(control, "GET", "/telegram/messages").await,
        Command::Telegram { cmd, control } => {
            let update = match cmd {
                TelegramCommand::Calls => None,
                TelegramCommand::Say { who, text } => Some(vigia_mocks::telegram::NewUpdate {
                    text: Some(text),
                    ..who.update()
                }),
                TelegramCommand::Press {
                    who,
                    message,
                    data,
                    button,
                } => Some(vigia_mocks::telegram::NewUpdate {
                    press: button,
                    message_id: message,
                    data,
                    ..who.update()
                }),
            };
            match update {
                None => call(control, "GET", "/telegram/calls").await,
                Some(u) => match serde_json::to_string(&u) {
                    Ok(body) => call_with(control, "POST", "/telegram/updates", &body).await,
                    Err(e) => Err(e.into()),
                },
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigia-mock: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(opts: Options) -> anyhow::Result<()> {
    let mocks = start(opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen: {e}"))?;
    println!("{}", serde_json::to_string(&mocks.ports())?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn call(control: SocketAddr, method: &str, path: &str) -> anyhow::Result<()> {
    call_with(control, method, path, "").await
}

async fn call_with(
    control: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(control)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the mock's control endpoint {control}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {control}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    println!("{body}");
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!("the mock refused: {body}")
    }
}
