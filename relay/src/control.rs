//! The control socket: newline-delimited JSON commands from the bot.
//!
//! The socket lives in the data directory with mode 0660, so only the relay's
//! user and group can connect. Each line is one
//! [`ControlRequest`](krt_shared::control::ControlRequest), and the relay
//! replies with one [`ControlResponse`] line. A request that fails to parse changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use krt_shared::control::{
    ControlCommand, ControlResponse, FreqConfig, MAX_CONTROL_LINE, SyncState, parse_request,
};
use krt_shared::token::MAX_RANK;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::hub::Hub;

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("failed to listen on control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale one left by a crashed relay.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_error = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_error)?;
    Ok(listener)
}

/// Serves control connections until `shutdown` turns true.
pub async fn serve(listener: UnixListener, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tracing::info!("control client connected");
        let hub = Arc::clone(&hub);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match serve_client(stream, &hub, shutdown).await {
                Ok(()) => tracing::info!("control client disconnected"),
                Err(err) => tracing::warn!(error = %err, "control client failed"),
            }
        });
    }
}

async fn serve_client(
    stream: UnixStream,
    hub: &Hub,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_CONTROL_LINE + 1) as u64;
        let mut limited = (&mut reader).take(limit);
        let read = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            read = limited.read_until(b'\n', &mut line) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        // The limit leaves room for the newline, so a line that still has
        // none at the limit is longer than MAX_CONTROL_LINE.
        let response = if line.len() > MAX_CONTROL_LINE && line.last() != Some(&b'\n') {
            let skipped = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                skipped = skip_line(&mut reader) => skipped?,
            };
            tracing::warn!(
                bytes = line.len() as u64 + skipped,
                max = MAX_CONTROL_LINE,
                "control request too long, rejected"
            );
            ControlResponse::error(
                0,
                format!(
                    "control request longer than {MAX_CONTROL_LINE} bytes rejected: split it into smaller requests"
                ),
            )
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => handle_line(hub, text.trim()),
                Err(_) => ControlResponse::error(0, "control request is not valid UTF-8"),
            }
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize to JSON");
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// Reads and drops the rest of a line, up to and including its newline,
/// without keeping it. Returns the number of bytes dropped.
async fn skip_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(skipped);
        }
        let (used, done) = match buffer.iter().position(|&byte| byte == b'\n') {
            Some(end) => (end + 1, true),
            None => (buffer.len(), false),
        };
        reader.consume(used);
        skipped += used as u64;
        if done {
            return Ok(skipped);
        }
    }
}

/// Parses and applies one request line.
pub fn handle_line(hub: &Hub, line: &str) -> ControlResponse {
    let request = match parse_request(line) {
        Ok(request) => request,
        Err(response) => {
            tracing::warn!(error = ?response.error, "invalid control request");
            return response;
        }
    };
    let id = request.id;
    tracing::debug!(id, command = ?request.command, "control request");
    match request.command {
        ControlCommand::Revoke { token_ids } => {
            let closed = hub.revoke_tokens(token_ids);
            ControlResponse::ok(id, json!({ "closed_sessions": closed }))
        }
        ControlCommand::RevokeUser {
            user_id,
            before,
            reason,
        } => {
            let closed = hub.revoke_user(user_id, before, &reason);
            tracing::info!(user = %user_id, closed, "user revoked");
            ControlResponse::ok(id, json!({ "closed_sessions": closed }))
        }
        ControlCommand::Assign { changes } => {
            let count = changes.len();
            for change in changes {
                hub.set_grants(change.user_id, change.freqs);
            }
            ControlResponse::ok(id, json!({ "applied": count }))
        }
        ControlCommand::FreqUpsert { freq } => {
            if let Err(error) = check_freq(&freq) {
                return ControlResponse::error(id, error);
            }
            hub.configure(&freq);
            ControlResponse::ok(id, serde_json::Value::Null)
        }
        ControlCommand::FreqDelete { freq_id } => {
            let removed = hub.remove_frequency(freq_id);
            ControlResponse::ok(id, json!({ "removed_listeners": removed }))
        }
        ControlCommand::Mute {
            user_id,
            freq_id,
            muted,
        } => {
            hub.set_mute(user_id, freq_id, muted);
            ControlResponse::ok(id, serde_json::Value::Null)
        }
        ControlCommand::Status { user_id } => {
            let status = hub.status(user_id.as_ref());
            ControlResponse::ok(id, serde_json::to_value(status).expect("status serializes"))
        }
        ControlCommand::Stats => {
            let stats = hub.stats();
            ControlResponse::ok(id, serde_json::to_value(stats).expect("stats serialize"))
        }
        ControlCommand::Sync(state) => match apply_sync(hub, state) {
            Ok(()) => ControlResponse::ok(id, serde_json::Value::Null),
            Err(error) => ControlResponse::error(id, error),
        },
    }
}

/// Checks the settings of one frequency from the bot.
fn check_freq(freq: &FreqConfig) -> Result<(), String> {
    if !valid_name(&freq.name) {
        return Err(format!(
            "invalid name for frequency {}: use 1 to 100 characters",
            freq.id
        ));
    }
    if freq.min_rank > MAX_RANK {
        return Err(format!(
            "invalid min_rank {} for frequency {}: use 0 to {MAX_RANK}",
            freq.min_rank, freq.id
        ));
    }
    Ok(())
}

/// Replaces the bot-owned state, or changes nothing when any part is invalid.
fn apply_sync(hub: &Hub, state: SyncState) -> Result<(), String> {
    for freq in &state.freqs {
        check_freq(freq).map_err(|error| format!("{error}; nothing was changed"))?;
    }
    hub.replace_settings(&state.freqs);
    hub.replace_grants(
        state
            .assignments
            .into_iter()
            .map(|a| (a.user_id, a.freqs))
            .collect(),
    );
    hub.replace_mutes(
        state
            .mutes
            .into_iter()
            .map(|m| (m.user_id, m.freq_id))
            .collect(),
    );
    let users: Vec<_> = state
        .revoked_users
        .iter()
        .map(|r| (r.user_id, r.before))
        .collect();
    hub.auth
        .replace_revocations(state.revoked_tokens.clone(), users.clone());
    for (user, before) in users {
        hub.revoke_user(user, before, "revoked by a moderator");
    }
    hub.revoke_tokens(state.revoked_tokens);
    tracing::info!("control state synchronized");
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 100
}
