//! The part of a session that other tasks may touch: its outbound queue, its
//! command channel and its counters. The session task owns everything else.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use krt_shared::protocol::close_code;
use krt_shared::{FreqId, FreqSet, UserId};
use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::sync::{Notify, futures::Notified};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::CONTROL_HEADROOM;

/// Session number, unique for the life of the process.
pub type SessionId = u64;

/// A message queued for a session's writer task.
#[derive(Debug)]
pub enum Outbound {
    /// An audio frame as a complete WebSocket binary frame (see
    /// [`binary_frame`]), shared with every other listener of the frequency.
    Audio {
        /// The framed bytes.
        frame: Bytes,
        /// When the relay received the frame from its talker.
        received: Stamp,
    },
    /// The unwritten end of an audio frame whose start a direct write sent.
    /// It must leave before any other message.
    Rest(Bytes),
    /// A JSON control message.
    Text(Utf8Bytes),
    /// Several JSON control messages, one WebSocket frame each, in one queue
    /// slot, for a burst such as a grant of many frequencies.
    Texts(Vec<Utf8Bytes>),
    /// The reply to a WebSocket ping, with the ping's payload.
    Pong(Bytes),
}

/// A point in time as microseconds since the process first asked for one,
/// wrapping after about 71 minutes.
///
/// It is 4 bytes where an `Instant` is 16, which keeps every queue slot and
/// so every idle session smaller. Ages are computed with wrapping
/// arithmetic, so they are right for anything that waits less than the
/// wrap period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    /// Returns the stamp of `at`. Instants before the process's first stamp
    /// all map to that first stamp.
    pub fn of(at: Instant) -> Self {
        static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
        Self(at.saturating_duration_since(*EPOCH).as_micros() as u32)
    }

    /// Returns the stamp of the current time.
    pub fn now() -> Self {
        Self::of(Instant::now())
    }

    /// Time from this stamp to `later`.
    pub fn elapsed_at(self, later: Stamp) -> Duration {
        Duration::from_micros(u64::from(later.0.wrapping_sub(self.0)))
    }
}

/// Opcodes of RFC 6455 frames the relay sends.
pub mod opcode {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// Appends the header of an unmasked, final server frame (RFC 6455 section
/// 5.2) with `opcode` and a payload of `len` bytes.
pub fn put_frame_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Wraps an audio frame in a WebSocket binary frame, once per forwarded
/// frame, so that every listener gets the same bytes without framing them
/// again.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_frame_header(&mut out, opcode::BINARY, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// The way out to a client: the writer task's queue and, while that queue is
/// empty, direct writes of audio to the socket.
///
/// A direct write saves the wake-up of the writer task and leaves the frame
/// in one system call made by the talker's task. Direct writes happen only
/// while `busy` is false. Every push to the queue sets `busy` under the same
/// lock, and the writer task clears it only once the queue is empty and all
/// its bytes are written, so bytes of two frames never interleave and
/// queued messages keep their order.
///
/// The fan-out visits one outlet per listener for every frame. What it
/// reads (the lock with the counters, the descriptor and the queue's
/// handle) fits in one cache line, because the value is aligned to one. In
/// a profile of 600 listeners, the loads on the way from a session to its
/// descriptor had taken most of the relay's own samples.
#[repr(align(64))]
pub struct Outlet {
    state: Mutex<OutletState>,
    /// The descriptor for direct writes, kept open by `socket`. With `None`
    /// everything goes through the queue, as with a coalescing window.
    fd: Option<RawFd>,
    queue: mpsc::Sender<Outbound>,
    /// Owns the descriptor in `fd`.
    socket: Option<Arc<OwnedWriteHalf>>,
    /// Audio frames the writer task dropped because they waited too long.
    late: AtomicU64,
}

/// The part of an outlet that its lock guards.
#[derive(Default)]
struct OutletState {
    /// True while the queue has messages or the writer task has bytes
    /// that are not yet written.
    busy: bool,
    /// Audio frames written or queued.
    sent: u64,
    /// Audio frames dropped because the audio part of the queue was full.
    dropped: u64,
}

/// Writes as much of `bytes` as the socket's send buffer takes, without
/// waiting.
///
/// This is one `send(2)` on the socket's descriptor, without Tokio's
/// readiness bookkeeping. A direct write does not need it, because direct
/// writes happen only while the writer task waits on its queue rather than
/// on the socket. A full buffer sends the frame to that task, whose own
/// write then finds the socket not ready. In a profile of 600 listeners,
/// Tokio's write path around the same system call took about 7 % of the
/// samples.
fn send_now(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: the caller's outlet keeps the descriptor open, and the
    // pointer and length describe the live slice `bytes`.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Result of offering an audio frame to an outlet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioDelivery {
    /// Written to the socket at once.
    Written,
    /// Queued for the writer task.
    Queued,
    /// Dropped because the audio part of the queue is full.
    Dropped,
}

impl Outlet {
    /// Creates an outlet. With `socket`, audio goes straight to it whenever
    /// nothing is queued; without, everything is queued.
    pub fn new(queue: mpsc::Sender<Outbound>, socket: Option<Arc<OwnedWriteHalf>>) -> Self {
        Self {
            state: Mutex::new(OutletState::default()),
            fd: socket
                .as_deref()
                .map(|socket| AsRef::<tokio::net::TcpStream>::as_ref(socket).as_raw_fd()),
            queue,
            socket,
            late: AtomicU64::new(0),
        }
    }

    /// Queues a message without waiting. Returns it when the queue is full.
    pub fn push(&self, message: Outbound) -> Result<(), mpsc::error::TrySendError<Outbound>> {
        let mut state = self.state.lock();
        self.queue.try_send(message)?;
        state.busy = true;
        Ok(())
    }

    /// Writes an audio frame (a complete WebSocket frame) received at
    /// `received` to the socket when `direct` is true and nothing is
    /// waiting, or else queues it unless the audio part of the queue is
    /// full. Counts the frame as sent or dropped.
    pub fn send_audio(&self, frame: &Bytes, received: Stamp, direct: bool) -> AudioDelivery {
        let mut state = self.state.lock();
        let delivery = self.deliver(&mut state, frame, received, direct);
        match delivery {
            AudioDelivery::Written | AudioDelivery::Queued => state.sent += 1,
            AudioDelivery::Dropped => state.dropped += 1,
        }
        delivery
    }

    fn deliver(
        &self,
        state: &mut OutletState,
        frame: &Bytes,
        received: Stamp,
        direct: bool,
    ) -> AudioDelivery {
        if direct
            && !state.busy
            && let Some(fd) = self.fd
        {
            debug_assert!(
                self.socket.is_some(),
                "the socket keeps the descriptor open"
            );
            match send_now(fd, frame) {
                Ok(written) if written == frame.len() => return AudioDelivery::Written,
                Ok(written) => {
                    // The queue is empty while not busy, so the rest fits.
                    if self
                        .queue
                        .try_send(Outbound::Rest(frame.slice(written..)))
                        .is_ok()
                    {
                        state.busy = true;
                    }
                    return AudioDelivery::Written;
                }
                // A full socket buffer, or a failed connection that the
                // writer task reports when it writes next: queue the frame.
                Err(_) => {}
            }
        }
        if self.queue.capacity() <= CONTROL_HEADROOM {
            return AudioDelivery::Dropped;
        }
        let message = Outbound::Audio {
            frame: frame.clone(),
            received,
        };
        match self.queue.try_send(message) {
            Ok(()) => {
                state.busy = true;
                AudioDelivery::Queued
            }
            Err(_) => AudioDelivery::Dropped,
        }
    }

    /// Audio frames written or queued so far, and audio frames dropped
    /// because the queue was full.
    pub fn audio_counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.sent, state.dropped)
    }

    /// Called by the writer task after writing everything it took from the
    /// queue. Returns true, and allows direct writes again, when the queue
    /// is empty.
    pub fn finish_writing(&self) -> bool {
        let mut state = self.state.lock();
        if self.queue.capacity() == self.queue.max_capacity() {
            state.busy = false;
            true
        } else {
            false
        }
    }

    /// Ends direct writes for good, before the writer task writes its close
    /// frame.
    pub fn stop_direct_writes(&self) {
        self.state.lock().busy = true;
    }

    /// Messages waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Adds `frames` to the count of audio frames dropped as late.
    pub fn count_late(&self, frames: u64) {
        self.late.fetch_add(frames, Ordering::Relaxed);
    }

    /// Audio frames dropped as late so far.
    pub fn late_frames(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }
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
    outlet: Arc<Outlet>,
    inbox: Inbox,
}

/// Commands waiting for a session task.
///
/// Commands are rare, so a locked deque that allocates only while it holds
/// some costs an idle session less than a Tokio channel, which allocates a
/// block of 32 slots when it is created.
pub struct Inbox {
    pending: Mutex<VecDeque<SessionCommand>>,
    ready: Notify,
}

impl Inbox {
    /// Commands kept waiting before further ones are dropped and logged.
    const CAPACITY: usize = 64;

    fn new() -> Self {
        Self {
            pending: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    /// Adds a command and wakes the session task. Returns the command when
    /// the inbox is full.
    ///
    /// New grants replace grants still waiting, since each carries the whole
    /// set and the latest wins, so a batch of grant changes never fills the
    /// inbox.
    fn push(&self, command: SessionCommand) -> Result<(), SessionCommand> {
        let mut pending = self.pending.lock();
        if let SessionCommand::Grants(grants) = &command
            && let Some(SessionCommand::Grants(waiting)) = pending
                .iter_mut()
                .find(|waiting| matches!(waiting, SessionCommand::Grants(_)))
        {
            *waiting = grants.clone();
            return Ok(());
        }
        if pending.len() >= Self::CAPACITY {
            return Err(command);
        }
        pending.push_back(command);
        drop(pending);
        self.ready.notify_one();
        Ok(())
    }

    /// Completes once a command may be waiting. A wake-up that arrives while
    /// no task waits is kept for the next call, so none is lost.
    pub fn ready(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// Takes every waiting command, oldest first, and frees the inbox's
    /// memory.
    pub fn take_all(&self) -> VecDeque<SessionCommand> {
        std::mem::take(&mut *self.pending.lock())
    }
}

impl SessionShared {
    /// Creates the handle.
    pub fn new(
        id: SessionId,
        claims: &krt_shared::token::Claims,
        peer: SocketAddr,
        outlet: Arc<Outlet>,
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
            outlet,
            inbox: Inbox::new(),
        }
    }

    /// Returns the commands waiting for the session task.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Returns the session's outlet, which the fan-out keeps next to each
    /// listener.
    pub fn outlet(&self) -> &Arc<Outlet> {
        &self.outlet
    }

    /// Audio frames written or queued for this listener so far, and audio
    /// frames dropped because its queue was full.
    pub fn audio_counts(&self) -> (u64, u64) {
        self.outlet.audio_counts()
    }

    /// Messages waiting in the outbound queue.
    pub fn queue_len(&self) -> usize {
        self.outlet.queue_len()
    }

    /// Queues a control message. A listener whose queue is full even for
    /// control messages is closed as too slow, since dropping a control
    /// message would leave the client with a wrong view.
    pub fn send_control(&self, text: Utf8Bytes) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outlet.push(Outbound::Text(text)) {
            tracing::warn!(session = self.id, user = %self.user, "control message queue full; closing slow session");
            self.command(SessionCommand::Close(CloseReason::TooSlow));
        }
    }

    /// Sends a command to the session task without waiting.
    pub fn command(&self, command: SessionCommand) {
        if let Err(command) = self.inbox.push(command) {
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
    fn frame_header_lengths() {
        let short = binary_frame(&[7; 88]);
        assert_eq!(short[..2], [0x82, 88]);
        assert_eq!(short.len(), 90);
        let medium = binary_frame(&[7; 1500]);
        assert_eq!(medium[..4], [0x82, 126, 0x05, 0xdc]);
        assert_eq!(medium.len(), 1504);
        let mut long = Vec::new();
        put_frame_header(&mut long, opcode::TEXT, 70_000);
        assert_eq!(long, [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn queued_outlet_counts_and_drops() {
        let (queue, mut rx) = mpsc::channel(CONTROL_HEADROOM + 2);
        let outlet = Outlet::new(queue, None);
        let frame = binary_frame(b"audio");
        assert_eq!(
            outlet.send_audio(&frame, Stamp::now(), true),
            AudioDelivery::Queued
        );
        assert_eq!(
            outlet.send_audio(&frame, Stamp::now(), true),
            AudioDelivery::Queued
        );
        assert_eq!(
            outlet.send_audio(&frame, Stamp::now(), true),
            AudioDelivery::Dropped
        );
        assert!(outlet.push(Outbound::Text("{}".into())).is_ok());
        assert_eq!(outlet.queue_len(), 3);
        assert!(!outlet.finish_writing());
        while rx.try_recv().is_ok() {}
        assert!(outlet.finish_writing());
    }

    #[tokio::test]
    async fn inbox_wakes_keeps_order_and_bounds() {
        let inbox = Inbox::new();
        // The wake-up of a push made while no task waits is kept.
        inbox
            .push(SessionCommand::Close(CloseReason::Idle))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), inbox.ready())
            .await
            .expect("a waiting command wakes the session");
        inbox
            .push(SessionCommand::Close(CloseReason::Replaced))
            .unwrap();
        let taken: Vec<_> = inbox.take_all().into_iter().collect();
        assert!(matches!(
            taken[..],
            [
                SessionCommand::Close(CloseReason::Idle),
                SessionCommand::Close(CloseReason::Replaced)
            ]
        ));
        assert!(inbox.take_all().is_empty());

        for _ in 0..Inbox::CAPACITY {
            inbox
                .push(SessionCommand::Close(CloseReason::Idle))
                .unwrap();
        }
        assert!(
            inbox
                .push(SessionCommand::Close(CloseReason::Idle))
                .is_err()
        );
    }

    #[test]
    fn inbox_keeps_only_latest_grants() {
        let inbox = Inbox::new();
        let set = |text: &str| text.parse::<FreqSet>().unwrap();
        inbox
            .push(SessionCommand::Close(CloseReason::Idle))
            .unwrap();
        for k in 0..Inbox::CAPACITY * 2 {
            let grants = SessionCommand::Grants(set(&(2000 + k).to_string()));
            inbox.push(grants).unwrap();
        }
        let commands: Vec<_> = inbox.take_all().into_iter().collect();
        assert_eq!(commands.len(), 2);
        assert!(matches!(
            commands[0],
            SessionCommand::Close(CloseReason::Idle)
        ));
        let SessionCommand::Grants(last) = &commands[1] else {
            panic!("grants expected, got {:?}", commands[1]);
        };
        assert_eq!(*last, set("2127"));
    }

    #[test]
    fn stamp_age_survives_wrap() {
        let before = Stamp(u32::MAX - 5);
        assert_eq!(before.elapsed_at(Stamp(4)), Duration::from_micros(10));
        let now = Stamp::now();
        assert_eq!(now.elapsed_at(now), Duration::ZERO);
    }

    #[test]
    fn queue_slot_stays_small() {
        // A Tokio channel allocates its first block of 32 slots when it is
        // created, so every idle session pays for 32 of these.
        assert!(std::mem::size_of::<Outbound>() <= 40);
    }

    #[test]
    fn outlet_fills_one_cache_line() {
        // The fan-out touches one outlet per listener and frame.
        assert_eq!(std::mem::align_of::<Outlet>(), 64);
        assert_eq!(std::mem::size_of::<Outlet>(), 64);
    }

    #[test]
    fn outlet_counts_sent_and_dropped_audio() {
        let (queue, _rx) = mpsc::channel(CONTROL_HEADROOM + 1);
        let outlet = Outlet::new(queue, None);
        let frame = binary_frame(b"audio");
        for _ in 0..3 {
            outlet.send_audio(&frame, Stamp::now(), false);
        }
        assert_eq!(outlet.audio_counts(), (1, 2));
    }

    #[test]
    fn close_text_fits_rfc_limit() {
        let reason = CloseReason::Revoked("é".repeat(200));
        assert!(reason.text().len() <= 123);
        assert_eq!(reason.code(), close_code::REVOKED);
    }
}
