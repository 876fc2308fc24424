//! Runs the `krt-bot` binary: token minting, exit codes and messages.

use std::process::{Command, Output};

use krt_shared::keyfile;

fn krt_bot(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_krt-bot"));
    command
        .args(args)
        .env_remove("KRT_DISCORD_TOKEN")
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("krt-bot runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn mint_tokens_prints_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let output = krt_bot(
        &[
            "mint-tokens",
            "--data-dir",
            data_arg,
            "--count",
            "4",
            "--freqs",
            "1000-1099",
            "--ttl",
            "90s",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let tokens: Vec<&str> = stdout.lines().collect();
    assert_eq!(tokens.len(), 4, "{stdout}");

    let verifier = keyfile::load_verifier(&data).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last = verifier.verify(tokens[3], now).unwrap();
    assert_eq!(last.name, "user-0004");
    assert_eq!(last.exp - last.iat, 90);
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "mint-tokens",
                "--data-dir",
                data,
                "--count",
                "2",
                "--ttl",
                "soon",
            ],
            vec![],
            "'soon' for --ttl",
        ),
        (
            vec!["mint-tokens", "--data-dir", data, "--count", "0"],
            vec![],
            "'0' for --count",
        ),
        (
            vec![
                "mint-tokens",
                "--data-dir",
                data,
                "--count",
                "2",
                "--freqs",
                "12",
            ],
            vec![],
            "'12' for --freqs",
        ),
        (vec!["mint-tokens", "--data-dir", data], vec![], "--count"),
        (
            vec![
                "run",
                "--data-dir",
                data,
                "--guild-id",
                "1",
                "--relay-url",
                "ws://h/voice",
            ],
            vec![],
            "KRT_DISCORD_TOKEN",
        ),
        (
            vec![
                "run",
                "--data-dir",
                data,
                "--guild-id",
                "1",
                "--relay-url",
                "ws://h/voice",
            ],
            vec![("KRT_DISCORD_TOKEN", "not-a-token")],
            "invalid Discord bot token in KRT_DISCORD_TOKEN",
        ),
        (
            vec![
                "run",
                "--data-dir",
                data,
                "--guild-id",
                "1",
                "--relay-url",
                "ws://h/voice",
            ],
            vec![("KRT_DISCORD_API_BASE", "127.0.0.1:1")],
            "'127.0.0.1:1' for setting discord_api_base",
        ),
        (
            vec!["run", "--guild-id", "1"],
            vec![("KRT_RELAY_URL", "ws://h/voice")],
            "missing setting data_dir",
        ),
    ];
    for (args, env, expected) in cases {
        let output = krt_bot(&args, &env);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            !stderr(&output).contains("panicked"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn unreachable_api_base_stops_the_bot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    // Port 9 on loopback has no listener, so every request fails at once.
    let output = krt_bot(
        &[
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--guild-id",
            "123456789012345678",
            "--relay-url",
            "wss://radio.example.org/voice",
            "--discord-api-base",
            "http://127.0.0.1:9",
        ],
        &[(
            "KRT_DISCORD_TOKEN",
            "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.abcdefghijklmnopqrstuvwxyz0123456789AB",
        )],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("gateway lookup at http://127.0.0.1:9 failed"),
        "{message}"
    );
    assert!(!message.contains("gateway.discord.gg"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
