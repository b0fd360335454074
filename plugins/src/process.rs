//! `type: process` — a process is running, found in /proc by name, by command line, or
//! through a pid file (the original "Botasky" collector's "process vanished" alert).
//!
//! ```yaml
//! - name: mariadb_process
//!   type: process
//!   process: mariadbd                      # /proc/PID/comm, exactly
//! - name: atto_daemon
//!   type: process
//!   pid_file: /run/atto.pid                # the pid in it must be alive
//!   process: atto                          # ... and be this program (a reused pid is not)
//! - name: workers
//!   type: process
//!   cmdline: "celery worker"               # a part of /proc/PID/cmdline
//!   min: 4
//! ```

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Node,
    RunContext,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program's name as the kernel knows it (`/proc/PID/comm`, at most 15 characters).
    #[serde(default)]
    pub process: Option<String>,
    /// A part of the full command line (`/proc/PID/cmdline`, arguments joined by spaces).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// A file holding the pid of the process.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// At least this many matching processes (default 1).
    #[serde(default = "one")]
    pub min: usize,
    /// At most this many (default: no limit).
    #[serde(default)]
    pub max: Option<usize>,
}

fn one() -> usize {
    1
}

impl ProcessConfig {
    pub fn validate(&self, path: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.process.is_none() && self.cmdline.is_none() && self.pid_file.is_none() {
            errors.push(ConfigError::new(
                path,
                "say which process: `process: NAME`, `cmdline: TEXT` or `pid_file: PATH`",
            ));
        }
        if let Some(p) = &self.process {
            if p.is_empty() || p.len() > 15 {
                errors.push(ConfigError::new(
                    &join_path(path, "process"),
                    format!("`{p}` cannot be a process name: the kernel keeps 1 to 15 characters (use `cmdline:` for longer ones)"),
                ));
            }
        }
        if let Some(max) = self.max {
            if max < self.min {
                errors.push(ConfigError::new(
                    &join_path(path, "max"),
                    format!("{max} is less than min ({})", self.min),
                ));
            }
        }
        if self.pid_file.is_some() && (self.min != 1 || self.max.is_some()) {
            errors.push(ConfigError::new(
                path,
                "`min`/`max` do not apply with `pid_file` (a pid file names one process)",
            ));
        }
        errors
    }
}

pub struct ProcessCheck {
    process: Option<String>,
    cmdline: Option<String>,
    pid_file: Option<PathBuf>,
    min: usize,
    max: Option<usize>,
    proc_root: PathBuf,
}

fn comm(root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn cmdline(root: &Path, pid: u32) -> Option<String> {
    std::fs::read(root.join(pid.to_string()).join("cmdline"))
        .ok()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// A zombie has exited: it is not "running".
fn alive(root: &Path, pid: u32) -> bool {
    match std::fs::read_to_string(root.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl ProcessCheck {
    fn what(&self) -> String {
        match (&self.process, &self.cmdline) {
            (Some(p), _) => format!("`{p}`"),
            (None, Some(c)) => format!("with `{c}` in its command line"),
            (None, None) => "process".into(),
        }
    }

    fn matches(&self, pid: u32) -> bool {
        let by_name = self
            .process
            .as_ref()
            .is_none_or(|p| comm(&self.proc_root, pid).as_deref() == Some(p.as_str()));
        let by_cmd = self.cmdline.as_ref().is_none_or(|c| {
            cmdline(&self.proc_root, pid).is_some_and(|line| line.contains(c.as_str()))
        });
        by_name && by_cmd && alive(&self.proc_root, pid)
    }

    fn evaluate(&self) -> CheckOutcome {
        if let Some(file) = &self.pid_file {
            // A pid file is a line; anything bigger, or not a file, is not one.
            let text = match crate::file::read_regular(file, 4096) {
                Ok(t) => t,
                Err(e) => {
                    return CheckOutcome::critical(format!("the pid file {} {e}", file.display()))
                }
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                return CheckOutcome::critical(format!(
                    "the pid file {} does not hold a pid: {:?}",
                    file.display(),
                    text.trim()
                ));
            };
            if !alive(&self.proc_root, pid) {
                return CheckOutcome::critical(format!(
                    "pid {pid} from {} is not running (the process vanished)",
                    file.display()
                ));
            }
            let name = comm(&self.proc_root, pid).unwrap_or_default();
            if !self.matches(pid) {
                return CheckOutcome::critical(format!(
                    "pid {pid} from {} is `{name}`, not the process {} (its pid was reused)",
                    file.display(),
                    self.what()
                ));
            }
            return CheckOutcome::ok(format!("pid {pid} ({name}) is running"));
        }
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return CheckOutcome::unknown(format!("cannot read {}", self.proc_root.display()));
        };
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| self.matches(*pid))
            .collect();
        pids.sort_unstable();
        let n = pids.len();
        let list: Vec<String> = pids.iter().take(5).map(u32::to_string).collect();
        let more = if n > 5 { ", ..." } else { "" };
        let pids_text = format!(
            "pid{} {}{more}",
            if n == 1 { "" } else { "s" },
            list.join(", ")
        );
        if n == 0 {
            return CheckOutcome::critical(format!("no process {} is running", self.what()))
                .with_value(0.0);
        }
        if n < self.min {
            return CheckOutcome::critical(format!(
                "{n} process{} {} running, fewer than {} ({pids_text})",
                if n == 1 { "" } else { "es" },
                self.what(),
                self.min
            ))
            .with_value(n as f64);
        }
        if let Some(max) = self.max {
            if n > max {
                return CheckOutcome::critical(format!(
                    "{n} processes {} running, more than {max} ({pids_text})",
                    self.what()
                ))
                .with_value(n as f64);
            }
        }
        CheckOutcome::ok(format!(
            "{n} process{} {} running ({pids_text})",
            if n == 1 { "" } else { "es" },
            self.what()
        ))
        .with_value(n as f64)
    }
}

impl Check for ProcessCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        // /proc lives in memory: reading it is quick and does not wait on a disk.
        Box::pin(async move { self.evaluate() })
    }

    fn target(&self) -> String {
        match &self.pid_file {
            Some(f) => format!("process from {}", f.display()),
            None => format!("process {}", self.what()),
        }
    }
}

pub struct ProcessFactory;

impl CheckFactory for ProcessFactory {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn summary(&self) -> &'static str {
        "a process is running: by name, command line or pid file (from /proc)"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: ProcessConfig = params.deserialize(path)?;
        let errors = cfg.validate(path);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Built::one(
            name,
            ProcessCheck {
                process: cfg.process,
                cmdline: cfg.cmdline,
                pid_file: cfg.pid_file.map(|p| ctx.resolve(&p)),
                min: cfg.min,
                max: cfg.max,
                proc_root: PathBuf::from("/proc"),
            },
        ))
    }
}
