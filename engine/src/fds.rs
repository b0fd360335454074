//! The open-files limit: raised at start (every running check holds a socket, and
//! systemd's default soft limit, 1024, is too low for thousands of checks) and read for
//! `vigia status`.

fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall on a stack struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// The soft limit the engine runs with (0 if it cannot be read).
pub fn limit() -> u64 {
    get().map_or(0, |l| l.rlim_cur)
}

/// Raises the soft limit to the hard one, as most daemons do.
pub fn raise() {
    let Some(lim) = get().filter(|l| l.rlim_cur < l.rlim_max) else {
        return;
    };
    let wanted = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a plain syscall on a stack struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        tracing::warn!(
            "Could not raise the open-files limit from {}.",
            lim.rlim_cur
        );
    }
}
