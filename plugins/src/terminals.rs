//! `type: terminals` — one ping check per line of a file (the original `ips.txt`).
//!
//! File format, one terminal per line:
//! ```text
//! # shop terminals
//! 10.1.2.3   Shop 12 - Main street
//! pos-14.shop.example
//! 10.1.2.9   Warehouse   # a trailing comment
//! ```
//! The first word is an IP address or host name, the rest of the line (optional) a name
//! shown in alerts. A bad line is reported with its line number and skipped; the others
//! still run. Each terminal is a check named `<entry>/<host>`, and the members of one
//! entry form a group: they are pinged in the same phase and their alerts are grouped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BuildContext, Built, BuiltCheck, CheckFactory, ConfigError, ConfigErrors, Node, Pos,
};

use crate::icmp::Icmp;
use crate::net::host_problem;
use crate::ping::{PingCheck, PingParams};

/// The largest terminals list read: about a million lines of addresses.
const MAX_LIST: usize = 64 << 20;

/// `type: terminals` takes `file` plus the keys of [`PingParams`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalsConfig {
    /// The list of terminals, relative to config.yaml's directory (e.g. `ips.txt`).
    pub file: PathBuf,
}

/// One terminal from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub host: String,
    pub name: Option<String>,
    pub line: usize,
}

/// Parses a terminals file. Bad lines come back as errors carrying `file:line`, and the
/// good ones are all kept.
pub fn parse_terminals(text: &str, file: &Path) -> (Vec<Terminal>, Vec<ConfigError>) {
    let mut out: Vec<Terminal> = Vec::new();
    let mut bad = Vec::new();
    // Host → the line it was first listed on: one look-up per line, so 100 000 lines
    // take milliseconds (a scan of the list so far made it quadratic: 7.2 s).
    let mut first_at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (host, name) = match content.split_once(char::is_whitespace) {
            Some((h, rest)) => (h, Some(rest.trim().to_string())),
            None => (content, None),
        };
        let err = |msg: String| ConfigError::at(Pos { line, col: 1 }, "", msg).in_file(file);
        if let Some(problem) = host_problem(host) {
            bad.push(err(format!("{problem}; line skipped")));
            continue;
        }
        if let Some(first) = first_at.get(host) {
            bad.push(err(format!(
                "`{host}` is already listed at line {first}; line skipped"
            )));
            continue;
        }
        first_at.insert(host, line);
        out.push(Terminal {
            host: host.to_string(),
            name,
            line,
        });
    }
    (out, bad)
}

pub struct TerminalsFactory {
    pub icmp: Arc<Icmp>,
}

impl CheckFactory for TerminalsFactory {
    fn kind(&self) -> &'static str {
        "terminals"
    }

    fn summary(&self) -> &'static str {
        "ping every host listed in a file (one check per line, alerts grouped)"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let (own, rest) = params.split_keys(&["file"]);
        let cfg: TerminalsConfig = own.deserialize(path)?;
        let ping: PingParams = rest.deserialize(path)?;
        let mut errors = Vec::new();
        ping.validate(path, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let file = ctx.resolve(&cfg.file);
        let text = crate::file::read_regular(&file, MAX_LIST).map_err(|e| {
            ConfigError::new(
                &join_path(path, "file"),
                format!("the terminals list {} {e}", file.display()),
            )
        })?;
        let (terminals, warnings) = parse_terminals(&text, &file);
        let checks = terminals
            .into_iter()
            .map(|t| BuiltCheck {
                group: Some(name.to_string()),
                ..BuiltCheck::new(
                    format!("{name}/{}", t.host),
                    Arc::new(PingCheck {
                        label: match &t.name {
                            Some(n) => format!("{n} ({})", t.host),
                            None => t.host.clone(),
                        },
                        host: t.host,
                        params: ping.clone(),
                        icmp: self.icmp.clone(),
                    }),
                )
            })
            .collect();
        Ok(Built {
            checks,
            warnings,
            files: vec![file],
            ..Built::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 000 lines, every tenth a repeat of an earlier one: each repeat is reported
    /// against its first line. (Time is printed, not asserted: `--nocapture` shows it.)
    #[test]
    fn a_long_file_with_repeats() {
        let mut text = String::new();
        for i in 0..100_000u32 {
            let n = if i % 10 == 9 { i - 9 } else { i };
            text.push_str(&format!("10.{}.{}.{}\n", n >> 16, (n >> 8) & 255, n & 255));
        }
        let start = std::time::Instant::now();
        let (good, bad) = parse_terminals(&text, Path::new("ips.txt"));
        eprintln!("100 000 lines parsed in {:?}", start.elapsed());
        assert_eq!(good.len(), 90_000);
        assert_eq!(bad.len(), 10_000);
        assert!(
            bad[0]
                .to_string()
                .ends_with("`10.0.0.0` is already listed at line 1; line skipped"),
            "{}",
            bad[0]
        );
    }

    #[test]
    fn parses_good_lines_and_reports_bad_ones_with_line_numbers() {
        let text = "# terminals\n10.1.2.3 Shop 12 - Main street\n\npos-14.shop.example\n\
                    10.1.2.300 typo\n10.1.2.9   Warehouse  # comment\n10.1.2.3 again\npos/14 Till\n";
        let (good, bad) = parse_terminals(text, Path::new("ips.txt"));
        assert_eq!(
            good,
            vec![
                Terminal {
                    host: "10.1.2.3".into(),
                    name: Some("Shop 12 - Main street".into()),
                    line: 2
                },
                Terminal {
                    host: "pos-14.shop.example".into(),
                    name: None,
                    line: 4
                },
                Terminal {
                    host: "10.1.2.9".into(),
                    name: Some("Warehouse".into()),
                    line: 6
                },
            ]
        );
        let bad: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            bad,
            vec![
                "ips.txt:5:1: `10.1.2.300` is not a valid IPv4 address; line skipped",
                "ips.txt:7:1: `10.1.2.3` is already listed at line 2; line skipped",
                "ips.txt:8:1: `pos/14` is neither an IP address nor a valid host name; line skipped",
            ]
        );
    }

    #[test]
    fn builds_one_grouped_check_per_terminal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ips.txt"), "127.0.0.1 Till 1\n127.0.0.2\n").unwrap();
        let f = TerminalsFactory {
            icmp: Arc::new(Icmp::default()),
        };
        let node = Node::parse("file: ips.txt\ncount: 1\n").unwrap();
        let built = f
            .build("shops", &node, "checks[3]", &BuildContext::new(dir.path()))
            .unwrap();
        let names: Vec<_> = built.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shops/127.0.0.1", "shops/127.0.0.2"]);
        assert!(built
            .checks
            .iter()
            .all(|c| c.group.as_deref() == Some("shops")));
        assert_eq!(built.checks[0].check.target(), "ping Till 1 (127.0.0.1)");
    }

    #[test]
    fn a_missing_file_is_a_config_error() {
        let f = TerminalsFactory {
            icmp: Arc::new(Icmp::default()),
        };
        let node = Node::parse("file: /nonexistent/ips.txt\n").unwrap();
        let e = f
            .build("shops", &node, "checks[3]", &BuildContext::new("."))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "checks[3].file: the terminals list /nonexistent/ips.txt does not exist"
        );
    }
}
