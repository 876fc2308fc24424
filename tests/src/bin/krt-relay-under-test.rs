//! The relay process of the cross-process tests: the same entry point as the
//! `krt-relay` binary, built in this package so that cargo builds it with the
//! test binaries and hands them its path.

fn main() -> std::process::ExitCode {
    krt_relay::cli::main()
}
