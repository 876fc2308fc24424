//! The bot and a real relay process on one data dir: tokens from
//! `/radio connect` on the relay, kicks and bans closing live sessions,
//! voice-channel grants, and restarts of either process.

mod bot_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bot_support::*;
use krt_tests::fake_discord::CommandOption;
use krt_tests::relay_process::{Received, RelayProcess, VoiceClient};
use serde_json::json;

/// A fake Discord, a bot and a relay on one data dir.
struct Stack {
    harness: Harness,
    relay: Option<RelayProcess>,
    logs: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let logs = tempfile::tempdir().unwrap();
        let harness = Harness::start().await;
        let relay = RelayProcess::start(harness.dir.path(), logs.path());
        let stack = Self {
            harness,
            relay: Some(relay),
            logs,
        };
        stack.wait_synced(1).await;
        stack
    }

    fn relay_url(&self) -> String {
        self.relay.as_ref().expect("relay running").url.clone()
    }

    async fn wait_synced(&self, syncs: u64) {
        let stats = self.harness.bot.shared().control.stats();
        let deadline = Instant::now() + STEP;
        while stats.syncs.load(Ordering::Relaxed) < syncs {
            let log = self.relay.as_ref().map(|r| r.log()).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "bot did not sync the relay; relay log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests a token for `who` with `/radio connect`.
    async fn token(&self, who: &krt_tests::fake_discord::FakeMember) -> String {
        let reply = self.harness.run(who, "radio connect", vec![]).await;
        token_from_reply(&reply.content).unwrap_or_else(|| panic!("no token: {}", reply.content))
    }

    /// Connects and authenticates a client of `who`.
    async fn client(&self, who: &krt_tests::fake_discord::FakeMember) -> VoiceClient {
        let token = self.token(who).await;
        let mut client = VoiceClient::connect(&self.relay_url()).await;
        let answer = client.auth(&token).await;
        assert_eq!(answer["type"], "auth_ok", "{answer}");
        client
    }
}

async fn wait_closed(client: &mut VoiceClient, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed());
        match client.next(left).await {
            Some(Received::Closed(_)) => return started.elapsed(),
            Some(_) => continue,
            None => panic!("session still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_token_joins_and_talks() {
    let stack = Stack::start().await;
    let mut talker = stack.client(&member()).await;
    let mut listener = stack.client(&officer()).await;

    let joined = talker.join(1050).await;
    assert_eq!(joined["type"], "join_ok", "{joined}");
    let restricted = talker.join(2000).await;
    assert_eq!(
        restricted["type"], "join_error",
        "rank 3 required: {restricted}"
    );
    let joined = listener.join(1050).await;
    assert_eq!(joined["type"], "join_ok", "{joined}");

    let payload = [7u8; 80];
    let deadline = Instant::now() + STEP;
    let mut seq = 0;
    let frame = loop {
        seq += 1;
        talker.send_audio(1050, seq, &payload).await;
        match listener.next(Duration::from_millis(100)).await {
            Some(Received::Binary(frame)) => break frame,
            Some(Received::Closed(code)) => panic!("listener closed: {code:?}"),
            _ => assert!(Instant::now() < deadline, "no audio reached the listener"),
        }
    };
    assert_eq!(&frame[0..4], &1050u32.to_be_bytes());
    assert_eq!(&frame[8..], &payload[..], "frames are forwarded unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_and_ban_close_sessions() {
    let stack = Stack::start().await;
    let mod_ = moderator();

    let mut kicked = stack.client(&member()).await;
    let reply = stack
        .harness
        .run(
            &mod_,
            "radio kick",
            vec![CommandOption::User("user", member())],
        )
        .await;
    assert!(reply.content.starts_with("Kicked"), "{}", reply.content);
    let took = wait_closed(&mut kicked, Duration::from_secs(1)).await;
    eprintln!("kick closed the session after {took:?}");

    // A new token after the kick works again.
    let _again = stack.client(&member()).await;

    let old_token = stack.token(&officer()).await;
    let mut banned = VoiceClient::connect(&stack.relay_url()).await;
    assert_eq!(banned.auth(&old_token).await["type"], "auth_ok");
    let reply = stack
        .harness
        .run(
            &mod_,
            "radio ban",
            vec![CommandOption::User("user", officer())],
        )
        .await;
    assert!(reply.content.starts_with("Banned"), "{}", reply.content);
    wait_closed(&mut banned, Duration::from_secs(1)).await;

    let mut retry = VoiceClient::connect(&stack.relay_url()).await;
    let answer = retry.auth(&old_token).await;
    assert_ne!(
        answer["type"], "auth_ok",
        "revoked token rejected: {answer}"
    );
    let refused = stack.harness.run(&officer(), "radio connect", vec![]).await;
    assert!(refused.content.contains("banned"), "{}", refused.content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_channel_grants_frequency() {
    let stack = Stack::start().await;
    let mut client = stack.client(&member()).await;

    stack.harness.fake.voice_state(&member(), Some(ALPHA_VOICE));
    let grant = client.expect_type("freq_assign", STEP).await;
    assert_eq!(grant["freqId"], 1050);
    assert_eq!(grant["action"], "grant");

    stack.harness.fake.voice_state(&member(), None);
    let revoke = client.expect_type("freq_assign", STEP).await;
    assert_eq!(revoke["freqId"], 1050);
    assert_eq!(revoke["action"], "revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_stats_from_relay() {
    let stack = Stack::start().await;
    let mut client = stack.client(&member()).await;
    assert_eq!(client.join(1050).await["type"], "join_ok");

    let status = stack.harness.run(&member(), "radio status", vec![]).await;
    assert!(
        status.content.starts_with("Your live sessions: 1"),
        "{}",
        status.content
    );
    assert!(status.content.contains("joined 1050"), "{}", status.content);
    let stats = stack.harness.run(&moderator(), "radio stats", vec![]).await;
    assert!(
        stats.content.contains("2 sessions") || stats.content.contains("1 sessions"),
        "{}",
        stats.content
    );
    assert!(
        stats
            .content
            .contains("0 with a full queue, 0 that waited too long"),
        "{}",
        stats.content
    );
    let denied = stack.harness.run(&member(), "radio stats", vec![]).await;
    assert!(
        denied
            .content
            .starts_with("You need the Manage Channels permission"),
        "{}",
        denied.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_gets_missed_state() {
    let mut stack = Stack::start().await;
    let old_token = stack.token(&officer()).await;

    stack.relay.take().expect("relay running").stop();
    // Banned while the relay is down: the relay learns it from the sync.
    let reply = stack
        .harness
        .run(
            &moderator(),
            "radio ban",
            vec![CommandOption::User("user", officer())],
        )
        .await;
    assert!(reply.content.starts_with("Banned"), "{}", reply.content);

    stack.relay = Some(RelayProcess::start(
        stack.harness.dir.path(),
        stack.logs.path(),
    ));
    stack.wait_synced(2).await;
    let mut client = VoiceClient::connect(&stack.relay_url()).await;
    let answer = client.auth(&old_token).await;
    assert_ne!(
        answer["type"], "auth_ok",
        "the ban reached the restarted relay: {answer}"
    );
    let status = stack.harness.run(&member(), "radio status", vec![]).await;
    assert!(
        status.content.contains("no live radio session"),
        "{}",
        status.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_restart_keeps_sessions() {
    let stack = Stack::start().await;
    let mut client = stack.client(&member()).await;
    assert_eq!(client.join(1050).await["type"], "join_ok");

    let Stack {
        harness,
        relay,
        logs,
    } = stack;
    let Harness { fake, dir, bot } = harness;
    bot.shutdown().await.expect("bot stops cleanly");

    // The relay keeps the session while the bot is down.
    client.send(json!({"type": "ping"})).await;
    client.expect_type("pong", STEP).await;

    let bot = start_bot(config(dir.path(), &fake, None), &fake).await;
    let harness = Harness { fake, dir, bot };
    let stack = Stack {
        harness,
        relay,
        logs,
    };
    stack.wait_synced(1).await;
    let status = stack.harness.run(&member(), "radio status", vec![]).await;
    assert!(
        status.content.starts_with("Your live sessions: 1"),
        "{}",
        status.content
    );
}
