//! The recording (`vigia run --record DIR`, `engine.record`): every check run — check,
//! time, ok, severity, value, message, duration — as one JSON line: what each check
//! saw, run by run, for whoever asks later why it was (or was not) alerted (`vigia replay`,
//! `replay.rs`, feeds it back through the alert policy). Alerting adds the silences and
//! acknowledgements (`Recorder::note`).
//!
//! A run only formats its line and appends it to a buffer (one short lock); a thread of
//! its own writes the buffer out every 250 ms into `DIR/record-<unix ms>-<n>.jsonl`, starts
//! a new file when one holds an eighth of `engine.record_size`, and deletes the oldest
//! files while the recording is larger than that. Each file begins with a header line
//! (`{"vigia_record":1,"version":…,"host":…}`); files hold whole lines, but for the
//! last one after a crash. A disk that cannot keep up never slows a check: beyond
//! 64 MiB waiting, runs are counted as dropped (and said so) instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vigia_api::{CheckOutcome, Severity};

use crate::scheduler::RunRecord;

/// The version of the line format (the header's `vigia_record`).
pub const FORMAT: u64 = 1;
/// How often the writer takes what runs left.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// The most that waits for the writer before runs are dropped.
const MAX_PENDING: usize = 64 << 20;
/// The smallest file (a tiny `record_size` would rotate at every flush).
const MIN_FILE: usize = 64 << 10;

/// What every check task shares: the buffer of lines not written yet.
pub struct Recorder {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Ok => "ok",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
        Severity::Unknown => "unknown",
    }
}

/// One run as its line: `{"t":…,"c":"web","ok":true,"s":"ok","v":12.5,"m":"…","d":1.25}`.
pub fn line(check: &str, outcome: &CheckOutcome, duration_ms: f64, at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + check.len() + outcome.message.len());
    write_line(&mut out, check, outcome, duration_ms, at);
    out
}

/// Appends a run's line to `out`: numbers by `itoa`/`ryu` through serde_json, strings
/// copied as they are unless they need escaping.
fn write_line(out: &mut Vec<u8>, check: &str, outcome: &CheckOutcome, duration_ms: f64, at: u64) {
    out.extend_from_slice(b"{\"t\":");
    let _ = serde_json::to_writer(&mut *out, &at);
    out.extend_from_slice(b",\"c\":");
    string(out, check);
    out.extend_from_slice(if outcome.is_ok() {
        b",\"ok\":true,\"s\":\""
    } else {
        b",\"ok\":false,\"s\":\""
    });
    out.extend_from_slice(severity(outcome.severity).as_bytes());
    out.push(b'"');
    if let Some(v) = outcome.value.filter(|v| v.is_finite()) {
        out.extend_from_slice(b",\"v\":");
        let _ = serde_json::to_writer(&mut *out, &v);
    }
    out.extend_from_slice(b",\"m\":");
    string(out, &outcome.message);
    // Microseconds are more than a run's duration means.
    let d = (duration_ms * 1000.0).round() / 1000.0;
    out.extend_from_slice(b",\"d\":");
    let _ = serde_json::to_writer(&mut *out, &if d.is_finite() { d } else { 0.0 });
    out.extend_from_slice(b"}\n");
}

/// A JSON string: most names and messages need no escaping and are copied whole.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

impl Recorder {
    /// A line that is not a run: `{"t":…,"silence":{…}}`, `{"t":…,"unsilence":7}`,
    /// `{"t":…,"ack":"db","by":"telegram:@ana"}` — what alerting changed, so that a
    /// replay applies the silences and acknowledgements in force at the time.
    pub fn note(&self, at: u64, fields: serde_json::Value) {
        let mut line = serde_json::json!({ "t": at });
        if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
            l.extend(f);
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed || p.buf.len() > MAX_PENDING {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = serde_json::to_writer(&mut p.buf, &line);
        p.buf.push(b'\n');
    }
}

impl RunRecord for Recorder {
    fn run(&self, check: &str, outcome: &CheckOutcome, duration_ms: f64, at: u64) {
        // Formatted straight into the buffer: no allocation per run. The lock is held
        // for the length of a line's formatting (~0.3 µs); runs end one at a time on the
        // engine's one worker by default.
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed || p.buf.len() > MAX_PENDING {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        write_line(&mut p.buf, check, outcome, duration_ms, at);
    }
}

/// The running recording: the recorder the scheduler feeds, and its writer thread.
pub struct Recording {
    recorder: Arc<Recorder>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recording {
    /// Creates `dir` if needed and starts the writer; an error says why the directory
    /// cannot be used. `config`: the config file, named in each file's header (what
    /// `vigia replay` replays under by default).
    pub fn start(
        dir: &Path,
        max_bytes: usize,
        host: &str,
        config: &Path,
    ) -> Result<Recording, String> {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the recording directory {}: {e}",
                dir.display()
            )
        })?;
        let probe = dir.join(".vigia-record-probe");
        std::fs::write(&probe, b"").map_err(|e| {
            format!(
                "cannot write into the recording directory {}: {e}",
                dir.display()
            )
        })?;
        let _ = std::fs::remove_file(&probe);
        let recorder = Arc::new(Recorder {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let w = Writer {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(MIN_FILE),
            header: header(
                host,
                &config
                    .canonicalize()
                    .unwrap_or_else(|_| config.to_path_buf()),
            ),
            recorder: recorder.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("vigia-record".into())
            .spawn(move || w.run())
            .map_err(|e| format!("cannot start the recording's writer: {e}"))?;
        Ok(Recording {
            recorder,
            thread: Some(thread),
        })
    }

    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// Writes what is left and stops.
    pub fn stop(mut self) {
        {
            let mut p = self
                .recorder
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.closed = true;
        }
        self.recorder.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(host: &str, config: &Path) -> Vec<u8> {
    let mut h = serde_json::to_vec(&serde_json::json!({
        "vigia_record": FORMAT,
        "config": config,
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("VIGIA_COMMIT"),
        "host": host,
        "started": crate::clock::unix_ms(),
    }))
    .unwrap_or_default();
    h.push(b'\n');
    h
}

/// The recording's files in `dir`, oldest first, with their sizes.
pub fn files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut out: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("record-") && n.ends_with(".jsonl")
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    // The names carry a zero-padded time: their order is the recording's.
    out.sort();
    Ok(out)
}

struct Writer {
    dir: PathBuf,
    max_bytes: usize,
    header: Vec<u8>,
    recorder: Arc<Recorder>,
}

struct Current {
    file: std::fs::File,
    path: PathBuf,
    written: usize,
}

impl Writer {
    fn run(self) {
        let per_file = (self.max_bytes / 8).max(MIN_FILE);
        let mut current: Option<Current> = None;
        let mut failing = false;
        let mut dropped_said = 0;
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (chunk, closed) = {
                let mut p = self
                    .recorder
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if p.buf.is_empty() && !p.closed {
                    p = self
                        .recorder
                        .wake
                        .wait_timeout(p, FLUSH_EVERY)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                // The buffers trade places, so neither grows from nothing each time.
                std::mem::swap(&mut p.buf, &mut spare);
                (std::mem::take(&mut spare), p.closed)
            };
            let mut chunk = chunk;
            if !chunk.is_empty() {
                match self.write(&mut current, &chunk, per_file) {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(event = "recording", dir = %self.dir.display(), "The recording writes again into {}.", self.dir.display());
                    }
                    Ok(()) => {}
                    Err(e) => {
                        // What could not be written is lost; the next chunk tries again
                        // in a new file.
                        current = None;
                        if !failing {
                            failing = true;
                            tracing::warn!(event = "recording", dir = %self.dir.display(), "The recording cannot write into {} ({e}); check runs go unrecorded until it can. The checks are not affected.", self.dir.display());
                        }
                    }
                }
            }
            chunk.clear();
            spare = chunk;
            let dropped = self.recorder.dropped.load(Ordering::Relaxed);
            if dropped > dropped_said {
                tracing::warn!(event = "recording", dropped, "{} check runs were not recorded: the recording's disk did not keep up (64 MiB were waiting).", dropped - dropped_said);
                dropped_said = dropped;
            }
            if closed {
                return;
            }
            std::thread::sleep(FLUSH_EVERY);
        }
    }

    fn write(
        &self,
        current: &mut Option<Current>,
        chunk: &[u8],
        per_file: usize,
    ) -> std::io::Result<()> {
        if current.as_ref().is_none_or(|c| c.written >= per_file) {
            let c = self.open()?;
            *current = Some(c);
            if let Some(c) = current.as_ref() {
                self.prune(&c.path);
            }
        }
        let Some(c) = current.as_mut() else {
            return Ok(());
        };
        c.file.write_all(chunk)?;
        c.written += chunk.len();
        Ok(())
    }

    fn open(&self) -> std::io::Result<Current> {
        // `record-<unix ms>-<n>.jsonl`: the names sort in the recording's order.
        let ms = crate::clock::unix_ms();
        let mut n = 0;
        let mut path = self.dir.join(format!("record-{ms:013}-{n:04}.jsonl"));
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("record-{ms:013}-{n:04}.jsonl"));
        }
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(&self.header)?;
        Ok(Current {
            file,
            path,
            written: self.header.len(),
        })
    }

    /// Deletes the oldest files while the recording is over its size (never `keep`, the
    /// file being written).
    fn prune(&self, keep: &Path) {
        let Ok(all) = files(&self.dir) else {
            return;
        };
        let mut total: u64 = all.iter().map(|(_, n)| n).sum();
        for (path, size) in &all {
            if total <= self.max_bytes as u64 {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(path).is_ok() {
                total = total.saturating_sub(*size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool, message: &str, value: Option<f64>) -> CheckOutcome {
        CheckOutcome {
            severity: if ok { Severity::Ok } else { Severity::Critical },
            value,
            message: message.into(),
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let l = line(
            "terminals/10.0.0.1",
            &outcome(false, "timed out \"x\"\n", Some(1.5)),
            12.34567,
            42,
        );
        let text = String::from_utf8(l).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["t"], 42);
        assert_eq!(v["c"], "terminals/10.0.0.1");
        assert_eq!(v["ok"], false);
        assert_eq!(v["s"], "critical");
        assert_eq!(v["v"], 1.5);
        assert_eq!(v["m"], "timed out \"x\"\n");
        assert_eq!(v["d"], 12.346);
        let nan = line("a", &outcome(true, "", Some(f64::NAN)), f64::INFINITY, 1);
        let v: serde_json::Value = serde_json::from_slice(&nan).unwrap();
        assert!(v.get("v").is_none());
        assert_eq!(v["d"], 0.0);
    }

    #[test]
    fn files_rotate_and_the_oldest_go_beyond_the_size() {
        let dir = tempfile::tempdir().unwrap();
        // 512 KiB in all: files of 64 KiB.
        let rec = Recording::start(dir.path(), 512 << 10, "h", Path::new("config.yaml")).unwrap();
        let r = rec.recorder();
        let message = "x".repeat(200);
        let mut runs = 0u64;
        // ~2 MiB of lines, written in several flushes.
        for round in 0..8 {
            for i in 0..1000 {
                r.run("web", &outcome(true, &message, None), 1.0, round * 1000 + i);
                runs += 1;
            }
            std::thread::sleep(FLUSH_EVERY * 2);
        }
        rec.stop();
        let all = files(dir.path()).unwrap();
        assert!(all.len() >= 2, "{all:?}");
        let total: u64 = all.iter().map(|(_, n)| n).sum();
        // At most the size, give or take the file being written when it was pruned.
        assert!(total <= (512 << 10) + (300 << 10), "{total}");
        // Every file: a header, then whole lines; the newest holds the last run.
        let mut last = 0;
        for (path, _) in &all {
            let text = std::fs::read_to_string(path).unwrap();
            let mut lines = text.lines();
            let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            assert_eq!(head["vigia_record"], FORMAT);
            assert_eq!(head["host"], "h");
            for l in lines {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                last = v["t"].as_u64().unwrap();
            }
        }
        assert_eq!(last, runs - 1);
        assert_eq!(r.dropped.load(Ordering::Relaxed), 0);
    }
}
