//! Shared set-up of the bot tests: a fake Discord, a temporary data dir and
//! the real bot started in-process against them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use krt_bot::app::{self, RunningBot, StartOptions};
use krt_bot::config::{Config, RawConfig};
use krt_tests::fake_discord::{
    FakeDiscord, FakeMember, GuildSpec, InteractionReply, TEXT_CHANNEL, VOICE_CHANNEL,
    guarded_http_client,
};

/// A bot token of the shape serenity accepts; the fake does not check it.
pub const TEST_TOKEN: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.fake-token-for-tests-only";
/// Guild of every test.
pub const GUILD: u64 = 4_200_000_000_000_001;
/// Application and bot user id.
pub const APP: u64 = 4_200_000_000_000_002;
/// Role with rank 5 once `/rank set` ran, and required by frequency 1060.
pub const OFFICER_ROLE: u64 = 4_200_000_000_000_010;
/// Text channel.
pub const GENERAL: u64 = 4_200_000_000_000_100;
/// Voice channel named to link frequency 1050 with minimum rank 0.
pub const ALPHA_VOICE: u64 = 4_200_000_000_000_101;
/// Voice channel named to link frequency 2000 with minimum rank 3.
pub const COMMAND_VOICE: u64 = 4_200_000_000_000_102;
/// Voice channel without a frequency in its name.
pub const LOBBY_VOICE: u64 = 4_200_000_000_000_103;
/// Time any single step may take.
pub const STEP: Duration = Duration::from_secs(10);

/// Builds a moderator (Manage Channels).
pub fn moderator() -> FakeMember {
    let mut member = FakeMember::new(5_000_000_000_000_001, "mod-mia").moderator();
    member.nick = Some("Mia (Mod)".into());
    member
}

/// Builds a member without special permissions.
pub fn member() -> FakeMember {
    FakeMember::new(5_000_000_000_000_002, "pilot-paul")
}

/// Builds a member with the officer role.
pub fn officer() -> FakeMember {
    FakeMember::new(5_000_000_000_000_003, "officer-olga").with_role(OFFICER_ROLE)
}

/// Builds the guild of the tests, with `extra` members added.
pub fn guild(extra: Vec<FakeMember>) -> GuildSpec {
    let mut spec = GuildSpec::new(GUILD, APP);
    spec.roles.push((OFFICER_ROLE, "Officer".into()));
    spec.channels = vec![
        (GENERAL, "general".into(), TEXT_CHANNEL),
        (ALPHA_VOICE, "Alpha (1050)".into(), VOICE_CHANNEL),
        (COMMAND_VOICE, "Command (2000) [3]".into(), VOICE_CHANNEL),
        (LOBBY_VOICE, "Lobby".into(), VOICE_CHANNEL),
    ];
    spec.members = vec![moderator(), member(), officer()];
    spec.members.extend(extra);
    spec
}

/// Settings for a bot in `data_dir` talking to `fake`. The command burst
/// is large so that tests can send commands back to back.
pub fn raw_config(
    data_dir: &Path,
    fake: &FakeDiscord,
    control_socket: Option<PathBuf>,
) -> RawConfig {
    RawConfig {
        data_dir: Some(data_dir.to_owned()),
        guild_id: Some(GUILD),
        relay_url: Some("ws://127.0.0.1:1/voice".into()),
        discord_api_base: Some(fake.api_base()),
        control_socket,
        flush_interval: Some("1s".into()),
        command_burst: Some(100),
        command_period: Some("100ms".into()),
        ..RawConfig::default()
    }
}

/// Checked form of [`raw_config`].
pub fn config(data_dir: &Path, fake: &FakeDiscord, control_socket: Option<PathBuf>) -> Config {
    raw_config(data_dir, fake, control_socket)
        .validate()
        .expect("test settings are valid")
}

/// Starts the bot and waits until it registered its commands.
pub async fn start_bot(config: Config, fake: &FakeDiscord) -> RunningBot {
    let registrations_before = registrations(fake);
    let bot = app::start(
        config,
        StartOptions {
            token: TEST_TOKEN.into(),
            http_client: Some(guarded_http_client()),
        },
    )
    .await
    .expect("bot starts");
    let deadline = tokio::time::Instant::now() + STEP;
    while registrations(fake) == registrations_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bot did not register its commands; REST calls: {:?}",
            fake.calls()
                .iter()
                .map(|c| format!("{} {}", c.method, c.path))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bot
}

fn registrations(fake: &FakeDiscord) -> usize {
    fake.calls()
        .iter()
        .filter(|c| c.method == "PUT" && c.path.ends_with("/commands"))
        .count()
}

/// A fake Discord, a data dir and a started bot.
pub struct Harness {
    /// The fake Discord.
    pub fake: FakeDiscord,
    /// Data dir of the bot.
    pub dir: tempfile::TempDir,
    /// The bot.
    pub bot: RunningBot,
}

impl Harness {
    /// Starts everything with the default guild.
    pub async fn start() -> Self {
        Self::start_with(guild(Vec::new()), None).await
    }

    /// Starts everything with `spec` and an optional control socket.
    pub async fn start_with(spec: GuildSpec, control_socket: Option<PathBuf>) -> Self {
        Self::start_custom(spec, control_socket, |_| {}).await
    }

    /// Starts everything with settings changed by `adjust`, and waits until
    /// the guild snapshot is stored.
    pub async fn start_custom(
        spec: GuildSpec,
        control_socket: Option<PathBuf>,
        adjust: impl FnOnce(&mut RawConfig),
    ) -> Self {
        let fake = FakeDiscord::start(spec).await.expect("fake Discord starts");
        let dir = tempfile::tempdir().expect("temporary data dir");
        let mut raw = raw_config(dir.path(), &fake, control_socket);
        adjust(&mut raw);
        let bot = start_bot(raw.validate().expect("test settings are valid"), &fake).await;
        let harness = Self { fake, dir, bot };
        harness.wait_snapshot_stored().await;
        harness
    }

    /// Waits until the batcher flushed the guild snapshot, which happens
    /// after the channel names were linked.
    pub async fn wait_snapshot_stored(&self) {
        let stats = self.bot.shared().batcher.stats();
        let deadline = tokio::time::Instant::now() + STEP;
        while stats.flushes.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "guild snapshot not flushed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a command and returns the reply.
    pub async fn run(
        &self,
        member: &FakeMember,
        command: &str,
        options: Vec<krt_tests::fake_discord::CommandOption>,
    ) -> InteractionReply {
        self.fake.run_command(member, command, options).await
    }

    /// Returns the bot's database.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        &self.bot.shared().db
    }
}

/// Extracts the token from a `/radio connect` reply.
pub fn token_from_reply(content: &str) -> Option<String> {
    let start = content.find("```\n")? + 4;
    let end = start + content[start..].find("\n```")?;
    Some(content[start..end].to_owned())
}

/// Waits until `check` returns true, polling every 10 ms.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
