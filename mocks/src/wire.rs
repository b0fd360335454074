//! A latency wire: a userspace cable between two network namespaces, with a one-way
//! delay that can be changed while it runs.
//!
//! This machine kind's kernel has no `tc netem`, so the far Galera node's latency comes
//! from here: one TAP device in each namespace, and every Ethernet frame read from one
//! is written to the other after the delay. The delay is read from a control file
//! (`"100"` = 100 ms one way, so 200 ms RTT), re-read every 100 ms; a frame keeps the
//! delay it was sent with, and each direction stays in order.
//!
//! It touches nothing but the two TAP devices it creates; they vanish when it exits.
//! The caller gives them addresses and brings them up (`ip -n NS addr add … dev IF`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const TUNSETIFF: libc::c_ulong = 0x400454CA;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// One end of the wire: a network namespace (by name, as `ip netns` knows it) and the
/// name of the TAP device to create in it.
#[derive(Debug, Clone)]
pub struct End {
    pub netns: String,
    pub ifname: String,
}

fn setns(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // SAFETY: a plain syscall on an open fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("setns {}: {e}", path.display()),
        ));
    }
    Ok(())
}

fn open_tap(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() > 15 {
        return Err(std::io::Error::other(format!(
            "interface name `{name}` must be 1 to 15 characters"
        )));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| std::io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq of this layout.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("TUNSETIFF {name}: {e}"),
        ));
    }
    Ok(f)
}

/// Opens the TAP device of each end in its namespace; this thread comes back home.
fn open_ends(a: &End, b: &End) -> std::io::Result<(File, File)> {
    let home = File::open("/proc/self/ns/net")?;
    let open = |end: &End| -> std::io::Result<File> {
        setns(&PathBuf::from("/var/run/netns").join(&end.netns))?;
        open_tap(&end.ifname)
    };
    let r = open(a).and_then(|fa| open(b).map(|fb| (fa, fb)));
    // SAFETY: see setns.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    r
}

fn parse_delay(text: &str) -> Option<Duration> {
    let ms: f64 = text.split_whitespace().next()?.parse().ok()?;
    (ms.is_finite() && (0.0..=60_000.0).contains(&ms)).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// One direction: frames read from `from` are written to `to` after the delay.
fn pump(mut from: File, mut to: File, delay: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        for (due, frame) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // A full queue or a device that went down drops the frame, like a wire.
            let _ = to.write(&frame);
        }
    });
    let mut buf = vec![0u8; 65_600];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let d = Duration::from_micros(delay.load(Ordering::Relaxed));
        if tx.send((Instant::now() + d, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// Runs the wire until the process is stopped. `ready` is called once both devices exist.
pub fn run(a: End, b: End, control: PathBuf, ready: impl FnOnce()) -> std::io::Result<()> {
    let (fa, fb) = open_ends(&a, &b)?;
    let initial = std::fs::read_to_string(&control)
        .ok()
        .and_then(|t| parse_delay(&t))
        .unwrap_or_default();
    let delay = Arc::new(AtomicU64::new(initial.as_micros() as u64));
    let (fa2, fb2) = (fa.try_clone()?, fb.try_clone()?);
    {
        let d = delay.clone();
        std::thread::spawn(move || pump(fa, fb2, d));
    }
    {
        let d = delay.clone();
        std::thread::spawn(move || pump(fb, fa2, d));
    }
    eprintln!(
        "wire up: {}/{} <-> {}/{}, one-way delay {} ms (from {})",
        a.netns,
        a.ifname,
        b.netns,
        b.ifname,
        initial.as_secs_f64() * 1000.0,
        control.display()
    );
    ready();
    let mut last = initial;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(d) = std::fs::read_to_string(&control)
            .ok()
            .and_then(|t| parse_delay(&t))
        {
            if d != last {
                delay.store(d.as_micros() as u64, Ordering::Relaxed);
                eprintln!("wire: one-way delay now {} ms", d.as_secs_f64() * 1000.0);
                last = d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_read_in_milliseconds() {
        assert_eq!(parse_delay("100\n"), Some(Duration::from_millis(100)));
        assert_eq!(parse_delay("0.5"), Some(Duration::from_micros(500)));
        assert_eq!(parse_delay(""), None);
        assert_eq!(parse_delay("-3"), None);
        assert_eq!(parse_delay("fast"), None);
    }
}
