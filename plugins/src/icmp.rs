//! ICMP echo, shared by `ping`, `latency` and `terminals`.
//!
//! One socket per address family per engine (created on first use): with hundreds of
//! terminals, one raw socket each would make every socket receive every reply.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use surge_ping::{Client, Config, PingIdentifier, PingSequence, SurgeError, ICMP};

/// What to tell an operator when the kernel refuses an ICMP socket.
pub const PERMISSION_HINT: &str = "cannot open an ICMP socket (permission denied): run vigia \
as root, or grant it CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW), or allow \
unprivileged ping with `sysctl net.ipv4.ping_group_range=\"0 2147483647\"`";

#[derive(Default)]
pub struct Icmp {
    v4: Mutex<Option<Client>>,
    v6: Mutex<Option<Client>>,
}

/// Replies to one series of echo requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingStats {
    pub sent: u32,
    /// Round-trip times of the replies, in ms.
    pub rtts: Vec<f64>,
}

impl PingStats {
    pub fn received(&self) -> u32 {
        self.rtts.len() as u32
    }

    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.sent - self.received()) / f64::from(self.sent)
    }

    pub fn avg(&self) -> Option<f64> {
        (!self.rtts.is_empty()).then(|| self.rtts.iter().sum::<f64>() / self.rtts.len() as f64)
    }

    pub fn min(&self) -> Option<f64> {
        self.rtts.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.rtts.iter().copied().reduce(f64::max)
    }
}

/// Every pinger gets its own identifier so concurrent pings never collide.
static NEXT_IDENT: AtomicU16 = AtomicU16::new(1);

impl Icmp {
    fn client(&self, v6: bool) -> Result<Client, String> {
        let slot = if v6 { &self.v6 } else { &self.v4 };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let kind = if v6 { ICMP::V6 } else { ICMP::V4 };
        let client = Client::new(&Config::builder().kind(kind).build()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                PERMISSION_HINT.to_string()
            } else {
                format!("cannot open an ICMP socket: {e}")
            }
        })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Sends `count` echo requests `gap` apart, waiting up to `timeout` for each reply.
    /// `Err` only when pinging was impossible (no socket, no route); lost replies are
    /// counted in the stats, not errors.
    pub async fn ping(
        &self,
        addr: IpAddr,
        count: u32,
        gap: Duration,
        timeout: Duration,
    ) -> Result<PingStats, String> {
        let client = self.client(addr.is_ipv6())?;
        let ident = PingIdentifier(NEXT_IDENT.fetch_add(1, Ordering::Relaxed));
        let mut pinger = client.pinger(addr, ident).await;
        pinger.timeout(timeout);
        let payload = [0u8; 16];
        let mut stats = PingStats::default();
        for seq in 0..count {
            if seq > 0 {
                tokio::time::sleep(gap).await;
            }
            stats.sent += 1;
            // Timed here: surge-ping's own RTT starts after the send returns, and on
            // loopback the reply is often stamped before that, which gives 0.
            let sent_at = std::time::Instant::now();
            match pinger.ping(PingSequence(seq as u16), &payload).await {
                Ok(_) => stats.rtts.push(sent_at.elapsed().as_secs_f64() * 1000.0),
                Err(SurgeError::Timeout { .. }) => {}
                Err(SurgeError::IOError(e)) => {
                    return Err(format!("cannot ping {addr}: {}", crate::tcp::io_reason(&e)))
                }
                Err(e) => return Err(format!("cannot ping {addr}: {e}")),
            }
        }
        Ok(stats)
    }
}
