//! Client side of the relay's control socket.
//!
//! One task owns the Unix socket. Callers send it [`ControlCommand`]s
//! through a [`ControlClient`] and wait for the matching response. The task
//! reconnects with exponential backoff when the relay restarts, and the first
//! request on every new connection is a full `sync` built from the database,
//! so the relay catches up on every change it missed.
//!
//! While no connection is open, requests fail at once with
//! [`ControlError::NotConnected`]. State changes are stored in the database
//! before they are sent, so the next `sync` carries them anyway.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use krt_shared::control::{
    ControlCommand, ControlRequest, ControlResponse, MAX_CONTROL_LINE, SyncState,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

/// First wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Maximum wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Time within which the relay must respond to one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests queued for the socket task before callers wait.
const QUEUE_LEN: usize = 256;

/// Errors of one control request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No connection to the relay is open.
    #[error("relay control socket {path} is not connected: check that krt-relay is running")]
    NotConnected {
        /// Socket path.
        path: String,
    },
    /// The relay responded with an error.
    #[error("relay rejected the request: {0}")]
    Rejected(String),
    /// The relay did not respond in time.
    #[error("relay did not respond within {} s", REQUEST_TIMEOUT.as_secs())]
    TimedOut,
    /// The connection closed before the response arrived.
    #[error("relay connection closed before the response arrived")]
    Closed,
    /// The relay responded with data that does not decode.
    #[error("invalid response from the relay: {0}")]
    InvalidResponse(String),
}

/// Builds the full state sent after each (re)connection.
pub type SyncSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<SyncState>> + Send>> + Send + Sync>;

/// Counters of the control connection.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Connections opened since start.
    pub connects: AtomicU64,
    /// Full `sync` requests the relay accepted.
    pub syncs: AtomicU64,
    /// True while a connection is open.
    pub connected: AtomicBool,
}

/// Requests sent and awaiting a response: reply channel and deadline by id.
type Waiting = HashMap<
    u64,
    (
        oneshot::Sender<Result<Value, ControlError>>,
        tokio::time::Instant,
    ),
>;

struct Pending {
    command: ControlCommand,
    reply: oneshot::Sender<Result<Value, ControlError>>,
}

/// Handle to the control socket task. Cloning is cheap.
#[derive(Clone)]
pub struct ControlClient {
    requests: mpsc::Sender<Pending>,
    stats: Arc<ControlStats>,
}

impl ControlClient {
    /// Starts the socket task for `path`. It stops when `shutdown` turns
    /// true or every client handle is dropped.
    pub fn start(path: PathBuf, sync: SyncSource, shutdown: watch::Receiver<bool>) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE_LEN);
        let stats = Arc::new(ControlStats::default());
        tokio::spawn(run(path, sync, receiver, Arc::clone(&stats), shutdown));
        Self { requests, stats }
    }

    /// Connection counters.
    pub fn stats(&self) -> &Arc<ControlStats> {
        &self.stats
    }

    /// Sends `command` and waits for the relay's result data.
    pub async fn request(&self, command: ControlCommand) -> Result<Value, ControlError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Pending { command, reply })
            .await
            .map_err(|_| ControlError::Closed)?;
        response.await.map_err(|_| ControlError::Closed)?
    }

    /// Sends `command` and decodes the result data as `T`.
    pub async fn request_as<T: serde::de::DeserializeOwned>(
        &self,
        command: ControlCommand,
    ) -> Result<T, ControlError> {
        let data = self.request(command).await?;
        serde_json::from_value(data).map_err(|e| ControlError::InvalidResponse(e.to_string()))
    }

    /// Sends a state change. A failure is logged and not returned, because
    /// the change is already stored and the next `sync` carries it.
    pub async fn notify(&self, command: ControlCommand) {
        let op = op_name(&command);
        if let Err(error) = self.request(command).await {
            tracing::warn!(op, %error, "relay did not apply a change; the next sync carries it");
        }
    }
}

fn op_name(command: &ControlCommand) -> &'static str {
    match command {
        ControlCommand::Revoke { .. } => "revoke",
        ControlCommand::RevokeUser { .. } => "revoke_user",
        ControlCommand::Assign { .. } => "assign",
        ControlCommand::FreqUpsert { .. } => "freq_upsert",
        ControlCommand::FreqDelete { .. } => "freq_delete",
        ControlCommand::Mute { .. } => "mute",
        ControlCommand::Status { .. } => "status",
        ControlCommand::Stats => "stats",
        ControlCommand::Sync(_) => "sync",
    }
}

/// Reconnect loop of the socket task.
async fn run(
    path: PathBuf,
    sync: SyncSource,
    mut requests: mpsc::Receiver<Pending>,
    stats: Arc<ControlStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shown_path = path.display().to_string();
    let mut backoff = BACKOFF_MIN;
    let mut next_id: u64 = 1;
    let mut logged_down = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match UnixStream::connect(&path).await {
            Ok(stream) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(socket = %shown_path, "connected to relay control socket");
                logged_down = false;
                let outcome = serve(
                    stream,
                    &sync,
                    &mut requests,
                    &stats,
                    &mut shutdown,
                    &mut next_id,
                )
                .await;
                stats.connected.store(false, Ordering::Relaxed);
                match outcome {
                    Outcome::Shutdown => return,
                    Outcome::Lost(reason) => {
                        tracing::warn!(socket = %shown_path, %reason, "relay control connection lost; reconnecting");
                        backoff = BACKOFF_MIN;
                    }
                }
            }
            Err(error) => {
                if !logged_down {
                    tracing::warn!(socket = %shown_path, %error, "relay control socket unavailable; retrying with backoff");
                    logged_down = true;
                }
            }
        }

        // Wait out the backoff, failing requests at once meanwhile.
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => break,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                pending = requests.recv() => match pending {
                    Some(pending) => {
                        let _ = pending.reply.send(Err(ControlError::NotConnected {
                            path: shown_path.clone(),
                        }));
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Outcome {
    Shutdown,
    Lost(String),
}

/// Serves one connection: a full sync first, then queued requests.
async fn serve(
    stream: UnixStream,
    sync: &SyncSource,
    requests: &mut mpsc::Receiver<Pending>,
    stats: &ControlStats,
    shutdown: &mut watch::Receiver<bool>,
    next_id: &mut u64,
) -> Outcome {
    let (read_half, mut write_half) = stream.into_split();
    let mut lines = BufReader::new(read_half).lines();
    let mut waiting: Waiting = HashMap::new();

    let sync_id = *next_id;
    *next_id += 1;
    let Some(state) = sync().await else {
        return Outcome::Lost("could not read the state to sync from the database".into());
    };
    let line = match encode_request(sync_id, ControlCommand::Sync(state)) {
        Ok(line) => line,
        Err(error) => {
            // TODO: split a full sync that exceeds the line limit.
            tracing::error!(%error, "full sync not sent");
            return Outcome::Lost(error);
        }
    };
    if let Err(error) = write_half.write_all(&line).await {
        return Outcome::Lost(error.to_string());
    }
    let mut sync_pending = true;
    let mut tick = tokio::time::interval(Duration::from_millis(500));

    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    fail_all(&mut waiting, ControlError::Closed);
                    return Outcome::Shutdown;
                }
            }
            pending = requests.recv() => {
                let Some(pending) = pending else {
                    return Outcome::Shutdown;
                };
                let id = *next_id;
                *next_id += 1;
                let line = match encode_request(id, pending.command) {
                    Ok(line) => line,
                    Err(error) => {
                        tracing::error!(%error, "control request not sent");
                        let _ = pending.reply.send(Err(ControlError::Rejected(error)));
                        continue;
                    }
                };
                if let Err(error) = write_half.write_all(&line).await {
                    let _ = pending.reply.send(Err(ControlError::Closed));
                    fail_all(&mut waiting, ControlError::Closed);
                    return Outcome::Lost(error.to_string());
                }
                waiting.insert(id, (pending.reply, tokio::time::Instant::now() + REQUEST_TIMEOUT));
            }
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        fail_all(&mut waiting, ControlError::Closed);
                        return Outcome::Lost("relay closed the connection".into());
                    }
                    Err(error) => {
                        fail_all(&mut waiting, ControlError::Closed);
                        return Outcome::Lost(error.to_string());
                    }
                };
                let response: ControlResponse = match serde_json::from_str(&line) {
                    Ok(response) => response,
                    Err(error) => {
                        tracing::warn!(%error, "invalid control response line; ignored");
                        continue;
                    }
                };
                if response.id == 0 && !response.ok {
                    // The relay could not read a request far enough to find its id.
                    tracing::error!(error = ?response.error, "relay rejected an unreadable control request");
                    continue;
                }
                if sync_pending && response.id == sync_id {
                    sync_pending = false;
                    if response.ok {
                        stats.syncs.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("relay accepted full sync");
                    } else {
                        tracing::error!(error = ?response.error, "relay rejected full sync");
                    }
                    continue;
                }
                if let Some((reply, _)) = waiting.remove(&response.id) {
                    let result = if response.ok {
                        Ok(response.data)
                    } else {
                        Err(ControlError::Rejected(response.error.unwrap_or_default()))
                    };
                    let _ = reply.send(result);
                }
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let expired: Vec<u64> = waiting
                    .iter()
                    .filter(|(_, (_, deadline))| *deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    if let Some((reply, _)) = waiting.remove(&id) {
                        let _ = reply.send(Err(ControlError::TimedOut));
                    }
                }
            }
        }
    }
}

/// Serializes one request, or returns an error text when it is longer than
/// the relay reads.
fn encode_request(id: u64, command: ControlCommand) -> Result<Vec<u8>, String> {
    let op = op_name(&command);
    let mut line = serde_json::to_vec(&ControlRequest { id, command })
        .map_err(|error| format!("control request {op} does not serialize: {error}"))?;
    if line.len() > MAX_CONTROL_LINE {
        return Err(format!(
            "control request {op} of {} bytes is longer than the relay's limit of {MAX_CONTROL_LINE} bytes",
            line.len()
        ));
    }
    line.push(b'\n');
    Ok(line)
}

fn fail_all(waiting: &mut Waiting, error: ControlError) {
    for (_, (reply, _)) in waiting.drain() {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use krt_shared::control::parse_request;
    use tokio::net::UnixListener;

    use super::*;

    fn empty_sync() -> SyncSource {
        Arc::new(|| Box::pin(async { Some(SyncState::default()) }))
    }

    #[test]
    fn request_over_line_limit_not_encoded() {
        let small = ControlCommand::Revoke {
            token_ids: vec!["t".into()],
        };
        let line = encode_request(1, small).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let huge = ControlCommand::Revoke {
            token_ids: vec!["x".repeat(MAX_CONTROL_LINE)],
        };
        let error = encode_request(2, huge).unwrap_err();
        assert!(error.contains("revoke"), "{error}");
        assert!(error.contains("longer than the relay's limit"), "{error}");
    }

    /// Accepts one connection, responds to every request with ok and echoes the
    /// op names it saw into `seen`.
    async fn respond_ok(listener: &UnixListener, seen: mpsc::UnboundedSender<String>) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read_half, mut write_half) = stream.into_split();
        let mut lines = BufReader::new(read_half).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let request = parse_request(&line).unwrap();
            let value: Value = serde_json::from_str(&line).unwrap();
            seen.send(value["op"].as_str().unwrap().to_owned()).unwrap();
            let response = ControlResponse::ok(request.id, serde_json::json!({"echo": request.id}));
            let mut out = serde_json::to_vec(&response).unwrap();
            out.push(b'\n');
            write_half.write_all(&out).await.unwrap();
        }
    }

    #[tokio::test]
    async fn client_syncs_then_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let client = ControlClient::start(path, empty_sync(), shutdown);
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(async move { respond_ok(&listener, seen_tx).await });

        assert_eq!(seen.recv().await.unwrap(), "sync");
        let data = client.request(ControlCommand::Stats).await.unwrap();
        assert!(data["echo"].as_u64().is_some());
        assert_eq!(seen.recv().await.unwrap(), "stats");
        assert_eq!(client.stats().syncs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn client_fails_fast_then_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (_stop, shutdown) = watch::channel(false);
        let client = ControlClient::start(path.clone(), empty_sync(), shutdown);

        let err = client.request(ControlCommand::Stats).await.unwrap_err();
        assert!(matches!(err, ControlError::NotConnected { .. }), "{err}");
        assert!(err.to_string().contains("control.sock"));

        let listener = UnixListener::bind(&path).unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(async move { respond_ok(&listener, seen_tx).await });
        let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap();
        assert_eq!(first.as_deref(), Some("sync"));
        let data = client.request(ControlCommand::Stats).await.unwrap();
        assert!(data["echo"].is_u64());
        assert_eq!(seen.recv().await.as_deref(), Some("stats"));
    }

    #[tokio::test]
    async fn client_resyncs_after_relay_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (_stop, shutdown) = watch::channel(false);
        let client = ControlClient::start(path.clone(), empty_sync(), shutdown);

        for round in 1..=2u64 {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).unwrap();
            let (seen_tx, mut seen) = mpsc::unbounded_channel();
            let server = tokio::spawn(async move { respond_ok(&listener, seen_tx).await });
            let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap();
            assert_eq!(first.as_deref(), Some("sync"), "round {round}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while client.stats().syncs.load(Ordering::Relaxed) < round {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "sync {round} not acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server.abort();
            let _ = server.await;
        }
        assert_eq!(client.stats().connects.load(Ordering::Relaxed), 2);
    }
}
