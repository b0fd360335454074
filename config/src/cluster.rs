//! `cluster:` of config.yaml: several replicas that share the checks over NATS
//! JetStream. Without the section the engine runs standalone and needs no NATS.
//!
//! ```yaml
//! cluster:
//!   nats: nats://10.0.0.5:4222     # one URL, or several separated by commas
//!   replica_id: mon-a              # default: the host name
//!   capacity: 1000                 # the most floating checks this replica runs
//!   labels: { site: fra }
//!   heartbeat: 1s                  # how often the replica says it is alive
//!   lease: 3s                      # silent this long, it is dead: its checks move
//!   unreachable_after: 30s         # NATS out of reach this long: one direct alert
//!   credentials: /etc/vigia/nats.creds   # or token_file, or user + password_file
//!   tls_ca: /etc/vigia/nats-ca.pem       # and tls_cert + tls_key for mutual TLS
//!   prefix: vigia                  # the buckets' and stream's names begin with it
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigia_api::{ConfigError, ConfigErrors, Dur, Node};

/// The `cluster:` section, validated. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    /// The server URLs, as given.
    pub nats: Vec<String>,
    /// `None`: the engine's host name.
    pub replica_id: Option<String>,
    pub capacity: usize,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Dur,
    pub lease: Dur,
    /// NATS out of reach this long: each replica sends one "cluster unreachable"
    /// alert on its own channels (and one "reachable again").
    pub unreachable_after: Dur,
    pub credentials: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    nats: String,
    #[serde(default)]
    replica_id: Option<String>,
    #[serde(default = "default_capacity")]
    capacity: usize,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    heartbeat: Option<Dur>,
    #[serde(default)]
    lease: Option<Dur>,
    #[serde(default)]
    unreachable_after: Option<Dur>,
    #[serde(default)]
    credentials: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    tls_ca: Option<PathBuf>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    prefix: Option<String>,
}

fn default_capacity() -> usize {
    1000
}

/// What a name in NATS may hold: a replica id, a label, the prefix.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `cluster:`; `None` when the section is absent (standalone). Problems go to
/// `errors` with their paths.
pub fn parse(root: &Node, config_dir: &Path, errors: &mut ConfigErrors) -> Option<ClusterConfig> {
    let node = root
        .get("cluster")
        .filter(|n| !matches!(n.value, vigia_api::yaml::Value::Null))?;
    let s = match node.deserialize::<ClusterSection>("cluster") {
        Ok(s) => s,
        Err(e) => {
            errors.extend(e);
            return None;
        }
    };
    let at = |key: &str| node.get(key).map_or(node.pos, |n| n.pos);
    let mut err = |key: &str, msg: String| {
        errors.push(ConfigError::at(at(key), &format!("cluster.{key}"), msg));
    };
    let nats: Vec<String> = s
        .nats
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if nats.is_empty() {
        err(
            "nats",
            "give the NATS server's URL, e.g. nats://127.0.0.1:4222".into(),
        );
    }
    for u in &nats {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|p| u.starts_with(p));
        if !scheme_ok || u.contains(char::is_whitespace) {
            err(
                "nats",
                format!("`{u}` is not a NATS URL such as nats://10.0.0.5:4222"),
            );
        }
    }
    if let Some(id) = &s.replica_id {
        if !valid_token(id) {
            err(
                "replica_id",
                format!("`{id}`: use letters, digits, `-` and `_` (at most 64)"),
            );
        }
    }
    if s.capacity == 0 {
        err("capacity", "must be at least 1".into());
    }
    let heartbeat = s.heartbeat.unwrap_or(Dur::secs(1));
    let lease = s.lease.unwrap_or(Dur::secs(3));
    if heartbeat.get() < Duration::from_millis(200) || heartbeat.get() > Duration::from_secs(60) {
        err(
            "heartbeat",
            format!("{heartbeat} is out of range (200ms-60s)"),
        );
    }
    // A bucket's max_age is whole seconds on the server; two heartbeats may be missed.
    if lease.get() < heartbeat.get() * 2 || lease.get() < Duration::from_secs(2) {
        err(
            "lease",
            format!("{lease} is too short: at least 2s and two heartbeats ({heartbeat} each)"),
        );
    }
    if lease.get().subsec_millis() != 0 {
        err(
            "lease",
            format!("{lease}: NATS keeps whole seconds, say e.g. 3s"),
        );
    }
    let unreachable_after = s.unreachable_after.unwrap_or(Dur::secs(30));
    if unreachable_after.get() < Duration::from_secs(1) {
        err(
            "unreachable_after",
            format!("{unreachable_after} is too short: at least 1s"),
        );
    }
    for (k, v) in &s.labels {
        if !valid_token(k) {
            err(
                "labels",
                format!("label `{k}`: use letters, digits, `-` and `_`"),
            );
        }
        if v.is_empty() || v.contains(char::is_whitespace) {
            err(
                "labels",
                format!("label `{k}` has the value `{v}`: give a word"),
            );
        }
    }
    // At the second of the ways given: that is where the two meet.
    let ways: Vec<&str> = [
        ("credentials", s.credentials.is_some()),
        ("token_file", s.token_file.is_some()),
        ("user", s.user.is_some()),
    ]
    .iter()
    .filter(|(_, given)| *given)
    .map(|(k, _)| *k)
    .collect();
    if let [first, second, ..] = ways[..] {
        err(
            second,
            format!("{first} and {second} are both given: give one of credentials, token_file, or user + password_file"),
        );
    }
    if s.user.is_some() != s.password_file.is_some() {
        err("user", "user and password_file go together".into());
    }
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        err("tls_cert", "tls_cert and tls_key go together".into());
    }
    let prefix = s.prefix.unwrap_or_else(|| "vigia".into());
    if !valid_token(&prefix) {
        err(
            "prefix",
            format!("`{prefix}`: use letters, digits, `-` and `_`"),
        );
    }
    let abs = |p: Option<PathBuf>| {
        p.map(|f| match f.is_absolute() {
            true => f,
            false => config_dir.join(f),
        })
    };
    Some(ClusterConfig {
        nats,
        replica_id: s.replica_id,
        capacity: s.capacity,
        labels: s.labels,
        heartbeat,
        lease,
        unreachable_after,
        credentials: abs(s.credentials),
        token_file: abs(s.token_file),
        user: s.user,
        password_file: abs(s.password_file),
        tls_ca: abs(s.tls_ca),
        tls_cert: abs(s.tls_cert),
        tls_key: abs(s.tls_key),
        prefix,
    })
}
