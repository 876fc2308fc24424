//! One client connection: authentication, then the message loop.
//!
//! Each connection has two tasks. The session task reads from the socket and
//! owns the session state (joined frequencies, grants, mutes, floors held).
//! The writer task ([`crate::writer`]) drains the session's bounded outbound
//! queue, writing every message that is already waiting in one system call.
//! Audio for a listener with an empty queue skips the queue: the fan-out
//! writes it to the socket directly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use krt_shared::frame::FrameHeader;
use krt_shared::protocol::{
    AssignAction, ClientMessage, ProtocolError, ServerMessage, TxDeniedReason,
};
use krt_shared::token::{Claims, TokenError};
use krt_shared::{FreqId, FreqSet};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use crate::hub::{Forward, Hub, wall_secs};
use crate::session_shared::{CloseReason, Outbound, Outlet, SessionCommand, SessionShared};
use crate::writer::{ReadSide, WriterSettings, write_loop};

/// The read side of an upgraded connection as a WebSocket stream; the
/// writer task writes to the socket's write half.
pub type Socket = WebSocketStream<ReadSide>;

/// Error messages a client may receive in a burst; further errors are
/// counted, not sent, until the allowance refills.
const ERROR_BURST: f64 = 16.0;
/// Error messages the allowance regains per second.
const ERROR_REFILL_PER_SEC: f64 = 2.0;
/// Time the writer gets to send the close frame, and the client to reply
/// with its own, before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs a connection until it closes.
pub async fn run(
    hub: Arc<Hub>,
    socket: Socket,
    write_half: Arc<OwnedWriteHalf>,
    peer: SocketAddr,
    client: IpAddr,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "session",
        %peer,
        %client,
        session = tracing::field::Empty,
        user = tracing::field::Empty
    );
    hub.counters.connections.fetch_add(1, Ordering::Relaxed);
    run_inner(Arc::clone(&hub), socket, write_half, peer, client, shutdown)
        .instrument(span)
        .await;
    hub.counters.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn run_inner(
    hub: Arc<Hub>,
    mut stream: Socket,
    write_half: Arc<OwnedWriteHalf>,
    peer: SocketAddr,
    client: IpAddr,
    shutdown: watch::Receiver<bool>,
) {
    let (queue, queue_rx) = mpsc::channel(hub.config.queue_capacity());
    let (close_tx, close_rx) = oneshot::channel();
    // A coalescing window delays every write, so it rules out direct writes.
    let coalesce_window = hub.config.coalesce_window;
    let direct = coalesce_window.is_zero().then(|| Arc::clone(&write_half));
    let outlet = Arc::new(Outlet::new(queue, direct));
    // The writer logs into the session's span without entering it on every
    // wake-up.
    let settings = WriterSettings {
        coalesce_window,
        max_queue_delay: hub.config.max_queue_delay,
        late_frames: Arc::clone(&hub.counters.frames_late),
    };
    let mut writer = hub.spawn_writer(write_loop(
        write_half,
        Arc::clone(&outlet),
        queue_rx,
        close_rx,
        settings,
        tracing::Span::current(),
    ));

    let mut connection = Connection {
        hub: Arc::clone(&hub),
        outlet,
        peer,
        client,
        shutdown,
        error_allowance: (ERROR_BURST, Instant::now()),
        errors_suppressed: 0,
        overflowed: std::cell::Cell::new(false),
    };
    let reason = match connection.authenticate(&mut stream).await {
        Ok(claims) => {
            let outlet = Arc::clone(&connection.outlet);
            let shared = hub.register_outlet(&claims, peer, outlet);
            let span = tracing::Span::current();
            span.record("session", shared.id);
            span.record("user", tracing::field::display(&shared.user));
            tracing::info!(name = %shared.name, rank = shared.rank, "session started");
            let mut session = Session::new(connection, shared, claims);
            let reason = session.run(&mut stream).await;
            session.finish(&reason);
            reason
        }
        Err(reason) => {
            tracing::info!(reason = reason.label(), detail = %reason.text(), "connection closed before authentication");
            reason
        }
    };

    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from(reason.text()),
    };
    let _ = close_tx.send(frame);
    // Until the client replies with its close frame, its messages are read
    // and discarded: a socket closed with unread data is reset by the
    // kernel, and the reset discards what the client has not read yet, the
    // close frame included.
    let client_gone = matches!(reason, CloseReason::ClientClosed);
    let closing = async {
        let drain = async {
            if !client_gone {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            }
        };
        let _ = tokio::join!(&mut writer, drain);
    };
    if tokio::time::timeout(CLOSE_GRACE, closing).await.is_err() {
        writer.abort();
    }
}

/// State of a connection before and after authentication.
struct Connection {
    hub: Arc<Hub>,
    outlet: Arc<Outlet>,
    peer: SocketAddr,
    client: IpAddr,
    shutdown: watch::Receiver<bool>,
    /// Token bucket of error messages: allowance and time of last refill.
    error_allowance: (f64, Instant),
    errors_suppressed: u64,
    /// Set when a reply found the outbound queue full. A dropped reply would
    /// leave the client with a wrong view, so the session then closes with
    /// 4005, as it does when a pushed control message finds no room.
    overflowed: std::cell::Cell<bool>,
}

impl Connection {
    fn send(&self, message: &ServerMessage) {
        self.push_control(Outbound::Text(Utf8Bytes::from(message.to_json())));
    }

    /// Sends `messages` in one slot of the outbound queue, so that a burst
    /// of them cannot fill it.
    fn send_all(&self, messages: &[ServerMessage]) {
        match messages {
            [] => {}
            [message] => self.send(message),
            _ => {
                let texts = messages
                    .iter()
                    .map(|message| Utf8Bytes::from(message.to_json()))
                    .collect();
                self.push_control(Outbound::Texts(texts));
            }
        }
    }

    fn push_control(&self, message: Outbound) {
        if self.outlet.push(message).is_err() {
            tracing::warn!("outbound queue full; closing the session as too slow");
            self.overflowed.set(true);
        }
    }

    /// Answers a WebSocket ping, which tungstenite leaves to the session
    /// because the writer task owns the socket's write half.
    fn pong(&self, payload: Bytes) {
        if self.outlet.push(Outbound::Pong(payload)).is_err() {
            tracing::warn!("outbound queue full; closing the session as too slow");
            self.overflowed.set(true);
        }
    }

    /// Sends an `error` message unless the client has used up its allowance
    /// of error messages, so a flood of bad input gets a few replies rather
    /// than one per message.
    fn send_error(&mut self, reason: String) {
        let now = Instant::now();
        let (allowance, last) = &mut self.error_allowance;
        let refill = now.duration_since(*last).as_secs_f64() * ERROR_REFILL_PER_SEC;
        *allowance = (*allowance + refill).min(ERROR_BURST);
        *last = now;
        if *allowance >= 1.0 {
            *allowance -= 1.0;
            tracing::debug!(%reason, suppressed = self.errors_suppressed, "client message rejected");
            self.send(&ServerMessage::Error { reason });
        } else {
            self.errors_suppressed += 1;
        }
    }

    /// Waits for a valid `auth` message within the auth timeout.
    async fn authenticate(&mut self, stream: &mut Socket) -> Result<Arc<Claims>, CloseReason> {
        let deadline = tokio::time::Instant::now() + self.hub.config.auth_timeout;
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout_at(deadline, stream.next()) => match message {
                    Ok(message) => message,
                    Err(_elapsed) => return Err(CloseReason::AuthTimeout),
                },
                _ = self.shutdown.changed() => return Err(CloseReason::Shutdown),
            };
            let text = match read_result(message)? {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    self.send_error(
                        "audio before authentication: send auth with your token first".into(),
                    );
                    continue;
                }
                Message::Close(_) => return Err(CloseReason::ClientClosed),
                Message::Ping(payload) => {
                    self.pong(payload);
                    continue;
                }
                _ => continue,
            };
            match ClientMessage::parse(&text) {
                Ok(ClientMessage::Auth { auth_token, .. }) => {
                    let token = auth_token.unwrap_or_default();
                    match self.hub.auth.authenticate(&token, wall_secs()) {
                        Ok(claims) => {
                            self.send(&ServerMessage::AuthOk {
                                session_token: krt_shared::token::new_token_id(),
                                display_name: claims.name.clone(),
                                user_id: claims.sub.to_string(),
                                expires_at: claims.exp,
                            });
                            return Ok(claims);
                        }
                        Err(err) => return Err(self.reject_auth(err)),
                    }
                }
                Ok(ClientMessage::Ping) => self.send(&ServerMessage::Pong),
                Ok(_) => {
                    self.send_error("not authenticated: send auth with your token first".into())
                }
                Err(err) => self.send_error(err.to_string()),
            }
            if self.overflowed.get() {
                return Err(CloseReason::TooSlow);
            }
        }
    }

    fn reject_auth(&self, err: TokenError) -> CloseReason {
        let blocked = self.hub.guard.record_failed_auth(self.client);
        tracing::warn!(peer = %self.peer, reason = err.code(), blocked, "authentication rejected");
        self.send(&ServerMessage::AuthError {
            reason: err.to_string(),
        });
        CloseReason::AuthFailed(format!("authentication failed: {}", err.code()))
    }
}

/// Turns a read result into a message or the reason to close.
fn read_result(message: Option<Result<Message, WsError>>) -> Result<Message, CloseReason> {
    match message {
        None => Err(CloseReason::ClientClosed),
        Some(Ok(message)) => Ok(message),
        Some(Err(WsError::Capacity(err))) => Err(CloseReason::TooBig(format!(
            "message too big ({err}): keep text under 4 KiB and audio frames under 1500 bytes"
        ))),
        Some(Err(WsError::Utf8(_))) => Err(CloseReason::InvalidPayload),
        Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
            Err(CloseReason::ClientClosed)
        }
        Some(Err(WsError::Io(err))) => {
            tracing::debug!(error = %err, "connection failed");
            Err(CloseReason::ClientClosed)
        }
        Some(Err(err)) => Err(CloseReason::Protocol(format!("protocol error: {err}"))),
    }
}

/// Per-frequency state of a joined frequency.
struct Joined {
    /// Listener-side mute: the session does not receive this frequency.
    muted: bool,
    /// Time of the last denied frame, to send `tx_denied` once per attempt.
    last_denied: Option<Instant>,
}

/// An authenticated session.
struct Session {
    conn: Connection,
    shared: Arc<SessionShared>,
    claims: Arc<Claims>,
    joined: HashMap<FreqId, Joined>,
    grants: FreqSet,
    tx_mutes: std::collections::HashSet<FreqId>,
    /// Frequencies whose floor this session holds, with its last frame time.
    holding: HashMap<FreqId, Instant>,
    frames_in: u64,
    last_seen: Instant,
}

impl Session {
    fn new(conn: Connection, shared: Arc<SessionShared>, claims: Arc<Claims>) -> Self {
        let grants = conn.hub.grants_of(&shared.user);
        let tx_mutes = conn.hub.mutes_of(&shared.user);
        Self {
            conn,
            shared,
            claims,
            joined: HashMap::new(),
            grants,
            tx_mutes,
            holding: HashMap::new(),
            frames_in: 0,
            last_seen: Instant::now(),
        }
    }

    fn hub(&self) -> &Hub {
        &self.conn.hub
    }

    fn may_use(&self, freq: FreqId) -> bool {
        self.claims.allows(freq) || self.grants.contains(freq)
    }

    async fn run(&mut self, stream: &mut Socket) -> CloseReason {
        let idle_timeout = self.hub().config.idle_timeout;
        let floor_timeout = self.hub().config.floor_timeout;
        let mut idle = pin!(sleep_until((self.last_seen + idle_timeout).into()));
        let mut floor: std::pin::Pin<&mut Sleep> = pin!(sleep_until(
            (Instant::now() + Duration::from_secs(3600)).into()
        ));
        let mut floor_armed = false;
        let shared = Arc::clone(&self.shared);
        let mut commands = pin!(shared.inbox().ready());

        loop {
            tokio::select! {
                biased;
                _ = commands.as_mut() => {
                    commands.set(shared.inbox().ready());
                    for command in shared.inbox().take_all() {
                        if let Some(reason) = self.apply_command(command) {
                            return reason;
                        }
                    }
                }
                _ = self.conn.shutdown.changed() => return CloseReason::Shutdown,
                message = stream.next() => {
                    let message = match read_result(message) {
                        Ok(message) => message,
                        Err(reason) => return reason,
                    };
                    self.last_seen = Instant::now();
                    match message {
                        Message::Binary(frame) => {
                            let holds_floor = self.on_audio(frame);
                            if holds_floor && !floor_armed {
                                floor.as_mut().reset((self.last_seen + floor_timeout).into());
                                floor_armed = true;
                            }
                        }
                        Message::Text(text) => self.on_text(&text),
                        Message::Close(_) => return CloseReason::ClientClosed,
                        Message::Ping(payload) => self.conn.pong(payload),
                        _ => {}
                    }
                    if self.conn.overflowed.get() {
                        return CloseReason::TooSlow;
                    }
                }
                _ = &mut floor, if floor_armed => {
                    floor_armed = self.expire_floors(floor.as_mut(), floor_timeout);
                }
                _ = &mut idle => {
                    let deadline = self.last_seen + idle_timeout;
                    if Instant::now() >= deadline {
                        return CloseReason::Idle;
                    }
                    idle.as_mut().reset(deadline.into());
                }
            }
        }
    }

    /// Releases floors silent for the timeout; re-arms the timer for the
    /// rest. Returns whether the timer is still needed.
    fn expire_floors(&mut self, timer: std::pin::Pin<&mut Sleep>, timeout: Duration) -> bool {
        let now = Instant::now();
        let expired: Vec<FreqId> = self
            .holding
            .iter()
            .filter(|(_, last)| now.duration_since(**last) >= timeout)
            .map(|(freq, _)| *freq)
            .collect();
        for freq in expired {
            self.holding.remove(&freq);
            self.conn.hub.expire(freq, now);
        }
        match self.holding.values().min() {
            Some(&oldest) => {
                timer.reset((oldest + timeout).into());
                true
            }
            None => false,
        }
    }

    /// Handles an audio frame. Returns true when this session now has a
    /// floor, which needs the silence timer.
    fn on_audio(&mut self, frame: Bytes) -> bool {
        self.frames_in += 1;
        let header = match FrameHeader::parse(&frame, self.hub().config.max_frame_bytes) {
            Ok(header) => header,
            Err(err) => {
                self.conn.send_error(err.to_string());
                return false;
            }
        };
        let freq = header.freq;
        if !self.joined.contains_key(&freq) {
            self.conn.send_error(format!(
                "audio for frequency {freq}, which this session has not joined: send join first"
            ));
            return false;
        }
        if self.tx_mutes.contains(&freq) {
            self.conn.hub.count_muted_frame(freq);
            self.deny(freq, TxDeniedReason::Muted);
            return false;
        }
        let now = Instant::now();
        match self.conn.hub.forward(freq, &self.shared, &frame, now) {
            Forward::Sent { floor, .. } => {
                if let Some(joined) = self.joined.get_mut(&freq) {
                    joined.last_denied = None;
                }
                if floor {
                    self.holding.insert(freq, now);
                }
                floor
            }
            Forward::Denied(reason) => {
                self.deny(freq, reason);
                false
            }
        }
    }

    /// Sends `tx_denied` on the first denied frame of an attempt; an attempt
    /// ends after a pause as long as the floor timeout.
    fn deny(&mut self, freq: FreqId, reason: TxDeniedReason) {
        self.hub()
            .counters
            .frames_denied
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let floor_timeout = self.hub().config.floor_timeout;
        let Some(joined) = self.joined.get_mut(&freq) else {
            return;
        };
        let new_attempt = joined
            .last_denied
            .is_none_or(|last| now.duration_since(last) >= floor_timeout);
        joined.last_denied = Some(now);
        if new_attempt {
            self.conn.send(&ServerMessage::TxDenied {
                freq_id: freq,
                reason,
            });
        }
    }

    fn on_text(&mut self, text: &str) {
        let message = match ClientMessage::parse(text) {
            Ok(message) => message,
            Err(err) => return self.reject(err),
        };
        match message {
            ClientMessage::Auth { .. } => self
                .conn
                .send_error("already authenticated: open a new connection to log in again".into()),
            ClientMessage::Join { freq } => self.join(freq),
            ClientMessage::Leave { freq } => self.leave(freq),
            ClientMessage::Mute { freq } => self.mute(freq, true),
            ClientMessage::Unmute { freq } => self.mute(freq, false),
            ClientMessage::TxStop { freq } => {
                if self.holding.remove(&freq).is_some() {
                    self.conn.hub.release(freq, self.shared.id);
                }
            }
            ClientMessage::Ping => self.conn.send(&ServerMessage::Pong),
        }
    }

    /// Replies to an invalid message with the error type of its request.
    fn reject(&mut self, err: ProtocolError) {
        let reason = err.to_string();
        match err.kind() {
            Some("join") => self.conn.send(&ServerMessage::JoinError {
                freq_id: err.sent_freq(),
                reason,
            }),
            Some("leave") => self.conn.send(&ServerMessage::LeaveError {
                freq_id: err.sent_freq(),
                reason,
            }),
            Some("mute" | "unmute") => self.conn.send(&ServerMessage::MuteError { reason }),
            _ => self.conn.send_error(reason),
        }
    }

    fn join(&mut self, freq: FreqId) {
        if !self.may_use(freq) {
            tracing::debug!(%freq, "join rejected: not allowed");
            return self.conn.send(&ServerMessage::JoinError {
                freq_id: Some(i64::from(freq.get())),
                reason: format!(
                    "frequency {freq} is not allowed for your token: ask a moderator for access"
                ),
            });
        }
        match self.conn.hub.join(&self.shared, freq) {
            Ok((listener_count, key)) => {
                self.joined.entry(freq).or_insert(Joined {
                    muted: false,
                    last_denied: None,
                });
                self.mirror_joined();
                self.conn.send(&ServerMessage::JoinOk {
                    freq_id: freq,
                    listener_count,
                    freq_key: key.to_string(),
                });
            }
            Err(rejection) => self.conn.send(&ServerMessage::JoinError {
                freq_id: Some(i64::from(freq.get())),
                reason: rejection.to_string(),
            }),
        }
    }

    fn leave(&mut self, freq: FreqId) {
        if self.joined.remove(&freq).is_none() {
            return self.conn.send(&ServerMessage::LeaveError {
                freq_id: Some(i64::from(freq.get())),
                reason: format!("frequency {freq} is not joined"),
            });
        }
        self.holding.remove(&freq);
        self.conn.hub.leave(self.shared.id, freq);
        self.mirror_joined();
        self.conn.send(&ServerMessage::LeaveOk { freq_id: freq });
    }

    fn mute(&mut self, freq: FreqId, muted: bool) {
        let Some(joined) = self.joined.get_mut(&freq) else {
            return self.conn.send(&ServerMessage::MuteError {
                reason: format!("frequency {freq} is not joined: join it before muting"),
            });
        };
        joined.muted = muted;
        self.conn
            .hub
            .set_listener_muted(self.shared.id, freq, muted);
        self.conn.send(&ServerMessage::MuteOk {
            freq_id: freq,
            muted,
        });
    }

    fn mirror_joined(&self) {
        let mut joined: Vec<FreqId> = self.joined.keys().copied().collect();
        joined.sort();
        *self.shared.joined.lock() = joined;
    }

    /// Applies a command; returns the close reason when the session must end.
    fn apply_command(&mut self, command: SessionCommand) -> Option<CloseReason> {
        match command {
            SessionCommand::Close(reason) => return Some(reason),
            SessionCommand::Grants(grants) => self.apply_grants(grants),
            SessionCommand::TxMute { freq, muted } => {
                if muted {
                    self.tx_mutes.insert(freq);
                    if self.holding.remove(&freq).is_some() {
                        self.conn.hub.release(freq, self.shared.id);
                    }
                } else {
                    self.tx_mutes.remove(&freq);
                }
            }
            SessionCommand::ForceLeave { freq, reason } => {
                if self.joined.remove(&freq).is_some() {
                    self.holding.remove(&freq);
                    self.conn.hub.leave(self.shared.id, freq);
                    self.mirror_joined();
                    self.conn.send(&ServerMessage::LeaveOk { freq_id: freq });
                    self.conn.send(&ServerMessage::Error { reason });
                }
            }
        }
        None
    }

    /// Replaces the voice-channel grants, notifies the client of each change
    /// and leaves frequencies the session may no longer use.
    ///
    /// A grant can cover thousands of frequencies, so the notifications
    /// leave in one slot of the outbound queue.
    fn apply_grants(&mut self, grants: FreqSet) {
        let old = std::mem::replace(&mut self.grants, grants);
        let mut messages = Vec::new();
        for freq in old.iter().filter(|f| !self.grants.contains(*f)) {
            messages.push(ServerMessage::FreqAssign {
                freq_id: freq,
                action: AssignAction::Revoke,
            });
            if !self.may_use(freq) && self.joined.remove(&freq).is_some() {
                self.holding.remove(&freq);
                self.conn.hub.leave(self.shared.id, freq);
                messages.push(ServerMessage::LeaveOk { freq_id: freq });
            }
        }
        for freq in self.grants.iter().filter(|f| !old.contains(*f)) {
            messages.push(ServerMessage::FreqAssign {
                freq_id: freq,
                action: AssignAction::Grant,
            });
        }
        self.conn.send_all(&messages);
        self.mirror_joined();
    }

    /// Leaves every frequency, unregisters and logs the session's end.
    fn finish(&mut self, reason: &CloseReason) {
        for freq in self.joined.keys() {
            self.conn.hub.leave(self.shared.id, *freq);
        }
        self.joined.clear();
        self.conn.hub.unregister(&self.shared);
        let (frames_out, drops) = self.shared.audio_counts();
        tracing::info!(
            reason = reason.label(),
            detail = %reason.text(),
            frames_in = self.frames_in,
            frames_out,
            drops,
            late = self.conn.outlet.late_frames(),
            secs = self.shared.connected.elapsed().as_secs(),
            "session ended"
        );
    }
}
