//! Vigia's built-in check plugins.
//!
//! Each plugin is one file: a `<Kind>Config` (serde, unknown keys refused, a doc comment
//! on every field) whose `validate()` does no IO, a `<Kind>Check` that implements
//! [`vigia_api::Check`], and a factory registered in [`registry`] below. Plugins know
//! nothing of the scheduler, the status map, alerting or Lua.

use std::sync::Arc;

use vigia_api::CheckFactory;

pub mod child;
pub mod file;
pub mod http;
pub mod http1;
pub mod icmp;
pub mod latency;
pub mod nagios;
pub mod net;
pub mod ping;
pub mod process;
pub mod redis;
pub mod tcp;
pub mod terminals;

/// Every built-in check type, in one visible list. The engine builds one registry per
/// running engine (the ICMP socket is shared by the checks of that engine).
pub fn registry() -> Vec<Arc<dyn CheckFactory>> {
    let icmp = Arc::new(icmp::Icmp::default());
    vec![
        Arc::new(tcp::TcpFactory),
        Arc::new(http::HttpFactory::default()),
        Arc::new(ping::PingFactory { icmp: icmp.clone() }),
        Arc::new(latency::LatencyFactory { icmp: icmp.clone() }),
        Arc::new(terminals::TerminalsFactory { icmp }),
        Arc::new(nagios::NagiosFactory),
        Arc::new(process::ProcessFactory),
        Arc::new(redis::RedisFactory),
    ]
}
