//! The registry of frequencies, sessions and users.
//!
//! Every frequency has its own slot in a table indexed by frequency number,
//! each with its own mutex, so talkers on different frequencies do not
//! contend for a lock. Sessions and users live in sharded maps. Every lookup is
//! O(1); nothing here scans all sessions except shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use dashmap::{DashMap, DashSet};
use krt_shared::control::{FreqConfig, SessionStatus, StatsReply, StatusReply};
use krt_shared::floor::{Floor, FrameDecision, Transmission};
use krt_shared::protocol::{RxAction, ServerMessage, TxDeniedReason};
use krt_shared::token::Claims;
use krt_shared::{FreqId, FreqSet, UserId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Authenticator;
use crate::config::RelayConfig;
use crate::guard::PeerGuard;
use crate::session_shared::{
    AudioDelivery, CloseReason, Outbound, Outlet, SessionCommand, SessionId, SessionShared, Stamp,
    binary_frame,
};
use crate::txlog::{TxLog, TxRecord};

/// Settings of a frequency; frequencies without a database row use the
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreqSettings {
    /// Display name, when configured.
    pub name: Option<String>,
    /// Lowest rank that may join.
    pub min_rank: u8,
    /// One talker at a time when true.
    pub half_duplex: bool,
}

impl Default for FreqSettings {
    fn default() -> Self {
        Self {
            name: None,
            min_rank: 0,
            half_duplex: true,
        }
    }
}

/// A frequency's listener. The fan-out reads `id`, `muted` and the outlet
/// for every frame, so they sit in the list itself rather than behind the
/// session's pointer.
struct Listener {
    id: SessionId,
    muted: bool,
    outlet: Arc<Outlet>,
    session: Arc<SessionShared>,
}

struct Talker {
    session: Arc<SessionShared>,
    started_ms: i64,
    dropped: u64,
}

struct FreqState {
    settings: FreqSettings,
    listeners: Vec<Listener>,
    index: HashMap<SessionId, usize>,
    key: Option<Arc<str>>,
    floor: Floor,
    talker: Option<Talker>,
    reported_count: usize,
    dirty: bool,
    frames_in: u64,
    frames_out: u64,
    frames_dropped: u64,
}

/// Result of offering an audio frame to a frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Forwarded.
    Sent {
        /// The sender took the floor with this frame.
        started: bool,
        /// The frequency is half-duplex, so the sender now has its floor.
        floor: bool,
    },
    /// Dropped.
    Denied(TxDeniedReason),
}

/// Reason a join is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRejection {
    /// The user's rank is below the frequency's minimum.
    #[error("rank {rank} is below the minimum rank {min_rank} of frequency {freq}")]
    RankTooLow {
        /// Frequency.
        freq: FreqId,
        /// The user's rank.
        rank: u8,
        /// The required rank.
        min_rank: u8,
    },
}

/// Relay-wide counters.
pub struct Counters {
    /// When the relay started.
    pub started: Instant,
    /// Frequencies with at least one listener.
    pub active_freqs: AtomicUsize,
    /// Connections past the WebSocket handshake, authenticated or not.
    pub connections: AtomicUsize,
    /// Audio frames that waited longer than `max_queue_delay` in a
    /// listener's queue and were dropped.
    pub frames_late: Arc<AtomicU64>,
    /// Audio frames refused because the sender lacked the floor or was
    /// muted.
    pub frames_denied: AtomicU64,
    last_rate_sample: Mutex<(Instant, u64)>,
}

/// The shared state of a running relay.
pub struct Hub {
    /// Settings in force.
    pub config: Arc<RelayConfig>,
    /// Token checks and revocations.
    pub auth: Authenticator,
    /// Transmission log queue.
    pub txlog: TxLog,
    /// Relay-wide counters.
    pub counters: Counters,
    /// Per-address connection and login limits.
    pub guard: Arc<PeerGuard>,
    freqs: Box<[Mutex<FreqState>]>,
    sessions: DashMap<SessionId, Arc<SessionShared>>,
    user_sessions: DashMap<UserId, VecDeque<SessionId>>,
    token_sessions: DashMap<String, Vec<SessionId>>,
    grants: DashMap<UserId, FreqSet>,
    mutes: DashMap<UserId, HashSet<FreqId>>,
    busy: DashSet<FreqId>,
    dirty: Mutex<Vec<FreqId>>,
    next_session: AtomicU64,
    /// Whether the fan-out writes audio straight to idle listeners' sockets;
    /// see [`Hub::update_direct_writes`].
    direct_writes: AtomicBool,
    /// The runtime of the writer tasks, when it is not the current one.
    writers: OnceLock<tokio::runtime::Handle>,
}

/// CPU use, as a share of the cores the relay may use, above which the
/// fan-out stops writing directly and queues every frame.
///
/// Queued frames leave several to a write only once the writer tasks lag,
/// which happens near saturation. Below that, each queued frame costs a
/// writer wake-up on top of its write. With listeners on 4 of 6
/// frequencies at about 60 % CPU, switching at 60 % cost 1.18x to 1.22x a
/// bare write per frame, and switching at 85 % cost 0.97x (two runs each).
pub const DIRECT_WRITES_OFF_ABOVE: f64 = 0.85;
/// CPU use below which direct writes resume.
pub const DIRECT_WRITES_ON_BELOW: f64 = 0.5;

/// Current wall-clock time in Unix milliseconds.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Current wall-clock time in Unix seconds.
pub fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn text_message(message: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(message.to_json())
}

fn new_freq_key() -> Arc<str> {
    let key: [u8; 32] = rand::random();
    STANDARD.encode(key).into()
}

impl Hub {
    /// Creates an empty hub.
    pub fn new(config: Arc<RelayConfig>, auth: Authenticator, txlog: TxLog) -> Self {
        let freqs = (0..FreqId::COUNT)
            .map(|_| {
                Mutex::new(FreqState {
                    settings: FreqSettings::default(),
                    listeners: Vec::new(),
                    index: HashMap::new(),
                    key: None,
                    floor: Floor::new(config.floor_timeout, config.preemption),
                    talker: None,
                    reported_count: 0,
                    dirty: false,
                    frames_in: 0,
                    frames_out: 0,
                    frames_dropped: 0,
                })
            })
            .collect();
        Self {
            guard: Arc::new(PeerGuard::new(&config)),
            config,
            auth,
            txlog,
            counters: Counters {
                started: Instant::now(),
                active_freqs: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                last_rate_sample: Mutex::new((Instant::now(), 0)),
                frames_late: Arc::new(AtomicU64::new(0)),
                frames_denied: AtomicU64::new(0),
            },
            freqs,
            sessions: DashMap::new(),
            user_sessions: DashMap::new(),
            token_sessions: DashMap::new(),
            grants: DashMap::new(),
            mutes: DashMap::new(),
            busy: DashSet::new(),
            dirty: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(1),
            direct_writes: AtomicBool::new(true),
            writers: OnceLock::new(),
        }
    }

    /// Switches direct writes by the relay's recent CPU use, a share of the
    /// cores it may use. A direct write saves the writer task's wake-up, but
    /// it always costs one system call per frame. Queued frames for the same
    /// listener leave in one write once the writer tasks fall behind, so
    /// under load the queue is cheaper per frame and its bounded depth drops
    /// what cannot be sent in time. Returns the setting now in force.
    pub fn update_direct_writes(&self, cpu_share: f64) -> bool {
        let direct = self.direct_writes.load(Ordering::Relaxed);
        let next = next_direct_writes(direct, cpu_share);
        if next != direct {
            self.direct_writes.store(next, Ordering::Relaxed);
            tracing::info!(
                cpu_percent = (cpu_share * 100.0).round(),
                direct_writes = next,
                "audio write mode changed"
            );
        }
        next
    }

    /// Runs the writer tasks of sessions started from now on in the runtime
    /// of `handle`; see [`crate::WriterRuntime`].
    pub fn set_writer_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.writers.set(handle);
    }

    /// Spawns a session's writer task in the writer runtime, or in the
    /// current runtime when there is none.
    pub fn spawn_writer<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.writers.get() {
            Some(handle) => handle.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Whether the fan-out writes audio directly to idle listeners now.
    pub fn direct_writes(&self) -> bool {
        self.direct_writes.load(Ordering::Relaxed)
    }

    fn slot(&self, freq: FreqId) -> &Mutex<FreqState> {
        &self.freqs[freq.index()]
    }

    // ---- sessions -------------------------------------------------------

    /// Registers an authenticated session whose messages all go through
    /// `queue`. When the user now has more sessions than allowed, the oldest
    /// one is sent a close command.
    pub fn register(
        &self,
        claims: &Claims,
        peer: std::net::SocketAddr,
        queue: mpsc::Sender<Outbound>,
    ) -> Arc<SessionShared> {
        self.register_outlet(claims, peer, Arc::new(Outlet::new(queue, None)))
    }

    /// Registers an authenticated session with its outlet, like
    /// [`Hub::register`].
    pub fn register_outlet(
        &self,
        claims: &Claims,
        peer: std::net::SocketAddr,
        outlet: Arc<Outlet>,
    ) -> Arc<SessionShared> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(SessionShared::new(id, claims, peer, outlet));
        self.sessions.insert(id, Arc::clone(&session));
        self.token_sessions
            .entry(claims.jti.clone())
            .or_default()
            .push(id);
        let replaced = {
            let mut list = self.user_sessions.entry(claims.sub).or_default();
            list.push_back(id);
            if list.len() > self.config.max_sessions_per_user {
                list.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = replaced.and_then(|old| self.session(old)) {
            tracing::info!(session = old.id, user = %old.user, "closing oldest session of user");
            old.command(SessionCommand::Close(CloseReason::Replaced));
        }
        session
    }

    /// Removes a session from the registry. The session must have left its
    /// frequencies first.
    pub fn unregister(&self, session: &SessionShared) {
        self.sessions.remove(&session.id);
        if let Some(mut ids) = self.token_sessions.get_mut(&session.token_id) {
            ids.retain(|&id| id != session.id);
        }
        self.token_sessions
            .remove_if(&session.token_id, |_, ids| ids.is_empty());
        if let Some(mut ids) = self.user_sessions.get_mut(&session.user) {
            ids.retain(|&id| id != session.id);
        }
        self.user_sessions
            .remove_if(&session.user, |_, ids| ids.is_empty());
    }

    /// Looks up a session by number.
    pub fn session(&self, id: SessionId) -> Option<Arc<SessionShared>> {
        self.sessions
            .get(&id)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// Live sessions of a user.
    pub fn sessions_of(&self, user: &UserId) -> Vec<Arc<SessionShared>> {
        let ids: Vec<SessionId> = self
            .user_sessions
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        ids.into_iter().filter_map(|id| self.session(id)).collect()
    }

    /// Number of authenticated sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Tells every session to close, for shutdown.
    pub fn close_all(&self, reason: CloseReason) {
        for entry in self.sessions.iter() {
            entry.value().command(SessionCommand::Close(reason.clone()));
        }
    }

    // ---- grants, mutes, revocations -----------------------------------

    /// Frequencies granted to a user through voice channels.
    pub fn grants_of(&self, user: &UserId) -> FreqSet {
        self.grants.get(user).map(|g| g.clone()).unwrap_or_default()
    }

    /// Frequencies a moderator muted for a user.
    pub fn mutes_of(&self, user: &UserId) -> HashSet<FreqId> {
        self.mutes.get(user).map(|m| m.clone()).unwrap_or_default()
    }

    /// Replaces a user's voice-channel grants and notifies their sessions.
    pub fn set_grants(&self, user: UserId, freqs: FreqSet) {
        if freqs.is_empty() {
            self.grants.remove(&user);
        } else {
            self.grants.insert(user, freqs.clone());
        }
        for session in self.sessions_of(&user) {
            session.command(SessionCommand::Grants(freqs.clone()));
        }
    }

    /// Replaces every grant at once, telling only users whose grants changed.
    pub fn replace_grants(&self, grants: Vec<(UserId, FreqSet)>) {
        let mut next: HashMap<UserId, FreqSet> = grants.into_iter().collect();
        let previous: Vec<UserId> = self.grants.iter().map(|e| *e.key()).collect();
        for user in previous {
            if !next.contains_key(&user) {
                self.set_grants(user, FreqSet::default());
            }
        }
        for (user, freqs) in next.drain() {
            if self.grants_of(&user) != freqs {
                self.set_grants(user, freqs);
            }
        }
    }

    /// Mutes or unmutes a user's transmissions on a frequency.
    pub fn set_mute(&self, user: UserId, freq: FreqId, muted: bool) {
        if muted {
            self.mutes.entry(user).or_default().insert(freq);
        } else if let Some(mut set) = self.mutes.get_mut(&user) {
            set.remove(&freq);
        }
        self.mutes.remove_if(&user, |_, set| set.is_empty());
        for session in self.sessions_of(&user) {
            session.command(SessionCommand::TxMute { freq, muted });
        }
    }

    /// Replaces every mute at once.
    pub fn replace_mutes(&self, mutes: Vec<(UserId, FreqId)>) {
        let mut next: HashMap<UserId, HashSet<FreqId>> = HashMap::new();
        for (user, freq) in mutes {
            next.entry(user).or_default().insert(freq);
        }
        let previous: Vec<(UserId, HashSet<FreqId>)> = self
            .mutes
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        for (user, freqs) in previous {
            for freq in freqs {
                if !next.get(&user).is_some_and(|set| set.contains(&freq)) {
                    self.set_mute(user, freq, false);
                }
            }
        }
        for (user, freqs) in next {
            for freq in freqs {
                if !self.mutes_of(&user).contains(&freq) {
                    self.set_mute(user, freq, true);
                }
            }
        }
    }

    /// Revokes every token of `user` issued at or before `before` and closes
    /// the sessions using them. Returns the number of sessions closed.
    pub fn revoke_user(&self, user: UserId, before: u64, reason: &str) -> usize {
        self.auth.revoke_user(user, before);
        let mut closed = 0;
        for session in self.sessions_of(&user) {
            if session.token_issued <= before {
                session.command(SessionCommand::Close(CloseReason::Revoked(
                    reason.to_owned(),
                )));
                closed += 1;
            }
        }
        closed
    }

    /// Revokes token ids and closes the sessions using them.
    pub fn revoke_tokens(&self, token_ids: Vec<String>) -> usize {
        let mut closed = 0;
        for token_id in token_ids {
            let ids = self
                .token_sessions
                .get(&token_id)
                .map(|ids| ids.clone())
                .unwrap_or_default();
            self.auth.revoke_token(token_id);
            for session in ids.into_iter().filter_map(|id| self.session(id)) {
                session.command(SessionCommand::Close(CloseReason::Revoked(
                    "token revoked".into(),
                )));
                closed += 1;
            }
        }
        closed
    }

    // ---- frequency settings --------------------------------------------

    /// Settings of a frequency.
    pub fn settings(&self, freq: FreqId) -> FreqSettings {
        self.slot(freq).lock().settings.clone()
    }

    /// Applies new settings. Listeners below a raised minimum rank are sent
    /// a command to leave.
    pub fn configure(&self, config: &FreqConfig) {
        let settings = FreqSettings {
            name: Some(config.name.clone()),
            min_rank: config.min_rank,
            half_duplex: config.half_duplex,
        };
        self.apply_settings(config.id, settings);
    }

    /// Resets a frequency to defaults and removes its listeners.
    pub fn remove_frequency(&self, freq: FreqId) -> usize {
        let listeners = {
            let mut state = self.slot(freq).lock();
            state.settings = FreqSettings::default();
            state
                .listeners
                .iter()
                .map(|l| Arc::clone(&l.session))
                .collect::<Vec<_>>()
        };
        for session in &listeners {
            session.command(SessionCommand::ForceLeave {
                freq,
                reason: format!("frequency {freq} was deleted by a moderator"),
            });
        }
        listeners.len()
    }

    fn apply_settings(&self, freq: FreqId, settings: FreqSettings) {
        let mut state = self.slot(freq).lock();
        let min_rank = settings.min_rank;
        let full_duplex_now = state.settings.half_duplex && !settings.half_duplex;
        state.settings = settings;
        let talker = state.talker.as_ref().map(|t| t.session.id);
        if let (true, Some(talker)) = (full_duplex_now, talker)
            && let Some(t) = state.floor.release(talker)
        {
            self.finish_transmission(&mut state, freq, t);
        }
        for listener in &state.listeners {
            if listener.session.rank < min_rank {
                listener.session.command(SessionCommand::ForceLeave {
                    freq,
                    reason: format!(
                        "frequency {freq} now requires rank {min_rank}, above your rank {}",
                        listener.session.rank
                    ),
                });
            }
        }
    }

    /// Replaces the settings of every frequency.
    pub fn replace_settings(&self, configs: &[FreqConfig]) {
        let configured: HashMap<FreqId, &FreqConfig> = configs.iter().map(|c| (c.id, c)).collect();
        for freq in FreqId::all() {
            let current = self.slot(freq).lock().settings.clone();
            let next = configured
                .get(&freq)
                .map(|c| FreqSettings {
                    name: Some(c.name.clone()),
                    min_rank: c.min_rank,
                    half_duplex: c.half_duplex,
                })
                .unwrap_or_default();
            if current != next {
                self.apply_settings(freq, next);
            }
        }
    }

    /// Names of configured frequencies.
    pub fn names(&self) -> Vec<(FreqId, String)> {
        FreqId::all()
            .filter_map(|freq| {
                let state = self.slot(freq).lock();
                state.settings.name.clone().map(|name| (freq, name))
            })
            .collect()
    }

    // ---- joining ---------------------------------------------------------

    /// Adds a session as listener; returns the listener count and the
    /// frequency key. Joining twice is harmless.
    pub fn join(
        &self,
        session: &Arc<SessionShared>,
        freq: FreqId,
    ) -> Result<(u32, Arc<str>), JoinRejection> {
        let mut state = self.slot(freq).lock();
        if session.rank < state.settings.min_rank {
            return Err(JoinRejection::RankTooLow {
                freq,
                rank: session.rank,
                min_rank: state.settings.min_rank,
            });
        }
        if !state.index.contains_key(&session.id) {
            if state.listeners.is_empty() {
                state.key = Some(new_freq_key());
                self.counters.active_freqs.fetch_add(1, Ordering::Relaxed);
            }
            let position = state.listeners.len();
            state.listeners.push(Listener {
                id: session.id,
                muted: false,
                outlet: Arc::clone(session.outlet()),
                session: Arc::clone(session),
            });
            state.index.insert(session.id, position);
            self.mark_dirty(freq, &mut state);
        }
        let key = state
            .key
            .clone()
            .expect("a frequency with listeners has a key");
        Ok((state.listeners.len() as u32, key))
    }

    /// Removes a session from a frequency, ending its transmission there.
    /// Returns false when it was not a listener.
    pub fn leave(&self, session: SessionId, freq: FreqId) -> bool {
        let mut state = self.slot(freq).lock();
        let Some(position) = state.index.remove(&session) else {
            return false;
        };
        state.listeners.swap_remove(position);
        if let Some(moved) = state.listeners.get(position) {
            let moved_id = moved.id;
            state.index.insert(moved_id, position);
        }
        if let Some(t) = state.floor.release(session) {
            self.finish_transmission(&mut state, freq, t);
        }
        if state.listeners.is_empty() {
            state.key = None;
            self.counters.active_freqs.fetch_sub(1, Ordering::Relaxed);
        }
        self.mark_dirty(freq, &mut state);
        true
    }

    /// Stops or resumes delivery of a frequency's audio to a listener.
    pub fn set_listener_muted(&self, session: SessionId, freq: FreqId, muted: bool) -> bool {
        let mut state = self.slot(freq).lock();
        let Some(&position) = state.index.get(&session) else {
            return false;
        };
        state.listeners[position].muted = muted;
        true
    }

    fn mark_dirty(&self, freq: FreqId, state: &mut FreqState) {
        if !state.dirty {
            state.dirty = true;
            self.dirty.lock().push(freq);
        }
    }

    /// Sends `listener_update` for every frequency whose listener count
    /// changed since the last call.
    pub fn flush_listener_updates(&self) {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        for freq in dirty {
            let mut state = self.slot(freq).lock();
            state.dirty = false;
            let count = state.listeners.len();
            if count == state.reported_count {
                continue;
            }
            state.reported_count = count;
            let message = text_message(&ServerMessage::ListenerUpdate {
                freq_id: freq,
                listener_count: count as u32,
            });
            for listener in &state.listeners {
                listener.session.send_control(message.clone());
            }
        }
    }

    // ---- audio -----------------------------------------------------------

    /// Counts a frame on `freq` that was rejected because a moderator muted
    /// its sender there, so that `frames_in` includes it like the frames
    /// that floor control rejects.
    pub fn count_muted_frame(&self, freq: FreqId) {
        self.slot(freq).lock().frames_in += 1;
    }

    /// Offers an audio frame from `sender` on `freq` and forwards it to every
    /// other unmuted listener when the sender may talk.
    pub fn forward(
        &self,
        freq: FreqId,
        sender: &Arc<SessionShared>,
        frame: &Bytes,
        now: Instant,
    ) -> Forward {
        let direct = self.direct_writes();
        let mut state = self.slot(freq).lock();
        state.frames_in += 1;
        if !state.settings.half_duplex {
            fan_out(&mut state, sender.id, frame, now, direct);
            return Forward::Sent {
                started: false,
                floor: false,
            };
        }
        match state.floor.on_frame(sender.id, sender.rank, now) {
            FrameDecision::Continue => {
                fan_out(&mut state, sender.id, frame, now, direct);
                Forward::Sent {
                    started: false,
                    floor: true,
                }
            }
            FrameDecision::Started { ended } => {
                if let Some(ended) = ended {
                    self.finish_transmission(&mut state, freq, ended.transmission);
                }
                self.start_transmission(&mut state, freq, sender);
                fan_out(&mut state, sender.id, frame, now, direct);
                Forward::Sent {
                    started: true,
                    floor: true,
                }
            }
            FrameDecision::Denied { reason } => Forward::Denied(reason),
        }
    }

    /// Releases the floor of `freq` if `sender` holds it.
    pub fn release(&self, freq: FreqId, sender: SessionId) -> bool {
        let mut state = self.slot(freq).lock();
        match state.floor.release(sender) {
            Some(t) => {
                self.finish_transmission(&mut state, freq, t);
                true
            }
            None => false,
        }
    }

    /// Releases the floor of `freq` if its holder has been silent too long.
    pub fn expire(&self, freq: FreqId, now: Instant) {
        let mut state = self.slot(freq).lock();
        if let Some(t) = state.floor.expire(now) {
            self.finish_transmission(&mut state, freq, t);
        }
    }

    fn start_transmission(&self, state: &mut FreqState, freq: FreqId, sender: &Arc<SessionShared>) {
        state.talker = Some(Talker {
            session: Arc::clone(sender),
            started_ms: wall_ms(),
            dropped: 0,
        });
        self.busy.insert(freq);
        let message = text_message(&ServerMessage::Rx {
            freq_id: freq,
            discord_user_id: sender.user_text.to_string(),
            username: sender.name.to_string(),
            action: RxAction::Start,
        });
        broadcast_except(state, sender.id, &message);
    }

    fn finish_transmission(&self, state: &mut FreqState, freq: FreqId, transmission: Transmission) {
        let Some(talker) = state.talker.take() else {
            return;
        };
        self.busy.remove(&freq);
        let message = text_message(&ServerMessage::Rx {
            freq_id: freq,
            discord_user_id: talker.session.user_text.to_string(),
            username: talker.session.name.to_string(),
            action: RxAction::Stop,
        });
        broadcast_except(state, talker.session.id, &message);
        let length = transmission
            .last_frame
            .saturating_duration_since(transmission.started);
        self.txlog.record(TxRecord {
            freq,
            user: talker.session.user,
            started_ms: talker.started_ms,
            ended_ms: talker.started_ms + length.as_millis() as i64,
            frames: transmission.frames,
            dropped: talker.dropped,
        });
    }

    // ---- reports ---------------------------------------------------------

    /// Live state of one user's sessions and the busy frequencies.
    pub fn status(&self, user: Option<&UserId>) -> StatusReply {
        let sessions = user
            .map(|user| {
                self.sessions_of(user)
                    .iter()
                    .map(|s| SessionStatus {
                        session: s.id,
                        peer: s.peer.to_string(),
                        joined: s.joined.lock().clone(),
                        connected_secs: s.connected.elapsed().as_secs(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut busy: Vec<FreqId> = self.busy.iter().map(|f| *f).collect();
        busy.sort();
        StatusReply { sessions, busy }
    }

    /// Load figures since start.
    pub fn stats(&self) -> StatsReply {
        let (mut frames_in, mut frames_out, mut frames_dropped) = (0, 0, 0);
        for slot in self.freqs.iter() {
            let state = slot.lock();
            frames_in += state.frames_in;
            frames_out += state.frames_out;
            frames_dropped += state.frames_dropped;
        }
        let now = Instant::now();
        let rate = {
            let mut sample = self.counters.last_rate_sample.lock();
            let elapsed = now.duration_since(sample.0).as_secs_f64();
            let rate = if elapsed > 0.0 {
                (frames_in - sample.1) as f64 / elapsed
            } else {
                0.0
            };
            *sample = (now, frames_in);
            rate
        };
        StatsReply {
            sessions: self.session_count() as u64,
            frequencies: self.counters.active_freqs.load(Ordering::Relaxed) as u64,
            frames_in,
            frames_out,
            frames_dropped,
            frames_late: self.counters.frames_late.load(Ordering::Relaxed),
            frames_denied: self.counters.frames_denied.load(Ordering::Relaxed),
            frames_in_per_sec: rate,
            uptime_secs: self.counters.started.elapsed().as_secs(),
        }
    }
}

/// Applies the hysteresis of [`Hub::update_direct_writes`].
fn next_direct_writes(direct: bool, cpu_share: f64) -> bool {
    if direct {
        cpu_share <= DIRECT_WRITES_OFF_ABOVE
    } else {
        cpu_share < DIRECT_WRITES_ON_BELOW
    }
}

/// Sends `frame` to every unmuted listener but the sender. With `direct`,
/// listeners with an empty queue get it in a direct write from here, so the
/// frequency's lock is held for one system call per listener.
fn fan_out(state: &mut FreqState, sender: SessionId, frame: &Bytes, now: Instant, direct: bool) {
    let frame = binary_frame(frame);
    let received = Stamp::of(now);
    let (mut sent, mut dropped) = (0u64, 0u64);
    for (position, listener) in state.listeners.iter().enumerate() {
        // In a profile, the first touch of each outlet waited for memory
        // after the previous write, so ask for the next one before this one.
        if let Some(next) = state.listeners.get(position + 1) {
            prefetch(&*next.outlet);
        }
        if listener.id == sender || listener.muted {
            continue;
        }
        match listener.outlet.send_audio(&frame, received, direct) {
            AudioDelivery::Written | AudioDelivery::Queued => sent += 1,
            AudioDelivery::Dropped => dropped += 1,
        }
    }
    state.frames_out += sent;
    state.frames_dropped += dropped;
    if let Some(talker) = state.talker.as_mut() {
        talker.dropped += dropped;
    }
}

/// Asks the CPU to load the cache line at `value` ahead of its use.
///
/// A system call of the fan-out takes long enough to hide the load.
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

fn broadcast_except(state: &FreqState, except: SessionId, message: &Utf8Bytes) {
    for listener in &state.listeners {
        if listener.id != except {
            listener.session.send_control(message.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_switch_with_hysteresis() {
        assert!(next_direct_writes(true, 0.8));
        assert!(!next_direct_writes(true, 0.9));
        assert!(!next_direct_writes(false, 0.6));
        assert!(next_direct_writes(false, 0.4));
    }
}
