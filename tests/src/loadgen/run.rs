//! One load-generator run: tokens, connections, traffic phases, report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use krt_shared::{FreqId, FreqSet};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::audio::{self, AudioError};
use super::client::{Clock, FRAME_INTERVAL, Payload, Phase, Shared, UserState, run_session};
use super::config::{Config, ConfigError, PayloadKind};
use super::connect::{ConnectError, Socket, connect_user};
use super::histogram::AtomicHistogram;
use super::procstat::{ProcError, ProcSample};
use super::report::Report;
use super::status;
use super::summary::{relay_figures, summarize, write_recordings};
use super::tokens::{TokenSourceError, collect_tokens};

/// Attempts per connection before the run fails.
const CONNECT_ATTEMPTS: u32 = 3;
/// Time allowed for one connection attempt, including auth and joins.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// CPU share per runtime thread above which the load generator itself may
/// delay frames, percent.
const LOADGEN_BUSY_PERCENT: f64 = 80.0;
/// Receive buffer of slow listeners, bytes. Linux doubles the value, so
/// about 4 KiB of frames fill it. From then on, every frame the slow
/// listener does not read waits on the relay side, first in the relay's
/// socket send buffer (autotuned by the kernel), then in its queue.
const SLOW_LISTENER_RECV_BUFFER: u32 = 2048;
/// Time between spawning the session tasks and the first frame.
const START_DELAY: Duration = Duration::from_millis(100);

/// Errors that end a run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// An option is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Tokens could not be read or minted.
    #[error(transparent)]
    Tokens(#[from] TokenSourceError),
    /// The recording could not be read, coded or written.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The relay's `/proc` entries could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The relay host name did not resolve.
    #[error("failed to resolve relay address {host}:{port}: {detail}")]
    Resolve {
        /// Host from --url.
        host: String,
        /// Port from --url.
        port: u16,
        /// Resolver error, or "no address".
        detail: String,
    },
    /// A user could not connect after every attempt.
    #[error("user {user} failed to connect ({connected} of {total} connected): {error}")]
    Connect {
        /// User number.
        user: usize,
        /// Users connected before the failure.
        connected: usize,
        /// Users to connect.
        total: usize,
        /// Last error.
        error: ConnectError,
    },
    /// Connecting everyone took longer than --connect-timeout.
    #[error(
        "only {connected} of {total} users connected within {} s: raise --connect-timeout or lower --users",
        timeout.as_secs_f64()
    )]
    ConnectTimeout {
        /// Users connected in time.
        connected: usize,
        /// Users to connect.
        total: usize,
        /// The limit.
        timeout: Duration,
    },
    /// --record was given but no user can record.
    #[error("--record needs a talker on the first frequency and another user listening to it")]
    NoRecorder,
    /// The recording directory could not be created.
    #[error("failed to create recording directory {dir}: {error}")]
    RecordDir {
        /// Directory from --record.
        dir: PathBuf,
        /// Error from the file system.
        error: std::io::Error,
    },
    /// A session task panicked.
    #[error("a session task failed: {0}")]
    Task(String),
}

/// The payload and how it is described in the report.
struct PreparedPayload {
    payload: Payload,
    clip: Vec<Bytes>,
    label: String,
    mean_bytes: f64,
}

fn prepare_payload(config: &Config) -> Result<PreparedPayload, LoadgenError> {
    match &config.payload {
        PayloadKind::Padded(len) => Ok(PreparedPayload {
            payload: Payload::Padded(*len),
            clip: Vec::new(),
            label: format!("padded {len} B"),
            mean_bytes: *len as f64,
        }),
        PayloadKind::Opus { wav, bitrate } => {
            let samples = audio::read_wav_mono_48k(wav)?;
            let packets = audio::encode_opus(&samples, *bitrate)?;
            let mean_bytes =
                packets.iter().map(Bytes::len).sum::<usize>() as f64 / packets.len() as f64;
            // Room for every frame of the run plus ticks that fire late.
            let frames =
                (config.talk_time().as_millis() / FRAME_INTERVAL.as_millis()) as usize + 100;
            Ok(PreparedPayload {
                label: format!(
                    "opus {} ({} packets at {} b/s)",
                    wav.display(),
                    packets.len(),
                    bitrate
                ),
                payload: Payload::opus(packets.clone(), config.plan.talkers, frames),
                clip: packets,
                mean_bytes,
            })
        }
    }
}

/// Reads the relay's status counters, logging a warning instead of failing
/// because the figures are optional.
async fn read_status(addr: SocketAddr, config: &Config) -> Option<BTreeMap<String, f64>> {
    match status::fetch_counters(addr, &config.endpoint.host).await {
        Ok(counters) => Some(counters),
        Err(error) => {
            warn!(%addr, %error, "failed to read the relay's /server-status");
            None
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

async fn resolve(config: &Config) -> Result<SocketAddr, LoadgenError> {
    let host = config.endpoint.host.clone();
    let port = config.endpoint.port;
    let resolve_error = |detail: String| LoadgenError::Resolve {
        host: host.clone(),
        port,
        detail,
    };
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_error("no address".to_owned()))
}

async fn connect_with_retry(
    addr: SocketAddr,
    url: &str,
    token: &str,
    joins: &[FreqId],
    recv_buffer: Option<u32>,
) -> Result<Socket, ConnectError> {
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            connect_user(addr, url, token, joins, recv_buffer),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ConnectError::TimedOut {
                timeout: ATTEMPT_TIMEOUT,
            }),
        };
        match result {
            Err(error) if error.is_transient() && attempt < CONNECT_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Connects every user of the plan with at most `connect_concurrency` set-ups
/// at a time, within `connect_timeout`. Returns the sockets in user order.
async fn connect_all(
    config: &Config,
    addr: SocketAddr,
    tokens: &Arc<Vec<String>>,
) -> Result<Vec<Socket>, LoadgenError> {
    let plan = &config.plan;
    let total = plan.connections();
    let semaphore = Arc::new(Semaphore::new(config.connect_concurrency));
    let url: Arc<str> = config.endpoint.url.as_str().into();
    let mut set = JoinSet::new();
    for user in 0..total {
        let joins: Vec<FreqId> = plan.joins_of(user).map(|f| config.freqs[f]).collect();
        let recv_buffer = plan.is_slow(user).then_some(SLOW_LISTENER_RECV_BUFFER);
        let tokens = Arc::clone(tokens);
        let semaphore = Arc::clone(&semaphore);
        let url = Arc::clone(&url);
        set.spawn(async move {
            let _permit = semaphore
                .acquire_owned()
                .await
                .expect("the connect semaphore is never closed");
            let result = connect_with_retry(addr, &url, &tokens[user], &joins, recv_buffer).await;
            (user, result)
        });
    }

    // Dropping the JoinSet on an early return aborts the remaining attempts.
    let mut sockets: Vec<Option<Socket>> = (0..total).map(|_| None).collect();
    let mut connected = 0;
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, set.join_next()).await;
        match next {
            Err(_) => {
                return Err(LoadgenError::ConnectTimeout {
                    connected,
                    total,
                    timeout: config.connect_timeout,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(join_error))) => return Err(LoadgenError::Task(join_error.to_string())),
            Ok(Some(Ok((user, Ok(socket))))) => {
                sockets[user] = Some(socket);
                connected += 1;
            }
            Ok(Some(Ok((user, Err(error))))) => {
                return Err(LoadgenError::Connect {
                    user,
                    connected,
                    total,
                    error,
                });
            }
        }
    }
    Ok(sockets
        .into_iter()
        .map(|socket| socket.expect("every connect task returned"))
        .collect())
}

/// Time allowed for the closing handshakes at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a close frame on every open socket and waits for the relay's close
/// frames, at most [`CLOSE_TIMEOUT`] in all.
async fn close_all(sockets: Vec<Option<Socket>>) {
    let mut set = JoinSet::new();
    for mut socket in sockets.into_iter().flatten() {
        set.spawn(async move {
            // A relay that is already gone is fine at this point.
            let _ = socket.close(None).await;
            while let Some(Ok(_)) = socket.next().await {}
        });
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, set.join_all()).await;
}

/// What a phase leaves behind.
struct PhaseOutcome {
    /// Sockets still open, in user order; `None` where the session ended.
    open: Vec<Option<Socket>>,
    /// User states, in user order.
    states: Vec<UserState>,
    /// CPU readings of the window, when the phase had one.
    samples: Option<WindowSamples>,
}

/// CPU and memory readings at the start and end of a measurement window.
struct WindowSamples {
    relay: Option<(ProcSample, ProcSample)>,
    own: (ProcSample, ProcSample),
    secs: f64,
}

fn sample_relay(pid: Option<u32>) -> Result<Option<ProcSample>, LoadgenError> {
    Ok(pid.map(ProcSample::read).transpose()?)
}

/// Runs one session task per connection through `phase` and samples CPU at
/// `window`'s start and end instants. Returns the sockets still open and
/// the user states, in user order.
async fn run_phase(
    sockets: Vec<Socket>,
    states: Vec<UserState>,
    shared: &Arc<Shared>,
    phase: Phase,
    window: Option<(Instant, Instant)>,
    relay_pid: Option<u32>,
) -> Result<PhaseOutcome, LoadgenError> {
    let handles: Vec<_> = sockets
        .into_iter()
        .zip(states)
        .map(|(socket, state)| {
            tokio::spawn(run_session(
                socket,
                state,
                Arc::clone(shared),
                phase.clone(),
            ))
        })
        .collect();

    let mut samples = None;
    if let Some((start, end)) = window {
        tokio::time::sleep_until(start.into()).await;
        let relay_start = sample_relay(relay_pid)?;
        let own_start = ProcSample::read_self()?;
        tokio::time::sleep_until(end.into()).await;
        let relay_end = sample_relay(relay_pid)?;
        let own_end = ProcSample::read_self()?;
        samples = Some(WindowSamples {
            relay: relay_start.zip(relay_end),
            own: (own_start, own_end),
            secs: end.duration_since(start).as_secs_f64(),
        });
    }

    let mut open = Vec::with_capacity(handles.len());
    let mut states = Vec::with_capacity(handles.len());
    for handle in handles {
        let (socket, state) = handle
            .await
            .map_err(|join_error| LoadgenError::Task(join_error.to_string()))?;
        open.push(socket);
        states.push(state);
    }
    Ok(PhaseOutcome {
        open,
        states,
        samples,
    })
}

/// Builds a phase that starts talking at `start`. With `measure`, the
/// window follows the warm-up; without, the talkers stop after the warm-up
/// and nothing is counted.
fn traffic_phase(config: &Config, clock: &Clock, start: Instant, measure: bool) -> Phase {
    let window_start = start + config.warmup;
    let talk_end = if measure {
        window_start + config.duration
    } else {
        window_start
    };
    let window = if measure {
        clock.ns_at(window_start)..clock.ns_at(talk_end)
    } else {
        0..0
    };
    Phase {
        talk_start: start,
        contender_start: start + config.contender_delay,
        talk_end,
        read_end: talk_end + config.drain,
        window,
    }
}

/// Runs the load described by `config` and returns its report.
fn tokens_for(config: &Config) -> Result<Arc<Vec<String>>, LoadgenError> {
    let freqs = &config.freqs;
    let freq_set = FreqSet::from_ranges([(freqs[0], freqs[freqs.len() - 1])]);
    // Tokens must outlive every phase of the run, however short --token-ttl is.
    let ttl = config
        .token_ttl
        .max(config.talk_time() + config.connect_timeout * 2);
    let tokens = collect_tokens(
        config.tokens.as_deref(),
        config.data_dir.as_deref(),
        config.plan.connections(),
        &freq_set,
        unix_now(),
        ttl.as_secs(),
    )?;
    Ok(Arc::new(tokens))
}

/// Holds the connections open without audio for `--duration`.
async fn hold_idle(
    config: &Config,
    shared: &Arc<Shared>,
    sockets: Vec<Socket>,
    states: Vec<UserState>,
) -> Result<PhaseOutcome, LoadgenError> {
    let start = Instant::now();
    let end = start + config.duration;
    let phase = Phase {
        talk_start: start,
        contender_start: start,
        talk_end: start,
        read_end: end,
        window: 0..0,
    };
    let window = Some((start, end));
    run_phase(sockets, states, shared, phase, window, config.relay_pid).await
}

/// Runs the talking phases: with `--reconnect-storm`, a warm-up, the storm
/// and its timing, then the warm-up and measurement window. Returns the
/// last phase's outcome and the storm time in seconds.
async fn run_traffic(
    config: &Config,
    shared: &Arc<Shared>,
    addr: SocketAddr,
    tokens: &Arc<Vec<String>>,
    mut sockets: Vec<Socket>,
    mut states: Vec<UserState>,
) -> Result<(PhaseOutcome, Option<f64>), LoadgenError> {
    let clock = shared.clock;
    let mut storm_secs = None;
    if config.reconnect_storm {
        let phase = traffic_phase(config, &clock, Instant::now() + START_DELAY, false);
        let warm = run_phase(sockets, states, shared, phase, None, config.relay_pid).await?;
        states = warm.states;
        info!(
            connections = warm.open.len(),
            "dropping every connection at once"
        );
        let storm_start = Instant::now();
        drop(warm.open);
        sockets = connect_all(config, addr, tokens).await?;
        let secs = storm_start.elapsed().as_secs_f64();
        info!(storm_secs = secs, "all users back");
        storm_secs = Some(secs);
    }

    let phase = traffic_phase(config, &clock, Instant::now() + START_DELAY, true);
    let window = Some((phase.talk_start + config.warmup, phase.talk_end));
    info!(
        warmup_secs = config.warmup.as_secs_f64(),
        duration_secs = config.duration.as_secs_f64(),
        "talking"
    );
    let outcome = run_phase(sockets, states, shared, phase, window, config.relay_pid).await?;
    Ok((outcome, storm_secs))
}

/// Runs the load described by `config` and returns its report.
pub async fn run(config: Config) -> Result<Report, LoadgenError> {
    let plan = config.plan.clone();
    let recorder = match &config.record {
        Some(_) => Some(plan.recorder().ok_or(LoadgenError::NoRecorder)?),
        None => None,
    };
    let prepared = prepare_payload(&config)?;
    let tokens = tokens_for(&config)?;
    let addr = resolve(&config).await?;
    let relay_before = sample_relay(config.relay_pid)?;
    let status_before = read_status(addr, &config).await;

    let shared = Arc::new(Shared {
        clock: Clock::start(),
        plan: plan.clone(),
        freqs: config.freqs.clone(),
        payload: prepared.payload,
        latency: AtomicHistogram::new(),
        ping_interval: config.ping_interval,
    });
    let states: Vec<UserState> = (0..plan.connections())
        .map(|user| UserState::new(user, &plan, &config.freqs, Some(user) == recorder))
        .collect();

    // Connect everyone, then run the phases.
    info!(
        connections = plan.connections(),
        url = %config.endpoint.url,
        concurrency = config.connect_concurrency,
        "connecting"
    );
    let connect_start = Instant::now();
    let sockets = connect_all(&config, addr, &tokens).await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    info!(connect_secs, "all users authenticated and joined");
    let relay_connected = sample_relay(config.relay_pid)?;
    let (outcome, storm_secs) = if config.idle {
        (hold_idle(&config, &shared, sockets, states).await?, None)
    } else {
        run_traffic(&config, &shared, addr, &tokens, sockets, states).await?
    };
    let relay_end = sample_relay(config.relay_pid)?;
    let status_after = read_status(addr, &config).await;
    close_all(outcome.open).await;

    // Count and write the results.
    let mut report = summarize(&config, &outcome.states, &shared);
    report.payload = prepared.label;
    report.payload_bytes_mean = prepared.mean_bytes;
    report.connect_secs = connect_secs;
    report.reconnect_storm_secs = storm_secs;
    report.clip_packets = prepared.clip;
    if let (Some(before), Some(after)) = (status_before, status_after) {
        report.relay_counters = status::counter_deltas(&before, &after);
    }
    let samples = outcome.samples;
    if let Some(samples) = &samples {
        report.loadgen_cpu_percent =
            (samples.own.1.cpu_secs - samples.own.0.cpu_secs) / samples.secs * 100.0;
        let per_thread = report.loadgen_cpu_percent / config.threads as f64;
        if per_thread > LOADGEN_BUSY_PERCENT {
            warn!(
                cpu_percent = report.loadgen_cpu_percent,
                threads = config.threads,
                "the load generator was nearly saturated, so latency figures include its own queueing"
            );
        }
    }
    if let (Some(pid), Some(before), Some(connected), Some(end)) =
        (config.relay_pid, relay_before, relay_connected, relay_end)
    {
        let window = samples.as_ref().and_then(|s| s.relay);
        report.relay = Some(relay_figures(pid, &report, before, connected, end, window));
    }
    if let (Some(dir), Some(user)) = (&config.record, recorder) {
        report.recordings = write_recordings(dir, &outcome.states[user], &config.freqs)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::config::Args;
    use clap::Parser;

    #[test]
    fn phase_window_follows_warmup() {
        let args = Args::try_parse_from([
            "krt-loadgen",
            "--data-dir",
            "/tmp/x",
            "--warmup",
            "1s",
            "--duration",
            "2s",
            "--drain",
            "500ms",
        ])
        .unwrap();
        let config = Config::from_args(args).unwrap();
        let clock = Clock::start();
        let start = Instant::now();
        let phase = traffic_phase(&config, &clock, start, true);
        assert_eq!(phase.talk_end, start + Duration::from_secs(3));
        assert_eq!(phase.read_end, start + Duration::from_millis(3500));
        assert_eq!(phase.window.end - phase.window.start, 2_000_000_000);
        let warm = traffic_phase(&config, &clock, start, false);
        assert!(warm.window.is_empty());
        assert_eq!(warm.talk_end, start + Duration::from_secs(1));
    }
}
