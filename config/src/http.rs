//! `http:` of config.yaml: the HTTP API, `/metrics` and the status page.
//!
//! ```yaml
//! http:
//!   listen: 127.0.0.1:2813        # the default; `enabled: false` turns the server off
//!   token_file: /etc/vigia/http.token   # Bearer token for writes (and for reads off loopback)
//!   public: false                 # true: reads need no token; anonymous readers see no
//!                                 # messages, targets or comments
//!   refresh: 30s                  # how often the status page reloads without live events
//!   frame_ancestors: []           # origins allowed to embed the page (CSP frame-ancestors)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigia_api::yaml::join_path;
use vigia_api::{ConfigError, ConfigErrors, Dur, Node};

/// The default port: next to Monit's 2812, outside the 9100–9999 range Prometheus
/// exporters have taken, and below the ephemeral ports.
pub const DEFAULT_PORT: u16 = 2813;

/// The `http:` section, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Absolute (relative paths are taken from the config file's directory).
    pub token_file: Option<PathBuf>,
    pub public: bool,
    pub refresh: Dur,
    pub frame_ancestors: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            token_file: None,
            public: false,
            refresh: Dur::secs(30),
            frame_ancestors: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Whether only this machine can reach the listener.
    pub fn loopback_only(&self) -> bool {
        self.listen.ip().is_loopback()
    }

    /// Whether a reader must show the token: off loopback, unless the page is public.
    pub fn reads_need_token(&self) -> bool {
        !self.public && !self.loopback_only()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    refresh: Option<Dur>,
    #[serde(default)]
    frame_ancestors: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Parses `http:`; problems go to `errors`, with their paths (positions are looked up by
/// the caller).
pub fn parse(root: &Node, config_dir: &Path, errors: &mut ConfigErrors) -> HttpConfig {
    let Some(node) = root
        .get("http")
        .filter(|n| !matches!(n.value, vigia_api::yaml::Value::Null))
    else {
        return HttpConfig::default();
    };
    let section = match node.deserialize::<HttpSection>("http") {
        Ok(s) => s,
        Err(e) => {
            errors.extend(e);
            return HttpConfig::default();
        }
    };
    let at = |key: &str| node.get(key).map_or(node.pos, |n| n.pos);
    let mut http = HttpConfig {
        enabled: section.enabled,
        public: section.public,
        ..HttpConfig::default()
    };
    if let Some(listen) = &section.listen {
        match parse_listen(listen) {
            Ok(addr) => http.listen = addr,
            Err(e) => errors.push(ConfigError::at(at("listen"), "http.listen", e)),
        }
    }
    if let Some(r) = section.refresh {
        if r.get() < std::time::Duration::from_secs(1) {
            errors.push(ConfigError::at(
                at("refresh"),
                "http.refresh",
                format!("{r} is too often for a page to reload: 1s at least"),
            ));
        } else {
            http.refresh = r;
        }
    }
    http.token_file = section.token_file.map(|f| match f.is_absolute() {
        true => f,
        false => config_dir.join(f),
    });
    for (i, origin) in section.frame_ancestors.iter().enumerate() {
        if origin.is_empty()
            || origin
                .chars()
                .any(|c| c.is_whitespace() || c == ';' || c == ',')
        {
            errors.push(ConfigError::at(
                node.get("frame_ancestors").map_or(node.pos, |n| n.pos),
                &join_path("http.frame_ancestors", &format!("[{i}]")),
                format!("`{origin}` is not an origin such as https://intranet.example or 'self'"),
            ));
        }
    }
    http.frame_ancestors = section.frame_ancestors;
    if http.enabled && !http.loopback_only() && http.token_file.is_none() {
        errors.push(ConfigError::at(
            at("listen"),
            "http.listen",
            format!(
                "{} is reachable from other machines, and there is no `token_file`: set `http.token_file` (a file with a long random token) or listen on 127.0.0.1",
                http.listen
            ),
        ));
    }
    http
}

/// `127.0.0.1:2813`, `[::1]:2813`, `0.0.0.0:2813`; `localhost:PORT` is 127.0.0.1.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address and port such as 127.0.0.1:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT} or 0.0.0.0:{DEFAULT_PORT}")
    })
}

/// What is wrong with the token file, if anything: it cannot be read, or it is empty.
/// Asked when the checks are built (`vigia validate`, `vigia run`), not by
/// `Config::load`: `vigia status` run by an operator who may not read the token must
/// still find the engine's socket.
pub fn token_file_problem(http: &HttpConfig) -> Option<String> {
    let f = http.token_file.as_ref()?;
    match read_token(f) {
        Ok(_) => None,
        Err(e) if e.ends_with("is empty") => Some(format!(
            "{e}: put a long random token in it (`openssl rand -hex 32 > {}`)",
            f.display()
        )),
        Err(e) => Some(e),
    }
}

/// A warning for a token file that other users can read.
pub fn token_file_warning(http: &HttpConfig) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let f = http.token_file.as_ref()?;
    let mode = std::fs::metadata(f).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{} can be read by every user of this machine (mode {:o}): `chmod 600 {}`",
            f.display(),
            mode & 0o777,
            f.display()
        )
    })
}

/// Reads the token from its file: its first line, trimmed.
pub fn read_token(f: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", f.display()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (HttpConfig, Vec<String>) {
        let root = Node::parse(text).unwrap();
        let mut errors = ConfigErrors::default();
        let http = parse(&root, Path::new("/nonexistent"), &mut errors);
        (
            http,
            errors
                .0
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        )
    }

    #[test]
    fn defaults_to_loopback() {
        let (http, errors) = parse_text("engine: {}\n");
        assert!(errors.is_empty());
        assert_eq!(http.listen.to_string(), "127.0.0.1:2813");
        assert!(http.enabled && http.loopback_only() && !http.reads_need_token());
    }

    #[test]
    fn open_listener_needs_a_token() {
        let (_, errors) = parse_text("http: { listen: 0.0.0.0:2813 }\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("http.listen: 0.0.0.0:2813 is reachable"),
            "{errors:?}"
        );
        let (http, errors) = parse_text("http: { listen: 0.0.0.0:2813, enabled: false }\n");
        assert!(errors.is_empty() && !http.enabled);
    }

    #[test]
    fn bad_values_are_named() {
        let (_, errors) =
            parse_text("http: { listen: 'nowhere', refresh: 100ms, frame_ancestors: ['a b'] }\n");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("`nowhere` is not an address and port"));
        assert!(errors[1].starts_with("http.refresh:"));
        assert!(errors[2].starts_with("http.frame_ancestors[0]:"));
        // Loading does not read the token file (see token_file_problem).
        let (http, errors) = parse_text("http: { token_file: missing.token }\n");
        assert!(errors.is_empty(), "{errors:?}");
        let problem = token_file_problem(&http).unwrap();
        assert!(
            problem.starts_with("cannot read /nonexistent/missing.token"),
            "{problem}"
        );
        let (_, errors) = parse_text("http: { port: 80 }\n");
        assert!(errors[0].contains("port"), "{errors:?}");
    }
}
