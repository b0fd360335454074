//! Vigia's runtime: the stages that run checks, commit their results and act on them,
//! and the supervisor that starts and stops them. The `vigia` binary (src/main.rs) is a
//! thin CLI over this library. See ARCHITECTURE.md at the repository root.
//!
//! The rules live below it, without I/O, in `vigia-core`; config parsing and the plan
//! in `vigia-config`.

pub mod alerting;
pub mod alloc;
pub mod book;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod console;
pub mod control;
pub mod failpoint;
pub mod fds;
pub mod feed;
pub mod history;
pub mod http;
pub mod journal;
pub mod logging;
pub mod record;
pub mod remediation;
pub mod replay;
pub mod scheduler;
pub mod silences;
pub mod status_log;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod watch;

/// The crates below, under the names the CLI and tests use.
pub use vigia_config as config;
pub use vigia_core::status;
