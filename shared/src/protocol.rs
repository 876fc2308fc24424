//! JSON control messages of voice protocol v1.
//!
//! Every text frame is a JSON object with a `type` field. Client messages are
//! parsed into [`ClientMessage`] with errors precise enough to send back to
//! the client; relay messages are built as [`ServerMessage`]. Message types
//! added after v1 (`tx_stop`, `tx_denied`, `error`, `leave_error`,
//! `freq_assign`) are ignored by older clients.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::freq::FreqId;

/// A message sent by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Logs in. Only `auth_token` is used; the other fields are accepted for
    /// compatibility with older clients and ignored when a token is given.
    Auth {
        /// Token issued by the bot.
        auth_token: Option<String>,
        /// Discord id claimed by older clients; never trusted.
        discord_user_id: Option<String>,
        /// Guild id sent by older clients; never trusted.
        guild_id: Option<String>,
    },
    /// Starts listening to a frequency.
    Join {
        /// Frequency to join.
        freq: FreqId,
    },
    /// Stops listening to a frequency.
    Leave {
        /// Frequency to leave.
        freq: FreqId,
    },
    /// Stops receiving audio of a joined frequency while staying joined.
    Mute {
        /// Frequency to mute.
        freq: FreqId,
    },
    /// Resumes receiving audio of a muted frequency.
    Unmute {
        /// Frequency to unmute.
        freq: FreqId,
    },
    /// Releases the floor of a frequency at once instead of after the
    /// silence timeout.
    TxStop {
        /// Frequency the sender was talking on.
        freq: FreqId,
    },
    /// Heartbeat, to which the relay replies with `pong`.
    Ping,
}

/// Why a client text message was rejected. The `Display` text is sent back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The text is not JSON.
    #[error("invalid JSON message ({detail}): send a JSON object with a \"type\" field")]
    InvalidJson {
        /// Parser error.
        detail: String,
    },
    /// The JSON is not an object, or has no string `type`.
    #[error("message has no \"type\" field: send a JSON object such as {{\"type\":\"ping\"}}")]
    MissingType,
    /// The `type` is not one this relay supports.
    #[error(
        "unknown message type '{kind}': expected auth, join, leave, mute, unmute, tx_stop or ping"
    )]
    UnknownType {
        /// The type as sent, cut to 64 characters.
        kind: String,
    },
    /// A required field is missing.
    #[error("{kind} message is missing the \"{field}\" field")]
    MissingField {
        /// Message type.
        kind: &'static str,
        /// Name of the missing field.
        field: &'static str,
    },
    /// `freqId` is present but not a valid frequency.
    #[error("{kind} message has invalid freqId {value}: use an integer from 1000 to 9999")]
    InvalidFreqId {
        /// Message type.
        kind: &'static str,
        /// The value as sent, in JSON, cut to 64 characters.
        value: String,
    },
    /// A field has the wrong JSON type.
    #[error("{kind} message has an invalid \"{field}\" field: expected a string")]
    InvalidField {
        /// Message type.
        kind: &'static str,
        /// Name of the field.
        field: &'static str,
    },
}

impl ProtocolError {
    /// The message type the error belongs to, when it was recognised.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            ProtocolError::MissingField { kind, .. }
            | ProtocolError::InvalidFreqId { kind, .. }
            | ProtocolError::InvalidField { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The frequency number the client sent, when it was an integer.
    pub fn sent_freq(&self) -> Option<i64> {
        match self {
            ProtocolError::InvalidFreqId { value, .. } => value.parse().ok(),
            _ => None,
        }
    }
}

fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Every field a client message may carry; validated per type afterwards.
#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(rename = "freqId")]
    freq_id: Option<Value>,
    #[serde(rename = "authToken")]
    auth_token: Option<Value>,
    #[serde(rename = "discordUserId")]
    discord_user_id: Option<Value>,
    #[serde(rename = "guildId")]
    guild_id: Option<Value>,
}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError::InvalidJson {
            detail: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(ProtocolError::MissingType);
        }
        let raw: RawMessage =
            serde_json::from_value(value).map_err(|e| ProtocolError::InvalidJson {
                detail: e.to_string(),
            })?;
        let kind = match &raw.kind {
            Some(Value::String(kind)) => kind.as_str(),
            _ => return Err(ProtocolError::MissingType),
        };
        let freq = |kind: &'static str| parse_freq(kind, raw.freq_id.as_ref());
        match kind {
            "auth" => Ok(ClientMessage::Auth {
                auth_token: optional_string("auth", "authToken", raw.auth_token.as_ref())?,
                discord_user_id: optional_id(raw.discord_user_id.as_ref()),
                guild_id: optional_id(raw.guild_id.as_ref()),
            }),
            "join" => Ok(ClientMessage::Join {
                freq: freq("join")?,
            }),
            "leave" => Ok(ClientMessage::Leave {
                freq: freq("leave")?,
            }),
            "mute" => Ok(ClientMessage::Mute {
                freq: freq("mute")?,
            }),
            "unmute" => Ok(ClientMessage::Unmute {
                freq: freq("unmute")?,
            }),
            "tx_stop" => Ok(ClientMessage::TxStop {
                freq: freq("tx_stop")?,
            }),
            "ping" => Ok(ClientMessage::Ping),
            other => Err(ProtocolError::UnknownType { kind: cut(other) }),
        }
    }
}

fn parse_freq(kind: &'static str, value: Option<&Value>) -> Result<FreqId, ProtocolError> {
    let value = match value {
        None | Some(Value::Null) => {
            return Err(ProtocolError::MissingField {
                kind,
                field: "freqId",
            });
        }
        Some(value) => value,
    };
    value
        .as_i64()
        .and_then(|number| FreqId::new(number).ok())
        .ok_or_else(|| ProtocolError::InvalidFreqId {
            kind,
            value: cut(&value.to_string()),
        })
}

fn optional_string(
    kind: &'static str,
    field: &'static str,
    value: Option<&Value>,
) -> Result<Option<String>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ProtocolError::InvalidField { kind, field }),
    }
}

/// Reads an id that older clients send as a string or a number. The relay
/// never uses these ids, so a value of another type is ignored rather than
/// failing an otherwise valid login.
fn optional_id(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::String(text)) => Some(text.clone()),
        _ => None,
    }
}

/// Start or end of a transmission, in an `rx` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RxAction {
    /// A talker took the floor.
    Start,
    /// The talker released or lost the floor.
    Stop,
}

/// Why a frame from a client was not forwarded, in a `tx_denied` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxDeniedReason {
    /// Another talker has the floor.
    Busy,
    /// A talker of higher rank took the floor.
    Preempted,
    /// A moderator muted this user on the frequency.
    Muted,
    /// The token does not allow transmitting on this frequency.
    NotAllowed,
}

/// Whether a frequency was granted or withdrawn, in a `freq_assign` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignAction {
    /// The user may now use the frequency.
    Grant,
    /// The user may no longer use the frequency.
    Revoke,
}

/// A message sent by the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Login succeeded.
    AuthOk {
        /// Random id of this session.
        #[serde(rename = "sessionToken")]
        session_token: String,
        /// Name shown to other listeners.
        #[serde(rename = "displayName")]
        display_name: String,
        /// Pseudonymous user id.
        #[serde(rename = "userId")]
        user_id: String,
        /// Token expiry, Unix seconds.
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    /// Login failed.
    AuthError {
        /// What failed and what to do.
        reason: String,
    },
    /// Joined a frequency.
    JoinOk {
        /// Joined frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// Listeners on the frequency, this session included.
        #[serde(rename = "listenerCount")]
        listener_count: u32,
        /// Base64 AES-256-GCM key of the frequency.
        #[serde(rename = "freqKey")]
        freq_key: String,
    },
    /// Join failed.
    JoinError {
        /// Frequency as sent, when it was an integer.
        #[serde(rename = "freqId")]
        freq_id: Option<i64>,
        /// What failed and what to do.
        reason: String,
    },
    /// Left a frequency.
    LeaveOk {
        /// Left frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
    },
    /// Leave failed.
    LeaveError {
        /// Frequency as sent, when it was an integer.
        #[serde(rename = "freqId")]
        freq_id: Option<i64>,
        /// What failed.
        reason: String,
    },
    /// Mute or unmute applied.
    MuteOk {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// True when audio of the frequency is no longer delivered.
        muted: bool,
    },
    /// Mute or unmute failed.
    MuteError {
        /// What failed and what to do.
        reason: String,
    },
    /// Reply to `ping`.
    Pong,
    /// Listener count of a joined frequency changed.
    ListenerUpdate {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// Listeners now on the frequency.
        #[serde(rename = "listenerCount")]
        listener_count: u32,
    },
    /// A transmission started or stopped on a joined frequency.
    Rx {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// Pseudonymous id of the talker (the field name is kept from v1).
        #[serde(rename = "discordUserId")]
        discord_user_id: String,
        /// Display name of the talker.
        username: String,
        /// Start or stop.
        action: RxAction,
    },
    /// The encryption key of a joined frequency changed.
    FreqKeyUpdate {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// New base64 AES-256-GCM key.
        #[serde(rename = "freqKey")]
        freq_key: String,
    },
    /// Frames from this client on a frequency are not forwarded.
    TxDenied {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// Why.
        reason: TxDeniedReason,
    },
    /// A frequency was granted to or withdrawn from this user.
    FreqAssign {
        /// Frequency.
        #[serde(rename = "freqId")]
        freq_id: FreqId,
        /// Grant or revoke.
        action: AssignAction,
    },
    /// A message from the client was rejected; the session stays open.
    Error {
        /// What failed and what to do.
        reason: String,
    },
}

impl ServerMessage {
    /// Serializes the message as a JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialize to JSON")
    }
}

/// WebSocket close codes the relay sends. Codes from 4000 up are private to
/// KRT-Com; the others are the standard ones of RFC 6455.
pub mod close_code {
    /// The client closed the connection, or nothing more to say.
    pub const NORMAL: u16 = 1000;
    /// The relay is shutting down; reconnect in a moment.
    pub const GOING_AWAY: u16 = 1001;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message was larger than the relay accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The relay failed internally.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Nothing was received for the idle timeout (30 s by default).
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The token was rejected.
    pub const AUTH_FAILED: u16 = 4001;
    /// No `auth` message arrived within the auth timeout (5 s by default).
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// A newer session of the same user replaced this one.
    pub const REPLACED: u16 = 4003;
    /// A moderator kicked or banned the user, or revoked the token.
    pub const REVOKED: u16 = 4004;
    /// The client read too slowly to receive control messages.
    pub const TOO_SLOW: u16 = 4005;
    /// The WebSocket protocol was violated.
    pub const PROTOCOL_ERROR: u16 = 1002;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(value: i64) -> FreqId {
        FreqId::new(value).unwrap()
    }

    #[test]
    fn parse_v1_messages() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"join","freqId":1050}"#),
            Ok(ClientMessage::Join { freq: freq(1050) })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"auth","authToken":"t","discordUserId":123,"guildId":"9"}"#
            ),
            Ok(ClientMessage::Auth {
                auth_token: Some("t".into()),
                discord_user_id: Some("123".into()),
                guild_id: Some("9".into()),
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"mute","freqId":9999,"extra":true}"#),
            Ok(ClientMessage::Mute { freq: freq(9999) })
        );
    }

    #[test]
    fn parse_errors_are_precise() {
        let cases: &[(&str, ProtocolError)] = &[
            (
                "not json",
                ProtocolError::InvalidJson {
                    detail: "expected ident at line 1 column 2".into(),
                },
            ),
            ("[1,2]", ProtocolError::MissingType),
            (r#"{"freqId":1000}"#, ProtocolError::MissingType),
            (r#"{"type":5}"#, ProtocolError::MissingType),
            (
                r#"{"type":"dance"}"#,
                ProtocolError::UnknownType {
                    kind: "dance".into(),
                },
            ),
            (
                r#"{"type":"join"}"#,
                ProtocolError::MissingField {
                    kind: "join",
                    field: "freqId",
                },
            ),
            (
                r#"{"type":"join","freqId":99}"#,
                ProtocolError::InvalidFreqId {
                    kind: "join",
                    value: "99".into(),
                },
            ),
            (
                r#"{"type":"leave","freqId":"1000"}"#,
                ProtocolError::InvalidFreqId {
                    kind: "leave",
                    value: "\"1000\"".into(),
                },
            ),
            (
                r#"{"type":"join","freqId":1000.5}"#,
                ProtocolError::InvalidFreqId {
                    kind: "join",
                    value: "1000.5".into(),
                },
            ),
            (
                r#"{"type":"auth","authToken":7}"#,
                ProtocolError::InvalidField {
                    kind: "auth",
                    field: "authToken",
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                &ClientMessage::parse(text).unwrap_err(),
                expected,
                "input {text}"
            );
        }
    }

    #[test]
    fn error_reports_sent_freq() {
        let err = ClientMessage::parse(r#"{"type":"join","freqId":10000}"#).unwrap_err();
        assert_eq!(err.kind(), Some("join"));
        assert_eq!(err.sent_freq(), Some(10000));
        assert!(err.to_string().contains("10000"));
    }

    #[test]
    fn server_messages_use_v1_names() {
        let json = ServerMessage::JoinOk {
            freq_id: freq(1000),
            listener_count: 3,
            freq_key: "k".into(),
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"join_ok","freqId":1000,"listenerCount":3,"freqKey":"k"}"#
        );
        let json = ServerMessage::Rx {
            freq_id: freq(1000),
            discord_user_id: "ab".into(),
            username: "Lead".into(),
            action: RxAction::Start,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"rx","freqId":1000,"discordUserId":"ab","username":"Lead","action":"start"}"#
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
        let json = ServerMessage::TxDenied {
            freq_id: freq(1000),
            reason: TxDeniedReason::Busy,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"tx_denied","freqId":1000,"reason":"busy"}"#
        );
    }
}
