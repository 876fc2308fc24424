//! The part of a session that other tasks may touch: its outbound queue, its
//! command channel and its counters. The session task owns everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use krt_shared::protocol::close_code;
use krt_shared::{FreqId, FreqSet, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::CONTROL_HEADROOM;

/// Session number, unique for the life of the process.
pub type SessionId = u64;

/// A message queued for a session's writer task.
#[derive(Debug)]
pub enum Outbound {
    /// An audio frame, shared with every other listener of the frequency.
    Audio(Bytes),
    /// A JSON control message.
    Text(Utf8Bytes),
}

/// Reason a session ends; each maps to a WebSocket close code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame or the connection ended.
    ClientClosed,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The token was rejected.
    AuthFailed(String),
    /// No `auth` arrived in time.
    AuthTimeout,
    /// A newer session of the same user took this one's place.
    Replaced,
    /// A moderator kicked or banned the user, or the token was revoked.
    Revoked(String),
    /// The client did not read its control messages.
    TooSlow,
    /// The relay is shutting down.
    Shutdown,
    /// A message exceeded the size limit.
    TooBig(String),
    /// Invalid UTF-8 in a text message.
    InvalidPayload,
    /// The WebSocket protocol was violated or the transport failed.
    Protocol(String),
}

impl CloseReason {
    /// Returns the close code sent to the client.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::ClientClosed => close_code::NORMAL,
            CloseReason::Idle => close_code::IDLE_TIMEOUT,
            CloseReason::AuthFailed(_) => close_code::AUTH_FAILED,
            CloseReason::AuthTimeout => close_code::AUTH_TIMEOUT,
            CloseReason::Replaced => close_code::REPLACED,
            CloseReason::Revoked(_) => close_code::REVOKED,
            CloseReason::TooSlow => close_code::TOO_SLOW,
            CloseReason::Shutdown => close_code::GOING_AWAY,
            CloseReason::TooBig(_) => close_code::MESSAGE_TOO_BIG,
            CloseReason::InvalidPayload => close_code::INVALID_PAYLOAD,
            CloseReason::Protocol(_) => close_code::PROTOCOL_ERROR,
        }
    }

    /// Returns the close reason text, at most 123 bytes as RFC 6455 requires.
    pub fn text(&self) -> String {
        let text = match self {
            CloseReason::ClientClosed => "closed".to_owned(),
            CloseReason::Idle => "no message for the idle timeout: send ping regularly".into(),
            CloseReason::AuthFailed(reason) => reason.clone(),
            CloseReason::AuthTimeout => "authentication timed out: send auth first".into(),
            CloseReason::Replaced => {
                "replaced by a newer session of the same user: too many sessions".into()
            }
            CloseReason::Revoked(reason) => format!("access revoked: {reason}"),
            CloseReason::TooSlow => "client too slow to receive control messages".into(),
            CloseReason::Shutdown => "relay shutting down: reconnect shortly".into(),
            CloseReason::TooBig(detail) => detail.clone(),
            CloseReason::InvalidPayload => "text message is not valid UTF-8".into(),
            CloseReason::Protocol(detail) => detail.clone(),
        };
        truncate_utf8(text, 123)
    }

    /// Short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Idle => "idle_timeout",
            CloseReason::AuthFailed(_) => "auth_failed",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::Replaced => "replaced",
            CloseReason::Revoked(_) => "revoked",
            CloseReason::TooSlow => "too_slow",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooBig(_) => "message_too_big",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::Protocol(_) => "protocol_error",
        }
    }
}

fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A change that another task sends to a session task to apply.
#[derive(Clone, Debug)]
pub enum SessionCommand {
    /// End the session.
    Close(CloseReason),
    /// Replace the frequencies granted through voice channels.
    Grants(FreqSet),
    /// Mute or unmute this user's transmissions on a frequency.
    TxMute {
        /// Frequency.
        freq: FreqId,
        /// True to mute.
        muted: bool,
    },
    /// Leave a frequency the session may no longer use.
    ForceLeave {
        /// Frequency.
        freq: FreqId,
        /// Why, sent to the client.
        reason: String,
    },
}

/// Shared handle of an authenticated session.
pub struct SessionShared {
    /// Session number.
    pub id: SessionId,
    /// Pseudonymous user id.
    pub user: UserId,
    /// The user id as sent in `rx` messages.
    pub user_text: Arc<str>,
    /// Display name.
    pub name: Arc<str>,
    /// Rank from the token.
    pub rank: u8,
    /// Token id, for revocation.
    pub token_id: String,
    /// Token issue time, Unix seconds.
    pub token_issued: u64,
    /// Peer address.
    pub peer: SocketAddr,
    /// When the session authenticated.
    pub connected: Instant,
    /// Frequencies joined, mirrored for status requests.
    pub joined: parking_lot::Mutex<Vec<FreqId>>,
    /// Audio frames queued for this listener.
    pub frames_out: AtomicU64,
    /// Audio frames dropped because this listener's queue was full.
    pub drops: AtomicU64,
    queue: mpsc::Sender<Outbound>,
    commands: mpsc::Sender<SessionCommand>,
}

impl SessionShared {
    /// Creates the handle.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SessionId,
        claims: &krt_shared::token::Claims,
        peer: SocketAddr,
        queue: mpsc::Sender<Outbound>,
        commands: mpsc::Sender<SessionCommand>,
    ) -> Self {
        Self {
            id,
            user: claims.sub,
            user_text: claims.sub.to_string().into(),
            name: claims.name.as_str().into(),
            rank: claims.rank,
            token_id: claims.jti.clone(),
            token_issued: claims.iat,
            peer,
            connected: Instant::now(),
            joined: parking_lot::Mutex::new(Vec::new()),
            frames_out: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            queue,
            commands,
        }
    }

    /// Queues an audio frame without waiting. Returns false, and counts a
    /// drop, when the audio part of the queue is full.
    pub fn send_audio(&self, frame: &Bytes) -> bool {
        if self.queue.capacity() <= CONTROL_HEADROOM {
            self.drops.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.queue.try_send(Outbound::Audio(frame.clone())) {
            Ok(()) => {
                self.frames_out.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Messages waiting in the outbound queue.
    pub fn queue_len(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues a control message. A listener whose queue is full even for
    /// control messages is closed as too slow, since dropping a control
    /// message would leave the client with a wrong view.
    pub fn send_control(&self, text: Utf8Bytes) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(Outbound::Text(text)) {
            tracing::warn!(session = self.id, user = %self.user, "control message queue full; closing slow session");
            self.command(SessionCommand::Close(CloseReason::TooSlow));
        }
    }

    /// Sends a command to the session task without waiting.
    pub fn command(&self, command: SessionCommand) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            tracing::warn!(
                session = self.id,
                ?command,
                "session command queue full; command dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_text_fits_rfc_limit() {
        let reason = CloseReason::Revoked("é".repeat(200));
        assert!(reason.text().len() <= 123);
        assert_eq!(reason.code(), close_code::REVOKED);
    }
}
