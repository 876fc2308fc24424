//! Fuzzes `ClientMessage::parse` with any UTF-8 text. An accepted message,
//! written back as canonical JSON, must parse to the same message.

#![no_main]

use krt_shared::FreqId;
use krt_shared::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(message) => {
            let canonical = to_json(&message);
            assert_eq!(
                ClientMessage::parse(&canonical),
                Ok(message),
                "json {canonical}"
            );
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            // A frequency is reported back only when it was out of range.
            if let Some(value) = error.sent_freq() {
                assert!(
                    FreqId::new(value).is_err(),
                    "in-range {value} rejected: {error}"
                );
            }
        }
    }
});

fn to_json(message: &ClientMessage) -> String {
    let value = match message {
        ClientMessage::Auth {
            auth_token,
            discord_user_id,
            guild_id,
        } => json!({
            "type": "auth",
            "authToken": auth_token,
            "discordUserId": discord_user_id,
            "guildId": guild_id,
        }),
        ClientMessage::Join { freq } => json!({"type": "join", "freqId": freq}),
        ClientMessage::Leave { freq } => json!({"type": "leave", "freqId": freq}),
        ClientMessage::Mute { freq } => json!({"type": "mute", "freqId": freq}),
        ClientMessage::Unmute { freq } => json!({"type": "unmute", "freqId": freq}),
        ClientMessage::TxStop { freq } => json!({"type": "tx_stop", "freqId": freq}),
        ClientMessage::Ping => json!({"type": "ping"}),
    };
    value.to_string()
}
