//! The `vigia cluster …` commands: they connect to NATS with the config's `cluster:`
//! section, read the cluster's state, ask a replica live, or send a command to the
//! leader (the one writer of placements).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigia_config::cluster::ClusterConfig;

use super::{connect, Nats};

/// Which floating checks a start or stop means.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Selector {
    /// Check names, or group names (a group's members).
    #[serde(default)]
    pub checks: Vec<String>,
    /// `--label k=v`: the checks with all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub all: bool,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.labels.is_empty() && !self.all
    }
}

/// A command to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "snake_case")]
pub enum ClusterCommand {
    Start(Selector),
    Stop(Selector),
    Drain(String),
    Undrain(String),
    Rebalance { dry_run: bool },
}

async fn open(cfg: &ClusterConfig) -> Result<Nats, String> {
    connect(cfg, "vigia cluster (CLI)").await
}

/// `vigia cluster status`: the replicas, the leader, where the checks run.
pub async fn status(cfg: &ClusterConfig, json: bool) -> Result<String, String> {
    let nats = open(cfg).await?;
    let live = nats.live_replicas().await?;
    let leader = nats.leader_id().await?;
    let places = nats.placements().await?;
    let drained = nats.drained().await?;
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut stopped, mut waiting, mut orphaned) = (Vec::new(), Vec::new(), Vec::new());
    for (name, (p, _)) in &places {
        match (&p.replica, p.stopped) {
            (_, true) => stopped.push(name.clone()),
            (Some(r), _) if live.contains_key(r) => {
                per.entry(r.clone()).or_default().push(name.clone())
            }
            (Some(r), _) => orphaned.push(format!("{name} (on {r}, not alive)")),
            (None, _) => waiting.push(format!(
                "{name} ({})",
                p.refused.map_or("not placed yet", |r| r.as_str())
            )),
        }
    }
    if json {
        let replicas: Vec<_> = live
            .values()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "host": r.host, "capacity": r.capacity, "labels": r.labels,
                    "placed": per.get(&r.id).map_or(0, Vec::len), "running": r.running,
                    "pinned": r.pinned, "draining": drained.contains(&r.id),
                    "leader": leader.as_deref() == Some(&r.id), "version": r.version,
                    "checks": per.get(&r.id).cloned().unwrap_or_default(),
                })
            })
            .collect();
        return Ok(serde_json::json!({
            "leader": leader, "replicas": replicas, "stopped": stopped,
            "waiting": waiting, "orphaned": orphaned,
        })
        .to_string());
    }
    let mut out = String::new();
    out.push_str(&format!(
        "cluster {} at {}: {} replicas alive, leader {}\n",
        cfg.prefix,
        cfg.nats.join(","),
        live.len(),
        leader.as_deref().unwrap_or("none (electing)")
    ));
    out.push_str(&format!(
        "{:<20} {:>8} {:>8} {:>8}  {}\n",
        "REPLICA", "PLACED", "CAPACITY", "PINNED", "STATE"
    ));
    for r in live.values() {
        let mut state = Vec::new();
        if leader.as_deref() == Some(&r.id) {
            state.push("leader");
        }
        if drained.contains(&r.id) {
            state.push("draining");
        }
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8}  {}\n",
            r.id,
            per.get(&r.id).map_or(0, Vec::len),
            r.capacity,
            r.pinned,
            state.join(", ")
        ));
    }
    for (what, list) in [
        ("stopped", &stopped),
        ("not running", &waiting),
        ("moving", &orphaned),
    ] {
        if !list.is_empty() {
            out.push_str(&format!("{what} ({}): {}\n", list.len(), list.join(", ")));
        }
    }
    Ok(out.trim_end().to_string())
}

/// `vigia status` in a cluster: each floating check as the cluster has it (the state
/// its owner last wrote, and the replica that runs it); the others are pinned, run by
/// this replica `me`. Returns the line that heads the table.
pub async fn merge_status(
    cfg: &ClusterConfig,
    me: &str,
    view: &mut vigia_core::snapshot::StatusSnapshot,
) -> Result<String, String> {
    let nats = tokio::time::timeout(Duration::from_secs(5), open(cfg))
        .await
        .map_err(|_| format!("NATS at {} did not answer within 5s", cfg.nats.join(",")))??;
    let live = nats.live_replicas().await?;
    let leader = nats.leader_id().await?;
    let places = nats.placements().await?;
    let records = nats.check_records().await?;
    // The floating checks that run elsewhere are not in this replica's view: they come
    // from their records (what the config says of them is not repeated there).
    let here: std::collections::BTreeSet<String> =
        view.checks.iter().map(|c| c.name.clone()).collect();
    for name in places.keys().filter(|n| !here.contains(*n)) {
        view.checks.push(vigia_core::snapshot::CheckSnapshot {
            name: name.clone(),
            status: true,
            ..Default::default()
        });
    }
    view.checks.sort_by(|a, b| a.name.cmp(&b.name));
    for c in &mut view.checks {
        let Some((p, _)) = places.get(&c.name) else {
            c.replica = Some(me.to_string());
            continue;
        };
        c.replica = Some(match (&p.replica, p.stopped) {
            (_, true) => "stopped".into(),
            (Some(r), _) if live.contains_key(r) => r.clone(),
            (Some(r), _) => format!("{r} (dead, moving)"),
            (None, _) => "waiting".into(),
        });
        let Some(rec) = records.get(&c.name) else {
            continue;
        };
        // A check that runs elsewhere takes its record; one that runs here, the newer.
        let newer = !here.contains(&c.name)
            || match (&rec.state.last, &c.last) {
                (Some(theirs), Some(ours)) => theirs.at > ours.at,
                (Some(_), None) => true,
                (None, _) => false,
            };
        if newer {
            let state = vigia_core::status::CheckState::from(rec.state.clone());
            let theirs = vigia_core::snapshot::CheckSnapshot::of_state(&c.name, &state);
            c.status = theirs.status;
            c.failures = theirs.failures;
            c.successes = theirs.successes;
            c.changed_at = theirs.changed_at;
            c.failed_message = theirs.failed_message;
            c.last = theirs.last;
        }
    }
    // The leader delivers the cluster's alerts (and any replica its own, failing open):
    // the figures are the live replicas' summed, this one's as its engine gave them.
    for (id, r) in &live {
        if id == me {
            continue;
        }
        for (key, t) in &r.targets {
            view.channels.entry(key.clone()).or_default().add(t);
        }
    }
    Ok(format!(
        "cluster {}: {} replicas alive ({}), leader {}; this is {me}; delivery figures are the live replicas' summed",
        cfg.prefix,
        live.len(),
        live.keys().cloned().collect::<Vec<_>>().join(", "),
        leader.as_deref().unwrap_or("none (electing)")
    ))
}

/// `vigia cluster info [REPLICA]`: asked of the replica itself, now.
pub async fn info(cfg: &ClusterConfig, replica: Option<&str>) -> Result<String, String> {
    let nats = open(cfg).await?;
    let ids: Vec<String> = match replica {
        Some(r) => vec![r.to_string()],
        None => nats.live_replicas().await?.into_keys().collect(),
    };
    let mut lines = Vec::new();
    for id in ids {
        let asked = tokio::time::timeout(
            Duration::from_secs(3),
            nats.client.request(nats.info_subject(&id), "".into()),
        )
        .await;
        match asked {
            Ok(Ok(m)) => {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                lines.push(format!(
                    "{id}: runs {} floating checks (capacity {}) and {} pinned",
                    v["floating"], v["capacity"], v["pinned"]
                ));
            }
            Ok(Err(e)) => lines.push(format!("{id}: does not answer ({e})")),
            Err(_) => lines.push(format!("{id}: does not answer (3s)")),
        }
    }
    if lines.is_empty() {
        return Err("no replica is alive".into());
    }
    Ok(lines.join("\n"))
}

/// Sends a command to the leader and returns its answer.
pub async fn command(cfg: &ClusterConfig, cmd: &ClusterCommand) -> Result<String, String> {
    let nats = open(cfg).await?;
    let body: bytes::Bytes = serde_json::to_vec(cmd).map_err(|e| e.to_string())?.into();
    // The lease may be changing hands: ask again for a few seconds.
    let until = tokio::time::Instant::now() + cfg.lease.get() * 2;
    loop {
        let leader = nats.leader_id().await?;
        let why = match leader {
            None => "no replica leads the cluster now".to_string(),
            Some(l) => {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    nats.client.request(nats.cmd_subject(&l), body.clone()),
                )
                .await;
                match r {
                    Ok(Ok(m)) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
                        let text = v["text"].as_str().unwrap_or_default().to_string();
                        if v["ok"].as_bool() == Some(true) {
                            return Ok(text);
                        }
                        if !text.contains("does not lead") {
                            return Err(text);
                        }
                        text
                    }
                    Ok(Err(e)) => format!("the leader {l} did not answer: {e}"),
                    Err(_) => format!("the leader {l} did not answer within 10s"),
                }
            }
        };
        if tokio::time::Instant::now() >= until {
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
