//! The binary audio frame of voice protocol v1.
//!
//! ```text
//! offset 0  u32 big-endian  frequency id
//! offset 4  u32 big-endian  sequence number, counted per sender
//! offset 8  payload         Opus packet, or nonce + ciphertext + tag when encrypted
//! ```
//!
//! The relay reads only the header and forwards the frame bytes unchanged.

use crate::freq::FreqId;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// Smallest valid frame: a header and at least one payload byte.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + 1;

/// Default largest frame the relay accepts, in bytes. An Opus packet of 20 ms
/// at 32 kb/s is about 80 bytes, so this leaves room for high bitrates and
/// encryption overhead while staying under one Ethernet MTU.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1500;

/// The parsed header of an audio frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frequency the frame is sent on.
    pub freq: FreqId,
    /// Sender's sequence number.
    pub seq: u32,
}

/// Reasons a binary frame is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header plus one payload byte.
    #[error("audio frame of {len} bytes is too short: send an 8-byte header and a payload")]
    TooShort {
        /// Length of the rejected frame.
        len: usize,
    },
    /// More bytes than the configured maximum.
    #[error("audio frame of {len} bytes is too long: the maximum is {max} bytes")]
    TooLong {
        /// Length of the rejected frame.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The header names a number outside the frequency range.
    #[error("audio frame for invalid frequency {value}: use a number from 1000 to 9999")]
    InvalidFreq {
        /// The number found in the header.
        value: u32,
    },
}

impl FrameHeader {
    /// Parses and validates the header of `frame`, which must be at most
    /// `max_len` bytes long.
    pub fn parse(frame: &[u8], max_len: usize) -> Result<Self, FrameError> {
        if frame.len() < MIN_FRAME_LEN {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        if frame.len() > max_len {
            return Err(FrameError::TooLong {
                len: frame.len(),
                max: max_len,
            });
        }
        let freq_raw = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let seq = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let freq = FreqId::new(i64::from(freq_raw))
            .map_err(|_| FrameError::InvalidFreq { value: freq_raw })?;
        Ok(Self { freq, seq })
    }

    /// Writes this header followed by `payload` into a new buffer.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        self.write_to(&mut frame);
        frame.extend_from_slice(payload);
        frame
    }

    /// Appends the 8 header bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&u32::from(self.freq.get()).to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_valid_frame() {
        let header = FrameHeader {
            freq: FreqId::new(1050).unwrap(),
            seq: 0xDEAD_BEEF,
        };
        let frame = header.encode(&[1, 2, 3]);
        assert_eq!(frame.len(), 11);
        assert_eq!(&frame[..4], &[0, 0, 0x04, 0x1A]);
        assert_eq!(
            FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN),
            Ok(header)
        );
    }

    #[test]
    fn parse_rejects_short_frames() {
        for len in 0..MIN_FRAME_LEN {
            let frame = vec![0u8; len];
            assert_eq!(
                FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN),
                Err(FrameError::TooShort { len })
            );
        }
    }

    #[test]
    fn parse_rejects_long_frames() {
        let mut frame = FrameHeader {
            freq: FreqId::new(1000).unwrap(),
            seq: 1,
        }
        .encode(&[0; 100]);
        frame.resize(DEFAULT_MAX_FRAME_LEN + 1, 0);
        assert_eq!(
            FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::TooLong {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn parse_rejects_invalid_freq() {
        let mut frame = vec![0u8; 12];
        frame[..4].copy_from_slice(&10_000u32.to_be_bytes());
        assert_eq!(
            FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::InvalidFreq { value: 10_000 })
        );
    }
}
