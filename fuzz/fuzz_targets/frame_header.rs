//! Fuzzes `FrameHeader::parse` with any bytes and any maximum frame length.
//! An accepted frame must encode back to the same bytes, and every error
//! must describe the input it rejected.

#![no_main]

use krt_shared::FreqId;
use krt_shared::frame::{FrameError, FrameHeader, HEADER_LEN, MIN_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes set the maximum length, so limits below, at and
    // above the frame's own length all get explored.
    let Some((limit, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_len = usize::from(u16::from_be_bytes(*limit));

    match FrameHeader::parse(frame, max_len) {
        Ok(header) => {
            assert!(
                frame.len() >= MIN_FRAME_LEN,
                "accepted {} bytes",
                frame.len()
            );
            assert!(
                frame.len() <= max_len,
                "accepted {} > {max_len} bytes",
                frame.len()
            );
            let encoded = header.encode(&frame[HEADER_LEN..]);
            assert_eq!(encoded, frame);
            assert_eq!(FrameHeader::parse(&encoded, max_len), Ok(header));
        }
        Err(FrameError::TooShort { len }) => {
            assert_eq!(len, frame.len());
            assert!(len < MIN_FRAME_LEN);
        }
        Err(FrameError::TooLong { len, max }) => {
            assert_eq!(len, frame.len());
            assert_eq!(max, max_len);
            assert!(len > max_len);
        }
        Err(FrameError::InvalidFreq { value }) => {
            assert_eq!(
                value,
                u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]])
            );
            assert!(FreqId::new(i64::from(value)).is_err());
        }
    }
});
