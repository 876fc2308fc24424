//! Load generator for the KRT-Com relay.
//!
//! Start a relay, then run for example:
//!
//! ```text
//! krt-loadgen --data-dir data --users 600 --freqs 6 --talkers 6 \
//!     --opus tests/data/radio-check.wav
//! ```
//!
//! `krt-loadgen --help` lists every option.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use krt_tests::loadgen::{self, Args, Config};
use tracing_subscriber::EnvFilter;

/// Exit code for invalid options (EX_USAGE in sysexits.h).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            error.exit()
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("krt-loadgen: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    // Progress goes to stderr so that stdout holds only the report.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("krt-loadgen: failed to start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    let json = config.json;
    match runtime.block_on(loadgen::run(config)) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("krt-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}
