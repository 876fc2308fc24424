//! One simulated user's session task, which sends and receives audio, and
//! the per-frame accounting of what it receives.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use krt_shared::FreqId;
use krt_shared::frame::{DEFAULT_MAX_FRAME_LEN, FrameHeader, HEADER_LEN};
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{Incoming, Socket, describe_close};
use super::histogram::AtomicHistogram;
use super::payload::{
    MAX_FRAMES_PER_TALKER, decode_seq, encode_seq, opus_frame, padded_frame, padded_send_time,
};
use super::plan::Plan;
use super::tracker::{Arrival, StreamTracker};

/// Time between two frames of one talker.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);

const PING_MESSAGE: &str = r#"{"type":"ping"}"#;

/// Messages a session reads between two checks of its end time.
const DEADLINE_CHECK_MESSAGES: u32 = 64;

/// Nanoseconds since one monotonic base shared by all tasks of a run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the base.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds from the base to `at` (0 for earlier instants).
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }
}

/// What talkers send, shared by all tasks.
pub enum Payload {
    /// Send time plus zero padding, this many bytes.
    Padded(usize),
    /// Opus packets, looped; frame `k` of a talker carries packet `k % len`.
    Opus {
        /// Encoded clip.
        packets: Vec<Bytes>,
        /// Send time plus one, in clock nanoseconds, per talker and frame
        /// counter; 0 while the frame has not been sent.
        send_times: Vec<Box<[AtomicU64]>>,
    },
}

impl Payload {
    /// Builds an Opus payload with a send-time table for `talkers` talkers of
    /// `frames` frames each.
    pub fn opus(packets: Vec<Bytes>, talkers: usize, frames: usize) -> Self {
        let send_times = (0..talkers)
            .map(|_| (0..frames).map(|_| AtomicU64::new(0)).collect())
            .collect();
        Payload::Opus {
            packets,
            send_times,
        }
    }
}

/// State shared by all session tasks of a run.
pub struct Shared {
    /// Time base of send and receive stamps.
    pub clock: Clock,
    /// Who joins and talks.
    pub plan: Plan,
    /// The frequencies, index 0 first.
    pub freqs: Vec<FreqId>,
    /// What talkers send.
    pub payload: Payload,
    /// Latency of frames sent in the measurement window, nanoseconds.
    pub latency: AtomicHistogram,
    /// Heartbeat interval.
    pub ping_interval: Duration,
}

/// Start and end times of one traffic phase.
#[derive(Clone, Debug)]
pub struct Phase {
    /// First frame of the primary talkers.
    pub talk_start: Instant,
    /// First frame of the contenders.
    pub contender_start: Instant,
    /// No frame is sent at or after this time.
    pub talk_end: Instant,
    /// Sessions stop reading and return at this time.
    pub read_end: Instant,
    /// Clock nanoseconds of the measurement window; frames sent in it count.
    pub window: Range<u64>,
}

/// Counters of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    /// Distinct frames of primary talkers sent in the window and received.
    pub received_in_window: u64,
    /// Frames of contenders received; floor control should make this 0.
    pub leaked: u64,
    /// Frames that arrived after a later frame of the same sender.
    pub out_of_order: u64,
    /// Frames received more than once.
    pub duplicates: u64,
    /// Frames whose payload differs from what the talker sent.
    pub corrupt: u64,
    /// Own frames sent back to the talker.
    pub echoed: u64,
    /// Frames of a frequency or sender this user should not hear.
    pub unexpected: u64,
    /// Binary messages without a valid header, and text messages that are not JSON.
    pub malformed: u64,
    /// Opus frames whose send time was not in the table.
    pub untimed: u64,
    /// `tx_denied` messages received.
    pub tx_denied: u64,
    /// `rx` messages with action `start` received.
    pub rx_start: u64,
    /// `error` messages received.
    pub relay_errors: u64,
}

/// Transmit state of a talker, kept across reconnects.
#[derive(Clone, Debug)]
pub struct TalkerState {
    /// Talker number, also the high bits of its sequence numbers.
    pub index: u32,
    /// Frequency it talks on.
    pub freq: FreqId,
    /// 0 for the primary of its frequency, 1.. for contenders.
    pub rank: usize,
    /// Counter of the next frame.
    pub counter: u32,
    /// Frames sent in all phases.
    pub sent: u64,
    /// Frames sent in the measurement window.
    pub sent_in_window: u64,
}

/// Everything one user keeps between phases.
pub struct UserState {
    /// User number.
    pub user: usize,
    /// Joined frequency indices, in join order.
    pub joins: Vec<usize>,
    /// Per joined frequency, one tracker per talker rank on it.
    streams: Vec<Vec<StreamTracker>>,
    /// Counters.
    pub stats: SessionStats,
    /// Set for talkers.
    pub talker: Option<TalkerState>,
    /// Received Opus payloads (talker, counter, packet) when this user records.
    pub recording: Option<Vec<(u32, u32, Bytes)>>,
    /// First `error` reason from the relay.
    pub first_relay_error: Option<String>,
    /// Why the relay ended the session before the run did.
    pub closed: Option<String>,
}

impl UserState {
    /// Creates the state of `user` under `plan`.
    pub fn new(user: usize, plan: &Plan, freqs: &[FreqId], records: bool) -> Self {
        let joins: Vec<usize> = plan.joins_of(user).collect();
        let streams = joins
            .iter()
            .map(|&freq| vec![StreamTracker::default(); plan.talkers_on(freq)])
            .collect();
        let talker = (user < plan.talkers).then(|| TalkerState {
            index: user as u32,
            freq: freqs[plan.talker_freq(user)],
            rank: plan.talker_rank(user),
            counter: 0,
            sent: 0,
            sent_in_window: 0,
        });
        Self {
            user,
            joins,
            streams,
            stats: SessionStats::default(),
            talker,
            recording: records.then(Vec::new),
            first_relay_error: None,
            closed: None,
        }
    }

    /// Builds the next frame of this talker and records its send time.
    fn next_frame(&mut self, shared: &Shared, window: &Range<u64>) -> Option<Bytes> {
        let talker = self.talker.as_mut()?;
        if talker.counter >= MAX_FRAMES_PER_TALKER {
            return None;
        }
        let send_ns = shared.clock.now_ns();
        let seq = encode_seq(talker.index, talker.counter);
        let frame = match &shared.payload {
            Payload::Padded(len) => padded_frame(talker.freq, seq, send_ns, *len),
            Payload::Opus {
                packets,
                send_times,
            } => {
                if let Some(slot) = send_times[talker.index as usize].get(talker.counter as usize) {
                    slot.store(send_ns + 1, Ordering::Release);
                }
                let packet = &packets[talker.counter as usize % packets.len()];
                opus_frame(talker.freq, seq, packet)
            }
        };
        talker.counter += 1;
        talker.sent += 1;
        if window.contains(&send_ns) {
            talker.sent_in_window += 1;
        }
        Some(frame)
    }

    /// Accounts for one received audio frame. Allocates nothing unless this
    /// user records.
    fn on_frame(&mut self, data: &Bytes, recv_ns: u64, shared: &Shared, window: &Range<u64>) {
        let stats = &mut self.stats;
        let Ok(header) = FrameHeader::parse(data, DEFAULT_MAX_FRAME_LEN) else {
            stats.malformed += 1;
            return;
        };
        let (talker, counter) = decode_seq(header.seq);
        let talker = talker as usize;
        let plan = &shared.plan;
        let Some(freq_index) = header.freq.get().checked_sub(shared.freqs[0].get()) else {
            stats.unexpected += 1;
            return;
        };
        let freq_index = usize::from(freq_index);
        if self
            .talker
            .as_ref()
            .is_some_and(|t| t.index as usize == talker)
        {
            stats.echoed += 1;
            return;
        }
        let slot = self.joins.iter().position(|&joined| joined == freq_index);
        let (Some(slot), true) = (slot, talker < plan.talkers) else {
            stats.unexpected += 1;
            return;
        };
        if plan.talker_freq(talker) != freq_index {
            stats.unexpected += 1;
            return;
        }
        let rank = plan.talker_rank(talker);
        match self.streams[slot][rank].observe(counter) {
            Arrival::Duplicate => {
                stats.duplicates += 1;
                return;
            }
            Arrival::OutOfOrder => stats.out_of_order += 1,
            Arrival::InOrder => {}
        }

        let payload = &data[HEADER_LEN..];
        let send_ns = match &shared.payload {
            Payload::Padded(len) => match padded_send_time(payload, *len) {
                Some(send_ns) => send_ns,
                None => {
                    stats.corrupt += 1;
                    return;
                }
            },
            Payload::Opus {
                packets,
                send_times,
            } => {
                if payload != packets[counter as usize % packets.len()].as_ref() {
                    stats.corrupt += 1;
                    return;
                }
                let stamp = send_times[talker]
                    .get(counter as usize)
                    .map_or(0, |slot| slot.load(Ordering::Acquire));
                if stamp == 0 {
                    stats.untimed += 1;
                    return;
                }
                stamp - 1
            }
        };
        if rank > 0 {
            stats.leaked += 1;
            return;
        }
        if window.contains(&send_ns) {
            stats.received_in_window += 1;
            shared.latency.record(recv_ns.saturating_sub(send_ns));
        }
        if let Some(recording) = &mut self.recording
            && freq_index == 0
        {
            recording.push((talker as u32, counter, data.slice(HEADER_LEN..)));
        }
    }

    fn on_text(&mut self, text: &str) {
        let Ok(message) = serde_json::from_str::<Incoming>(text) else {
            self.stats.malformed += 1;
            return;
        };
        match message.kind.as_ref() {
            "tx_denied" => self.stats.tx_denied += 1,
            "rx" if message.action.as_deref() == Some("start") => self.stats.rx_start += 1,
            "error" => {
                self.stats.relay_errors += 1;
                if self.first_relay_error.is_none() {
                    self.first_relay_error = message.reason.map(Cow::into_owned);
                }
            }
            _ => {}
        }
    }
}

fn talker_start(state: &UserState, shared: &Shared, phase: &Phase) -> Option<Instant> {
    let talker = state.talker.as_ref()?;
    let base = if talker.rank == 0 {
        phase.talk_start
    } else {
        phase.contender_start
    };
    // Spread the talkers evenly over one frame interval.
    let talkers = shared.plan.talkers.max(1) as u32;
    Some(base + FRAME_INTERVAL * talker.index / talkers)
}

/// Runs one session until `phase.read_end`: talkers send a frame every
/// 20 ms until `phase.talk_end`, healthy users read and account for every
/// message, slow listeners never read. Everyone sends `ping` at the ping
/// interval. Returns the socket, or `None` when the session ended early
/// (the reason is in [`UserState::closed`]).
pub async fn run_session(
    ws: Socket,
    mut state: UserState,
    shared: Arc<Shared>,
    phase: Phase,
) -> (Option<Socket>, UserState) {
    let socket = if shared.plan.is_slow(state.user) {
        run_slow(ws, &mut state, &shared, &phase).await
    } else {
        run_healthy(ws, &mut state, &shared, &phase).await
    };
    (socket, state)
}

async fn run_healthy(
    mut ws: Socket,
    state: &mut UserState,
    shared: &Shared,
    phase: &Phase,
) -> Option<Socket> {
    let start = talker_start(state, shared, phase);
    let mut talking = start.is_some_and(|start| start < phase.talk_end);
    let mut tick = tokio::time::interval_at(start.unwrap_or(phase.read_end).into(), FRAME_INTERVAL);
    // A late tick is sent at once, so a stalled talker catches up like a
    // client draining its capture buffer.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ping = tokio::time::interval_at(
        (Instant::now() + shared.ping_interval).into(),
        shared.ping_interval,
    );
    let end = tokio::time::sleep_until(phase.read_end.into());
    tokio::pin!(end);

    // Reads come before the end and ping timers, so a busy listener polls
    // no timer per message. The message count bounds how long a flood of
    // reads can postpone the end.
    let mut since_deadline_check = 0u32;
    loop {
        tokio::select! {
            biased;
            at = tick.tick(), if talking => {
                if at.into_std() >= phase.talk_end {
                    talking = false;
                    continue;
                }
                let Some(frame) = state.next_frame(shared, &phase.window) else {
                    talking = false;
                    continue;
                };
                if let Err(error) = ws.send(Message::Binary(frame)).await {
                    state.closed = Some(format!("sending audio failed: {error}"));
                    return None;
                }
            }
            message = ws.next() => {
                match message {
                    Some(Ok(Message::Binary(data))) => {
                        let recv_ns = shared.clock.now_ns();
                        state.on_frame(&data, recv_ns, shared, &phase.window);
                    }
                    Some(Ok(Message::Text(text))) => state.on_text(&text),
                    Some(Ok(Message::Close(frame))) => {
                        state.closed = Some(describe_close(frame));
                        return None;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        state.closed = Some(format!("socket error: {error}"));
                        return None;
                    }
                    None => {
                        state.closed = Some("connection ended without close frame".to_owned());
                        return None;
                    }
                }
                since_deadline_check += 1;
                if since_deadline_check >= DEADLINE_CHECK_MESSAGES {
                    since_deadline_check = 0;
                    if Instant::now() >= phase.read_end {
                        return Some(ws);
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(error) = ws.send(Message::text(PING_MESSAGE)).await {
                    state.closed = Some(format!("sending ping failed: {error}"));
                    return None;
                }
            }
            _ = &mut end => return Some(ws),
        }
    }
}

async fn run_slow(
    mut ws: Socket,
    state: &mut UserState,
    shared: &Shared,
    phase: &Phase,
) -> Option<Socket> {
    let mut ping = tokio::time::interval_at(
        (Instant::now() + shared.ping_interval).into(),
        shared.ping_interval,
    );
    let end = tokio::time::sleep_until(phase.read_end.into());
    tokio::pin!(end);
    loop {
        tokio::select! {
            biased;
            _ = &mut end => return Some(ws),
            _ = ping.tick() => {
                if let Err(error) = ws.send(Message::text(PING_MESSAGE)).await {
                    state.closed = Some(format!("sending ping failed: {error}"));
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(plan: Plan, payload: Payload) -> Shared {
        let freqs = (0..plan.freqs)
            .map(|i| FreqId::new(1000 + i as i64).unwrap())
            .collect();
        Shared {
            clock: Clock::start(),
            plan,
            freqs,
            payload,
            latency: AtomicHistogram::new(),
            ping_interval: Duration::from_secs(10),
        }
    }

    fn plan(users: usize, freqs: usize, talkers: usize) -> Plan {
        Plan {
            users,
            slow_listeners: 0,
            freqs,
            joins_per_user: 1,
            talkers,
        }
    }

    #[test]
    fn padded_frames_are_counted_once() {
        let shared = shared(plan(6, 2, 2), Payload::Padded(80));
        let window = 0..u64::MAX;
        let mut talker = UserState::new(0, &shared.plan, &shared.freqs, false);
        let mut listener = UserState::new(2, &shared.plan, &shared.freqs, false);
        let first = talker.next_frame(&shared, &window).unwrap();
        let second = talker.next_frame(&shared, &window).unwrap();
        let now = shared.clock.now_ns();
        listener.on_frame(&second, now, &shared, &window);
        listener.on_frame(&first, now, &shared, &window);
        listener.on_frame(&first, now, &shared, &window);
        assert_eq!(talker.talker.as_ref().unwrap().sent_in_window, 2);
        assert_eq!(listener.stats.received_in_window, 2);
        assert_eq!(listener.stats.out_of_order, 1);
        assert_eq!(listener.stats.duplicates, 1);
        assert_eq!(shared.latency.snapshot().count(), 2);
        // The talker never counts its own frame.
        talker.on_frame(&first, now, &shared, &window);
        assert_eq!(talker.stats.echoed, 1);
    }

    #[test]
    fn frames_outside_window_are_not_counted() {
        let shared = shared(plan(4, 1, 1), Payload::Padded(16));
        let mut talker = UserState::new(0, &shared.plan, &shared.freqs, false);
        let mut listener = UserState::new(1, &shared.plan, &shared.freqs, false);
        let frame = talker.next_frame(&shared, &(0..0)).unwrap();
        listener.on_frame(&frame, shared.clock.now_ns(), &shared, &(0..0));
        assert_eq!(talker.talker.as_ref().unwrap().sent_in_window, 0);
        assert_eq!(listener.stats.received_in_window, 0);
        assert_eq!(shared.latency.snapshot().count(), 0);
    }

    #[test]
    fn contender_frames_count_as_leaked() {
        // Talker 2 is the contender of frequency index 0.
        let shared = shared(plan(6, 2, 3), Payload::Padded(80));
        let window = 0..u64::MAX;
        let mut contender = UserState::new(2, &shared.plan, &shared.freqs, false);
        let mut listener = UserState::new(4, &shared.plan, &shared.freqs, false);
        let frame = contender.next_frame(&shared, &window).unwrap();
        listener.on_frame(&frame, shared.clock.now_ns(), &shared, &window);
        assert_eq!(listener.stats.leaked, 1);
        assert_eq!(listener.stats.received_in_window, 0);
    }

    #[test]
    fn opus_payloads_are_checked() {
        let packets = vec![
            Bytes::from_static(&[0xF8, 1]),
            Bytes::from_static(&[0xF8, 2]),
        ];
        let shared = shared(plan(4, 1, 1), Payload::opus(packets, 1, 10));
        let window = 0..u64::MAX;
        let mut talker = UserState::new(0, &shared.plan, &shared.freqs, false);
        let mut listener = UserState::new(1, &shared.plan, &shared.freqs, true);
        let frame = talker.next_frame(&shared, &window).unwrap();
        listener.on_frame(&frame, shared.clock.now_ns(), &shared, &window);
        assert_eq!(listener.stats.received_in_window, 1);
        let recorded = listener.recording.as_ref().unwrap();
        assert_eq!(recorded[0], (0, 0, Bytes::from_static(&[0xF8, 1])));

        // Frame 1 must carry packet 1; packet 0 in its place is corrupt.
        let forged = opus_frame(shared.freqs[0], encode_seq(0, 1), &[0xF8, 1]);
        listener.on_frame(&forged, shared.clock.now_ns(), &shared, &window);
        assert_eq!(listener.stats.corrupt, 1);
    }

    #[test]
    fn wrong_frequency_is_unexpected() {
        let shared = shared(plan(4, 2, 2), Payload::Padded(80));
        let window = 0..u64::MAX;
        // User 2 joined frequency index 0; talker 1 talks on index 1.
        let mut listener = UserState::new(2, &shared.plan, &shared.freqs, false);
        let mut talker = UserState::new(1, &shared.plan, &shared.freqs, false);
        let frame = talker.next_frame(&shared, &window).unwrap();
        listener.on_frame(&frame, shared.clock.now_ns(), &shared, &window);
        assert_eq!(listener.stats.unexpected, 1);
        listener.on_frame(&Bytes::from_static(&[0, 1, 2]), 0, &shared, &window);
        assert_eq!(listener.stats.malformed, 1);
    }

    #[test]
    fn text_messages_are_counted() {
        let shared = shared(plan(2, 1, 1), Payload::Padded(80));
        let mut state = UserState::new(0, &shared.plan, &shared.freqs, false);
        state.on_text(r#"{"type":"tx_denied","freqId":1000,"reason":"busy"}"#);
        state.on_text(r#"{"type":"rx","freqId":1000,"action":"start","username":"a"}"#);
        state.on_text(r#"{"type":"error","reason":"bad input"}"#);
        state.on_text(r#"{"type":"future_extension"}"#);
        state.on_text("not json");
        assert_eq!(state.stats.tx_denied, 1);
        assert_eq!(state.stats.rx_start, 1);
        assert_eq!(state.stats.relay_errors, 1);
        assert_eq!(state.first_relay_error.as_deref(), Some("bad input"));
        assert_eq!(state.stats.malformed, 1);
    }
}
