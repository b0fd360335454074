//! What a reload changes: computed from the two configs, not from a hand-kept list.
//!
//! - `engine:` is compared key by key (through its serialized form, so a key added to
//!   [`EngineConfig`] is compared without touching this file); only the keys in
//!   [`RESTART_KEYS`] wait for a restart, every other one is applied live.
//! - `channels:` + `windows:` + `alerting:` are one unit (the alert stage is rebuilt
//!   when any of them changed), and so are `remediation:` + `actions:` + `runbooks:` +
//!   `commands:` (the remediation stage). `http:` is one unit too (the server takes
//!   its new settings; a new `listen` binds before the old listener closes).
//! - Checks are compared by name and fingerprint by the scheduler as it applies the
//!   new plan (`PlannedCheck::same_as`): it holds the running set, so no second copy
//!   of 10 000 names is kept for this.

use std::collections::BTreeMap;

use crate::{Config, EngineConfig};

/// The `engine:` keys a running engine cannot change: the store and the control
/// socket live in `state_dir`, and the runtime's threads are made before anything runs.
pub const RESTART_KEYS: &[&str] = &[
    "state_dir",
    "worker_threads",
    "history",
    "record",
    "record_size",
];

/// What differs between the running config and a new one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigDiff {
    /// `engine:` keys applied live.
    pub engine_live: Vec<String>,
    /// `engine:` keys that take effect at the next restart.
    pub needs_restart: Vec<String>,
    /// `channels:`, `windows:` or `alerting:` changed.
    pub alerting: bool,
    /// `remediation:`, `actions:`, `runbooks:` or `commands:` changed.
    pub remediation: bool,
    /// `http:` changed.
    pub http: bool,
}

/// What a running engine remembers of the config in force, to diff the next one with.
#[derive(Debug, Clone)]
pub struct Running {
    pub engine: EngineConfig,
    pub alerting: u64,
    pub remediation: u64,
    pub http: crate::http::HttpConfig,
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Running {
    pub fn of(config: &Config) -> Running {
        Running {
            engine: config.engine.clone(),
            alerting: config.alerting.fingerprint,
            remediation: config.remediation.fingerprint,
            http: config.http.clone(),
            cluster: config.cluster.clone(),
        }
    }

    /// The diff from this config to `new` (checks aside: see the module's doc).
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let (engine_live, mut needs_restart) = engine_keys(&self.engine, &new.engine);
        // A replica's connection, identity and leases are made once, at start.
        if self.cluster != new.cluster {
            needs_restart.push("cluster".to_string());
        }
        ConfigDiff {
            engine_live,
            needs_restart,
            alerting: self.alerting != new.alerting.fingerprint,
            remediation: self.remediation != new.remediation.fingerprint,
            http: self.http != new.http,
        }
    }
}

/// The `engine:` keys whose values differ: (live, needs a restart).
pub fn engine_keys(old: &EngineConfig, new: &EngineConfig) -> (Vec<String>, Vec<String>) {
    let as_map = |e: &EngineConfig| -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(e) {
            Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut live = Vec::new();
    let mut restart = Vec::new();
    for (k, v) in &b {
        if a.get(k) != Some(v) {
            let path = format!("engine.{k}");
            if RESTART_KEYS.contains(&k.as_str()) {
                restart.push(path);
            } else {
                live.push(path);
            }
        }
    }
    (live, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_keys_are_classified_without_a_list_of_keys() {
        let old = EngineConfig::default();
        let mut new = old.clone();
        new.watch = false;
        new.status_log_interval = vigia_api::Dur::secs(5);
        new.worker_threads = 2;
        new.state_dir = "/tmp/elsewhere".into();
        let (live, restart) = engine_keys(&old, &new);
        assert_eq!(live, ["engine.status_log_interval", "engine.watch"]);
        assert_eq!(restart, ["engine.state_dir", "engine.worker_threads"]);
        assert_eq!(engine_keys(&old, &old), (vec![], vec![]));
    }
}
