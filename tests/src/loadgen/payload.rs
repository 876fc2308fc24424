//! What the load generator puts into audio frames, and how listeners read it
//! back.
//!
//! Each talker starts its sequence numbers at `talker << 20`, so a listener
//! can tell senders apart from the 8-byte header alone, even when the
//! payload is a real Opus packet. The protocol only requires a per-sender
//! counter, so any start value is valid. Padded payloads start with the send
//! time (u64 big-endian nanoseconds since the run's clock base), followed by
//! zero bytes up to the payload size.

use bytes::Bytes;
use krt_shared::FreqId;
use krt_shared::frame::{FrameHeader, HEADER_LEN};

/// Bits of the sequence number that count frames; the bits above name the talker.
pub const COUNTER_BITS: u32 = 20;
/// Frames one talker can send before its counter would reach the next
/// talker's range (about 5.8 hours at 50 frames a second).
pub const MAX_FRAMES_PER_TALKER: u32 = 1 << COUNTER_BITS;
/// Most talkers one run can have, so that talker ids fit the sequence number.
pub const MAX_TALKERS: usize = 1 << (32 - COUNTER_BITS);
/// Smallest padded payload: the 8-byte send time.
pub const MIN_PADDED_PAYLOAD: usize = 8;

/// Builds the sequence number of frame `counter` of `talker`.
pub fn encode_seq(talker: u32, counter: u32) -> u32 {
    (talker << COUNTER_BITS) | (counter & (MAX_FRAMES_PER_TALKER - 1))
}

/// Splits a sequence number into talker and frame counter.
pub fn decode_seq(seq: u32) -> (u32, u32) {
    (seq >> COUNTER_BITS, seq & (MAX_FRAMES_PER_TALKER - 1))
}

/// Builds a frame whose payload is `payload_len` bytes starting with `send_ns`.
/// `payload_len` must be at least [`MIN_PADDED_PAYLOAD`].
pub fn padded_frame(freq: FreqId, seq: u32, send_ns: u64, payload_len: usize) -> Bytes {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload_len);
    FrameHeader { freq, seq }.write_to(&mut frame);
    frame.extend_from_slice(&send_ns.to_be_bytes());
    frame.resize(HEADER_LEN + payload_len.max(MIN_PADDED_PAYLOAD), 0);
    Bytes::from(frame)
}

/// Builds a frame that carries `packet` unchanged.
pub fn opus_frame(freq: FreqId, seq: u32, packet: &[u8]) -> Bytes {
    Bytes::from(FrameHeader { freq, seq }.encode(packet))
}

/// Reads the send time from a padded payload, when its length is `expected_len`.
pub fn padded_send_time(payload: &[u8], expected_len: usize) -> Option<u64> {
    if payload.len() != expected_len || payload.len() < MIN_PADDED_PAYLOAD {
        return None;
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&payload[..8]);
    Some(u64::from_be_bytes(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use krt_shared::frame::DEFAULT_MAX_FRAME_LEN;

    fn freq(value: i64) -> FreqId {
        FreqId::new(value).unwrap()
    }

    #[test]
    fn seq_round_trip() {
        for (talker, counter) in [(0, 0), (1, 0), (5, 49), (4095, MAX_FRAMES_PER_TALKER - 1)] {
            assert_eq!(decode_seq(encode_seq(talker, counter)), (talker, counter));
        }
        assert_eq!(encode_seq(1, 0), 1 << 20);
        assert_eq!(MAX_TALKERS, 4096);
    }

    #[test]
    fn padded_frame_carries_send_time() {
        let frame = padded_frame(freq(1003), encode_seq(2, 7), 123_456_789, 80);
        assert_eq!(frame.len(), HEADER_LEN + 80);
        let header = FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(header.freq, freq(1003));
        assert_eq!(decode_seq(header.seq), (2, 7));
        assert_eq!(
            padded_send_time(&frame[HEADER_LEN..], 80),
            Some(123_456_789)
        );
    }

    #[test]
    fn padded_send_time_checks_length() {
        let frame = padded_frame(freq(1000), 0, 42, 80);
        assert_eq!(padded_send_time(&frame[HEADER_LEN..], 81), None);
        assert_eq!(
            padded_send_time(&frame[HEADER_LEN..HEADER_LEN + 4], 4),
            None
        );
    }

    #[test]
    fn opus_frame_keeps_packet() {
        let frame = opus_frame(freq(9999), 9, &[0xF8, 1, 2]);
        assert_eq!(&frame[HEADER_LEN..], &[0xF8, 1, 2]);
        assert_eq!(&frame[..4], &9999u32.to_be_bytes());
    }
}
