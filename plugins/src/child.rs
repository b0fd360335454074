//! The one way Vigia runs a program: the `nagios` check, the Lua `exec` and remediation
//! actions all come here.
//!
//! - argv only, never a shell, and no PATH lookup of the program (its path is absolute,
//!   from an allow-list);
//! - an environment allow-list: `PATH` and `LANG` plus what the caller names;
//! - the program runs in a process group of its own; when it exits, its pipes get a
//!   short grace to drain, then the whole group is killed — a child it left in the
//!   background can neither hold the run open nor outlive it (unless the caller keeps
//!   leftovers: a remediation action may start a service that stays);
//! - stdout and stderr are each capped (the rest is read and dropped, so a chatty child
//!   never blocks on a full pipe);
//! - an optional timeout kills the group; dropping the run (a check's own timeout)
//!   kills it too.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

/// Reads a pipe into `kept` (up to `cap` bytes, the rest dropped) until its end. The
/// bytes stay in `kept` when the future is dropped half-way.
async fn pump<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, cap: usize, kept: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The search path a program's own children see (the program itself is absolute).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// After the program exited, how long its pipes may still deliver output (a child it
/// left behind may hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// What to run.
pub struct ChildSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// `LANG` (the plugins' parsers want `C`; scripts get `C.UTF-8`).
    pub lang: &'a str,
    /// Variables on top of `PATH` and `LANG`.
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
    pub stdin: Option<Vec<u8>>,
    /// `None`: the caller bounds the run (by dropping it).
    pub timeout: Option<Duration>,
    /// Bytes kept of each of stdout and stderr.
    pub output_cap: usize,
    /// Kill what the program left in its group once it exited (checks: yes; an action
    /// that starts a daemon: no). A timeout or a dropped run kills the group anyway.
    pub kill_leftovers: bool,
}

impl<'a> ChildSpec<'a> {
    pub fn new(program: &'a Path, args: &'a [String], output_cap: usize) -> Self {
        ChildSpec {
            program,
            args,
            lang: "C",
            env: &[],
            cwd: None,
            stdin: None,
            timeout: None,
            output_cap,
            kill_leftovers: true,
        }
    }
}

/// How it ended.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

#[derive(Debug)]
pub enum ChildError {
    /// It could not be started (missing, not executable...).
    Spawn(std::io::Error),
    /// It ran past its timeout and was killed, with its group.
    TimedOut(Duration),
    Wait(std::io::Error),
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildError::Spawn(e) => write!(f, "cannot start it: {e}"),
            ChildError::TimedOut(t) => write!(
                f,
                "did not finish within {} and was killed",
                vigia_api::Dur(*t)
            ),
            ChildError::Wait(e) => write!(f, "waiting for it failed: {e}"),
        }
    }
}

/// Kills a process group when dropped (at the end of a run, or when the run itself is
/// dropped half-way), unless disarmed.
struct Group(i32);

impl Group {
    fn disarm(&mut self) {
        self.0 = 0;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: a plain syscall; the group is the one the child leads.
            unsafe {
                libc::killpg(self.0, libc::SIGKILL);
            }
        }
    }
}

pub async fn run(spec: ChildSpec<'_>) -> Result<ChildOutput, ChildError> {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LANG", spec.lang)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(ChildError::Spawn)?;
    let mut group = Group(child.id().map(|p| p as i32).unwrap_or(0));
    if let (Some(data), Some(mut pipe)) = (spec.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let cap = spec.output_cap;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let work = async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = {
            let reads =
                async { tokio::join!(pump(out, cap, &mut stdout), pump(err, cap, &mut stderr)) };
            tokio::pin!(reads);
            let mut drained = false;
            let status = tokio::select! {
                s = child.wait() => s,
                _ = &mut reads => {
                    drained = true;
                    child.wait().await
                }
            };
            if !drained {
                // Something it left behind may hold the pipes: what was read is kept.
                let _ = tokio::time::timeout(DRAIN_GRACE, &mut reads).await;
            }
            status
        };
        (status, stdout, stderr)
    };
    let (status, stdout, stderr) = match spec.timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| ChildError::TimedOut(t))?,
        None => work.await,
    };
    let status = status.map_err(ChildError::Wait)?;
    if !spec.kill_leftovers {
        group.disarm();
    }
    drop(group);
    use std::os::unix::process::ExitStatusExt;
    Ok(ChildOutput {
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        duration: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_code_output_and_cap() {
        let args = sh("printf 'hello world'; printf oops >&2; exit 3");
        let out = run(ChildSpec::new(Path::new("/bin/sh"), &args, 5))
            .await
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"oops");
    }

    #[tokio::test]
    async fn only_the_allowed_environment() {
        std::env::set_var("VIGIA_CHILD_SECRET", "x");
        let args = sh("env");
        let extra = [("ONE".to_string(), "1".to_string())];
        let mut spec = ChildSpec::new(Path::new("/bin/sh"), &args, 4096);
        spec.env = &extra;
        let out = run(spec).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ONE=1") && text.contains("LANG=C"), "{text}");
        assert!(!text.contains("VIGIA_CHILD_SECRET"), "{text}");
    }

    #[tokio::test]
    async fn a_background_child_neither_holds_the_run_nor_outlives_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let args = sh(&format!(
            "sleep 30 & echo $! > {}; echo done",
            pidfile.display()
        ));
        // `done` is printed before the shell exits, while the sleep holds the pipe.
        let mut spec = ChildSpec::new(Path::new("/bin/sh"), &args, 4096);
        spec.timeout = Some(Duration::from_secs(10));
        let out = run(spec).await.unwrap();
        assert_eq!(out.code, Some(0), "it exited OK, it did not time out");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
        assert!(out.duration < Duration::from_secs(5), "{:?}", out.duration);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group was killed: the background sleep is gone (or a zombie being reaped).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next();
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the background child still runs: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn leftovers_can_be_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let args = sh(&format!(
            "sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        ));
        let mut spec = ChildSpec::new(Path::new("/bin/sh"), &args, 4096);
        spec.kill_leftovers = false;
        let out = run(spec).await.unwrap();
        assert_eq!(out.code, Some(0));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        // SAFETY: a plain syscall on the sleep this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        assert!(alive, "the service an action started must stay");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_group() {
        let args = sh("sleep 30");
        let mut spec = ChildSpec::new(Path::new("/bin/sh"), &args, 4096);
        spec.timeout = Some(Duration::from_millis(200));
        let e = run(spec).await.unwrap_err();
        assert!(e.to_string().contains("did not finish within 200ms"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let e = run(ChildSpec::new(Path::new("/nonexistent/x"), &[], 10))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot start it"), "{e}");
    }
}
