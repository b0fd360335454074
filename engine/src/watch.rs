//! The file watcher: config.yaml, the files it names (ips.txt) and the scripts
//! directory, through inotify (notify); a change resolves once saves have settled.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use vigia_config::{Config, Plan};

/// What the watcher looks at: directories, and which names in them matter.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSet {
    dirs: BTreeSet<PathBuf>,
    files: HashSet<PathBuf>,
    scripts_dir: PathBuf,
}

impl WatchSet {
    pub fn of(config_file: &Path, config: &Config, plan: &Plan) -> Self {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut files: HashSet<PathBuf> = plan.files.iter().map(|f| abs(f)).collect();
        files.insert(abs(config_file));
        let scripts_dir = abs(&config.engine.checks_dir);
        let mut dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if scripts_dir.is_dir() {
            dirs.insert(scripts_dir.clone());
        }
        WatchSet {
            dirs,
            files,
            scripts_dir,
        }
    }

    /// Whether a change to `p` should reload.
    fn matters(&self, p: &Path) -> bool {
        if self.files.contains(p) {
            return true;
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        p.parent() == Some(self.scripts_dir.as_path())
            && name.ends_with(".lua")
            && !name.starts_with('.')
    }
}

/// Watches config.yaml, the files it names and the scripts directory (inotify through
/// notify); `changed` resolves once saves have settled for [`DEBOUNCE`].
pub struct Watch {
    /// Shared with notify's thread, which filters with it; a reload changes it in
    /// place, so the watcher is never rebuilt (a rebuilt one misses what changes while
    /// it has no inotify watch: a script deleted just after the reload that added it).
    set: Arc<RwLock<WatchSet>>,
    watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    tx: mpsc::UnboundedSender<PathBuf>,
}

/// Editors save in several steps (write a temp file, rename, chmod): wait for quiet.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

impl Watch {
    pub fn start(config_file: &Path, config: &Config, plan: &Plan) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = Watch {
            set: Arc::new(RwLock::new(WatchSet::of(config_file, config, plan))),
            watcher: None,
            rx,
            tx,
        };
        w.arm();
        w
    }

    fn arm(&mut self) {
        let tx = self.tx.clone();
        // Filtered here, on notify's thread: a log written beside config.yaml is a
        // stream of events that would otherwise each wake the engine (and queue up
        // without bound while it reloads).
        let set = self.set.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let set = set.read().unwrap_or_else(|p| p.into_inner());
                for p in event.paths.into_iter().filter(|p| set.matters(p)) {
                    let _ = tx.send(p);
                }
            }
        });
        let mut watcher = match made {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    event = "watch",
                    "Cannot watch files for changes ({e}); reload with SIGHUP."
                );
                return;
            }
        };
        let dirs = self.set().dirs;
        for dir in &dirs {
            watch_dir(&mut watcher, dir);
        }
        self.watcher = Some(watcher);
    }

    fn matters(&self, p: &Path) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matters(p)
    }

    fn set(&self) -> WatchSet {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reload's new set: new directories are watched before the set changes, and
    /// those no longer needed let go after, so nothing is missed in between.
    pub fn rewatch(&mut self, set: WatchSet) {
        use notify::Watcher;
        let old = self.set();
        if set == old {
            return;
        }
        if let Some(w) = self.watcher.as_mut() {
            for dir in set.dirs.difference(&old.dirs) {
                watch_dir(w, dir);
            }
        }
        let gone: Vec<PathBuf> = old.dirs.difference(&set.dirs).cloned().collect();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
        if let Some(w) = self.watcher.as_mut() {
            for dir in gone {
                let _ = w.unwatch(&dir);
            }
        }
    }

    /// The files that changed, once no more changes came for [`DEBOUNCE`].
    pub async fn changed(&mut self) -> Vec<String> {
        let mut changed = BTreeSet::new();
        loop {
            let Some(p) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            if self.matters(&p) {
                changed.insert(p);
                break;
            }
        }
        while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
            if self.matters(&p) {
                changed.insert(p);
            }
        }
        changed.iter().map(|p| p.display().to_string()).collect()
    }
}

fn watch_dir(w: &mut notify::RecommendedWatcher, dir: &Path) {
    use notify::Watcher;
    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(event = "watch", dir = %dir.display(), "Cannot watch {} for changes ({e}); reload with SIGHUP.", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written beside config.yaml never reaches the engine; the config does.
    #[tokio::test]
    async fn only_the_files_that_matter_wake_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::path::absolute(dir.path()).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, "checks: []\n").unwrap();
        let set = WatchSet {
            dirs: [dir.clone()].into_iter().collect(),
            files: [config.clone()].into_iter().collect(),
            scripts_dir: dir.join("checks"),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = Watch {
            set: Arc::new(RwLock::new(set)),
            watcher: None,
            rx,
            tx,
        };
        w.arm();
        assert!(w.watcher.is_some());
        let log = dir.join("vigia.log");
        for i in 0..200 {
            std::fs::write(&log, format!("line {i}\n")).unwrap();
        }
        std::fs::write(&config, "checks: []\n# saved\n").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), w.rx.recv())
            .await
            .expect("the config's change arrives")
            .unwrap();
        assert_eq!(first, config, "nothing else came before it");
    }
}
