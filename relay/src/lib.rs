//! `krt-relay`: the KRT-Com voice relay.
//!
//! Desktop clients connect over WebSocket with a token issued by the bot,
//! join numbered frequencies and exchange Opus frames. The relay forwards
//! each frame to every other listener of its frequency, drops frames for
//! listeners that cannot keep up, enforces one talker per frequency and logs
//! transmissions to the database off the audio path.
//!
//! [`start`] runs a relay inside the current Tokio runtime, with the
//! sessions' writer tasks on a second runtime of their own
//! ([`WriterRuntime`]), and returns a [`Relay`] handle. The `krt-relay`
//! binary and the integration tests both use it.

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
pub mod guard;
pub mod http;
pub mod hub;
pub mod limits;
pub mod session;
pub mod session_shared;
pub mod txlog;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use krt_shared::keyfile::{self, KeyStatus};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{RelayArgs, RelayConfig};

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::session_shared::CloseReason;
use crate::txlog::{TxLog, TxLogWriter};

/// Errors that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Key files could not be created or read.
    #[error(transparent)]
    Keys(#[from] keyfile::KeyFileError),
    /// The database could not be opened or migrated.
    #[error("failed to open database {url}: {source}")]
    Database {
        /// Database URL with any password removed.
        url: String,
        /// Underlying error.
        source: sea_orm::DbErr,
    },
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {source}: choose another --listen address")]
    Listen {
        /// Requested address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The writer runtime could not be started.
    #[error("failed to start the writer threads: {0}")]
    Runtime(std::io::Error),
    /// The address file could not be written.
    #[error("failed to write address file {path}: {source}")]
    AddrFile {
        /// File path.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Figures reported after a graceful shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Transmission rows written since start.
    pub rows_written: u64,
    /// Transmission rows lost since start.
    pub rows_lost: u64,
}

/// A running relay.
pub struct Relay {
    /// Address clients connect to.
    pub local_addr: SocketAddr,
    /// Shared state, for tests and reports.
    pub hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    txlog_writer: TxLogWriter,
    writer_runtime: WriterRuntime,
}

/// The runtime that runs the sessions' writer tasks, apart from the one
/// that reads from clients.
///
/// A talker's frame fans out to a hundred or more listeners, so writers far
/// outnumber readers when they are ready to run. In one runtime a reader
/// woken by a new frame would wait behind all of them. With the writers on
/// threads of their own, the operating system's scheduler decides, and it
/// runs a thread that seldom needs the CPU soon after that thread wakes.
pub struct WriterRuntime(Option<tokio::runtime::Runtime>);

impl WriterRuntime {
    /// Starts a runtime with `threads` worker threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("krt-writer")
            // Sockets stay registered with the reading runtime's I/O driver,
            // so this one needs only timers, for the coalescing window.
            .enable_time()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Returns a handle for spawning tasks on this runtime.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|runtime| runtime.handle().clone())
    }

    /// Stops the runtime's tasks. Dropping a runtime would block, which is
    /// not allowed inside another runtime, so its threads end by themselves.
    fn stop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for WriterRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Time sessions get to close before shutdown goes on without them.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the password from a database URL for logs and errors.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Starts a relay: keys, database, state, listeners and background tasks.
pub async fn start(config: RelayConfig) -> Result<Relay, StartError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| {
        StartError::Keys(keyfile::KeyFileError::Io {
            path: config.data_dir.clone(),
            source,
        })
    })?;

    if keyfile::ensure_keys(&config.data_dir)? == KeyStatus::Created {
        tracing::info!(
            dir = %config.data_dir.display(),
            private_key = %config.data_dir.join(keyfile::SIGNING_KEY_FILE).display(),
            public_key = %config.data_dir.join(keyfile::PUBLIC_KEY_FILE).display(),
            "generated a new signing key pair; the relay loads only the public key"
        );
    }
    let verifier = keyfile::load_verifier(&config.data_dir)?;

    let url = config.database_url();
    let db = db::connect(&config)
        .await
        .map_err(|source| StartError::Database {
            url: redact_url(&url),
            source,
        })?;
    tracing::info!(url = %redact_url(&url), "database ready");

    let (txlog, txlog_writer) = TxLog::spawn(db.clone(), config.txlog_queue, config.txlog_batch);
    let auth = Authenticator::new(verifier, config.token_cache_capacity);
    let hub = Arc::new(Hub::new(Arc::clone(&config), auth, txlog));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let writer_runtime =
        WriterRuntime::start(config.worker_threads.unwrap_or(cpus)).map_err(StartError::Runtime)?;
    if let Some(handle) = writer_runtime.handle() {
        hub.set_writer_runtime(handle);
    }
    let loaded = db::load_state(&db, &hub)
        .await
        .map_err(|source| StartError::Database {
            url: redact_url(&url),
            source,
        })?;
    tracing::info!(
        frequencies = loaded.frequencies,
        revocations = loaded.revocations,
        mutes = loaded.mutes,
        skipped = loaded.skipped,
        "state loaded from database"
    );

    let listener = bind_listener(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    if !local_addr.ip().is_loopback() {
        tracing::warn!(addr = %local_addr, "listening on a non-loopback address: TLS is expected to end at a reverse proxy in front of the relay");
    }
    let control_path = config.control_socket_path();
    let control_listener = control::bind(&control_path)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (done_tx, done) = mpsc::channel(1);
    let tasks = vec![
        tokio::spawn(http::serve(
            listener,
            Arc::clone(&hub),
            shutdown_rx.clone(),
            done_tx,
        )),
        tokio::spawn(control::serve(
            control_listener,
            Arc::clone(&hub),
            shutdown_rx.clone(),
        )),
        tokio::spawn(listener_updates(Arc::clone(&hub), shutdown_rx.clone())),
        tokio::spawn(watch_cpu(Arc::clone(&hub), shutdown_rx.clone())),
        tokio::spawn(maintenance(
            Arc::clone(&hub),
            db.clone(),
            shutdown_rx.clone(),
        )),
    ];

    if let Some(path) = &config.addr_file {
        std::fs::write(path, format!("{local_addr}\n")).map_err(|source| StartError::AddrFile {
            path: path.clone(),
            source,
        })?;
    }
    tracing::info!(addr = %local_addr, control = %control_path.display(), "relay listening");
    Ok(Relay {
        local_addr,
        hub,
        shutdown,
        done,
        tasks,
        txlog_writer,
        writer_runtime,
    })
}

/// Pending connections the kernel queues before `accept`, so that hundreds
/// of clients reconnecting at once are not refused. The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn listener_updates(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(hub.config.listener_update_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => hub.flush_listener_updates(),
        }
    }
}

/// Interval of the CPU samples that switch direct audio writes.
const CPU_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// User plus system CPU time of this process, seconds.
fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Samples the relay's CPU use and lets the hub choose between direct and
/// queued audio writes (see [`Hub::update_direct_writes`]). The share is of
/// the cores the relay may use: the worker threads, at most the CPUs in its
/// affinity mask.
async fn watch_cpu(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = hub.config.worker_threads.unwrap_or(cpus).min(cpus) as f64;
    let mut ticker = tokio::time::interval(CPU_SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (std::time::Instant::now(), process_cpu_secs());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let now = (std::time::Instant::now(), process_cpu_secs());
        let wall = now.0.duration_since(last.0).as_secs_f64();
        if wall > 0.0 {
            hub.update_direct_writes((now.1 - last.1) / wall / cores);
        }
        last = now;
    }
}

/// Interval of the housekeeping task.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Forgets idle per-address limiter entries and purges rows older than the
/// retention period.
async fn maintenance(
    hub: Arc<Hub>,
    db: sea_orm::DatabaseConnection,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        hub.guard.cleanup();
        let cutoff = hub::wall_ms() - hub.config.retention.as_millis() as i64;
        match db::purge_older_than(&db, cutoff).await {
            Ok(purged) if purged.total() > 0 => tracing::info!(
                transmissions = purged.transmissions,
                voice_states = purged.voice_states,
                revocations = purged.revocations,
                "purged rows past the retention period"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "purging old rows failed; will retry"),
        }
    }
}

impl Relay {
    /// Stops accepting, closes every session with a close frame, writes every
    /// pending transmission row, then returns.
    pub async fn shutdown(mut self) -> ShutdownReport {
        tracing::info!(sessions = self.hub.session_count(), "shutting down");
        let _ = self.shutdown.send(true);
        self.hub.close_all(CloseReason::Shutdown);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, self.done.recv())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not close in time; continuing shutdown");
        }
        self.writer_runtime.stop();

        self.txlog_writer.finish().await;
        let socket = self.hub.config.control_socket_path();
        if let Err(err) = std::fs::remove_file(&socket) {
            tracing::debug!(path = %socket.display(), error = %err, "control socket not removed");
        }
        let stats = self.hub.txlog.stats();
        let report = ShutdownReport {
            rows_written: stats.written.load(Ordering::Relaxed),
            rows_lost: stats.lost.load(Ordering::Relaxed),
        };
        tracing::info!(
            rows_written = report.rows_written,
            rows_lost = report.rows_lost,
            "relay stopped"
        );
        report
    }
}
