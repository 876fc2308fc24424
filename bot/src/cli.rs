//! Command line of `krt-bot`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::{self, StartError, StartOptions};
use crate::config::{self, Config, ConfigError, RawConfig};
use crate::mint::{self, MintError, MintOptions};

/// Exit code for a bad command line or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// KRT-Com Discord bot: authentication, frequencies, moderation and tokens.
#[derive(Debug, Parser)]
#[command(name = "krt-bot", version, about)]
pub struct Cli {
    /// Subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `krt-bot`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the Discord bot. The token comes from KRT_DISCORD_TOKEN.
    Run(RunArgs),
    /// Prints signed tokens for synthetic users, one a line, for load tests.
    MintTokens(MintArgs),
}

/// Options of `krt-bot mint-tokens`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// Data directory with the signing key. Missing keys are created there.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Number of tokens, one per synthetic user (1 to 1000000).
    #[arg(long)]
    pub count: u32,
    /// Frequencies every token allows, such as 1000-1099,2000, or all.
    #[arg(long, default_value = "all")]
    pub freqs: String,
    /// Token lifetime with a unit, such as 90s or 24h.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Display names are this prefix and a number: user-0001, user-0002, ...
    #[arg(long, default_value = "user")]
    pub name_prefix: String,
    /// Rank of every synthetic user (0 to 100). A higher rank takes the floor.
    #[arg(long, default_value_t = 0)]
    pub rank: u8,
    /// Guild id written into the tokens.
    #[arg(long, default_value = "0")]
    pub guild_id: String,
}

/// Options of `krt-bot run`. Each one can also come from the config file
/// or a `KRT_` environment variable; the command line wins.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file with the same settings as these options.
    #[arg(long, env = "KRT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory with the keys and the default SQLite database, shared with the relay.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Discord server (guild) id; commands are registered there.
    #[arg(long)]
    pub guild_id: Option<u64>,
    /// Public WebSocket address of the relay, shown to members with their token.
    #[arg(long)]
    pub relay_url: Option<String>,
    /// Database URL [default: sqlite://DATA_DIR/krt.db?mode=rwc].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Relay control socket [default: DATA_DIR/control.sock].
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Send every Discord REST call, the gateway lookup included, to this URL; it must do the rate limiting.
    #[arg(long)]
    pub discord_api_base: Option<String>,
    /// Role id whose members may use the moderator commands, besides Manage Channels holders.
    #[arg(long)]
    pub moderator_role_id: Option<u64>,
}

impl RunArgs {
    /// Loads and checks the merged settings.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let overrides = RawConfig {
            data_dir: self.data_dir.clone(),
            guild_id: self.guild_id,
            relay_url: self.relay_url.clone(),
            database_url: self.database_url.clone(),
            control_socket: self.control_socket.clone(),
            discord_api_base: self.discord_api_base.clone(),
            moderator_role_id: self.moderator_role_id,
            ..RawConfig::default()
        };
        RawConfig::load(self.config.as_deref(), &overrides)?.validate()
    }
}

impl MintArgs {
    /// Converts the command line into validated options.
    pub fn into_options(self) -> Result<MintOptions, MintError> {
        let options = MintOptions {
            data_dir: self.data_dir,
            count: self.count,
            freqs: mint::parse_freqs(&self.freqs)?,
            ttl: mint::parse_ttl(&self.ttl)?,
            name_prefix: self.name_prefix,
            rank: self.rank,
            guild: self.guild_id,
        };
        options.validate()?;
        Ok(options)
    }
}

/// Failures of a `krt-bot` subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `mint-tokens` failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The settings of `run` are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bot failed to start or stopped with an error.
    #[error(transparent)]
    Bot(#[from] StartError),
}

impl CliError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Mint(e) if e.is_usage() => EXIT_USAGE,
            CliError::Mint(_) => EXIT_FAILURE,
            CliError::Config(_) => EXIT_USAGE,
            CliError::Bot(StartError::InvalidToken) => EXIT_USAGE,
            CliError::Bot(_) => EXIT_FAILURE,
        }
    }
}

/// Runs the parsed command line.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run_bot(&args).await,
        Command::MintTokens(args) => {
            let options = args.into_options()?;
            let now = unix_now();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            mint::mint_tokens(&options, now, &mut out)?;
            tracing::info!(count = options.count, "minted tokens");
            Ok(())
        }
    }
}

/// Runs the bot until SIGINT or SIGTERM, or until the gateway fails.
async fn run_bot(args: &RunArgs) -> Result<(), CliError> {
    let config = args.load_config()?;
    let token = config::discord_token_from_env()?;
    let mut bot = app::start(
        config,
        StartOptions {
            token,
            http_client: None,
        },
    )
    .await?;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| StartError::Discord(Box::new(serenity::Error::Io(e))))?;
    tokio::select! {
        result = bot.wait() => return result.map_err(CliError::from),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
    }
    // serenity keeps re-queueing a shard that cannot connect, so a bot cut
    // off from Discord might never finish a clean stop; give it a bound.
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, bot.shutdown()).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            secs = SHUTDOWN_TIMEOUT.as_secs(),
            "gateway did not stop in time; exiting anyway"
        ),
    }
    Ok(())
}

/// Time a signalled bot gets to stop its gateway and flush its state.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Current time in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("krt-bot").chain(args.iter().copied()))
    }

    #[test]
    fn mint_defaults_apply() {
        let cli = parse(&["mint-tokens", "--data-dir", "/tmp/x", "--count", "3"]).unwrap();
        let Command::MintTokens(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        let options = args.into_options().unwrap();
        assert_eq!(options.count, 3);
        assert_eq!(options.freqs, krt_shared::FreqSet::all());
        assert_eq!(options.ttl, std::time::Duration::from_secs(86_400));
        assert_eq!(options.name_prefix, "user");
        assert_eq!(options.rank, 0);
    }

    #[test]
    fn mint_bad_ttl_is_usage_error() {
        let cli = parse(&[
            "mint-tokens",
            "--data-dir",
            "/tmp/x",
            "--count",
            "3",
            "--ttl",
            "forever",
        ])
        .unwrap();
        let Command::MintTokens(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        let err = CliError::from(args.into_options().unwrap_err());
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("'forever'"), "{err}");
    }

    #[test]
    fn run_flags_override_config() {
        let cli = parse(&[
            "run",
            "--data-dir",
            "/srv/krt",
            "--guild-id",
            "42",
            "--relay-url",
            "wss://radio.example.org/voice",
            "--discord-api-base",
            "http://127.0.0.1:9000/",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        let config = args.load_config().unwrap();
        assert_eq!(config.guild_id, 42);
        assert_eq!(
            config.discord_api_base.as_deref(),
            Some("http://127.0.0.1:9000")
        );
    }

    #[test]
    fn run_bad_setting_is_usage_error() {
        let cli = parse(&[
            "run",
            "--data-dir",
            "/srv/krt",
            "--relay-url",
            "ws://x/voice",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        let err = CliError::from(args.load_config().unwrap_err());
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("guild_id"), "{err}");
    }

    #[test]
    fn mint_requires_count() {
        let err = parse(&["mint-tokens", "--data-dir", "/tmp/x"]).unwrap_err();
        assert!(err.to_string().contains("--count"), "{err}");
    }
}
