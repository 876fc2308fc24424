//! Relay settings from defaults, a TOML file, `KRT_` environment variables
//! and the command line, in rising order of precedence.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Settings of one relay. Every field has a default, so an empty config is
/// valid; [`RelayConfig::validate`] rejects values outside their range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// Address for WebSocket and HTTP clients. Default `127.0.0.1:7400`;
    /// TLS is expected to end at a reverse proxy in front of it.
    pub listen: SocketAddr,
    /// Directory of keys, the SQLite database and the control socket.
    pub data_dir: PathBuf,
    /// Any sea-orm URL; default SQLite `DATA_DIR/krt.db`.
    pub database_url: Option<String>,
    /// Unix socket for the bot; default `DATA_DIR/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// File to write the bound listen address to once listening, for
    /// scripts and tests that listen on port 0.
    pub addr_file: Option<PathBuf>,
    /// Live sessions per user; a further login closes the oldest.
    pub max_sessions_per_user: usize,
    /// Time a new connection has to send `auth`.
    #[serde(with = "duration_text")]
    pub auth_timeout: Duration,
    /// Silence after which a session is closed with code 4000.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// Time allowed for an HTTP request's headers (slow clients are closed).
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Silence after which a talker loses the floor.
    #[serde(with = "duration_text")]
    pub floor_timeout: Duration,
    /// Whether a talker of higher rank takes the floor from a lower one.
    pub preemption: bool,
    /// Interval of batched `listener_update` messages.
    #[serde(with = "duration_text")]
    pub listener_update_interval: Duration,
    /// Audio frames queued per listener before further frames are dropped.
    /// At 50 frames a second per talker, 32 frames are 640 ms of audio.
    pub queue_depth: usize,
    /// Maximum time an audio frame may wait in a listener's queue. The
    /// writer drops older frames and counts them as late, so an overloaded
    /// relay sheds frames instead of delaying all of them. Zero keeps every
    /// queued frame. A nonzero limit is at least 10 ms. Every queued frame
    /// waits out the coalescing window first, so the limit is also at least
    /// one frame interval (20 ms) above that window.
    #[serde(with = "duration_text")]
    pub max_queue_delay: Duration,
    /// Wait after a listener's first queued frame before writing, so that
    /// frames of several frequencies leave in one write. Zero writes at once;
    /// a few hundred microseconds trade latency for fewer system calls.
    #[serde(with = "duration_text")]
    pub coalesce_window: Duration,
    /// Kernel send buffer of each client socket in bytes (Linux doubles the
    /// value for its own bookkeeping). About a second of audio for a
    /// listener of several frequencies; a client that stops reading then
    /// fills the relay's queue, where frames are dropped and counted. Zero
    /// keeps the kernel's autotuning.
    pub send_buffer_bytes: usize,
    /// Largest text message in bytes; larger ones close the session with 1009.
    pub max_text_bytes: usize,
    /// Largest audio frame in bytes, header included.
    pub max_frame_bytes: usize,
    /// Verified tokens kept in the cache.
    pub token_cache_capacity: u64,
    /// Transmission rows waiting for the database before new ones are counted
    /// as lost.
    pub txlog_queue: usize,
    /// Largest batch of transmission rows written in one transaction.
    pub txlog_batch: usize,
    /// Worker threads of each of the relay's two Tokio runtimes: one reads
    /// from clients and one writes to them. The default is one per CPU core.
    pub worker_threads: Option<usize>,
    /// Reverse proxies whose `X-Forwarded-For` header names the client.
    /// Connections from other addresses are judged by their own address.
    pub trusted_proxies: Vec<IpAddr>,
    /// Client addresses exempt from the per-address limits below; default
    /// loopback, so that local load tests and tools are not throttled.
    pub exempt_addresses: Vec<IpAddr>,
    /// Open connections allowed per client address.
    pub max_connections_per_ip: u32,
    /// New connections allowed per client address and second; bursts of
    /// twice this many pass.
    pub connect_rate_per_ip: u32,
    /// Failed logins allowed per client address and minute before the
    /// address is refused for a minute.
    pub failed_auth_per_minute: u32,
    /// Age after which transmission rows and voice states are deleted.
    #[serde(with = "duration_text")]
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            control_socket: None,
            addr_file: None,
            max_sessions_per_user: 3,
            auth_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            floor_timeout: krt_shared::floor::DEFAULT_FLOOR_TIMEOUT,
            preemption: true,
            listener_update_interval: Duration::from_secs(1),
            queue_depth: 32,
            max_queue_delay: Duration::from_millis(80),
            coalesce_window: Duration::ZERO,
            send_buffer_bytes: 32 * 1024,
            max_text_bytes: 4096,
            max_frame_bytes: krt_shared::frame::DEFAULT_MAX_FRAME_LEN,
            token_cache_capacity: 100_000,
            txlog_queue: 10_000,
            txlog_batch: 500,
            worker_threads: None,
            trusted_proxies: Vec::new(),
            exempt_addresses: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            max_connections_per_ip: 20,
            connect_rate_per_ip: 10,
            failed_auth_per_minute: 10,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A setting that is out of range or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value failed to parse or has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is outside its range.
    #[error("invalid setting {name} = {value}: {expected}")]
    Range {
        /// Setting name as written in the config file.
        name: &'static str,
        /// Rejected value.
        value: String,
        /// The accepted range.
        expected: Cow<'static, str>,
    },
    /// The config file has keys that are not settings.
    #[error("{file}: {unknown}", file = .0.display(), unknown = .1)]
    UnknownKeys(PathBuf, krt_shared::settings::UnknownKeys),
    /// The config file named on the command line is not a readable file.
    #[error("config file {0} not found or not a file: check the --config path")]
    MissingFile(PathBuf),
}

impl RelayConfig {
    /// SQLite file used when no database URL is set.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("krt.db")
    }

    /// Returns the database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.sqlite_path().display()),
        }
    }

    /// Returns the control socket path in effect.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control.sock"))
    }

    /// Capacity of a session's outbound queue: the audio depth plus room
    /// reserved for control messages, which are never dropped.
    pub fn queue_capacity(&self) -> usize {
        self.queue_depth + CONTROL_HEADROOM
    }

    /// Rejects values outside their range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check<T: std::fmt::Display>(
            name: &'static str,
            value: T,
            ok: bool,
            expected: impl Into<Cow<'static, str>>,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Range {
                    name,
                    value: value.to_string(),
                    expected: expected.into(),
                })
            }
        }
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        check(
            "max_sessions_per_user",
            self.max_sessions_per_user,
            (1..=100).contains(&self.max_sessions_per_user),
            "use 1 to 100",
        )?;
        check(
            "queue_depth",
            self.queue_depth,
            (1..=4096).contains(&self.queue_depth),
            "use 1 to 4096 frames",
        )?;
        check(
            "max_frame_bytes",
            self.max_frame_bytes,
            (krt_shared::frame::MIN_FRAME_LEN..=65_536).contains(&self.max_frame_bytes),
            "use 9 to 65536 bytes",
        )?;
        check(
            "max_text_bytes",
            self.max_text_bytes,
            (256..=1 << 20).contains(&self.max_text_bytes),
            "use 256 to 1048576 bytes",
        )?;
        for (name, value) in [
            ("auth_timeout", self.auth_timeout),
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("floor_timeout", self.floor_timeout),
            ("listener_update_interval", self.listener_update_interval),
        ] {
            check(
                name,
                ms(value),
                (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&value),
                "use 10ms to 1h",
            )?;
        }
        check(
            "retention",
            format!("{}s", self.retention.as_secs()),
            self.retention >= Duration::from_secs(3600),
            "use at least 1h",
        )?;
        check(
            "coalesce_window",
            ms(self.coalesce_window),
            self.coalesce_window <= Duration::from_millis(50),
            "use 0 to 50ms",
        )?;
        check(
            "max_queue_delay",
            ms(self.max_queue_delay),
            self.max_queue_delay.is_zero()
                || (self.max_queue_delay >= MIN_QUEUE_DELAY
                    && self.max_queue_delay >= self.coalesce_window + FRAME_INTERVAL
                    && self.max_queue_delay <= Duration::from_secs(10)),
            format!(
                "use \"0s\" (off), or 10ms to 10s and at least coalesce_window ({}) + 20ms",
                ms(self.coalesce_window)
            ),
        )?;
        check(
            "txlog_batch",
            self.txlog_batch,
            (1..=1000).contains(&self.txlog_batch),
            "use 1 to 1000 rows",
        )?;
        check(
            "txlog_queue",
            self.txlog_queue,
            self.txlog_queue >= 1,
            "use at least 1 row",
        )?;
        for (name, value) in [
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("connect_rate_per_ip", self.connect_rate_per_ip),
            ("failed_auth_per_minute", self.failed_auth_per_minute),
        ] {
            check(name, value, value >= 1, "use at least 1")?;
        }
        check(
            "worker_threads",
            self.worker_threads
                .map_or("none".to_owned(), |n| n.to_string()),
            self.worker_threads.is_none_or(|n| (1..=256).contains(&n)),
            "use 1 to 256",
        )?;
        Ok(())
    }
}

/// Slots of a session queue kept free for control messages.
pub const CONTROL_HEADROOM: usize = 32;
/// Smallest nonzero `max_queue_delay`.
const MIN_QUEUE_DELAY: Duration = Duration::from_millis(10);
/// Time between two audio frames of one talker.
const FRAME_INTERVAL: Duration = Duration::from_millis(20);

/// Command-line options of `krt-relay`. Each also comes from the config file
/// (same name in snake_case) and from `KRT_NAME` environment variables.
#[derive(Debug, Default, Parser, Serialize)]
#[command(name = "krt-relay", version, about = "KRT-Com voice relay")]
pub struct RelayArgs {
    /// TOML config file [env: KRT_CONFIG]
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on for clients [default: 127.0.0.1:7400]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory of keys, database and control socket [default: ./data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// sea-orm database URL, e.g. postgres://user@host/krt [default: sqlite DATA_DIR/krt.db]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Unix socket path for the bot [default: DATA_DIR/control.sock]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Write the bound listen address to this file once listening
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr_file: Option<PathBuf>,
    /// Live sessions per user before the oldest is replaced [default: 3]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_user: Option<usize>,
    /// Silence before a talker loses the floor, e.g. 300ms [default: 300ms]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_timeout: Option<String>,
    /// Interval of batched listener counts, e.g. 1s [default: 1s]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_update_interval: Option<String>,
    /// Audio frames queued per listener before dropping [default: 32]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<usize>,
    /// Maximum wait of an audio frame in a listener's queue before it is
    /// dropped as late, e.g. 80ms; 0s keeps every frame [default: 80ms]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_delay: Option<String>,
    /// Delay before writing a listener's frames so they leave in one write,
    /// e.g. 500us [default: 0]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_window: Option<String>,
    /// Worker threads of the reading and of the writing runtime [default:
    /// one per CPU core]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
}

impl RelayArgs {
    /// Merges defaults, the config file, `KRT_` variables and these options.
    pub fn load(&self) -> Result<RelayConfig, ConfigError> {
        let config_path = self
            .config
            .clone()
            .or_else(|| std::env::var_os("KRT_CONFIG").map(PathBuf::from));
        load_config(config_path.as_deref(), Serialized::defaults(self))
    }
}

fn load_config(
    file: Option<&Path>,
    overrides: Serialized<&RelayArgs>,
) -> Result<RelayConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RelayConfig::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        let file = Figment::from(Toml::file(path));
        reject_unknown_keys(path, &file)?;
        figment = figment.merge(file);
    }
    let config: RelayConfig = figment
        .merge(Env::prefixed("KRT_").ignore(&["config"]))
        .merge(overrides)
        .extract()
        .map_err(|err| ConfigError::Parse(describe(&err)))?;
    config.validate()?;
    Ok(config)
}

/// Rejects the config file at `path`, read into `file`, when a top-level
/// key is not a setting. A file that does not parse passes here, because
/// the merge reports its error.
fn reject_unknown_keys(path: &Path, file: &Figment) -> Result<(), ConfigError> {
    let Ok(table) = file.extract::<figment::value::Dict>() else {
        return Ok(());
    };
    let elsewhere = [krt_shared::settings::CONFIG_ELSEWHERE];
    krt_shared::settings::check_keys::<RelayConfig>(table.into_keys(), &elsewhere)
        .map_err(|unknown| ConfigError::UnknownKeys(path.to_owned(), unknown))
}

/// Names the setting, the problem and the file it came from, without
/// figment's source locations in the code.
fn describe(err: &figment::Error) -> String {
    let key: Vec<&str> = err
        .path
        .iter()
        .map(String::as_str)
        .filter(|part| *part != "default")
        .collect();
    let problem = if key.is_empty() {
        err.kind.to_string()
    } else {
        format!("setting {}: {}", key.join("."), err.kind)
    };
    match err
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.source.as_ref())
    {
        Some(figment::Source::File(path)) => format!("{}: {problem}", path.display()),
        _ => problem,
    }
}

/// Serde helpers that read durations written like `300ms`, `5s` or `1m`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration in `humantime` format.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    /// Reads a duration in `humantime` format.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration '{text}' ({e}): write it like 300ms, 5s or 1m"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default().validate().unwrap();
    }

    #[test]
    fn file_then_args_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "queue_depth = 64\nfloor_timeout = \"500ms\"\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let args = RelayArgs {
            queue_depth: Some(16),
            ..Default::default()
        };
        let config = load_config(Some(&path), Serialized::defaults(&args)).unwrap();
        assert_eq!(config.queue_depth, 16);
        assert_eq!(config.floor_timeout, Duration::from_millis(500));
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let args = RelayArgs {
            floor_timeout: Some("soon".into()),
            ..Default::default()
        };
        let err = load_config(None, Serialized::defaults(&args)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("soon"), "{message}");
        assert!(message.contains("floor_timeout"), "{message}");
        assert!(!message.contains("config.rs"), "{message}");

        let args = RelayArgs {
            queue_depth: Some(0),
            ..Default::default()
        };
        let err = load_config(None, Serialized::defaults(&args)).unwrap_err();
        assert!(err.to_string().contains("queue_depth = 0"), "{err}");

        // Every queued frame waits out the coalescing window, so a delay
        // limit less than one frame interval above it would drop many.
        for (window, delay) in [("2ms", "1ms"), ("0s", "5ms"), ("20ms", "30ms")] {
            let args = RelayArgs {
                coalesce_window: Some(window.into()),
                max_queue_delay: Some(delay.into()),
                ..Default::default()
            };
            let err = load_config(None, Serialized::defaults(&args)).unwrap_err();
            let expected = format!("max_queue_delay = {delay}");
            assert!(err.to_string().contains(&expected), "{err}");
            let window_named = format!("coalesce_window ({window})");
            assert!(err.to_string().contains(&window_named), "{err}");
        }
        let args = RelayArgs {
            coalesce_window: Some("20ms".into()),
            max_queue_delay: Some("40ms".into()),
            ..Default::default()
        };
        assert!(load_config(None, Serialized::defaults(&args)).is_ok());

        let args = RelayArgs {
            coalesce_window: Some("2ms".into()),
            max_queue_delay: Some("0s".into()),
            ..Default::default()
        };
        assert!(load_config(None, Serialized::defaults(&args)).is_ok());
    }

    /// Loads a config file with `contents` and returns the error message.
    fn file_error(contents: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, contents).unwrap();
        load_config(Some(&path), Serialized::defaults(&RelayArgs::default()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_file_keys_rejected() {
        let message = file_error("queue_depth = 64\nqueue_dpeth = 16\n");
        assert!(
            message.contains("relay.toml: unknown setting \"queue_dpeth\""),
            "{message}"
        );
        assert!(message.contains("queue_depth, "), "{message}");
    }

    #[test]
    fn invalid_file_named() {
        let message = file_error("queue_depth = \n");
        assert!(message.contains("relay.toml: "), "{message}");
    }

    #[test]
    fn missing_config_file_reported() {
        let err = load_config(
            Some(Path::new("/nonexistent/krt.toml")),
            Serialized::defaults(&RelayArgs::default()),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
