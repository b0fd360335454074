//! The `vigia` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use vigia_api::Severity;
use vigia_core::alert::human_duration;
use vigia_core::command::{Command as EngineCommand, Reply};
use vigia_core::snapshot::{CheckSnapshot, StatusSnapshot};
use vigia_engine::config::{Config, Registry};
use vigia_engine::control;
use vigia_engine::logging::{self, LogFormat};
use vigia_engine::scheduler::{run_once, unix_ms, Stats};
use vigia_engine::supervisor::{self as engine, RunOptions};

/// `0.1.0 (commit 1e5e73e0c1ab)`: what `--version` prints after the name.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VIGIA_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "vigia",
    version = VERSION,
    about = "Vigia watches the servers that run a business: it runs checks on a schedule, \
             decides when a service is really down, and alerts once per change.",
    long_about = None,
    after_help = "Start with `vigia validate -c config.yaml`, then `vigia run -c config.yaml`.\n\
                  The README documents every config key and the JSON log format."
)]
struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        env = "VIGIA_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,

    /// Log format: json (one object per line) or text. Default: json unless stdout is a terminal.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    /// Log level or filter (error, warn, info, debug, trace). VIGIA_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine in the foreground (what systemd starts). SIGHUP reloads the config
    /// and ips.txt; SIGTERM stops after running checks finish.
    Run {
        /// Do not print alerts on stderr (the JSON log still has them).
        #[arg(long)]
        no_console: bool,
        /// Serve the HTTP API here instead of `http.listen` (127.0.0.1:0: a free port,
        /// named in the `http_listening` event).
        #[arg(long, env = "VIGIA_HTTP_LISTEN", value_name = "ADDR:PORT")]
        http_listen: Option<std::net::SocketAddr>,
        /// Record every check run into DIR as JSON lines (what each check saw), instead of
        /// `engine.record`; at most `engine.record_size` (default 256MiB) is kept.
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
    /// Check the config and the files it names; print every problem and exit 1 if any.
    Validate,
    /// Run one check (or every member of a group such as a terminals list) once and
    /// print the outcome. Exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (as Nagios).
    Check {
        /// The check's name, as in `name:` in the config.
        name: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the status of every check of the running engine, and for how long it has
    /// been in that state.
    Status {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a check's changes of status and its uptime (24 h, 7 d, 30 d and the
    /// asked window), from the result history in the store.
    History {
        /// The check's name.
        name: String,
        /// How far back to list transitions: 24h, 7d, 30d (history keeps the last 100).
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        since: vigia_api::Dur,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the check types this build knows.
    Plugins,
    /// Silence alerts of a check (or a pattern such as `terminals/*`) for a while. A
    /// silenced check is still checked and logged; silences expire on their own and
    /// survive restarts.
    Silence {
        #[command(subcommand)]
        cmd: SilenceCommand,
    },
    /// Acknowledge a check's failure: you are on it. Its reminders stop until it
    /// recovers (a new failure is alerted and reminded again); `vigia status`, the HTTP
    /// API and the status page show who acknowledged it. Needs the running engine.
    Ack {
        /// The check's name.
        name: String,
    },
    /// Replay a recording (`vigia run --record DIR`) through the same state machine and
    /// alert policy, on the recorded clock: the messages that would have gone out, per
    /// channel and when, and each check's timeline. Nothing is sent. Without -c it
    /// replays under the config the recording was made with; with -c OTHER.yaml it also
    /// answers "what if": the difference from that config (or from --base).
    Replay {
        /// The recording's directory.
        dir: PathBuf,
        /// Show what was released from this time on (the runs before still set the
        /// state): 2026-12-01 03:00 (the config's time zone), 2026-12-01, or RFC 3339.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Stop at this time.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Compare with this config instead of the one the recording was made with.
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The cluster (`cluster:` in the config): its replicas, where the floating checks
    /// run, and the commands of its replica scheduler. Talks to NATS, not to a local
    /// engine, so it works from any machine with the config.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); the
    /// Debian package installs them.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page vigia(1), in roff.
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// The live replicas (checks placed, capacity, leader, draining), and the checks
    /// stopped, waiting for room, or moving.
    Status {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// How many checks a replica runs, asked of it now (every live one without REPLICA).
    Info { replica: Option<String> },
    /// Start floating checks: round-robin over the replicas, skipping those at capacity;
    /// says how many started and why the others did not.
    Start(SelectArgs),
    /// Stop floating checks where they run; they stay stopped (over restarts) until
    /// `start`. A check not running anywhere is "not monitored".
    Stop(SelectArgs),
    /// Move every floating check off REPLICA; it takes no new ones until `undrain`.
    Drain { replica: String },
    /// Let REPLICA take checks again (it gets some at the next `rebalance`).
    Undrain { replica: String },
    /// Move checks so that every replica runs about as many (within capacity).
    Rebalance {
        /// Only say what would move.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct SelectArgs {
    /// Check names, or group names (all members of the group).
    checks: Vec<String>,
    /// Checks with this label, e.g. --label company=acme (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Every floating check of the config.
    #[arg(long)]
    all: bool,
}

impl SelectArgs {
    fn selector(self) -> Result<vigia_engine::cluster::Selector, String> {
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.labels {
            let Some((k, v)) = l.split_once('=') else {
                return Err(format!(
                    "--label {l}: give KEY=VALUE, e.g. --label company=acme"
                ));
            };
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let sel = vigia_engine::cluster::Selector {
            checks: self.checks,
            labels,
            all: self.all,
        };
        if sel.is_empty() {
            return Err("name checks or groups, or give --label KEY=VALUE or --all".into());
        }
        Ok(sel)
    }
}

#[derive(Subcommand)]
enum SilenceCommand {
    /// Silence CHECK or PATTERN (`*` matches anything): `vigia silence add web --for 2h --reason "deploy"`.
    Add {
        /// A check name, or a pattern with `*`.
        pattern: String,
        /// How long: 30m, 2h, 1d12h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: vigia_api::Dur,
        /// Why, for whoever looks later.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The silences in force.
    List,
    /// End a silence now.
    Remove {
        /// Its id, as `vigia silence list` shows it.
        id: u64,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `vigia replay` replays under the recorded config unless -c says otherwise.
    let config_given =
        matches.value_source("config") != Some(clap::parser::ValueSource::DefaultValue);
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose output goes to `head` ends quietly when the pipe closes, as
        // other Unix tools do, instead of panicking in println!. `run` keeps Rust's
        // default (SIGPIPE ignored): a closed log pipe must not kill the engine.
        // SAFETY: setting a signal's disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let format = cli.log_format.unwrap_or_else(LogFormat::detect);
    // Only `run` logs continuously; the other commands print for a person and log warnings.
    let level = match cli.command {
        Command::Run { .. } => cli.log_level.as_str(),
        _ => "warn",
    };
    logging::init(format, level);
    // One worker by default: measured at 1 000 checks/s, a second worker costs ~50% more
    // CPU per check in wakeups between the two, for nothing until checks do heavy work.
    let workers = match &cli.command {
        Command::Run { .. } => Config::load(&cli.config)
            .map(|c| c.engine.worker_threads)
            .unwrap_or(1),
        _ => 1,
    };
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build();
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigia: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run {
                no_console,
                http_listen,
                record,
            } => cmd_run(&cli.config, !no_console, http_listen, record).await,
            Command::Validate => cmd_validate(&cli.config),
            Command::Check { name, json } => cmd_check(&cli.config, &name, json).await,
            Command::Status { json } => cmd_status(&cli.config, json).await,
            Command::History { name, since, json } => {
                cmd_history(&cli.config, &name, since, json).await
            }
            Command::Plugins => cmd_plugins(),
            Command::Silence { cmd } => cmd_silence(&cli.config, cmd).await,
            Command::Ack { name } => cmd_ack(&cli.config, &name).await,
            Command::Cluster { cmd } => cmd_cluster(&cli.config, cmd).await,
            Command::Replay {
                dir,
                from,
                to,
                base,
                json,
            } => cmd_replay(
                &dir,
                config_given.then_some(cli.config.as_path()),
                base.as_deref(),
                (from.as_deref(), to.as_deref()),
                json,
            ),
            Command::Completions { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "vigia", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man => {
                let man = clap_mangen::Man::new(Cli::command());
                match man.render(&mut std::io::stdout()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("vigia: cannot write the man page: {e}");
                        ExitCode::from(1)
                    }
                }
            }
        }
    })
}

async fn cmd_run(
    config: &Path,
    console: bool,
    http_listen: Option<std::net::SocketAddr>,
    record: Option<PathBuf>,
) -> ExitCode {
    vigia_engine::fds::raise();
    match engine::run(RunOptions {
        config: config.to_path_buf(),
        console,
        http_listen,
        record,
    })
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", "{e:#}");
            eprintln!("vigia: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn cmd_replay(
    dir: &Path,
    config: Option<&Path>,
    base: Option<&Path>,
    (from, to): (Option<&str>, Option<&str>),
    json: bool,
) -> ExitCode {
    use vigia_engine::replay;
    let origin = match replay::origin(dir) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vigia: {e}");
            return ExitCode::from(1);
        }
    };
    let recorded = origin.config.clone().filter(|p| p.exists());
    let Some(primary) = config.map(Path::to_path_buf).or(recorded.clone()) else {
        eprintln!(
            "vigia: the recording does not name the config it was made with (or it is gone): give one with -c"
        );
        return ExitCode::from(1);
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    let base = base
        .map(Path::to_path_buf)
        .or(recorded.filter(|r| !same(r, &primary)));
    let mut sides = Vec::new();
    for path in base.iter().chain([&primary]) {
        match replay::Side::load(path, origin.host.as_deref()) {
            Ok(s) => sides.push(s),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("vigia: {} cannot be used for the replay.", path.display());
                return ExitCode::from(1);
            }
        }
    }
    let tz = sides[sides.len() - 1].tz.clone();
    let mut window = [None, None];
    for (i, t) in [from, to].into_iter().enumerate() {
        if let Some(t) = t {
            match replay::parse_time(t, &tz) {
                Ok(ms) => window[i] = Some(ms),
                Err(e) => {
                    eprintln!("vigia: --{}: {e}", if i == 0 { "from" } else { "to" });
                    return ExitCode::from(2);
                }
            }
        }
    }
    let problems = replay::feed(dir, &mut sides, window[0], window[1]);
    if json {
        println!("{:#}", replay::json(&sides, &problems));
    } else {
        let last = &sides[sides.len() - 1];
        print!("{}", replay::report(last, &problems));
        if sides.len() == 2 {
            println!();
            print!("{}", replay::what_if(&sides[0], &sides[1]));
        }
    }
    ExitCode::SUCCESS
}

fn cmd_validate(path: &Path) -> ExitCode {
    let registry = Registry::builtin();
    match Config::load_and_build(path, &registry) {
        Ok((_, plan, _)) if !plan.broken.is_empty() => {
            for b in &plan.broken {
                eprintln!("{}", b.error);
            }
            let n = plan.broken.len();
            eprintln!(
                "{n} script{} do{} not load.",
                plural(n),
                if n == 1 { "es" } else { "" }
            );
            ExitCode::from(1)
        }
        Ok((config, plan, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: OK, {} check{} from {} entr{}{}.",
                path.display(),
                plan.checks.len(),
                plural(plan.checks.len()),
                config.checks.len(),
                if config.checks.len() == 1 { "y" } else { "ies" },
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning{}", warnings.len(), plural(warnings.len()))
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem{} found.", errors.len(), plural(errors.len()));
            ExitCode::from(1)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

async fn cmd_check(path: &Path, name: &str, json: bool) -> ExitCode {
    let registry = Registry::builtin();
    let (_, plan) = match engine::load_plan(path, &registry) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    let selected: Vec<_> = plan
        .checks
        .iter()
        .filter(|c| &*c.name == name || c.group.as_deref() == Some(name))
        .cloned()
        .collect();
    if selected.is_empty() {
        for b in &plan.broken {
            eprintln!("vigia: {}", b.error);
        }
        let names = plan.checks.iter().map(|c| &*c.name);
        let hint = vigia_api::yaml::did_you_mean(name, names)
            .map(|b| format!(" (did you mean `{b}`?)"))
            .unwrap_or_default();
        eprintln!(
            "vigia: no enabled check is named `{name}` in {}{hint}",
            path.display()
        );
        return ExitCode::from(3);
    }
    let stats = Stats::default();
    let runs = selected.iter().map(|spec| {
        let stats = &stats;
        async move {
            let start = std::time::Instant::now();
            let outcome = run_once(spec, stats).await;
            (spec, outcome, start.elapsed())
        }
    });
    let results = futures::future::join_all(runs).await;
    let mut worst = 0u8;
    for (spec, outcome, took) in &results {
        let code = match outcome.severity {
            Severity::Ok => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
            Severity::Unknown => 3,
        };
        // UNKNOWN (3) is worse than WARNING but not than CRITICAL in a worst-of list.
        let rank = |c: u8| match c {
            0 => 0,
            1 => 1,
            3 => 2,
            _ => 3,
        };
        if rank(code) > rank(worst) {
            worst = code;
        }
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "check": &*spec.name,
                    "target": spec.check.target(),
                    "severity": outcome.severity,
                    "ok": outcome.is_ok(),
                    "value": outcome.value,
                    "message": outcome.message,
                    "duration_ms": took.as_secs_f64() * 1000.0,
                })
            );
        } else {
            let label = match outcome.severity {
                Severity::Ok => "OK",
                Severity::Warning => "WARNING",
                Severity::Critical => "CRITICAL",
                Severity::Unknown => "UNKNOWN",
            };
            println!("{label} {}: {}", spec.name, outcome.message);
        }
    }
    ExitCode::from(worst)
}

/// In a cluster: each floating check as the cluster has it, and who runs each check;
/// the line that heads the table (or why the cluster could not be read).
async fn cluster_view(config: &Config, view: &mut StatusSnapshot) -> Option<String> {
    let c = config.cluster.as_ref()?;
    let me = config.replica_id()?;
    Some(
        match vigia_engine::cluster::merge_status(c, &me, view).await {
            Ok(head) => head,
            Err(e) => format!(
                "The cluster's map cannot be read ({e}): what follows is this replica's own view ({me}); floating checks may run elsewhere."
            ),
        },
    )
}

async fn cmd_status(path: &Path, json: bool) -> ExitCode {
    // Only the sections are read (no check is built, no script runs): a config with a
    // broken check still has a socket.
    let config = match config_of(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state_dir = config.engine.state_dir.clone();
    let socket = state_dir.join(control::SOCKET_FILE);
    match control::send(&socket, &EngineCommand::Status).await {
        Ok(Reply::Status(mut view)) => {
            let head = cluster_view(&config, &mut view).await;
            if json {
                println!("{}", serde_json::to_string(&view).unwrap_or_default());
            } else {
                print_status(&view, None, head.as_deref());
            }
            ExitCode::SUCCESS
        }
        Ok(Reply::Error { error }) => {
            eprintln!("vigia: {error}");
            ExitCode::from(1)
        }
        Ok(other) => {
            eprintln!("vigia: unexpected answer from the engine: {other:?}");
            ExitCode::from(1)
        }
        Err(e) => {
            // Not running: show what it saved, if the store is free to read.
            match vigia_engine::store::read_checks(&state_dir) {
                Ok(saved) if !saved.is_empty() => {
                    let mut checks: Vec<_> = saved.into_iter().collect();
                    checks.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut view = StatusSnapshot {
                        now: unix_ms(),
                        config: path.display().to_string(),
                        checks: checks
                            .iter()
                            .map(|(name, state)| CheckSnapshot::of_state(name, state))
                            .collect(),
                        ..Default::default()
                    };
                    let head = cluster_view(&config, &mut view).await;
                    if json {
                        println!("{}", serde_json::to_string(&view).unwrap_or_default());
                    } else {
                        print_status(&view, Some(&e.to_string()), head.as_deref());
                    }
                    ExitCode::from(3)
                }
                _ => {
                    eprintln!("vigia: {e}");
                    ExitCode::from(3)
                }
            }
        }
    }
}

fn print_status(view: &StatusSnapshot, not_running: Option<&str>, cluster: Option<&str>) {
    let down = view.checks.iter().filter(|c| !c.status).count();
    match not_running {
        None => println!(
            "vigia on {} (pid {}, up {}): {} checks, {} down",
            view.host,
            view.pid,
            human_duration(view.now.saturating_sub(view.started_at)),
            view.checks.len(),
            down
        ),
        Some(why) => println!(
            "{why}\nLast saved state ({} checks, {} down):",
            view.checks.len(),
            down
        ),
    }
    if let Some(s) = view.stats.as_ref().filter(|s| s.out_of_fds > 0) {
        println!(
            "WARNING: {} check runs failed for lack of file descriptors (open-files limit {}): raise LimitNOFILE in the systemd unit, or lower engine.max_concurrent_checks.",
            s.out_of_fds, s.fd_limit
        );
    }
    if let Some(line) = cluster {
        println!("{line}");
    }
    let width = view
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    // In a cluster, who runs each check.
    let rwidth = view
        .checks
        .iter()
        .filter_map(|c| c.replica.as_ref().map(|r| r.len().max(7) + 2))
        .max()
        .unwrap_or(0);
    let replica_col = |r: Option<&str>| match rwidth {
        0 => String::new(),
        w => format!("{:w$}", r.unwrap_or("-"), w = w),
    };
    println!(
        "{:width$}  {:6}  {:>8}  {:>8}  {}LAST RESULT",
        "CHECK",
        "STATUS",
        "FOR",
        "FAILURES",
        replica_col(Some("REPLICA"))
    );
    let mut checks: Vec<&CheckSnapshot> = view.checks.iter().collect();
    // Down first: that is what the operator came for.
    checks.sort_by(|a, b| a.status.cmp(&b.status).then(a.name.cmp(&b.name)));
    for c in checks {
        let status = match (&c.ack, c.status) {
            (_, true) => "OK",
            (Some(_), false) => "ACKED",
            (None, false) => "DOWN",
        };
        let failures = if c.threshold > 0 {
            format!("{}/{}", c.failures, c.threshold)
        } else {
            c.failures.to_string()
        };
        let mut last = match (&c.last, &c.replica) {
            (Some(l), _) => l.message.clone(),
            // In a cluster, a check of another replica: its owner shares its state on
            // each change, not each run.
            (None, Some(r)) if c.kind.is_empty() => {
                format!("(runs on {r}; no change since it started there)")
            }
            (None, _) => "(not run yet)".into(),
        };
        if let Some(a) = &c.ack {
            last = format!(
                "{last} (acknowledged by {} {} ago)",
                a.by,
                human_duration(view.now.saturating_sub(a.at))
            );
        }
        let since = match c.changed_at {
            0 => "-".to_string(),
            at => human_duration(view.now.saturating_sub(at)),
        };
        println!(
            "{:width$}  {:6}  {:>8}  {:>8}  {}{}",
            c.name,
            status,
            since,
            failures,
            replica_col(c.replica.as_deref()),
            last
        );
    }
    if !view.channels.is_empty() {
        let width = view
            .channels
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(7)
            .max(7);
        println!(
            "\n{:width$}  {:>7}  {:>9}  {:>6}  LAST ERROR",
            "CHANNEL", "PENDING", "DELIVERED", "FAILED"
        );
        for (key, t) in &view.channels {
            let last = match (&t.last_error, t.last_error_at) {
                (Some(e), Some(at)) => {
                    format!("{} ago: {e}", human_duration(view.now.saturating_sub(at)))
                }
                (Some(e), None) => e.clone(),
                _ => "-".into(),
            };
            let last = match t.asked_wait_ms {
                Some(ms) if t.pending > 0 => format!(
                    "{last} (the server asks to wait {}; retried sooner, at alerting.max_retry_wait)",
                    human_duration(ms)
                ),
                _ => last,
            };
            println!(
                "{key:width$}  {:>7}  {:>9}  {:>6}  {last}",
                t.pending, t.delivered, t.failed
            );
        }
    }
}

async fn cmd_silence(path: &Path, cmd: SilenceCommand) -> ExitCode {
    let config = match config_of(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state_dir = config.engine.state_dir.clone();
    let socket = state_dir.join(control::SOCKET_FILE);
    let command = match &cmd {
        SilenceCommand::Add {
            pattern,
            duration,
            reason,
        } => EngineCommand::SilenceAdd {
            pattern: pattern.clone(),
            for_ms: u64::try_from(duration.get().as_millis()).unwrap_or(u64::MAX),
            reason: reason.clone(),
            by: cli_user(),
        },
        SilenceCommand::List => EngineCommand::SilenceList,
        SilenceCommand::Remove { id } => EngineCommand::SilenceRemove { id: *id },
    };
    let reply = match control::send(&socket, &command).await {
        Ok(r) => r,
        // In a cluster the silences are the cluster's, which only a running engine
        // reaches.
        Err(_) if config.cluster.is_some() => {
            eprintln!("No engine runs on this replica ({}): in a cluster, silences are kept in NATS by the running replicas. Run `vigia silence` where `vigia run` runs (see `vigia cluster status`).", socket.display());
            return ExitCode::from(1);
        }
        // Not running: the silences are in the store, which is then free.
        Err(_) => vigia_engine::silences::offline(&state_dir, &command),
    };
    let now = unix_ms();
    match reply {
        Reply::Silence(s) => {
            let length = match &cmd {
                SilenceCommand::Add { duration, .. } => duration.to_string(),
                _ => human_duration(s.until.saturating_sub(s.created_at)),
            };
            println!(
                "Silence {} added: alerts of `{}` are not sent for {length}.",
                s.id, s.pattern
            )
        }
        Reply::Silences { silences } => {
            if silences.is_empty() {
                println!("No silences.");
            }
            for s in silences {
                let by = if s.by.is_empty() {
                    String::new()
                } else {
                    format!(" (by {})", s.by)
                };
                println!(
                    "{:>6}  {:24}  {:>10} left  {}{by}",
                    s.id,
                    s.pattern,
                    human_duration(s.until.saturating_sub(now)),
                    s.reason
                );
            }
        }
        Reply::Removed { id } => println!("Silence {id} removed."),
        other => return refused(other),
    }
    ExitCode::SUCCESS
}

/// The config's `engine.state_dir` (where the store and the control socket are), or the
/// config's problems printed and exit 1.
fn state_dir_of(path: &Path) -> Result<std::path::PathBuf, ExitCode> {
    config_of(path).map(|c| c.engine.state_dir)
}

/// The config's sections (no check built, no script run), or its problems printed and
/// exit 1.
fn config_of(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

/// `cli:ana`: who acts from this terminal, as silences and acknowledgements keep it.
fn cli_user() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn cmd_cluster(path: &Path, cmd: ClusterCmd) -> ExitCode {
    use vigia_engine::cluster::{self, ClusterCommand};
    let cfg = match Config::load(path) {
        Ok(c) => match c.cluster {
            Some(cl) => cl,
            None => {
                eprintln!(
                    "vigia: {} has no `cluster:` section: this engine runs standalone",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("vigia: the config has problems:\n{e}");
            return ExitCode::from(2);
        }
    };
    let cfg = &cfg;
    let command = |c: ClusterCommand| async move { cluster::command(cfg, &c).await };
    let result = match cmd {
        ClusterCmd::Status { json } => cluster::status(cfg, json).await,
        ClusterCmd::Info { replica } => cluster::info(cfg, replica.as_deref()).await,
        ClusterCmd::Start(a) => match a.selector() {
            Ok(s) => command(ClusterCommand::Start(s)).await,
            Err(e) => Err(e),
        },
        ClusterCmd::Stop(a) => match a.selector() {
            Ok(s) => command(ClusterCommand::Stop(s)).await,
            Err(e) => Err(e),
        },
        ClusterCmd::Drain { replica } => command(ClusterCommand::Drain(replica)).await,
        ClusterCmd::Undrain { replica } => command(ClusterCommand::Undrain(replica)).await,
        ClusterCmd::Rebalance { dry_run } => command(ClusterCommand::Rebalance { dry_run }).await,
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigia: {e}");
            ExitCode::from(1)
        }
    }
}

async fn cmd_ack(path: &Path, name: &str) -> ExitCode {
    let state_dir = match state_dir_of(path) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let socket = state_dir.join(control::SOCKET_FILE);
    let command = EngineCommand::Ack {
        name: name.to_string(),
        by: cli_user(),
    };
    match control::send(&socket, &command).await {
        Ok(Reply::Acked {
            check,
            ack,
            already,
        }) => {
            let at = local_time(ack.at);
            if already {
                println!("{check} was already acknowledged by {} at {at}.", ack.by);
            } else {
                println!("{check} acknowledged: its reminders stop until it recovers.");
            }
            ExitCode::SUCCESS
        }
        Ok(other) => refused(other),
        Err(e) => {
            eprintln!("vigia: {e} (an acknowledgement needs the running engine)");
            ExitCode::from(3)
        }
    }
}

async fn cmd_history(path: &Path, name: &str, since: vigia_api::Dur, json: bool) -> ExitCode {
    let state_dir = match state_dir_of(path) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let since_ms = unix_ms().saturating_sub(since.get().as_millis() as u64);
    let command = EngineCommand::History {
        name: name.to_string(),
        since_ms,
    };
    let socket = state_dir.join(control::SOCKET_FILE);
    let reply = match control::send(&socket, &command).await {
        Ok(r) => r,
        Err(_) => vigia_engine::history::offline(&state_dir, name, since_ms),
    };
    let report = match reply {
        Reply::History(r) => r,
        other => return refused(other),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    use vigia_core::history::percent;
    let uptime: Vec<String> = report
        .uptime
        .iter()
        .map(|u| format!("{} {}", u.window, percent(u.ratio())))
        .collect();
    println!("{}: uptime {}", report.check, uptime.join(", "));
    if report.transitions.is_empty() {
        println!(
            "No change of status in the last {}.",
            human_duration(report.now.saturating_sub(report.since))
        );
        return ExitCode::SUCCESS;
    }
    println!("\n{:25}  {:9}  {:>9}  MESSAGE", "WHEN", "STATUS", "AFTER");
    for t in &report.transitions {
        let when = local_time(t.at);
        let to = match t.to.as_str() {
            "failed" => "DOWN",
            "recovered" => "UP",
            "acknowledged" => "ACK",
            "silenced" => "SILENCED",
            other => other,
        };
        println!(
            "{when:25}  {to:9}  {:>9}  {}",
            human_duration(t.after_ms),
            t.message.lines().next().unwrap_or("")
        );
    }
    ExitCode::SUCCESS
}

/// `2026-12-02 10:32:05 WET`: a unix ms time in the system's zone.
fn local_time(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|ts| {
            ts.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|_| ms.to_string())
}

/// An answer the command did not ask for: the engine's refusal, or a surprise.
fn refused(reply: Reply) -> ExitCode {
    match reply {
        Reply::Error { error } => eprintln!("vigia: {error}"),
        other => eprintln!("vigia: unexpected answer from the engine: {other:?}"),
    }
    ExitCode::from(1)
}

fn cmd_plugins() -> ExitCode {
    let registry = Registry::builtin();
    let width = registry.kinds().map(str::len).max().unwrap_or(0);
    for f in registry.factories() {
        println!("{:width$}  {}", f.kind(), f.summary());
    }
    ExitCode::SUCCESS
}
