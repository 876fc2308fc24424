//! Cross-process test support for KRT-Com: the `krt-loadgen` load generator,
//! a fake Discord, and a harness that runs the real relay as a process.

pub mod fake_discord;
pub mod loadgen;
pub mod relay_process;
