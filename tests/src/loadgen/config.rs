//! Command-line options of `krt-loadgen` and their validation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use krt_shared::FreqId;
use krt_shared::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN};

use super::payload::{MAX_FRAMES_PER_TALKER, MAX_TALKERS, MIN_PADDED_PAYLOAD};
use super::plan::Plan;

/// Maximum talk time of one run (warm-up plus measurement, twice with a
/// reconnect storm); keeps frame counters within their 20 bits.
pub const MAX_TALK_TIME: Duration = Duration::from_secs(3600);
/// Most connections one run opens.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Largest padded payload: the relay's default frame limit minus the header.
pub const MAX_PAYLOAD: usize = DEFAULT_MAX_FRAME_LEN - HEADER_LEN;

const ABOUT: &str = "Load generator for the KRT-Com relay: simulated users \
speak voice protocol v1 and measure loss, order and latency";

const AFTER_HELP: &str = "\
Layout: user u joins frequencies (u + j) mod FREQS for j < JOINS_PER_USER.
Talker t is user t and talks on frequency t mod FREQS. With more talkers
than frequencies, talkers t >= FREQS are contenders: they start
--contender-delay after the first talker of their frequency, so floor
control must deny all their frames; any that arrive are reported as leaked.

Frames expected: every frame a primary talker sends during the measurement
window, times the healthy users on its frequency other than itself.

Example, with a relay on the default address and data directory ./data:
  krt-loadgen --data-dir data --users 600 --freqs 6 --talkers 6 \\
      --duration 30s --opus tests/data/radio-check.wav --relay-pid \"$(pidof krt-relay)\"";

/// Options as parsed from the command line.
#[derive(Clone, Debug, Parser)]
#[command(name = "krt-loadgen", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// WebSocket URL of the relay's voice endpoint (ws:// only; no TLS).
    #[arg(long, default_value = "ws://127.0.0.1:7400/voice")]
    pub url: String,

    /// Healthy users to connect. Each reads its socket and counts what it gets.
    #[arg(long, default_value_t = 600)]
    pub users: usize,

    /// Number of frequencies, numbered upwards from --first-freq.
    #[arg(long, default_value_t = 6)]
    pub freqs: usize,

    /// Lowest frequency used (1000 to 9999).
    #[arg(long, default_value_t = 1000)]
    pub first_freq: u16,

    /// Users that transmit 50 frames a second (one 20 ms frame each).
    /// More talkers than frequencies makes contenders (see below).
    #[arg(long, default_value_t = 6)]
    pub talkers: usize,

    /// Frequencies each user joins (1 to --freqs).
    #[arg(long, default_value_t = 1)]
    pub joins_per_user: usize,

    /// Length of the measurement window, for example 10s or 2m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Talk time before the measurement window; frames sent then are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Time listeners keep reading after the talkers stop, so that frames in
    /// flight arrive; frames that arrive later count as lost.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Payload bytes per frame when sending padding (8 to 1492). The first
    /// 8 bytes carry the send time. Ignored with --opus.
    #[arg(long, default_value_t = 80)]
    pub payload_bytes: usize,

    /// Send real Opus packets of this WAV recording (looped) instead of
    /// padding. Any rate and channel count; converted to 48 kHz mono.
    #[arg(long, value_name = "FILE.wav")]
    pub opus: Option<PathBuf>,

    /// Opus bitrate in bits a second, with --opus.
    #[arg(long, default_value_t = 32_000)]
    pub opus_bitrate: i32,

    /// Write what one listener received, decoded, as WAV files into this
    /// directory (one file per talker heard). Needs --opus.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,

    /// File with one token per line, as `krt-bot mint-tokens` prints.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,

    /// Relay data directory: mint the tokens (or those missing from
    /// --tokens) with its signing key, creating the keys when missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Lifetime of minted tokens.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// Connections set up at the same time.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Time allowed for all users to connect, authenticate and join; also
    /// bounds the reconnect storm.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Extra users that join like the others but never read their socket.
    /// Their receive buffer is set to 2 KiB, so unread frames back up on the
    /// relay side. They are not counted as listeners.
    #[arg(long, default_value_t = 0)]
    pub slow_listeners: usize,

    /// Delay between the primary talkers' first frame and the contenders'.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub contender_delay: Duration,

    /// After the warm-up, drop every connection at once, reconnect,
    /// authenticate and join again, report the time until all are back,
    /// then warm up again and measure.
    #[arg(long)]
    pub reconnect_storm: bool,

    /// Connect and authenticate only (no joins, no audio), then hold the
    /// connections for --duration, to measure the relay's memory per
    /// connection. --talkers and --joins-per-user are ignored.
    #[arg(long)]
    pub idle: bool,

    /// Process id of the relay: report its CPU time (utime + stime) and
    /// memory (VmRSS, VmHWM) from /proc, and CPU per delivered frame.
    #[arg(long, value_name = "PID")]
    pub relay_pid: Option<u32>,

    /// Interval of the `ping` messages that keep sessions alive.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Runtime worker threads of the load generator; 1 runs everything on
    /// one thread, which is the cheapest for pinning to one core.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print one JSON object on one line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// An option value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{option} {value}: {reason}")]
pub struct ConfigError {
    /// Option name without dashes.
    pub option: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong and what to use instead.
    pub reason: String,
}

fn invalid(option: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Where the relay's voice endpoint is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given.
    pub url: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// What frames carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// Zero padding after an 8-byte send time, this many bytes in all.
    Padded(usize),
    /// Opus packets of this WAV file.
    Opus {
        /// The recording.
        wav: PathBuf,
        /// Bits a second.
        bitrate: i32,
    },
}

/// Validated options of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Relay address.
    pub endpoint: Endpoint,
    /// Who joins and talks.
    pub plan: Plan,
    /// The frequencies, index 0 first.
    pub freqs: Vec<FreqId>,
    /// Measurement window.
    pub duration: Duration,
    /// Talk time before the window.
    pub warmup: Duration,
    /// Reading time after the talkers stop.
    pub drain: Duration,
    /// Frame payload.
    pub payload: PayloadKind,
    /// Recording directory.
    pub record: Option<PathBuf>,
    /// Token file.
    pub tokens: Option<PathBuf>,
    /// Data directory for minting.
    pub data_dir: Option<PathBuf>,
    /// Minted token lifetime.
    pub token_ttl: Duration,
    /// Parallel connection set-ups.
    pub connect_concurrency: usize,
    /// Bound on connecting everyone.
    pub connect_timeout: Duration,
    /// Start delay of contenders.
    pub contender_delay: Duration,
    /// Drop and reconnect everyone after the warm-up.
    pub reconnect_storm: bool,
    /// Connect and authenticate only.
    pub idle: bool,
    /// Relay process to observe.
    pub relay_pid: Option<u32>,
    /// Heartbeat interval.
    pub ping_interval: Duration,
    /// Runtime worker threads.
    pub threads: usize,
    /// Print JSON.
    pub json: bool,
}

/// Parses `ws://host[:port]/path`.
pub fn parse_endpoint(url: &str) -> Result<Endpoint, ConfigError> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| invalid("url", url, format!("not a URL ({e})")))?;
    if uri.scheme_str() != Some("ws") {
        return Err(invalid(
            "url",
            url,
            "use a ws:// URL such as ws://127.0.0.1:7400/voice",
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| invalid("url", url, "the URL has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Endpoint {
        url: url.to_owned(),
        host,
        port: uri.port_u16().unwrap_or(80),
    })
}

impl Config {
    /// Checks `args` and builds the run's configuration.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let endpoint = parse_endpoint(&args.url)?;

        // Sizes of the run.
        let connections = args.users.saturating_add(args.slow_listeners);
        if args.users == 0 {
            return Err(invalid("users", 0, "at least one user is needed"));
        }
        if connections > MAX_CONNECTIONS {
            return Err(invalid(
                "users",
                args.users,
                format!("users plus slow listeners must not exceed {MAX_CONNECTIONS}"),
            ));
        }
        let freqs = frequency_list(args.first_freq, args.freqs)?;
        let (talkers, joins_per_user) = if args.idle {
            (0, 0)
        } else {
            check_talkers_and_joins(&args)?
        };
        let payload = payload_kind(&args)?;
        check_times(&args)?;

        // Sources and resources.
        if args.tokens.is_none() && args.data_dir.is_none() {
            return Err(invalid(
                "tokens",
                "(none)",
                "pass --tokens FILE or --data-dir DIR (the relay's data directory) to mint tokens",
            ));
        }
        if args.connect_concurrency == 0 {
            return Err(invalid("connect-concurrency", 0, "use at least 1"));
        }
        if !(1..=64).contains(&args.threads) {
            return Err(invalid("threads", args.threads, "use 1 to 64"));
        }

        Ok(Self {
            endpoint,
            plan: Plan {
                users: args.users,
                slow_listeners: args.slow_listeners,
                freqs: freqs.len(),
                joins_per_user,
                talkers,
            },
            freqs,
            duration: args.duration,
            warmup: args.warmup,
            drain: args.drain,
            payload,
            record: args.record,
            tokens: args.tokens,
            data_dir: args.data_dir,
            token_ttl: args.token_ttl,
            connect_concurrency: args.connect_concurrency,
            connect_timeout: args.connect_timeout,
            contender_delay: args.contender_delay,
            reconnect_storm: args.reconnect_storm,
            idle: args.idle,
            relay_pid: args.relay_pid,
            ping_interval: args.ping_interval,
            threads: args.threads,
            json: args.json,
        })
    }

    /// Time talkers talk in the whole run.
    pub fn talk_time(&self) -> Duration {
        let once = self.warmup + self.duration;
        if self.reconnect_storm {
            self.warmup + once
        } else {
            once
        }
    }
}

fn frequency_list(first: u16, count: usize) -> Result<Vec<FreqId>, ConfigError> {
    let first_id = FreqId::new(i64::from(first))
        .map_err(|_| invalid("first-freq", first, "use a number from 1000 to 9999"))?;
    let room = usize::from(FreqId::MAX - first_id.get()) + 1;
    if count == 0 || count > room {
        return Err(invalid(
            "freqs",
            count,
            format!("use 1 to {room} so that the last frequency stays at or below 9999"),
        ));
    }
    Ok((0..count)
        .map(|i| FreqId::new(i64::from(first) + i as i64).expect("range checked above"))
        .collect())
}

fn check_talkers_and_joins(args: &Args) -> Result<(usize, usize), ConfigError> {
    if args.talkers > args.users {
        return Err(invalid(
            "talkers",
            args.talkers,
            format!("talkers are users, so use at most --users ({})", args.users),
        ));
    }
    if args.talkers > MAX_TALKERS {
        return Err(invalid(
            "talkers",
            args.talkers,
            format!("use at most {MAX_TALKERS}"),
        ));
    }
    if args.joins_per_user == 0 || args.joins_per_user > args.freqs {
        return Err(invalid(
            "joins-per-user",
            args.joins_per_user,
            format!("use 1 to --freqs ({})", args.freqs),
        ));
    }
    Ok((args.talkers, args.joins_per_user))
}

fn payload_kind(args: &Args) -> Result<PayloadKind, ConfigError> {
    if let (Some(record), None) = (&args.record, &args.opus) {
        return Err(invalid(
            "record",
            record.display(),
            "recording needs Opus audio: add --opus FILE.wav",
        ));
    }
    if let Some(wav) = &args.opus {
        if !(6_000..=510_000).contains(&args.opus_bitrate) {
            return Err(invalid(
                "opus-bitrate",
                args.opus_bitrate,
                "use 6000 to 510000 bits a second",
            ));
        }
        return Ok(PayloadKind::Opus {
            wav: wav.clone(),
            bitrate: args.opus_bitrate,
        });
    }
    if !(MIN_PADDED_PAYLOAD..=MAX_PAYLOAD).contains(&args.payload_bytes) {
        return Err(invalid(
            "payload-bytes",
            args.payload_bytes,
            format!("use {MIN_PADDED_PAYLOAD} to {MAX_PAYLOAD}"),
        ));
    }
    Ok(PayloadKind::Padded(args.payload_bytes))
}

fn check_times(args: &Args) -> Result<(), ConfigError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if args.duration.is_zero() {
        return Err(invalid(
            "duration",
            "0s",
            "use a positive duration such as 10s",
        ));
    }
    let talk = args.warmup * if args.reconnect_storm { 2 } else { 1 } + args.duration;
    if talk > MAX_TALK_TIME {
        return Err(invalid(
            "duration",
            show(args.duration),
            "warm-up plus duration must not exceed 1h",
        ));
    }
    // Frame counters have 20 bits; the talk-time limit keeps them well inside.
    debug_assert!(MAX_TALK_TIME.as_millis() / 20 < u128::from(MAX_FRAMES_PER_TALKER));
    if args.ping_interval < Duration::from_secs(1) {
        return Err(invalid(
            "ping-interval",
            show(args.ping_interval),
            "use at least 1s",
        ));
    }
    if args.connect_timeout.is_zero() {
        return Err(invalid(
            "connect-timeout",
            "0s",
            "use a positive duration such as 60s",
        ));
    }
    if args.drain > Duration::from_secs(60) {
        return Err(invalid("drain", show(args.drain), "use at most 60s"));
    }
    if args.contender_delay > Duration::from_secs(10) {
        return Err(invalid(
            "contender-delay",
            show(args.contender_delay),
            "use at most 10s",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["krt-loadgen", "--data-dir", "/tmp/x"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv).expect("clap accepts the options"))
    }

    #[test]
    fn defaults_are_the_event() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.endpoint.host, "127.0.0.1");
        assert_eq!(config.endpoint.port, 7400);
        assert_eq!(config.plan.users, 600);
        assert_eq!(config.plan.talkers, 6);
        assert_eq!(config.freqs.len(), 6);
        assert_eq!(config.freqs[0].get(), 1000);
        assert_eq!(config.freqs[5].get(), 1005);
        assert_eq!(config.duration, Duration::from_secs(10));
        assert_eq!(config.payload, PayloadKind::Padded(80));
        assert_eq!(config.threads, 1);
    }

    #[test]
    fn durations_parse_with_units() {
        let config = parse(&["--duration", "1m 30s", "--warmup", "500ms"]).unwrap();
        assert_eq!(config.duration, Duration::from_secs(90));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert!(Args::try_parse_from(["krt-loadgen", "--duration", "ten"]).is_err());
    }

    #[test]
    fn rejected_values_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["--talkers", "700"], "talkers"),
            (&["--joins-per-user", "7"], "joins-per-user"),
            (&["--joins-per-user", "0"], "joins-per-user"),
            (&["--payload-bytes", "4"], "payload-bytes"),
            (&["--payload-bytes", "1493"], "payload-bytes"),
            (&["--first-freq", "9998", "--freqs", "3"], "freqs"),
            (&["--first-freq", "999"], "first-freq"),
            (&["--record", "/tmp/rec"], "record"),
            (&["--url", "http://127.0.0.1:7400/voice"], "url"),
            (&["--url", "wss://127.0.0.1/voice"], "url"),
            (&["--users", "0"], "users"),
            (&["--duration", "0s"], "duration"),
            (&["--duration", "2h"], "duration"),
            (&["--threads", "0"], "threads"),
            (&["--connect-concurrency", "0"], "connect-concurrency"),
            (
                &["--opus", "x.wav", "--opus-bitrate", "100"],
                "opus-bitrate",
            ),
        ];
        for (extra, option) in cases {
            let err = parse(extra).unwrap_err();
            assert_eq!(err.option, *option, "options {extra:?}");
            assert!(err.to_string().starts_with(&format!("invalid --{option} ")));
        }
    }

    #[test]
    fn tokens_or_data_dir_required() {
        let args = Args::try_parse_from(["krt-loadgen"]).unwrap();
        let err = Config::from_args(args).unwrap_err();
        assert_eq!(err.option, "tokens");
    }

    #[test]
    fn idle_needs_no_talkers() {
        let config = parse(&["--idle", "--users", "10000", "--talkers", "0"]).unwrap();
        assert_eq!(config.plan.talkers, 0);
        assert_eq!(config.plan.joins_per_user, 0);
    }

    #[test]
    fn ipv6_and_default_port() {
        let endpoint = parse_endpoint("ws://[::1]/voice").unwrap();
        assert_eq!(endpoint.host, "::1");
        assert_eq!(endpoint.port, 80);
    }

    #[test]
    fn storm_doubles_warmup() {
        let config = parse(&["--reconnect-storm", "--warmup", "2s", "--duration", "10s"]).unwrap();
        assert_eq!(config.talk_time(), Duration::from_secs(14));
    }
}
