//! The plugin contract of Vigia.
//!
//! This crate is what a check plugin sees of the engine, and nothing more:
//! - [`Check`]: something that can be run once and gives a [`CheckOutcome`];
//! - [`CheckFactory`]: builds checks of one `type:` from a config [`yaml::Node`];
//! - [`yaml`]: a YAML tree whose every node remembers its `line:col`, with a serde
//!   deserializer, so that a plugin's typed config reports errors at their position;
//! - [`Dur`]: a duration written as `250ms`, `10s`, `5m`, `1h`.
//!
//! Plugins know nothing of the scheduler, the status map, alerting or Lua.

pub mod bytes;
pub mod check;
pub mod duration;
pub mod error;
pub mod hash;
pub mod yaml;

pub use bytes::Bytes;
pub use check::{
    BrokenFile, BuildContext, Built, BuiltCheck, Check, CheckFactory, CheckOutcome, RunContext,
    Settings, Severity,
};
pub use duration::{Dur, MAX_DURATION};
pub use error::{ConfigError, ConfigErrors};
pub use hash::fnv1a;
pub use yaml::{Node, Pos};
