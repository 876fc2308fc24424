//! Half-duplex floor control: at most one talker per frequency.
//!
//! The first sender takes the floor. It keeps it while frames keep coming and
//! loses it on an explicit stop, after a silence timeout, or when a sender of
//! higher rank arrives. The caller passes the current time in, so the rules
//! can be tested without a clock.

use std::time::{Duration, Instant};

use crate::protocol::TxDeniedReason;

/// Default silence after which the floor is released.
pub const DEFAULT_FLOOR_TIMEOUT: Duration = Duration::from_millis(300);

/// Identifies a sender to the floor; the relay uses its session number.
pub type SenderId = u64;

/// One transmission: a run of frames from one holder of the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmission {
    /// Sender that held the floor.
    pub sender: SenderId,
    /// Rank of the sender.
    pub rank: u8,
    /// Time of the first frame.
    pub started: Instant,
    /// Time of the last frame.
    pub last_frame: Instant,
    /// Frames accepted from the sender.
    pub frames: u64,
}

/// Result of offering a frame to the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDecision {
    /// The sender already held the floor; forward the frame.
    Continue,
    /// The sender took the floor; forward the frame. `ended` is the
    /// transmission that ended to make room, through timeout or preemption.
    Started {
        /// Transmission that ended, if the floor was not free.
        ended: Option<Ended>,
    },
    /// The frame must be dropped.
    Denied {
        /// Why.
        reason: TxDeniedReason,
    },
}

/// A transmission that ended, with the cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The transmission.
    pub transmission: Transmission,
    /// True when a higher-ranked sender took the floor.
    pub preempted: bool,
}

/// The floor of one frequency.
#[derive(Debug)]
pub struct Floor {
    timeout: Duration,
    preemption: bool,
    holder: Option<Transmission>,
    preempted: Option<SenderId>,
}

impl Floor {
    /// Creates a free floor. `preemption` lets a higher rank take the floor.
    pub fn new(timeout: Duration, preemption: bool) -> Self {
        Self {
            timeout,
            preemption,
            holder: None,
            preempted: None,
        }
    }

    /// The current transmission, if the floor is held and not timed out.
    pub fn holder(&self, now: Instant) -> Option<&Transmission> {
        self.holder
            .as_ref()
            .filter(|t| now.saturating_duration_since(t.last_frame) < self.timeout)
    }

    /// Offers a frame from `sender` at time `now`.
    pub fn on_frame(&mut self, sender: SenderId, rank: u8, now: Instant) -> FrameDecision {
        let Some(current) = self.holder.as_mut() else {
            return self.grant(sender, rank, now, None);
        };
        if current.sender == sender {
            current.last_frame = now;
            current.frames += 1;
            return FrameDecision::Continue;
        }
        let timed_out = now.saturating_duration_since(current.last_frame) >= self.timeout;
        if timed_out {
            let ended = Ended {
                transmission: *current,
                preempted: false,
            };
            return self.grant(sender, rank, now, Some(ended));
        }
        if self.preemption && rank > current.rank {
            let ended = Ended {
                transmission: *current,
                preempted: true,
            };
            self.preempted = Some(current.sender);
            return self.grant(sender, rank, now, Some(ended));
        }
        let reason = if self.preempted == Some(sender) {
            TxDeniedReason::Preempted
        } else {
            TxDeniedReason::Busy
        };
        FrameDecision::Denied { reason }
    }

    fn grant(
        &mut self,
        sender: SenderId,
        rank: u8,
        now: Instant,
        ended: Option<Ended>,
    ) -> FrameDecision {
        if self.preempted == Some(sender) {
            self.preempted = None;
        }
        self.holder = Some(Transmission {
            sender,
            rank,
            started: now,
            last_frame: now,
            frames: 1,
        });
        FrameDecision::Started { ended }
    }

    /// Releases the floor if `sender` holds it, returning its transmission.
    pub fn release(&mut self, sender: SenderId) -> Option<Transmission> {
        if self.holder.is_some_and(|t| t.sender == sender) {
            self.holder.take()
        } else {
            None
        }
    }

    /// Releases the floor if its holder has been silent for the timeout.
    pub fn expire(&mut self, now: Instant) -> Option<Transmission> {
        let timed_out = self
            .holder
            .is_some_and(|t| now.saturating_duration_since(t.last_frame) >= self.timeout);
        if timed_out { self.holder.take() } else { None }
    }

    /// The time at which the current holder times out, if the floor is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.holder.map(|t| t.last_frame + self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_sender_takes_floor() {
        let t0 = Instant::now();
        let mut floor = Floor::new(300 * MS, true);
        assert_eq!(
            floor.on_frame(1, 0, t0),
            FrameDecision::Started { ended: None }
        );
        assert_eq!(floor.on_frame(1, 0, t0 + 20 * MS), FrameDecision::Continue);
        assert_eq!(
            floor.on_frame(2, 0, t0 + 40 * MS),
            FrameDecision::Denied {
                reason: TxDeniedReason::Busy
            }
        );
        assert_eq!(floor.holder(t0 + 40 * MS).map(|t| t.frames), Some(2));
    }

    #[test]
    fn silence_releases_floor() {
        let t0 = Instant::now();
        let mut floor = Floor::new(300 * MS, true);
        floor.on_frame(1, 0, t0);
        assert_eq!(floor.expire(t0 + 299 * MS), None);
        assert_eq!(floor.deadline(), Some(t0 + 300 * MS));
        let decision = floor.on_frame(2, 0, t0 + 300 * MS);
        let FrameDecision::Started { ended: Some(ended) } = decision else {
            panic!("expected a new transmission, got {decision:?}");
        };
        assert_eq!(ended.transmission.sender, 1);
        assert!(!ended.preempted);
    }

    #[test]
    fn expire_and_release() {
        let t0 = Instant::now();
        let mut floor = Floor::new(300 * MS, true);
        floor.on_frame(1, 0, t0);
        assert_eq!(floor.release(2), None);
        assert_eq!(floor.expire(t0 + 300 * MS).map(|t| t.sender), Some(1));
        assert!(floor.holder(t0).is_none());
        floor.on_frame(3, 0, t0);
        assert_eq!(floor.release(3).map(|t| t.frames), Some(1));
        assert_eq!(floor.deadline(), None);
    }

    #[test]
    fn higher_rank_preempts() {
        let t0 = Instant::now();
        let mut floor = Floor::new(300 * MS, true);
        floor.on_frame(1, 1, t0);
        let decision = floor.on_frame(2, 5, t0 + 20 * MS);
        let FrameDecision::Started { ended: Some(ended) } = decision else {
            panic!("expected preemption, got {decision:?}");
        };
        assert!(ended.preempted);
        assert_eq!(ended.transmission.sender, 1);
        assert_eq!(
            floor.on_frame(1, 1, t0 + 40 * MS),
            FrameDecision::Denied {
                reason: TxDeniedReason::Preempted
            }
        );
        assert_eq!(
            floor.on_frame(3, 5, t0 + 40 * MS),
            FrameDecision::Denied {
                reason: TxDeniedReason::Busy
            }
        );
    }

    #[test]
    fn equal_rank_or_disabled_does_not_preempt() {
        let t0 = Instant::now();
        let mut floor = Floor::new(300 * MS, true);
        floor.on_frame(1, 3, t0);
        assert!(matches!(
            floor.on_frame(2, 3, t0),
            FrameDecision::Denied { .. }
        ));
        let mut floor = Floor::new(300 * MS, false);
        floor.on_frame(1, 0, t0);
        assert!(matches!(
            floor.on_frame(2, 9, t0),
            FrameDecision::Denied { .. }
        ));
    }
}
