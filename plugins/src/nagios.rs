//! `type: nagios` — runs a Nagios/Monitoring plugin and reads its verdict.
//!
//! ```yaml
//! commands:
//!   check_disk: /usr/lib/nagios/plugins/check_disk
//! checks:
//!   - name: disk_root
//!     type: nagios
//!     command: check_disk          # a name from the `commands:` allow-list
//!     args: ["-w", "20%", "-c", "10%", "-p", "/"]
//! ```
//!
//! The plugin runs with exactly these arguments (no shell), `PATH` and `LANG` only, and
//! is killed at the check's timeout. Exit 0/1/2/3 is OK/WARNING/CRITICAL/UNKNOWN; the
//! first line of its output (before `|`) is the message; the first performance value
//! (`'label'=value[UOM];warn;crit;min;max`) is the check's value.
//!
//! WARNING and the true/false status map: by default a WARNING is a failure (it counts
//! toward `threshold` like CRITICAL: a disk at 85% deserves a message). With
//! `warning: ok` it counts as a success and is only visible in `vigia status` and
//! `vigia check` (exit 1), never alerted.

use std::path::PathBuf;
use std::sync::Arc;

use crate::child::{self, ChildSpec};
use futures::future::BoxFuture;
use serde::Deserialize;
use vigia_api::yaml::{did_you_mean, join_path};
use vigia_api::{
    BuildContext, Built, Check, CheckFactory, CheckOutcome, ConfigError, ConfigErrors, Node,
    RunContext, Severity,
};

/// Output read from a plugin, at most.
const MAX_OUTPUT: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NagiosConfig {
    /// A name from the `commands:` allow-list of config.yaml.
    pub command: String,
    /// Arguments, passed as they are (no shell).
    #[serde(default)]
    pub args: Vec<String>,
    /// How a WARNING counts in the status map: `fail` (default) or `ok`.
    #[serde(default)]
    pub warning: WarningIs,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarningIs {
    #[default]
    Fail,
    Ok,
}

/// One performance value: `'label'=value[UOM];warn;crit;min;max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: String,
    pub value: f64,
    pub uom: String,
    pub warn: Option<String>,
    pub crit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Splits perfdata into its items; a label may be quoted and hold spaces.
pub fn parse_perfdata(s: &str) -> Vec<Perf> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (label, after) = if let Some(r) = rest.strip_prefix('\'') {
            match r.find("'=") {
                Some(i) => (r[..i].to_string(), &r[i + 2..]),
                None => break,
            }
        } else {
            match rest.find('=') {
                Some(i) => (rest[..i].trim().to_string(), &rest[i + 1..]),
                None => break,
            }
        };
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (item, next) = after.split_at(end);
        rest = next.trim_start();
        let mut fields = item.split(';');
        let first = fields.next().unwrap_or_default();
        let num_end = first
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
            .unwrap_or(first.len());
        let Ok(value) = first[..num_end].parse::<f64>() else {
            continue;
        };
        let opt = |s: Option<&str>| s.filter(|x| !x.is_empty()).map(str::to_string);
        let warn = opt(fields.next());
        let crit = opt(fields.next());
        let min = fields.next().and_then(|x| x.parse().ok());
        let max = fields.next().and_then(|x| x.parse().ok());
        out.push(Perf {
            label,
            value,
            uom: first[num_end..].to_string(),
            warn,
            crit,
            min,
            max,
        });
    }
    out
}

/// The outcome of a plugin run from its exit code and output.
pub fn outcome(code: Option<i32>, output: &str, warning: WarningIs, name: &str) -> CheckOutcome {
    let first = output.lines().next().unwrap_or_default();
    let (text, perf) = match first.split_once('|') {
        Some((t, p)) => (t.trim(), p),
        None => (first.trim(), ""),
    };
    let mut perfs = parse_perfdata(perf);
    // Perfdata may also follow a `|` on a later line.
    for line in output.lines().skip(1) {
        if let Some((_, p)) = line.split_once('|') {
            perfs.extend(parse_perfdata(p));
        }
    }
    let mut message = if text.is_empty() {
        format!("{name} gave no output")
    } else {
        text.to_string()
    };
    let severity = match code {
        Some(0) => Severity::Ok,
        Some(1) => Severity::Warning,
        Some(2) => Severity::Critical,
        Some(3) => Severity::Unknown,
        Some(other) => {
            message = format!("{name} exited with {other}, not a Nagios code (0-3): {message}");
            Severity::Unknown
        }
        None => {
            message = format!("{name} was killed by a signal: {message}");
            Severity::Unknown
        }
    };
    let severity = match (severity, warning) {
        (Severity::Warning, WarningIs::Ok) => {
            message = format!("WARNING (counted as OK): {message}");
            Severity::Ok
        }
        (s, _) => s,
    };
    CheckOutcome {
        severity,
        value: perfs.first().map(|p| p.value),
        message,
    }
}

pub struct NagiosCheck {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    warning: WarningIs,
}

impl Check for NagiosCheck {
    fn run<'a>(&'a self, _ctx: RunContext<'a>) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            // The engine drops the run at its timeout: the plugin's group goes with it.
            let spec = ChildSpec::new(&self.program, &self.args, MAX_OUTPUT);
            let out = match child::run(spec).await {
                Ok(o) => o,
                Err(e) => {
                    return CheckOutcome::unknown(format!(
                        "cannot run {} ({}): {e}",
                        self.name,
                        self.program.display()
                    ))
                }
            };
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.trim().is_empty() {
                text = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            let code = out.code;
            outcome(code, &text, self.warning, &self.name)
        })
    }

    fn target(&self) -> String {
        let mut s = format!("nagios {}", self.program.display());
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

pub struct NagiosFactory;

impl CheckFactory for NagiosFactory {
    fn kind(&self) -> &'static str {
        "nagios"
    }

    fn summary(&self) -> &'static str {
        "run a Nagios/Monitoring plugin from the commands: allow-list (exit 0-3, perfdata)"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: NagiosConfig = params.deserialize(path)?;
        let Some(program) = ctx.commands.get(&cfg.command) else {
            let known: Vec<&str> = ctx.commands.keys().map(String::as_str).collect();
            let hint = match did_you_mean(&cfg.command, known.iter().copied()) {
                Some(best) => format!(" (did you mean `{best}`?)"),
                None => format!(
                    ": add it there, e.g. `commands: {{ {}: /usr/lib/nagios/plugins/{} }}`",
                    cfg.command, cfg.command
                ),
            };
            return Err(ConfigError::new(
                &join_path(path, "command"),
                format!(
                    "`{}` is not in the `commands:` allow-list{hint}",
                    cfg.command
                ),
            )
            .into());
        };
        Ok(Built::one(
            name,
            NagiosCheck {
                name: cfg.command.clone(),
                program: program.clone(),
                args: cfg.args,
                warning: cfg.warning,
            },
        ))
    }
}

impl NagiosFactory {
    pub fn new() -> Arc<Self> {
        Arc::new(NagiosFactory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfdata() {
        let p = parse_perfdata(
            "time=0.000123s;;;0.000000;10.000000 size=512B;;;0 'disk /'=85%;80;90;0;100",
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].label, "time");
        assert_eq!(p[0].value, 0.000123);
        assert_eq!(p[0].uom, "s");
        assert_eq!(p[0].min, Some(0.0));
        assert_eq!(p[0].max, Some(10.0));
        assert_eq!(p[2].label, "disk /");
        assert_eq!(p[2].value, 85.0);
        assert_eq!(p[2].uom, "%");
        assert_eq!(p[2].warn.as_deref(), Some("80"));
        assert_eq!(p[2].crit.as_deref(), Some("90"));
        assert!(parse_perfdata("").is_empty());
        assert_eq!(
            parse_perfdata("bad=U;1;2").len(),
            0,
            "U (unknown) has no value"
        );
    }

    #[test]
    fn exit_codes_and_messages() {
        let o = outcome(Some(0), "TCP OK - 0.000 second response time on 127.0.0.1 port 80|time=0.000123s;;;0.000000;10.000000\n", WarningIs::Fail, "check_tcp");
        assert_eq!(o.severity, Severity::Ok);
        assert_eq!(
            o.message,
            "TCP OK - 0.000 second response time on 127.0.0.1 port 80"
        );
        assert_eq!(o.value, Some(0.000123));
        let o = outcome(
            Some(1),
            "DISK WARNING - free space: / 10 GB (15%)|/=85%;80;90\n",
            WarningIs::Fail,
            "check_disk",
        );
        assert_eq!((o.severity, o.is_ok()), (Severity::Warning, false));
        let o = outcome(Some(1), "DISK WARNING\n", WarningIs::Ok, "check_disk");
        assert_eq!((o.severity, o.is_ok()), (Severity::Ok, true));
        assert_eq!(o.message, "WARNING (counted as OK): DISK WARNING");
        assert_eq!(
            outcome(Some(2), "down", WarningIs::Fail, "x").severity,
            Severity::Critical
        );
        assert_eq!(
            outcome(Some(3), "?", WarningIs::Fail, "x").severity,
            Severity::Unknown
        );
        let o = outcome(Some(127), "", WarningIs::Fail, "x");
        assert_eq!(o.severity, Severity::Unknown);
        assert_eq!(
            o.message,
            "x exited with 127, not a Nagios code (0-3): x gave no output"
        );
        let o = outcome(None, "", WarningIs::Fail, "x");
        assert!(o.message.starts_with("x was killed by a signal"));
        // Long output: perfdata after a `|` on a later line.
        let o = outcome(
            Some(0),
            "OK\nline two\n| load=0.5;1;2",
            WarningIs::Fail,
            "x",
        );
        assert_eq!(o.value, Some(0.5));
    }
}
