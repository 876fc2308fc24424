//! Runs the load generator in-process against a real `krt-relay` process on
//! an ephemeral loopback port.
//!
//! [`RelayProcess`] finds or builds the relay executable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use krt_tests::loadgen::{self, Args, Config, Report};
use krt_tests::relay_process::RelayProcess;

const CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/radio-check.wav");
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A relay process with its own data directory; stopped with SIGTERM on drop.
struct Relay {
    process: RelayProcess,
    url: String,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Relay {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = RelayProcess::start(&dir.path().join("data"), dir.path());
        let url = process.url.clone();
        Relay { process, url, dir }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

async fn run_loadgen(relay: &Relay, options: &[&str]) -> Report {
    let data_dir = relay.data_dir();
    let mut argv = vec![
        "krt-loadgen",
        "--url",
        &relay.url,
        "--data-dir",
        data_dir.to_str().expect("temporary paths are UTF-8"),
    ];
    argv.extend_from_slice(options);
    let config = Config::from_args(Args::try_parse_from(argv).expect("options parse"))
        .expect("options are valid");
    match tokio::time::timeout(RUN_TIMEOUT, loadgen::run(config)).await {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => panic!(
            "load generator failed: {error}\nrelay log:\n{}",
            relay.log()
        ),
        Err(_) => panic!("load generator ran longer than {RUN_TIMEOUT:?}"),
    }
}

fn assert_clean_delivery(report: &Report) {
    assert!(report.frames_expected > 0, "no frames expected: {report:?}");
    assert_eq!(
        report.frames_received, report.frames_expected,
        "frames received"
    );
    assert_eq!(report.frames_lost, 0, "frames lost");
    assert_eq!(report.listeners_with_loss, 0, "listeners with loss");
    assert_eq!(report.out_of_order, 0, "frames out of order");
    assert_eq!(report.duplicates, 0, "duplicate frames");
    assert_eq!(report.corrupt, 0, "corrupt frames");
    assert_eq!(report.echoed, 0, "frames echoed to their talker");
    assert_eq!(report.unexpected, 0, "unexpected frames");
    assert_eq!(
        report.sessions_closed, 0,
        "closed: {:?}",
        report.first_close_reason
    );
}

#[tokio::test]
async fn opus_clip_arrives_intact() {
    let relay = Relay::start();
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().to_str().unwrap().to_owned();
    let report = run_loadgen(
        &relay,
        &[
            "--users",
            "20",
            "--freqs",
            "2",
            "--talkers",
            "2",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--drain",
            "500ms",
            "--opus",
            CLIP,
            "--record",
            &record,
        ],
    )
    .await;

    assert_clean_delivery(&report);
    // 10 users per frequency: each frame reaches the 9 that did not send it.
    assert_eq!(report.frames_expected, report.frames_sent * 9);
    assert_eq!(report.latency_ms.samples, report.frames_received);
    // Read from GET /server-status just before the sessions closed.
    assert_eq!(report.relay_counters.get("sessions"), Some(&20.0));

    // The 3.17 s clip is 159 frames of 20 ms.
    let clip = &report.clip_packets;
    assert_eq!(clip.len(), 159);
    assert_eq!(
        report.recordings.len(),
        1,
        "one talker heard on the first frequency"
    );
    let recording = &report.recordings[0];
    assert_eq!(recording.talker, 0);
    assert_eq!(recording.concealed_frames, 0);
    // Warm-up plus window is 2.5 s, so about 125 frames.
    assert!(
        recording.packet_count >= 100,
        "{} packets",
        recording.packet_count
    );
    for (position, (counter, packet)) in recording.packets.iter().enumerate() {
        assert_eq!(
            *counter as usize, position,
            "frame counter at position {position}"
        );
        assert_eq!(packet, &clip[position % clip.len()], "packet {position}");
    }

    let reader = hound::WavReader::open(&recording.path).expect("recording is a WAV file");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 48_000, 16)
    );
    let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
    assert_eq!(samples.len(), recording.packet_count * 960);
    let level = loadgen::audio::rms(&samples);
    assert!(level > 0.01, "decoded speech is silent: rms {level}");
}

#[tokio::test]
async fn contenders_get_no_floor() {
    let relay = Relay::start();
    let report = run_loadgen(
        &relay,
        &[
            "--users",
            "12",
            "--freqs",
            "2",
            "--talkers",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "300ms",
            "--drain",
            "500ms",
        ],
    )
    .await;

    assert_clean_delivery(&report);
    assert_eq!(report.contenders, 2);
    assert!(report.contender_frames_sent > 0, "contenders sent nothing");
    assert_eq!(report.leaked, 0, "frames leaked past floor control");
    assert!(
        report.tx_denied_contender >= 2,
        "tx_denied {}",
        report.tx_denied_contender
    );
    assert_eq!(report.tx_denied_primary, 0);
}

#[tokio::test]
async fn reconnect_storm_restores_everyone() {
    let relay = Relay::start();
    let report = run_loadgen(
        &relay,
        &[
            "--users",
            "20",
            "--freqs",
            "2",
            "--talkers",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "300ms",
            "--drain",
            "500ms",
            "--reconnect-storm",
        ],
    )
    .await;

    let storm = report.reconnect_storm_secs.expect("storm time is reported");
    assert!(storm > 0.0);
    assert_clean_delivery(&report);
}

#[tokio::test]
async fn idle_sessions_stay_open() {
    let relay = Relay::start();
    let pid = relay.pid().to_string();
    let report = run_loadgen(
        &relay,
        &[
            "--users",
            "50",
            "--idle",
            "--duration",
            "1s",
            "--relay-pid",
            &pid,
        ],
    )
    .await;

    assert_eq!(report.mode, "idle");
    assert_eq!(
        report.sessions_closed, 0,
        "closed: {:?}",
        report.first_close_reason
    );
    let figures = report.relay.expect("relay figures with --relay-pid");
    assert!(figures.rss_kib_connected > 0);
    assert!(figures.hwm_kib_end >= figures.rss_kib_end);
}

#[tokio::test]
async fn slow_listeners_leave_others_whole() {
    let relay = Relay::start();
    let report = run_loadgen(
        &relay,
        &[
            "--users",
            "10",
            "--freqs",
            "1",
            "--talkers",
            "1",
            "--slow-listeners",
            "3",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--drain",
            "500ms",
        ],
    )
    .await;

    assert_clean_delivery(&report);
    assert_eq!(report.frames_expected, report.frames_sent * 9);
}
