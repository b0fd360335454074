//! Silences as cluster state: the bucket `<p>-silences` holds every replica's silences
//! (`s-<id>` → `Silence`), so whichever replica leads and alerts has them all, and
//! `vigia silence list` answers the same on each.
//!
//! Each replica's pipeline hands the silences added and ended there to this task, which
//! writes them in order (`create` for a new one: two replicas that picked the same id at
//! once are told apart, the second is refused and says so). The task reads the whole
//! bucket again after each write, on each change the watch shows and every 30 s (a
//! watch resumes slowly after a NATS restart), and gives the pipeline what it read with
//! the count of this replica's changes written before the read: a read that may lack
//! one of them is not applied.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigia_core::silence::Silence;

use super::{all_entries_rev, within, Nats};
use crate::alerting::pipeline::{Input, SilenceChange};

/// The backstop read of the bucket.
const EVERY: Duration = Duration::from_secs(30);

fn key(id: u64) -> String {
    format!("s-{id}")
}

/// Starts the task; it ends with `stop`. A change not written by then is lost to the
/// cluster (the next start's first read takes the cluster's silences as they are).
pub fn start(
    nats: Nats,
    changes: mpsc::UnboundedReceiver<SilenceChange>,
    pipeline: mpsc::Sender<Input>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(nats, changes, pipeline, stop))
}

async fn run(
    nats: Nats,
    mut changes: mpsc::UnboundedReceiver<SilenceChange>,
    pipeline: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let kv = nats.silences.clone();
    let mut written = 0u64;
    let mut watch: Option<kv::Watch> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        if watch.is_none() {
            watch = kv.watch_all().await.ok();
        }
        // At start, after each write, on each change and every EVERY.
        match read(&kv).await {
            Ok(set) => {
                if pipeline
                    .send(Input::Silences { gen: written, set })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => tracing::debug!(event = "cluster", "Reading the silences: {e}"),
        }
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return };
                if !write(&kv, &c, &stop).await {
                    return;
                }
                written = c.gen;
            }
            e = next(&mut watch) => {
                if e.is_none() {
                    watch = None;
                }
            }
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn next(w: &mut Option<kv::Watch>) -> Option<()> {
    match w {
        Some(w) => w.next().await.and_then(|e| e.ok()).map(|_| ()),
        None => std::future::pending().await,
    }
}

/// The silences in force in the bucket.
async fn read(kv: &kv::Store) -> Result<Vec<Silence>, String> {
    let now = crate::clock::unix_ms();
    let mut out = BTreeMap::new();
    for (k, (bytes, _)) in all_entries_rev(kv).await? {
        if !k.starts_with("s-") {
            continue;
        }
        match serde_json::from_slice::<Silence>(&bytes) {
            Ok(s) if s.until > now => {
                out.insert(s.id, s);
            }
            // Ended on its own: out of the bucket, by whichever replica reads it first
            // (a purge is the same from each), so the bucket does not grow with time.
            Ok(_) => {
                let _ = kv.purge(&k).await;
            }
            Err(_) => {}
        }
    }
    Ok(out.into_values().collect())
}

/// Writes one change, trying again every second while NATS cannot take it; `false`:
/// stopped first.
async fn write(kv: &kv::Store, c: &SilenceChange, stop: &CancellationToken) -> bool {
    let mut warned = false;
    loop {
        let r = match &c.silence {
            Some(s) => {
                let Ok(body) = serde_json::to_vec(s) else {
                    return true;
                };
                match within(kv.create(key(c.id), body.into())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        tracing::error!(event = "silence_conflict", id = c.id, pattern = %s.pattern, "Silence {} ({}) got an id another replica had just given to another silence: the cluster keeps that one, and this one ends here. Add it again.", c.id, s.pattern);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e),
                }
            }
            None => within(kv.delete(key(c.id)))
                .await
                .and_then(|r| r.map_err(|e| e.to_string())),
        };
        match r {
            Ok(()) => {
                if warned {
                    tracing::info!(
                        event = "cluster",
                        "The cluster has this replica's silences again."
                    );
                }
                return true;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(event = "cluster", id = c.id, "Silence {} could not be written to the cluster ({e}): it holds here and is tried again every second.", c.id);
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return false,
                }
            }
        }
    }
}
