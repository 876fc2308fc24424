//! Settings of `krt-bot run`, merged from defaults, a TOML file, `KRT_`
//! environment variables and the command line, in rising priority.
//!
//! [`RawConfig`] is what figment deserializes. [`Config`] is the checked
//! result, which cannot hold a bad value.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Environment variable that carries the Discord bot token.
pub const TOKEN_VAR: &str = "KRT_DISCORD_TOKEN";

/// Settings as read, before validation. Every field is optional, so a
/// missing one can be reported with the three ways to set it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawConfig {
    /// Directory with the keys and the default database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Discord guild (server) id the bot serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guild_id: Option<u64>,
    /// Public WebSocket address of the relay, shown to users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    /// sea-orm database URL. Default: SQLite file `krt.db` in the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Relay control socket. Default: `control.sock` in the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Base URL that replaces `https://discord.com` for every REST call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discord_api_base: Option<String>,
    /// Discord role id whose members may use the moderator commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderator_role_id: Option<u64>,
    /// Lifetime of tokens from `/radio connect`, such as `24h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<String>,
    /// Maximum time between voice-state flushes, such as `1s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<String>,
    /// Number of pending users that triggers an early flush.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_pending: Option<usize>,
    /// Maximum flushes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flushes_per_second: Option<u32>,
    /// Commands a user may send in a burst before the cooldown applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_burst: Option<u32>,
    /// Time in which one command of the burst is restored, such as `2s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_period: Option<String>,
    /// True when frequencies without settings are open to every member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_unconfigured: Option<bool>,
}

/// Checked settings of the bot.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory with the keys and the default database.
    pub data_dir: PathBuf,
    /// Discord guild id the bot serves and registers its commands in.
    pub guild_id: u64,
    /// Public WebSocket address of the relay, shown to users.
    pub relay_url: String,
    /// sea-orm database URL.
    pub database_url: String,
    /// Relay control socket path.
    pub control_socket: PathBuf,
    /// Base URL for REST calls instead of Discord, with the built-in rate
    /// limiter off. None: Discord itself, with serenity's rate limiter.
    pub discord_api_base: Option<String>,
    /// Role whose members are moderators, besides Manage Channels holders.
    pub moderator_role_id: Option<u64>,
    /// Lifetime of issued tokens. Default 24 h.
    pub token_ttl: Duration,
    /// Maximum time between voice-state flushes. Default 1 s.
    pub flush_interval: Duration,
    /// Pending users that trigger an early flush. Default 200.
    pub flush_pending: usize,
    /// Maximum flushes per second (governor quota). Default 4.
    pub flushes_per_second: NonZeroU32,
    /// Per-user command burst. Default 5.
    pub command_burst: NonZeroU32,
    /// Time to restore one command of the burst. Default 2 s.
    pub command_period: Duration,
    /// Frequencies without settings are open to every member. Default true.
    pub open_unconfigured: bool,
}

/// Errors in the settings. Each one exits with code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting has no value.
    #[error("missing setting {key}: pass --{flag}, set KRT_{env} or put {key} in the config file")]
    Missing {
        /// Key in the config file.
        key: &'static str,
        /// Command line flag without dashes.
        flag: &'static str,
        /// Environment variable without the `KRT_` prefix.
        env: &'static str,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid value '{value}' for setting {key}: {hint}")]
    Invalid {
        /// Key in the config file.
        key: &'static str,
        /// The rejected value.
        value: String,
        /// Hint on a valid value.
        hint: &'static str,
    },
    /// The config file has keys that are not settings.
    #[error("{file}: {unknown}", file = .0.display(), unknown = .1)]
    UnknownKeys(std::path::PathBuf, krt_shared::settings::UnknownKeys),
    /// The config file is missing, unreadable or not valid TOML, or a value
    /// has the wrong type.
    #[error("invalid configuration: {0}")]
    Figment(String),
    /// The bot token variable is unset or empty.
    #[error("missing Discord bot token: set {TOKEN_VAR} to the token of the bot's application")]
    MissingToken,
    /// The bot token does not look like a Discord bot token.
    #[error(
        "invalid Discord bot token in {TOKEN_VAR}: copy the token from the Bot page of the \
         Discord developer portal"
    )]
    InvalidToken,
}

impl RawConfig {
    /// Merges defaults, the TOML file at `file` (which must exist when
    /// given), `KRT_` variables and `overrides`, in rising priority.
    pub fn load(file: Option<&Path>, overrides: &RawConfig) -> Result<RawConfig, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    key: "config",
                    value: path.display().to_string(),
                    hint: "the config file does not exist: check the path",
                });
            }
            let file = Figment::from(Toml::file(path));
            reject_unknown_keys(path, &file)?;
            figment = figment.merge(file);
        }
        figment
            .merge(Env::prefixed("KRT_").ignore(&["discord_token", "config"]))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Figment(e.to_string()))
    }

    /// Checks every value and fills in the defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let data_dir = self.data_dir.ok_or(ConfigError::Missing {
            key: "data_dir",
            flag: "data-dir",
            env: "DATA_DIR",
        })?;
        let guild_id = self.guild_id.ok_or(ConfigError::Missing {
            key: "guild_id",
            flag: "guild-id",
            env: "GUILD_ID",
        })?;
        if guild_id == 0 {
            return Err(invalid(
                "guild_id",
                "0",
                "use the numeric id of the Discord server",
            ));
        }
        let relay_url = self.relay_url.ok_or(ConfigError::Missing {
            key: "relay_url",
            flag: "relay-url",
            env: "RELAY_URL",
        })?;
        if !(relay_url.starts_with("ws://") || relay_url.starts_with("wss://")) {
            return Err(invalid(
                "relay_url",
                &relay_url,
                "use the relay's public WebSocket address, such as wss://radio.example.org/voice",
            ));
        }
        let database_url = self
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("krt.db").display()));
        let control_socket = self
            .control_socket
            .unwrap_or_else(|| data_dir.join("control.sock"));
        if let Some(base) = &self.discord_api_base
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(invalid(
                "discord_api_base",
                base,
                "use an http:// or https:// URL without a path, such as http://127.0.0.1:8080",
            ));
        }

        let config = Config {
            token_ttl: duration("token_ttl", self.token_ttl.as_deref(), "24h")?,
            flush_interval: duration("flush_interval", self.flush_interval.as_deref(), "1s")?,
            flush_pending: self.flush_pending.unwrap_or(200).max(1),
            flushes_per_second: nonzero("flushes_per_second", self.flushes_per_second, 4)?,
            command_burst: nonzero("command_burst", self.command_burst, 5)?,
            command_period: duration("command_period", self.command_period.as_deref(), "2s")?,
            open_unconfigured: self.open_unconfigured.unwrap_or(true),
            data_dir,
            guild_id,
            relay_url,
            database_url,
            control_socket,
            discord_api_base: self
                .discord_api_base
                .map(|b| b.trim_end_matches('/').to_owned()),
            moderator_role_id: self.moderator_role_id,
        };
        if config.token_ttl > crate::mint::MAX_TTL || config.token_ttl < Duration::from_secs(60) {
            return Err(invalid(
                "token_ttl",
                &humantime::format_duration(config.token_ttl).to_string(),
                "use a lifetime from 1m to 365days",
            ));
        }
        Ok(config)
    }
}

/// Reads and checks the bot token from [`TOKEN_VAR`].
pub fn discord_token_from_env() -> Result<String, ConfigError> {
    let token = std::env::var(TOKEN_VAR).unwrap_or_default();
    check_token(&token)
}

/// Checks the shape of a bot token, as serenity's validator does.
pub fn check_token(token: &str) -> Result<String, ConfigError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::MissingToken);
    }
    serenity::utils::token::validate(token).map_err(|_| ConfigError::InvalidToken)?;
    Ok(token.to_owned())
}

fn invalid(key: &'static str, value: &str, hint: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        hint,
    }
}

fn duration(
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    let parsed = humantime::parse_duration(text.trim()).map_err(|_| {
        invalid(
            key,
            text,
            "use a duration with a unit, such as 500ms, 2s or 24h",
        )
    })?;
    if parsed.is_zero() {
        return Err(invalid(key, text, "use a duration above zero"));
    }
    Ok(parsed)
}

fn nonzero(key: &'static str, value: Option<u32>, default: u32) -> Result<NonZeroU32, ConfigError> {
    let value = value.unwrap_or(default);
    NonZeroU32::new(value).ok_or_else(|| invalid(key, "0", "use a number of at least 1"))
}

/// Rejects the config file at `path`, read into `file`, when a top-level
/// key is not a setting. A file that does not parse passes here, because
/// the merge reports its error.
fn reject_unknown_keys(path: &Path, file: &Figment) -> Result<(), ConfigError> {
    let Ok(table) = file.extract::<figment::value::Dict>() else {
        return Ok(());
    };
    let elsewhere = [
        krt_shared::settings::CONFIG_ELSEWHERE,
        (
            "discord_token",
            "the bot reads its token only from KRT_DISCORD_TOKEN, so keep it out of files",
        ),
    ];
    krt_shared::settings::check_keys::<RawConfig>(table.into_keys(), &elsewhere)
        .map_err(|unknown| ConfigError::UnknownKeys(path.to_owned(), unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawConfig {
        RawConfig {
            data_dir: Some("/var/lib/krt".into()),
            guild_id: Some(42),
            relay_url: Some("wss://radio.example.org/voice".into()),
            ..RawConfig::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let config = minimal().validate().unwrap();
        assert_eq!(config.database_url, "sqlite:///var/lib/krt/krt.db?mode=rwc");
        assert_eq!(
            config.control_socket,
            Path::new("/var/lib/krt/control.sock")
        );
        assert_eq!(config.token_ttl, Duration::from_secs(86_400));
        assert_eq!(config.flush_interval, Duration::from_secs(1));
        assert_eq!(config.flushes_per_second.get(), 4);
        assert!(config.open_unconfigured);
        assert!(config.discord_api_base.is_none());
    }

    #[test]
    fn unknown_file_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(&path, "guild_id = 42\nguild = 42\n").unwrap();
        let message = RawConfig::load(Some(&path), &RawConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("bot.toml: unknown setting \"guild\":"),
            "{message}"
        );
        assert!(message.contains("guild_id, "), "{message}");
    }

    #[test]
    fn missing_setting_names_all_sources() {
        let mut raw = minimal();
        raw.guild_id = None;
        let message = raw.validate().unwrap_err().to_string();
        assert!(message.contains("--guild-id"), "{message}");
        assert!(message.contains("KRT_GUILD_ID"), "{message}");
        assert!(message.contains("guild_id"), "{message}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        type Change = fn(&mut RawConfig);
        let cases: [(Change, &str, &str); 5] = [
            (|r| r.token_ttl = Some("soon".into()), "token_ttl", "'soon'"),
            (
                |r| r.flush_interval = Some("0s".into()),
                "flush_interval",
                "'0s'",
            ),
            (
                |r| r.relay_url = Some("radio".into()),
                "relay_url",
                "'radio'",
            ),
            (
                |r| r.flushes_per_second = Some(0),
                "flushes_per_second",
                "'0'",
            ),
            (
                |r| r.discord_api_base = Some("127.0.0.1:1".into()),
                "discord_api_base",
                "'127.0.0.1:1'",
            ),
        ];
        for (change, key, value) in cases {
            let mut raw = minimal();
            change(&mut raw);
            let message = raw.validate().unwrap_err().to_string();
            assert!(message.contains(key), "{message}");
            assert!(message.contains(value), "{message}");
        }
    }

    #[test]
    fn file_env_and_flags_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nguild_id = 7\nrelay_url = \"ws://file/voice\"\n\
             flush_interval = \"250ms\"\n",
        )
        .unwrap();
        let overrides = RawConfig {
            guild_id: Some(9),
            ..RawConfig::default()
        };
        let raw = RawConfig::load(Some(&path), &overrides).unwrap();
        assert_eq!(raw.data_dir.as_deref(), Some(Path::new("/from/file")));
        assert_eq!(raw.guild_id, Some(9), "the command line wins over the file");
        let config = raw.validate().unwrap();
        assert_eq!(config.flush_interval, Duration::from_millis(250));
    }

    #[test]
    fn missing_config_file_rejected() {
        let err = RawConfig::load(
            Some(Path::new("/nonexistent/bot.toml")),
            &RawConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bot.toml"), "{err}");
    }

    #[test]
    fn token_errors_name_variable() {
        let missing = check_token("  ").unwrap_err().to_string();
        assert!(missing.contains(TOKEN_VAR), "{missing}");
        let invalid = check_token("not-a-token").unwrap_err().to_string();
        assert!(invalid.contains(TOKEN_VAR), "{invalid}");
    }
}
