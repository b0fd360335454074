//! Vigia's engine: config, scheduler, status map, state store, alert pipeline, control
//! socket. The `vigia` binary (src/main.rs) is a thin CLI over this library.
//! See ARCHITECTURE.md at the repository root for the bird's-eye view.

pub mod alert;
pub mod config;
pub mod control;
pub mod engine;
pub mod logging;
pub mod remedy;
pub mod scheduler;
pub mod status;
pub mod store;
pub mod systemd;
