//! Exit codes and messages of a real `krt-relay` process given bad options
//! or a bad settings file.

use std::process::{Command, Output};

use krt_tests::relay_process::relay_executable;

fn run(args: &[&str]) -> Output {
    Command::new(relay_executable())
        .args(args)
        .env_remove("KRT_CONFIG")
        .output()
        .expect("relay starts")
}

#[test]
fn usage_error_exits_64() {
    let output = run(&["--queue-depth", "many"]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("many"), "{stderr}");
}

#[test]
fn help_exits_0() {
    let output = run(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("--max-queue-delay"), "{stdout}");
}

#[test]
fn unknown_file_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, "queue_dpeth = 16\n").unwrap();
    let data = dir.path().join("data");
    let output = run(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown setting \"queue_dpeth\""),
        "{stderr}"
    );
    assert!(!data.exists(), "a rejected start creates no data directory");
}
