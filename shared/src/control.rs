//! Messages of the control socket between the bot and the relay.
//!
//! The relay listens on a Unix domain socket in its data directory. Each
//! request and each response is one line of JSON. Every request carries an
//! `id` that its response repeats, and an `op` that selects the command:
//!
//! ```text
//! {"id":1,"op":"revoke_user","user_id":"3f…","before":1733300000,"reason":"spam"}
//! {"id":1,"ok":true,"data":{"closed_sessions":2}}
//! ```
//!
//! A request that fails validation gets `ok: false` with an `error` text and
//! changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::freq::{FreqId, FreqSet};
use crate::user::UserId;

/// Maximum length of a request line that the relay reads, in bytes, without
/// its newline. A full sync of 20,000 voice-channel assignments took about
/// 69 bytes each in a test, so this fits about 120,000 of them.
pub const MAX_CONTROL_LINE: usize = 8 << 20;

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Chosen by the sender, repeated in the response.
    pub id: u64,
    /// The command.
    #[serde(flatten)]
    pub command: ControlCommand,
}

/// Commands the relay accepts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Revokes single tokens by token id and closes the sessions using them.
    Revoke {
        /// Token ids (`jti` claims).
        token_ids: Vec<String>,
    },
    /// Revokes every token of a user issued at or before `before` and closes
    /// the user's live sessions. Kicks and bans both use this.
    RevokeUser {
        /// User.
        user_id: UserId,
        /// Unix seconds; tokens with `iat <= before` are rejected.
        before: u64,
        /// Reason shown in the close frame.
        reason: String,
    },
    /// Replaces the frequencies granted to users through voice channels,
    /// one entry per user; the last entry for a user wins.
    Assign {
        /// New assignments.
        changes: Vec<Assignment>,
    },
    /// Creates or updates a frequency.
    FreqUpsert {
        /// Frequency settings.
        freq: FreqConfig,
    },
    /// Deletes a frequency's settings; its listeners are removed from it.
    FreqDelete {
        /// Frequency.
        freq_id: FreqId,
    },
    /// Mutes or unmutes a user's transmissions on a frequency.
    Mute {
        /// User.
        user_id: UserId,
        /// Frequency.
        freq_id: FreqId,
        /// True to mute, false to unmute.
        muted: bool,
    },
    /// Returns the live state of one user, or of all frequencies.
    Status {
        /// User to report on.
        #[serde(default)]
        user_id: Option<UserId>,
    },
    /// Returns relay load figures.
    Stats,
    /// Replaces all bot-owned state at once, after the bot (re)connects.
    Sync(SyncState),
}

/// State owned by the bot that the relay mirrors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// Every configured frequency.
    pub freqs: Vec<FreqConfig>,
    /// Every voice-channel assignment.
    pub assignments: Vec<Assignment>,
    /// Every moderator mute.
    pub mutes: Vec<MuteEntry>,
    /// Every user-wide revocation still in force.
    pub revoked_users: Vec<RevokedUser>,
    /// Every revoked token id still unexpired.
    pub revoked_tokens: Vec<String>,
}

/// Frequencies granted to one user through voice channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// User.
    pub user_id: UserId,
    /// Granted frequencies; empty withdraws all of them.
    pub freqs: FreqSet,
}

/// Settings of a frequency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreqConfig {
    /// Frequency.
    pub id: FreqId,
    /// Display name.
    pub name: String,
    /// Lowest rank that may join.
    #[serde(default)]
    pub min_rank: u8,
    /// One talker at a time when true.
    #[serde(default = "default_true")]
    pub half_duplex: bool,
}

fn default_true() -> bool {
    true
}

/// A moderator mute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MuteEntry {
    /// User.
    pub user_id: UserId,
    /// Frequency.
    pub freq_id: FreqId,
}

/// A user-wide revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedUser {
    /// User.
    pub user_id: UserId,
    /// Unix seconds; tokens with `iat <= before` are rejected.
    pub before: u64,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// The request's id; 0 when the request could not be parsed.
    pub id: u64,
    /// True when the command was applied.
    pub ok: bool,
    /// What failed, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Command-specific result.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl ControlResponse {
    /// A success with a result.
    pub fn ok(id: u64, data: Value) -> Self {
        Self {
            id,
            ok: true,
            error: None,
            data,
        }
    }

    /// A failure with its reason.
    pub fn error(id: u64, error: impl Into<String>) -> Self {
        Self {
            id,
            ok: false,
            error: Some(error.into()),
            data: Value::Null,
        }
    }
}

/// Live state of one session, in a `status` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Session number.
    pub session: u64,
    /// Peer address.
    pub peer: String,
    /// Joined frequencies.
    pub joined: Vec<FreqId>,
    /// Seconds since the session authenticated.
    pub connected_secs: u64,
}

/// Result of a `status` command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The user's live sessions (empty without `user_id`).
    pub sessions: Vec<SessionStatus>,
    /// Frequencies with a talker right now.
    pub busy: Vec<FreqId>,
}

/// Result of a `stats` command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Authenticated sessions.
    pub sessions: u64,
    /// Frequencies with at least one listener.
    pub frequencies: u64,
    /// Frames received from talkers since start.
    pub frames_in: u64,
    /// Frames handed to listeners since start, written at once or queued;
    /// queued ones may still be dropped as late.
    pub frames_out: u64,
    /// Frames dropped since start because a listener's queue was full.
    pub frames_dropped: u64,
    /// Frames dropped since start because they waited in a listener's queue
    /// longer than the relay's `max_queue_delay`.
    #[serde(default)]
    pub frames_late: u64,
    /// Talker frames refused since start: the floor was taken or the sender
    /// was muted.
    #[serde(default)]
    pub frames_denied: u64,
    /// Frames received per second over the last measurement interval.
    pub frames_in_per_sec: f64,
    /// Seconds since the relay started.
    pub uptime_secs: u64,
}

/// Parses one request line, returning the response to send on failure.
pub fn parse_request(line: &str) -> Result<ControlRequest, ControlResponse> {
    serde_json::from_str(line).map_err(|e| {
        let id = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64))
            .unwrap_or(0);
        ControlResponse::error(id, format!("invalid control request: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let request = ControlRequest {
            id: 7,
            command: ControlCommand::Mute {
                user_id: "00112233445566778899aabbccddeeff".parse().unwrap(),
                freq_id: FreqId::new(1050).unwrap(),
                muted: true,
            },
        };
        let line = serde_json::to_string(&request).unwrap();
        assert!(line.contains(r#""op":"mute""#), "{line}");
        assert_eq!(parse_request(&line).unwrap(), request);
    }

    #[test]
    fn bad_request_keeps_id() {
        let response = parse_request(r#"{"id":9,"op":"explode"}"#).unwrap_err();
        assert_eq!(response.id, 9);
        assert!(!response.ok);
        assert!(response.error.unwrap().contains("explode"));
        let response = parse_request("garbage").unwrap_err();
        assert_eq!(response.id, 0);
    }

    #[test]
    fn bad_freq_rejected() {
        let err = parse_request(r#"{"id":1,"op":"freq_delete","freq_id":5}"#).unwrap_err();
        assert!(err.error.unwrap().contains("1000 to 9999"));
    }
}
