//! The process entry point shared by the `krt-relay` binary and the test
//! binary of the cross-process tests.

use std::process::ExitCode;

use crate::RelayArgs;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit code for invalid configuration (`EX_USAGE` of sysexits.h).
const EXIT_USAGE: u8 = 64;

/// Runs the relay as a process: logging to stderr, options from the command
/// line, the config file and `KRT_` variables, then serves until SIGINT or
/// SIGTERM and drains the transmission log.
pub fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KRT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let args = match RelayArgs::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // Help and version go to stdout with code 0, and usage errors
            // exit with the same code as invalid settings.
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let config = match args.load() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    match crate::limits::raise_nofile() {
        Ok(limits) => tracing::info!(
            soft_before = limits.soft_before,
            soft = limits.soft,
            hard = limits.hard,
            "open-file limit"
        ),
        Err(err) => tracing::warn!(error = %err, "failed to raise the open-file limit"),
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "failed to start the Tokio runtime");
            return ExitCode::FAILURE;
        }
    };

    runtime.block_on(async {
        let relay = match crate::start(config).await {
            Ok(relay) => relay,
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        let report = relay.shutdown().await;
        if report.rows_lost > 0 {
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(err) => {
            tracing::error!(error = %err, "failed to listen for SIGTERM; use SIGINT to stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
