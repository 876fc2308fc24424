//! `krt-relay` binary: parses options, sets up logging and runs the relay
//! until SIGINT or SIGTERM.

fn main() -> std::process::ExitCode {
    krt_relay::cli::main()
}
