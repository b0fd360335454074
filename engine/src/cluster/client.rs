//! The `vigia cluster …` commands: they connect to NATS with the config's `cluster:`
//! section, read the cluster's state, ask a replica live, or send a command to the
//! leader (the one writer of placements).

use std::collections::BTreeMap;
use std::time::Duration;

use vigia_config::cluster::ClusterConfig;

use super::{connect, Nats};

pub use vigia_core::command::{ClusterCommand, Selector};

async fn open(cfg: &ClusterConfig) -> Result<Nats, String> {
    connect(cfg, "vigia cluster (CLI)").await
}

/// `vigia cluster status`: the replicas, the leader, where the checks run.
pub async fn status(cfg: &ClusterConfig, json: bool) -> Result<String, String> {
    let nats = open(cfg).await?;
    let doc = status_on(&nats).await?;
    if json {
        return Ok(doc.to_string());
    }
    Ok(render_status(&cfg.prefix, &cfg.nats.join(","), &doc))
}

/// The cluster's map as one document: `leader`, `replicas` (each with `placed`,
/// `running`, `capacity`, `pinned`, `draining`, `leader` and its `checks`), and the
/// checks `stopped`, `waiting` (not placed, and why) and `orphaned` (on a replica
/// that is not alive, about to move).
pub async fn status_on(nats: &Nats) -> Result<serde_json::Value, String> {
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
    Ok(serde_json::json!({
        "leader": leader, "replicas": replicas, "stopped": stopped,
        "waiting": waiting, "orphaned": orphaned,
    }))
}

/// The table `vigia cluster status` prints, from [`status_on`]'s document.
fn render_status(prefix: &str, urls: &str, doc: &serde_json::Value) -> String {
    let empty = Vec::new();
    let list = |key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let replicas = doc["replicas"].as_array().unwrap_or(&empty);
    let mut out = String::new();
    out.push_str(&format!(
        "cluster {prefix} at {urls}: {} replicas alive, leader {}\n",
        replicas.len(),
        doc["leader"].as_str().unwrap_or("none (electing)")
    ));
    out.push_str(&format!(
        "{:<20} {:>8} {:>8} {:>8}  {}\n",
        "REPLICA", "PLACED", "CAPACITY", "PINNED", "STATE"
    ));
    for r in replicas {
        let mut state = Vec::new();
        if r["leader"] == true {
            state.push("leader");
        }
        if r["draining"] == true {
            state.push("draining");
        }
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8}  {}\n",
            r["id"].as_str().unwrap_or("?"),
            r["placed"].as_u64().unwrap_or(0),
            r["capacity"].as_u64().unwrap_or(0),
            r["pinned"].as_u64().unwrap_or(0),
            state.join(", ")
        ));
    }
    for (what, key) in [
        ("stopped", "stopped"),
        ("not running", "waiting"),
        ("moving", "orphaned"),
    ] {
        let items = list(key);
        if !items.is_empty() {
            out.push_str(&format!("{what} ({}): {}\n", items.len(), items.join(", ")));
        }
    }
    out.trim_end().to_string()
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
    // the figures are the live replicas' summed, this one's as its engine gave them, and
    // those of replicas that are gone as they last wrote them (a dead leader's
    // deliveries stay counted).
    for (id, r) in &live {
        if id == me {
            continue;
        }
        for (key, t) in &r.targets {
            view.channels.entry(key.clone()).or_default().add(t);
        }
    }
    let mut gone = Vec::new();
    for (id, f) in nats.figures().await.unwrap_or_default() {
        if id == me || live.contains_key(&id) {
            continue;
        }
        for (key, t) in &f.targets {
            view.channels.entry(key.clone()).or_default().add(t);
        }
        gone.push(id);
    }
    let gone = match gone.as_slice() {
        [] => String::new(),
        ids => format!(
            ", and those of {} as last written (not alive)",
            ids.join(", ")
        ),
    };
    Ok(format!(
        "cluster {}: {} replicas alive ({}), leader {}; this is {me}; delivery figures are the live replicas' summed{gone}",
        cfg.prefix,
        live.len(),
        live.keys().cloned().collect::<Vec<_>>().join(", "),
        leader.as_deref().unwrap_or("none (electing)")
    ))
}

/// `vigia cluster info [REPLICA]`: asked of the replica itself, now.
pub async fn info(cfg: &ClusterConfig, replica: Option<&str>) -> Result<String, String> {
    let nats = open(cfg).await?;
    let lines: Vec<String> = info_on(&nats, replica)
        .await?
        .iter()
        .map(|v| match v["error"].as_str() {
            Some(e) => format!(
                "{}: does not answer ({e})",
                v["replica"].as_str().unwrap_or("?")
            ),
            None => format!(
                "{}: runs {} floating checks (capacity {}) and {} pinned",
                v["replica"].as_str().unwrap_or("?"),
                v["floating"].as_u64().unwrap_or(0),
                v["capacity"].as_u64().unwrap_or(0),
                v["pinned"].as_u64().unwrap_or(0)
            ),
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Each live replica's (or `replica`'s) own answer, asked now: `replica`, `host`,
/// `capacity`, `floating`, `pinned`, `labels`; or `replica` and `error`.
pub async fn info_on(nats: &Nats, replica: Option<&str>) -> Result<Vec<serde_json::Value>, String> {
    let ids: Vec<String> = match replica {
        Some(r) => vec![r.to_string()],
        None => nats.live_replicas().await?.into_keys().collect(),
    };
    let mut answers = Vec::new();
    for id in ids {
        let asked = tokio::time::timeout(
            Duration::from_secs(3),
            nats.client.request(nats.info_subject(&id), "".into()),
        )
        .await;
        answers.push(match asked {
            Ok(Ok(m)) => serde_json::from_slice(&m.payload).unwrap_or_else(
                |e| serde_json::json!({ "replica": id, "error": format!("an answer that is not JSON: {e}") }),
            ),
            Ok(Err(e)) => serde_json::json!({ "replica": id, "error": e.to_string() }),
            Err(_) => serde_json::json!({ "replica": id, "error": "no answer within 3s" }),
        });
    }
    if answers.is_empty() {
        return Err("no replica is alive".into());
    }
    Ok(answers)
}

/// Sends a command to the leader and returns its answer.
pub async fn command(cfg: &ClusterConfig, cmd: &ClusterCommand) -> Result<String, String> {
    let nats = open(cfg).await?;
    command_on(&nats, cfg.lease.get(), cmd).await
}

/// Sends a command to the leader over `nats`; while the lease changes hands (up to two
/// leases) it asks again.
pub async fn command_on(
    nats: &Nats,
    lease: Duration,
    cmd: &ClusterCommand,
) -> Result<String, String> {
    let body: bytes::Bytes = serde_json::to_vec(cmd).map_err(|e| e.to_string())?.into();
    // The lease may be changing hands: ask again for a few seconds.
    let until = tokio::time::Instant::now() + lease * 2;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The table lines up: the numbers are right-aligned under their headings.
    #[test]
    fn the_status_table_keeps_its_columns() {
        let doc = serde_json::json!({
            "leader": "r2",
            "replicas": [
                { "id": "r1", "placed": 3, "capacity": 10, "pinned": 0, "draining": false, "leader": false },
                { "id": "r2", "placed": 1234, "capacity": 5000, "pinned": 2, "draining": true, "leader": true },
            ],
            "stopped": ["c05"], "waiting": [], "orphaned": [],
        });
        let text = render_status("vigia", "nats://127.0.0.1:4222", &doc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "cluster vigia at nats://127.0.0.1:4222: 2 replicas alive, leader r2"
        );
        assert_eq!(
            lines[1],
            "REPLICA                PLACED CAPACITY   PINNED  STATE"
        );
        assert_eq!(
            lines[2],
            "r1                          3       10        0  "
        );
        assert_eq!(
            lines[3],
            "r2                       1234     5000        2  leader, draining"
        );
        assert_eq!(lines[4], "stopped (1): c05");
    }
}
