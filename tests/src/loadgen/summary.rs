//! Turning the user states of a run into its report, and writing the
//! recordings.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use krt_shared::FreqId;
use tracing::info;

use super::audio::{self, SAMPLE_RATE};
use super::client::{Shared, UserState};
use super::config::Config;
use super::plan::Plan;
use super::procstat::ProcSample;
use super::report::{LatencyMs, Recording, RelayFigures, Report};
use super::run::LoadgenError;

pub(super) fn relay_figures(
    pid: u32,
    report: &Report,
    before: ProcSample,
    connected: ProcSample,
    end: ProcSample,
    window: Option<(ProcSample, ProcSample)>,
) -> RelayFigures {
    let cpu_secs = window.map_or(0.0, |(start, end)| end.cpu_secs - start.cpu_secs);
    let connections = (report.users + report.slow_listeners).max(1) as f64;
    RelayFigures {
        pid,
        cpu_secs,
        cpu_us_per_delivered_frame: if report.frames_received > 0 {
            cpu_secs * 1e6 / report.frames_received as f64
        } else {
            0.0
        },
        rss_kib_before: before.rss_kib,
        rss_kib_connected: connected.rss_kib,
        rss_kib_end: end.rss_kib,
        hwm_kib_end: end.hwm_kib,
        rss_bytes_per_connection: (connected.rss_kib as f64 - before.rss_kib as f64) * 1024.0
            / connections,
    }
}

/// Frames each healthy user should have received: the window frames of the
/// primary talker of every frequency it joined, except its own.
fn expected_per_user(plan: &Plan, states: &[UserState]) -> Vec<u64> {
    let sent_by_primary: Vec<u64> = (0..plan.freqs)
        .map(|freq| {
            plan.primary_of(freq)
                .and_then(|talker| states[talker].talker.as_ref())
                .map_or(0, |talker| talker.sent_in_window)
        })
        .collect();
    (0..plan.users)
        .map(|user| {
            plan.joins_of(user)
                .filter(|&freq| plan.primary_of(freq) != Some(user))
                .map(|freq| sent_by_primary[freq])
                .sum()
        })
        .collect()
}

pub(super) fn summarize(config: &Config, states: &[UserState], shared: &Shared) -> Report {
    let plan = &config.plan;
    let mut report = Report {
        mode: if config.idle { "idle" } else { "traffic" },
        users: plan.users,
        slow_listeners: plan.slow_listeners,
        freqs: plan.freqs,
        joins_per_user: plan.joins_per_user,
        talkers: plan.talkers,
        contenders: plan.talkers.saturating_sub(plan.freqs),
        duration_secs: config.duration.as_secs_f64(),
        warmup_secs: config.warmup.as_secs_f64(),
        latency_ms: LatencyMs::from_histogram(&shared.latency.snapshot()),
        ..Report::default()
    };
    for talker in states.iter().filter_map(|state| state.talker.as_ref()) {
        if talker.rank == 0 {
            report.frames_sent += talker.sent_in_window;
        } else {
            report.contender_frames_sent += talker.sent;
        }
    }

    let expected = expected_per_user(plan, states);
    for (state, expected) in states[..plan.users].iter().zip(expected) {
        let stats = &state.stats;
        report.frames_expected += expected;
        report.frames_received += stats.received_in_window;
        if stats.received_in_window < expected {
            report.listeners_with_loss += 1;
        }
        report.out_of_order += stats.out_of_order;
        report.duplicates += stats.duplicates;
        report.corrupt += stats.corrupt;
        report.echoed += stats.echoed;
        report.unexpected += stats.unexpected + stats.untimed;
        report.malformed += stats.malformed;
        report.leaked += stats.leaked;
        report.relay_errors += stats.relay_errors;
        match state.talker.as_ref().map(|talker| talker.rank) {
            Some(0) => report.tx_denied_primary += stats.tx_denied,
            Some(_) => report.tx_denied_contender += stats.tx_denied,
            None => {}
        }
        if report.first_relay_error.is_none() {
            report.first_relay_error = state.first_relay_error.clone();
        }
        if let Some(reason) = &state.closed {
            report.sessions_closed += 1;
            report
                .first_close_reason
                .get_or_insert_with(|| reason.clone());
        }
    }
    report.frames_lost = report
        .frames_expected
        .saturating_sub(report.frames_received);
    if report.frames_expected > 0 {
        report.loss_percent = report.frames_lost as f64 * 100.0 / report.frames_expected as f64;
    }
    report
}

/// Decodes what the recording user received and writes one WAV file per
/// talker heard.
pub(super) fn write_recordings(
    dir: &Path,
    state: &UserState,
    freqs: &[FreqId],
) -> Result<Vec<Recording>, LoadgenError> {
    std::fs::create_dir_all(dir).map_err(|error| LoadgenError::RecordDir {
        dir: dir.to_owned(),
        error,
    })?;
    let mut by_talker: BTreeMap<u32, Vec<(u32, Bytes)>> = BTreeMap::new();
    for (talker, counter, packet) in state.recording.iter().flatten() {
        by_talker
            .entry(*talker)
            .or_default()
            .push((*counter, packet.clone()));
    }
    let mut recordings = Vec::new();
    for (talker, packets) in by_talker {
        let decoded = audio::decode_stream(&packets)?;
        let freq = freqs[0].get();
        let path = dir.join(format!(
            "freq-{freq}-talker-{talker}-user-{}.wav",
            state.user
        ));
        audio::write_wav(&path, &decoded.samples)?;
        info!(path = %path.display(), packets = packets.len(), "recording written");
        recordings.push(Recording {
            path,
            listener: state.user,
            talker,
            freq,
            packet_count: packets.len(),
            concealed_frames: decoded.concealed_frames,
            seconds: decoded.samples.len() as f64 / f64::from(SAMPLE_RATE),
            packets,
        });
    }
    Ok(recordings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_skip_own_frames() {
        let plan = Plan {
            users: 6,
            slow_listeners: 0,
            freqs: 2,
            joins_per_user: 2,
            talkers: 2,
        };
        let freqs = [FreqId::new(1000).unwrap(), FreqId::new(1001).unwrap()];
        let mut states: Vec<UserState> = (0..6)
            .map(|user| UserState::new(user, &plan, &freqs, false))
            .collect();
        states[0].talker.as_mut().unwrap().sent_in_window = 10;
        states[1].talker.as_mut().unwrap().sent_in_window = 7;
        let expected = expected_per_user(&plan, &states);
        assert_eq!(expected, vec![7, 10, 17, 17, 17, 17]);
    }
}
