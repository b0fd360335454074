//! Vigia's core: the rules, without I/O.
//!
//! - [`status`]: one check's state machine (`CheckState::record`), the only source of
//!   transitions.
//! - [`alert`]: the alert policy (flapping, reminders, silences, send windows, grouping,
//!   dependencies) as a pure state machine, send windows, and the message templates.
//! - [`silence`]: the one silence book.
//! - [`history`]: result buckets per minute, hour and day, and their encoding.
//! - [`remedy`]: which remediation may run now (cooldown, max_runs), and a check's
//!   actions.
//! - [`replay`]: recorded runs through the state machine and the policy, on the
//!   recorded clock.
//! - [`snapshot`] and [`command`]: the two doors of the status map for everything
//!   outside the engine — one snapshot type to read it, one typed command enum (with
//!   typed replies) to act on it. The control socket speaks them; so will the HTTP API,
//!   the cluster and the Telegram console.
//!
//! **Architecture invariant:** this crate does no I/O and reads no clock: it depends on
//! no async runtime and no store, and every function that needs the time takes it as
//! unix milliseconds. Everything here is tested with plain timestamps.

pub mod alert;
pub mod command;
pub mod history;
pub mod placement;
pub mod remedy;
pub mod replay;
pub mod silence;
pub mod snapshot;
pub mod status;
