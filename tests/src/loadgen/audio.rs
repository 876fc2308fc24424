//! WAV input and output and Opus coding of the talkers' recording.
//!
//! Talkers send 20 ms Opus frames at 48 kHz mono. Input WAV files of any
//! rate, channel count and sample format that `hound` reads are mixed down
//! to mono and resampled by linear interpolation. That is crude, but the
//! point is speech a person can recognise, not studio quality.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use opus::{Application, Bitrate, Channels, Decoder, Encoder};

/// Sample rate of every Opus stream here, Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at [`SAMPLE_RATE`].
pub const FRAME_SAMPLES: usize = 960;
/// Maximum input length, in seconds, to bound memory (10 minutes of 48 kHz
/// mono is 55 MiB as 16-bit samples).
pub const MAX_INPUT_SECS: u64 = 600;
/// Largest Opus packet libopus produces.
const MAX_PACKET: usize = 1275;
/// Concealed frames inserted for one gap at most, so a long outage does not
/// grow the recording without bound.
const MAX_CONCEALED_PER_GAP: u32 = 50;

/// Errors reading, coding or writing audio.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The WAV file could not be opened, read or written.
    #[error("failed to access WAV file {path}: {source}")]
    Wav {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: hound::Error,
    },
    /// The WAV file contains nothing usable.
    #[error("unusable WAV file {path}: {detail}")]
    Unusable {
        /// File path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// libopus rejected a setting or a packet.
    #[error("Opus {operation} failed: {source}")]
    Opus {
        /// What was being done.
        operation: &'static str,
        /// Error from libopus.
        source: opus::Error,
    },
}

fn opus_error(operation: &'static str) -> impl FnOnce(opus::Error) -> AudioError {
    move |source| AudioError::Opus { operation, source }
}

/// Reads `path` as 48 kHz mono 16-bit samples.
pub fn read_wav_mono_48k(path: &Path) -> Result<Vec<i16>, AudioError> {
    let wav_error = |source| AudioError::Wav {
        path: path.to_owned(),
        source,
    };
    let unusable = |detail: String| AudioError::Unusable {
        path: path.to_owned(),
        detail,
    };
    let reader = hound::WavReader::open(path).map_err(wav_error)?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(unusable(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    let frames = u64::from(reader.duration());
    if frames > MAX_INPUT_SECS * u64::from(spec.sample_rate) {
        return Err(unusable(format!(
            "longer than {MAX_INPUT_SECS} s: cut it to a shorter clip"
        )));
    }

    // Convert to f32 in -1.0..1.0, then mix the channels down.
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_error)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|sample| sample.map(|value| value as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_error)?
        }
    };
    let channels = usize::from(spec.channels);
    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    if mono.is_empty() {
        return Err(unusable("no samples".to_owned()));
    }
    let resampled = resample_linear(&mono, spec.sample_rate, SAMPLE_RATE);
    Ok(resampled.into_iter().map(to_i16).collect())
}

fn to_i16(sample: f32) -> i16 {
    (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Resamples `input` from `from` Hz to `to` Hz by linear interpolation.
pub fn resample_linear(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)).max(1) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let position = i as f64 * step;
            let index = position as usize;
            let fraction = (position - index as f64) as f32;
            let a = input[index.min(input.len() - 1)];
            let b = input[(index + 1).min(input.len() - 1)];
            a + (b - a) * fraction
        })
        .collect()
}

/// Encodes 48 kHz mono `samples` into 20 ms Opus packets at `bitrate` bits
/// a second. The last frame is padded with silence.
pub fn encode_opus(samples: &[i16], bitrate: i32) -> Result<Vec<Bytes>, AudioError> {
    let mut encoder = Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)
        .map_err(opus_error("encoder creation"))?;
    encoder
        .set_bitrate(Bitrate::Bits(bitrate))
        .map_err(opus_error("bitrate setting"))?;
    let mut packet = [0u8; MAX_PACKET];
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut packets = Vec::with_capacity(samples.len().div_ceil(FRAME_SAMPLES));
    for chunk in samples.chunks(FRAME_SAMPLES) {
        frame[..chunk.len()].copy_from_slice(chunk);
        frame[chunk.len()..].fill(0);
        let len = encoder
            .encode(&frame, &mut packet)
            .map_err(opus_error("encoding"))?;
        packets.push(Bytes::copy_from_slice(&packet[..len]));
    }
    Ok(packets)
}

/// PCM decoded from one sender's packets at one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedStream {
    /// 48 kHz mono samples.
    pub samples: Vec<i16>,
    /// Frames filled in by libopus loss concealment for missing counters.
    pub concealed_frames: u32,
}

/// Decodes `packets`, given as (frame counter, packet) in arrival order.
/// Missing counters are filled by libopus packet loss concealment, at most
/// 50 frames (1 s) per gap. Frames that arrive late or twice are skipped,
/// as a jitter buffer past its deadline would.
pub fn decode_stream(packets: &[(u32, Bytes)]) -> Result<DecodedStream, AudioError> {
    let mut decoder =
        Decoder::new(SAMPLE_RATE, Channels::Mono).map_err(opus_error("decoder creation"))?;
    let mut out = DecodedStream::default();
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut next: Option<u32> = None;
    for (counter, packet) in packets {
        if let Some(expected) = next {
            if *counter < expected {
                continue;
            }
            for _ in 0..(*counter - expected).min(MAX_CONCEALED_PER_GAP) {
                let len = decoder
                    .decode(&[], &mut pcm, false)
                    .map_err(opus_error("loss concealment"))?;
                out.samples.extend_from_slice(&pcm[..len]);
                out.concealed_frames += 1;
            }
        }
        let len = decoder
            .decode(packet, &mut pcm, false)
            .map_err(opus_error("decoding"))?;
        out.samples.extend_from_slice(&pcm[..len]);
        next = Some(counter + 1);
    }
    Ok(out)
}

/// Writes 48 kHz mono 16-bit `samples` to `path`.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<(), AudioError> {
    let wav_error = |source| AudioError::Wav {
        path: path.to_owned(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wav_error)?;
    for &sample in samples {
        writer.write_sample(sample).map_err(wav_error)?;
    }
    writer.finalize().map_err(wav_error)
}

/// Root mean square of `samples`, as a fraction of full scale.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt() / 32768.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, secs: f32, hz: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (i as f32 * hz * std::f32::consts::TAU / rate as f32).sin())
            .collect()
    }

    #[test]
    fn resample_keeps_duration_and_endpoints() {
        let input = tone(16_000, 0.5, 440.0);
        let output = resample_linear(&input, 16_000, 48_000);
        assert_eq!(output.len(), input.len() * 3);
        assert_eq!(output[0], input[0]);
        assert!((output[3] - input[1]).abs() < 1e-6);
        assert_eq!(resample_linear(&input, 48_000, 48_000), input);
    }

    #[test]
    fn stereo_44k_wav_becomes_mono_48k() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for sample in tone(44_100, 1.0, 300.0) {
            let value = (sample * 8_388_607.0) as i32;
            writer.write_sample(value).unwrap();
            writer.write_sample(-value).unwrap();
        }
        writer.finalize().unwrap();
        // Opposite channels cancel out, so the mono mix is silent.
        let samples = read_wav_mono_48k(&path).unwrap();
        assert_eq!(samples.len(), 48_000);
        assert!(samples.iter().all(|&s| s.abs() <= 1), "mix is not silent");
    }

    #[test]
    fn missing_wav_names_path() {
        let err = read_wav_mono_48k(Path::new("/nonexistent/clip.wav")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/clip.wav"), "{err}");
    }

    #[test]
    fn opus_round_trip() {
        let samples: Vec<i16> = tone(48_000, 1.0, 440.0).into_iter().map(to_i16).collect();
        let packets = encode_opus(&samples, 32_000).unwrap();
        assert_eq!(packets.len(), 50);
        let mean_len = packets.iter().map(Bytes::len).sum::<usize>() / packets.len();
        // 32 kb/s over 20 ms is 80 bytes; VBR varies around that.
        assert!(
            (40..=120).contains(&mean_len),
            "mean packet {mean_len} bytes"
        );
        let numbered: Vec<(u32, Bytes)> =
            packets.into_iter().zip(0..).map(|(p, i)| (i, p)).collect();
        let decoded = decode_stream(&numbered).unwrap();
        assert_eq!(decoded.samples.len(), 50 * FRAME_SAMPLES);
        assert_eq!(decoded.concealed_frames, 0);
        let level = rms(&decoded.samples);
        assert!(level > 0.2, "decoded tone too quiet: rms {level}");
    }

    #[test]
    fn decode_conceals_gaps_and_skips_late() {
        let samples: Vec<i16> = tone(48_000, 0.2, 440.0).into_iter().map(to_i16).collect();
        let packets = encode_opus(&samples, 32_000).unwrap();
        let arrived = vec![
            (0, packets[0].clone()),
            (3, packets[3].clone()),
            (1, packets[1].clone()),
            (4, packets[4].clone()),
        ];
        let decoded = decode_stream(&arrived).unwrap();
        assert_eq!(decoded.concealed_frames, 2);
        assert_eq!(decoded.samples.len(), 5 * FRAME_SAMPLES);
    }

    #[test]
    fn wav_write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let samples: Vec<i16> = (0..4800).map(|i| (i % 200) as i16 * 100).collect();
        write_wav(&path, &samples).unwrap();
        assert_eq!(read_wav_mono_48k(&path).unwrap(), samples);
    }
}
