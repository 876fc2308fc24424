//! Order and duplicate tracking for one sender's frames at one listener.

/// Frames behind the highest counter seen that can still be distinguished
/// from duplicates.
const WINDOW: u32 = 64;

/// How a received frame relates to the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Higher than every counter seen so far (gaps are losses, not reordering).
    InOrder,
    /// Lower than a counter already seen, and not seen before.
    OutOfOrder,
    /// Already seen.
    Duplicate,
}

/// Highest frame counter seen plus a 64-frame bitmap behind it.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamTracker {
    highest: Option<u32>,
    /// Bit `i` is set when frame `highest - i` was seen.
    seen: u64,
}

impl StreamTracker {
    /// Classifies frame `counter` and remembers it.
    pub fn observe(&mut self, counter: u32) -> Arrival {
        let Some(highest) = self.highest else {
            self.highest = Some(counter);
            self.seen = 1;
            return Arrival::InOrder;
        };
        if counter > highest {
            let shift = counter - highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = Some(counter);
            return Arrival::InOrder;
        }
        let behind = highest - counter;
        if behind >= WINDOW {
            // Too old to tell apart; a duplicate this late is still a fault.
            return Arrival::OutOfOrder;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            Arrival::Duplicate
        } else {
            self.seen |= bit;
            Arrival::OutOfOrder
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_with_gaps() {
        let mut tracker = StreamTracker::default();
        for counter in [0, 1, 2, 5, 6, 100] {
            assert_eq!(
                tracker.observe(counter),
                Arrival::InOrder,
                "counter {counter}"
            );
        }
    }

    #[test]
    fn late_frame_is_out_of_order_once() {
        let mut tracker = StreamTracker::default();
        tracker.observe(10);
        tracker.observe(12);
        assert_eq!(tracker.observe(11), Arrival::OutOfOrder);
        assert_eq!(tracker.observe(11), Arrival::Duplicate);
        assert_eq!(tracker.observe(12), Arrival::Duplicate);
        assert_eq!(tracker.observe(10), Arrival::Duplicate);
    }

    #[test]
    fn frames_beyond_window() {
        let mut tracker = StreamTracker::default();
        tracker.observe(0);
        tracker.observe(200);
        assert_eq!(tracker.observe(1), Arrival::OutOfOrder);
        assert_eq!(tracker.observe(200 - 63), Arrival::OutOfOrder);
        assert_eq!(tracker.observe(200 - 63), Arrival::Duplicate);
    }
}
