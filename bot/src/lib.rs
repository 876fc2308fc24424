//! KRT-Com Discord bot: authentication, frequency assignment, moderation and
//! token issuing.
//!
//! The `krt-bot` binary only sets up logging, parses [`cli::Cli`] and calls
//! [`cli::execute`], which the tests call too. [`app::start`] runs the bot
//! itself.

pub mod access;
pub mod app;
pub mod batcher;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control_client;
pub mod error;
pub mod mint;
pub mod store;
