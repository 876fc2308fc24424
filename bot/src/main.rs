//! `krt-bot`: run the Discord bot, or mint tokens for load tests.
//!
//! `cargo run -p krt-bot -- mint-tokens --data-dir DIR --count 10`

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use krt_bot::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with code 0, and usage errors exit with 64.
            let code = if err.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };

    // Logs go to stderr, so stdout carries only a command's output.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("krt-bot: {}", error_chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}

/// Joins an error and its sources with ": ", skipping a source whose text
/// the message before it already contains.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
