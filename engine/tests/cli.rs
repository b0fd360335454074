//! The command line as a shell user meets it.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::*;

/// `vigia status | head -1`: output to a pipe nobody reads ends quietly, never a panic.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let mut fds = [0; 2];
    // SAFETY: a plain syscall filling a two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end); // closed before the child writes anything
    let out = Command::new(vigia_bin())
        .arg("plugins")
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
        "{:?} {stderr}",
        out.status
    );
}

/// `vigia plugins`: one column of types, one of summaries, whatever the longest type.
#[test]
fn plugins_are_listed_in_aligned_columns() {
    let out = Command::new(vigia_bin()).arg("plugins").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let starts: Vec<usize> = text
        .lines()
        .map(|l| {
            let kind_end = l.find(' ').unwrap();
            kind_end + l[kind_end..].find(|c| c != ' ').unwrap()
        })
        .collect();
    assert!(text.contains("redis_replication"), "{text}");
    assert!(starts.iter().all(|s| *s == starts[0]), "{text}");
}
