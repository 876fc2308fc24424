//! Cross-process test support for KRT-Com: the `krt-loadgen` load generator
//! and a fake Discord.

pub mod fake_discord;
pub mod loadgen;
