//! The summary of a run, as a table for people or one line of JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;

use super::histogram::Histogram;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Frames measured.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest latency seen.
    pub max: f64,
}

impl LatencyMs {
    /// Reads percentiles from a histogram of nanoseconds.
    pub fn from_histogram(histogram: &Histogram) -> Self {
        let ms = |q: f64| histogram.quantile(q).map_or(0.0, |ns| ns as f64 / 1e6);
        Self {
            samples: histogram.count(),
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1e6,
        }
    }
}

/// Relay process figures from `/proc`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RelayFigures {
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system) spent during the measurement window, or
    /// during the hold time with `--idle`.
    pub cpu_secs: f64,
    /// `cpu_secs` divided by the frames healthy listeners received in the
    /// window, microseconds; 0 without frames.
    pub cpu_us_per_delivered_frame: f64,
    /// Resident set size before connecting, KiB.
    pub rss_kib_before: u64,
    /// Resident set size once every user was connected, KiB.
    pub rss_kib_connected: u64,
    /// Resident set size at the end of the run, KiB.
    pub rss_kib_end: u64,
    /// Peak resident set size at the end of the run, KiB.
    pub hwm_kib_end: u64,
    /// Growth of the resident set from before connecting until connected,
    /// per connection, bytes.
    pub rss_bytes_per_connection: f64,
}

/// One recorded stream.
#[derive(Clone, Debug, Serialize)]
pub struct Recording {
    /// WAV file written.
    pub path: PathBuf,
    /// User that received it.
    pub listener: usize,
    /// Talker that sent it.
    pub talker: u32,
    /// Frequency number.
    pub freq: u16,
    /// Packets received.
    pub packet_count: usize,
    /// Frames filled in by loss concealment.
    pub concealed_frames: u32,
    /// Length of the WAV file, seconds.
    pub seconds: f64,
    /// Received (frame counter, Opus packet) pairs in arrival order.
    #[serde(skip)]
    pub packets: Vec<(u32, Bytes)>,
}

/// Summary of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// `traffic` or `idle`.
    pub mode: &'static str,
    /// Healthy users.
    pub users: usize,
    /// Users that never read.
    pub slow_listeners: usize,
    /// Frequencies.
    pub freqs: usize,
    /// Frequencies joined per user.
    pub joins_per_user: usize,
    /// Talkers, primaries and contenders.
    pub talkers: usize,
    /// Talkers beyond the first on their frequency.
    pub contenders: usize,
    /// `padded` or `opus`.
    pub payload: String,
    /// Mean payload size, bytes.
    pub payload_bytes_mean: f64,
    /// Measurement window (or hold time with `--idle`), seconds.
    pub duration_secs: f64,
    /// Warm-up before the window, seconds.
    pub warmup_secs: f64,
    /// Time until every user was authenticated and joined, seconds.
    pub connect_secs: f64,
    /// Time from dropping every connection until all were back, seconds.
    pub reconnect_storm_secs: Option<f64>,
    /// Frames primary talkers sent in the window.
    pub frames_sent: u64,
    /// Frames contenders sent in the whole run.
    pub contender_frames_sent: u64,
    /// Frames healthy listeners should have received.
    pub frames_expected: u64,
    /// Distinct frames healthy listeners received.
    pub frames_received: u64,
    /// Expected frames not received.
    pub frames_lost: u64,
    /// `frames_lost` as a percentage of `frames_expected`.
    pub loss_percent: f64,
    /// Healthy listeners that missed at least one frame.
    pub listeners_with_loss: usize,
    /// Healthy sessions the relay ended before the run did.
    pub sessions_closed: usize,
    /// Reason of the first such session end.
    pub first_close_reason: Option<String>,
    /// Frames that arrived after a later frame of the same sender.
    pub out_of_order: u64,
    /// Frames received twice.
    pub duplicates: u64,
    /// Frames whose payload differs from what was sent.
    pub corrupt: u64,
    /// Frames sent back to their own talker.
    pub echoed: u64,
    /// Frames of frequencies or senders the listener should not hear, and
    /// Opus frames without a recorded send time.
    pub unexpected: u64,
    /// Messages that could not be parsed.
    pub malformed: u64,
    /// Frames of contenders that reached listeners.
    pub leaked: u64,
    /// `tx_denied` messages received by primary talkers.
    pub tx_denied_primary: u64,
    /// `tx_denied` messages received by contenders.
    pub tx_denied_contender: u64,
    /// `error` messages from the relay.
    pub relay_errors: u64,
    /// First `error` reason.
    pub first_relay_error: Option<String>,
    /// Latency of frames sent in the window.
    pub latency_ms: LatencyMs,
    /// Change of every numeric field of the relay's `GET /server-status`
    /// over the run, such as `framesOut` and `framesDropped`; empty when the
    /// endpoint could not be read.
    pub relay_counters: BTreeMap<String, f64>,
    /// Relay CPU and memory, with `--relay-pid`.
    pub relay: Option<RelayFigures>,
    /// CPU of the load generator in the window, percent of one core.
    pub loadgen_cpu_percent: f64,
    /// Recordings written with `--record`.
    pub recordings: Vec<Recording>,
    /// The encoded clip, with `--opus`.
    #[serde(skip)]
    pub clip_packets: Vec<Bytes>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    /// Renders the report as one JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reports serialize to JSON")
    }

    /// Renders the report as a table with one figure per line.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<20} {value}");
        };
        line(
            "layout",
            format!(
                "{} users (+{} slow), {} freqs, {} join(s) each, {} talkers ({} contenders), {}",
                self.users,
                self.slow_listeners,
                self.freqs,
                self.joins_per_user,
                self.talkers,
                self.contenders,
                self.payload,
            ),
        );
        line(
            "connect",
            format!(
                "{:.3} s for {} connections",
                self.connect_secs,
                self.users + self.slow_listeners
            ),
        );
        if let Some(storm) = self.reconnect_storm_secs {
            line(
                "reconnect storm",
                format!("{storm:.3} s until all were back"),
            );
        }
        if self.mode == "traffic" {
            self.traffic_lines(&mut line);
        } else {
            line("hold", format!("{:.1} s idle", self.duration_secs));
        }
        if let Some(relay) = &self.relay {
            line(
                "relay CPU",
                format!(
                    "{:.2} s, {:.2} us per delivered frame (pid {})",
                    relay.cpu_secs, relay.cpu_us_per_delivered_frame, relay.pid
                ),
            );
            line(
                "relay RSS",
                format!(
                    "before {:.1} MiB, connected {:.1} MiB, end {:.1} MiB, peak {:.1} MiB, {:.0} B per connection",
                    mib(relay.rss_kib_before),
                    mib(relay.rss_kib_connected),
                    mib(relay.rss_kib_end),
                    mib(relay.hwm_kib_end),
                    relay.rss_bytes_per_connection
                ),
            );
        }
        if !self.relay_counters.is_empty() {
            let counters: Vec<String> = self
                .relay_counters
                .iter()
                .map(|(name, delta)| format!("{name} {delta:+}"))
                .collect();
            line("relay counters", counters.join(", "));
        }
        line(
            "loadgen CPU",
            format!("{:.0} % of one core", self.loadgen_cpu_percent),
        );
        for recording in &self.recordings {
            line(
                "recording",
                format!(
                    "{} ({:.1} s, {} packets, {} concealed)",
                    recording.path.display(),
                    recording.seconds,
                    recording.packet_count,
                    recording.concealed_frames
                ),
            );
        }
        out
    }

    fn traffic_lines(&self, line: &mut impl FnMut(&str, String)) {
        line(
            "window",
            format!(
                "{:.1} s after {:.1} s warm-up",
                self.duration_secs, self.warmup_secs
            ),
        );
        line(
            "frames sent",
            format!(
                "{} by primaries in the window, {} by contenders",
                self.frames_sent, self.contender_frames_sent
            ),
        );
        line("frames expected", self.frames_expected.to_string());
        line("frames received", self.frames_received.to_string());
        line(
            "loss",
            format!(
                "{} ({:.3} %), {} listeners with loss",
                self.frames_lost, self.loss_percent, self.listeners_with_loss
            ),
        );
        line(
            "latency ms",
            format!(
                "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} frames)",
                self.latency_ms.p50,
                self.latency_ms.p99,
                self.latency_ms.p999,
                self.latency_ms.max,
                self.latency_ms.samples
            ),
        );
        line(
            "order",
            format!(
                "{} out of order, {} duplicates, {} corrupt, {} echoed, {} unexpected, {} malformed",
                self.out_of_order,
                self.duplicates,
                self.corrupt,
                self.echoed,
                self.unexpected,
                self.malformed
            ),
        );
        line(
            "floor control",
            format!(
                "{} leaked, tx_denied {} to primaries, {} to contenders",
                self.leaked, self.tx_denied_primary, self.tx_denied_contender
            ),
        );
        let closed = match &self.first_close_reason {
            Some(reason) => format!("{} (first: {reason})", self.sessions_closed),
            None => self.sessions_closed.to_string(),
        };
        line("sessions closed", closed);
        if self.relay_errors > 0 {
            line(
                "relay errors",
                format!(
                    "{} (first: {})",
                    self.relay_errors,
                    self.first_relay_error.as_deref().unwrap_or("")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::histogram::AtomicHistogram;

    #[test]
    fn latency_in_milliseconds() {
        let histogram = AtomicHistogram::new();
        for _ in 0..99 {
            histogram.record(100_000);
        }
        histogram.record(5_000_000);
        let latency = LatencyMs::from_histogram(&histogram.snapshot());
        assert_eq!(latency.samples, 100);
        assert!((latency.p50 - 0.1).abs() < 0.002, "p50 {}", latency.p50);
        assert!((latency.max - 5.0).abs() < 1e-9, "max {}", latency.max);
    }

    #[test]
    fn json_is_one_line() {
        let report = Report {
            mode: "traffic",
            frames_expected: 10,
            ..Report::default()
        };
        let json = report.to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["frames_expected"], 10);
        assert!(value.get("clip_packets").is_none());
    }

    #[test]
    fn table_shows_loss_and_latency() {
        let report = Report {
            mode: "traffic",
            frames_expected: 100,
            frames_received: 99,
            frames_lost: 1,
            loss_percent: 1.0,
            ..Report::default()
        };
        let table = report.to_table();
        assert!(table.contains("frames expected      100"), "{table}");
        assert!(table.contains("1 (1.000 %)"), "{table}");
        assert!(table.contains("p99.9"), "{table}");
    }
}
