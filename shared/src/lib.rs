//! Types that the KRT-Com bot, relay and clients agree on.
//!
//! Apart from the key files of [`keyfile`], this crate does no I/O and reads
//! no clock. Every function that depends on time takes the current time as an
//! argument, which keeps the codec, the token checks and the floor-control
//! rules deterministic, unit-testable and fuzzable.

pub mod control;
pub mod floor;
pub mod frame;
pub mod freq;
pub mod keyfile;
pub mod protocol;
pub mod settings;
pub mod token;
pub mod user;

pub use freq::{FreqId, FreqSet};
pub use user::{UserId, UserIdKey};
